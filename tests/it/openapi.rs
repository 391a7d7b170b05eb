//! `openapi.yaml` and the router agree: the spec documents exactly the routes
//! served, and every documented route and method is really served.

use std::collections::BTreeSet;

use dynakv::api::ROUTES;

use crate::support::Server;

fn spec() -> serde_yaml::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn served() -> BTreeSet<(String, String)> {
    ROUTES.iter().flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string()))).collect()
}

#[test]
fn the_spec_documents_exactly_the_served_routes() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for (method, _) in item.as_mapping().unwrap() {
            let m = method.as_str().unwrap();
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&m) {
                documented.insert((path.as_str().unwrap().to_string(), m.to_string()));
            }
        }
    }
    assert_eq!(documented, served());
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let s = Server::start(&[]).await;
    for (path, method) in served() {
        if path == "/cluster/leave" {
            continue; // stops the node; covered in api.rs
        }
        let url = s.at(&path.replace("{key}", "probe"));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = s.http.request(m, &url).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(status != 405 && !body.contains("route_not_found"), "{method} {path}: {status} {body}");
    }
    // And a route not in the list is not served.
    let r = s.http.get(s.at("/internal/nothing-here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
