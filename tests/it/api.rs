//! Every row of SPEC §3 against one real node.

use serde_json::Value;

use crate::support::{context_of, eventually, sorted_values, Server};

#[tokio::test]
async fn put_then_get_returns_value_and_content_type() {
    let s = Server::start(&[]).await;
    let r = s.http.put(s.at("/kv/greeting")).header("Content-Type", "text/plain").body("hello").send().await.unwrap();
    assert!(r.status().is_success());
    assert!(context_of(&r).is_some(), "PUT must return X-Context");
    let r = s.http.get(s.at("/kv/greeting")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(context_of(&r).is_some());
    assert_eq!(r.text().await.unwrap(), "hello");

    // Default content type, binary-safe value, percent-decoded key.
    let bytes = vec![0u8, 255, 1, 2];
    let r = s.http.put(s.at("/kv/a%20b%2Fc")).body(bytes.clone()).send().await.unwrap();
    assert!(r.status().is_success());
    let r = s.http.get(s.at("/kv/a%20b%2Fc")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
}

/// HEAD is a GET without the body (axum answers it with the GET handler):
/// it takes `r`, not `w`, and ignores a context header as a GET does.
#[tokio::test]
async fn head_reads_like_get() {
    let s = Server::start(&[]).await;
    assert_eq!(s.put("h", "value", None).await.0, 204);
    let r = s.http.head(s.at("/kv/h?r=1")).header("X-Context", "not-a-context").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(context_of(&r).is_some());
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let r = s.http.head(s.at("/kv/h?r=0")).send().await.unwrap();
    assert_eq!(r.status(), 400, "r is checked as a GET's");
    let r = s.http.head(s.at("/kv/absent")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn blind_sequential_puts_overwrite() {
    let s = Server::start(&[]).await;
    for v in ["one", "two", "three"] {
        assert_eq!(s.put("k", v, None).await.0, 204);
    }
    let (status, _, body) = s.get("k").await;
    assert_eq!((status, body.as_str()), (200, "three"));
}

#[tokio::test]
async fn stale_context_makes_siblings_and_read_context_resolves_them() {
    let s = Server::start(&[]).await;
    s.put("car", "TRUCK", None).await;
    let (_, ctx, _) = s.get("car").await;
    let ctx = ctx.unwrap();
    assert_eq!(s.put("car", "CAR", Some(&ctx)).await.0, 204);
    assert_eq!(s.put("car", "BIKE", Some(&ctx)).await.0, 204);

    let r = s.http.get(s.at("/kv/car")).send().await.unwrap();
    assert_eq!(r.status(), 300);
    let header_ctx = context_of(&r).unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["key"], "car");
    assert_eq!(body["context"], header_ctx.as_str());
    let values = sorted_values(&body);
    assert_eq!(values, ["BIKE", "CAR"]);
    for sib in body["siblings"].as_array().unwrap() {
        assert_eq!(sib["encoding"], "utf-8");
        assert_eq!(sib["content_type"], "application/octet-stream");
        assert!(sib["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }

    assert_eq!(s.put("car", "VAN", Some(&header_ctx)).await.0, 204);
    let (status, _, body) = s.get("car").await;
    assert_eq!((status, body.as_str()), (200, "VAN"));
}

#[tokio::test]
async fn a_writer_that_saw_nothing_does_not_overwrite_with_its_returned_context() {
    // Two clients with the same stale context; the second writes twice using
    // the context its first write returned. The first client's value must
    // survive as a sibling: the returned context covers only what was seen.
    let s = Server::start(&[]).await;
    s.put("k", "base", None).await;
    let (_, ctx, _) = s.get("k").await;
    let ctx = ctx.unwrap();
    s.put("k", "client1", Some(&ctx)).await;
    let (_, returned) = s.put("k", "client2-a", Some(&ctx)).await;
    s.put("k", "client2-b", Some(&returned.unwrap())).await;
    let body: Value = s.http.get(s.at("/kv/k")).send().await.unwrap().json().await.unwrap();
    let values = sorted_values(&body);
    assert_eq!(values, ["client1", "client2-b"]);
}

#[tokio::test]
async fn accept_json_gives_the_sibling_shape_for_one_version_and_base64_for_binary() {
    let s = Server::start(&[]).await;
    s.http.put(s.at("/kv/bin")).body(vec![0xffu8, 0xfe]).send().await.unwrap();
    let r = s.http.get(s.at("/kv/bin")).header("Accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["siblings"].as_array().unwrap().len(), 1);
    assert_eq!(body["siblings"][0]["encoding"], "base64");
    assert_eq!(body["siblings"][0]["value"], "//4=");
    let r = s.http.get(s.at("/kv/missing")).header("Accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn delete_leaves_a_tombstone_with_context() {
    let s = Server::start(&[]).await;
    let (status, _, body) = s.get("never").await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "not_found");

    s.put("k", "v", None).await;
    let r = s.http.delete(s.at("/kv/k")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(context_of(&r).is_some());
    let (status, ctx, _) = s.get("k").await;
    assert_eq!(status, 404);
    let ctx = ctx.expect("404 of a tombstone carries X-Context");
    // A write with that context supersedes the tombstone.
    s.put("k", "again", Some(&ctx)).await;
    let (status, _, body) = s.get("k").await;
    assert_eq!((status, body.as_str()), (200, "again"));

    // Deleting a key never written also writes a tombstone.
    assert_eq!(s.http.delete(s.at("/kv/fresh")).send().await.unwrap().status(), 204);
    let (status, ctx, _) = s.get("fresh").await;
    assert_eq!(status, 404);
    assert!(ctx.is_some());
}

#[tokio::test]
async fn a_delete_concurrent_with_a_write_is_a_deleted_sibling() {
    let s = Server::start(&[]).await;
    s.put("k", "v1", None).await;
    let (_, ctx, _) = s.get("k").await;
    let ctx = ctx.unwrap();
    s.put("k", "v2", Some(&ctx)).await;
    let r = s.http.delete(s.at("/kv/k")).header("X-Context", &ctx).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.http.get(s.at("/kv/k")).send().await.unwrap();
    assert_eq!(r.status(), 300);
    let body: Value = r.json().await.unwrap();
    let sibs = body["siblings"].as_array().unwrap();
    assert_eq!(sibs.len(), 2);
    let tomb = sibs.iter().find(|s| s["deleted"] == true).expect("a deleted sibling");
    assert!(tomb["value"].is_null() && tomb["encoding"].is_null() && tomb["content_type"].is_null());
    assert!(tomb["timestamp"].is_u64());
    let live = sibs.iter().find(|s| s["deleted"] == false).unwrap();
    assert_eq!(live["value"], "v2");
}

#[tokio::test]
async fn ttl_expires_and_is_purged() {
    let s = Server::start(&[]).await;
    let r = s.http.put(s.at("/kv/short?ttl=1")).body("soon gone").send().await.unwrap();
    assert_eq!(r.status(), 204);
    s.put("long", "stays", None).await;
    assert_eq!(s.get("short").await.0, 200);
    eventually("ttl key reads as 404", || async { s.get("short").await.0 == 404 }).await;
    eventually("expired key purged from storage", || async {
        let r: Value = s.http.get(s.at("/cluster/replicas/short")).send().await.unwrap().json().await.unwrap();
        r["replicas"][0]["versions"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(s.get("long").await.0, 200);
}

#[tokio::test]
async fn tombstones_are_purged_only_after_the_grace_period() {
    let s = Server::start(&["--tombstone-grace-ms", "300"]).await;
    s.put("k", "v", None).await;
    s.http.delete(s.at("/kv/k")).send().await.unwrap();
    let r: Value = s.http.get(s.at("/cluster/replicas/k")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["replicas"][0]["versions"][0]["deleted"], true, "tombstone kept during grace: {r}");
    eventually("tombstone purged after grace", || async {
        let r: Value = s.http.get(s.at("/cluster/replicas/k")).send().await.unwrap().json().await.unwrap();
        r["replicas"][0]["versions"].as_array().unwrap().is_empty()
    })
    .await;
    let (status, ctx, _) = s.get("k").await;
    assert_eq!((status, ctx), (404, None));

    // With the default grace (a day) the tombstone stays.
    let d = Server::start(&[]).await;
    d.http.delete(d.at("/kv/k")).send().await.unwrap();
    let r: Value = d.http.get(d.at("/cluster/replicas/k")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["replicas"][0]["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn sibling_cap_refuses_growth_but_never_resolution() {
    let s = Server::start(&["--max-siblings", "2"]).await;
    s.put("k", "base", None).await;
    let (_, ctx, _) = s.get("k").await;
    let ctx = ctx.unwrap();
    assert_eq!(s.put("k", "a", Some(&ctx)).await.0, 204);
    assert_eq!(s.put("k", "b", Some(&ctx)).await.0, 204);
    let r = s.http.put(s.at("/kv/k")).header("X-Context", &ctx).body("c").send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_many_siblings");
    // Nothing changed.
    let body: Value = s.http.get(s.at("/kv/k")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["siblings"].as_array().unwrap().len(), 2);
    // A write with the read's context resolves.
    let read_ctx = body["context"].as_str().unwrap();
    assert_eq!(s.put("k", "resolved", Some(read_ctx)).await.0, 204);
    assert_eq!(s.get("k").await.2, "resolved");
}

#[tokio::test]
async fn quorum_parameters_are_capped_by_a_single_member() {
    let s = Server::start(&[]).await;
    // Counts above N (here 1) mean every replica, like the capped defaults.
    for q in ["w=1", "w=quorum", "w=all", "w=async", "w=2", "w=3", "w=9999999999"] {
        let r = s.http.put(s.at(&format!("/kv/k?{q}"))).body(q).send().await.unwrap();
        assert_eq!(r.status(), 204, "{q}");
    }
    for q in ["r=1", "r=quorum", "r=all", "r=3"] {
        let r = s.http.get(s.at(&format!("/kv/k?{q}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{q}");
    }
    let r = s.http.delete(s.at("/kv/k?w=all")).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn inspection_routes_report_the_single_node() {
    let s = Server::start(&["--node-id", "solo-1", "--partitions", "8"]).await;
    let h: Value = s.http.get(s.at("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node_id"], "solo-1");

    let m: Value = s.http.get(s.at("/cluster/members")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["node_id"], "solo-1");
    let me = &m["members"][0];
    assert_eq!((me["id"].as_str(), me["status"].as_str()), (Some("solo-1"), Some("alive")));
    assert_eq!(me["address"], s.url.as_str());
    assert!(humantime::parse_rfc3339(me["updated_at"].as_str().unwrap()).is_ok());
    let hb = me["heartbeat"].as_u64().unwrap();
    eventually("heartbeat advances", || async {
        let m: Value = s.http.get(s.at("/cluster/members")).send().await.unwrap().json().await.unwrap();
        m["members"][0]["heartbeat"].as_u64().unwrap() > hb
    })
    .await;

    let ring: Value = s.http.get(s.at("/cluster/ring")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ring["partition_count"], 8);
    assert_eq!(ring["replicas"], 3);
    let parts = ring["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 8);
    assert_eq!(parts[0]["start"], "0000000000000000");
    assert_eq!(parts[7]["end"], "ffffffffffffffff");
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["id"], i);
        assert_eq!(p["preference_list"], serde_json::json!(["solo-1"]));
        assert_eq!(p["start"].as_str().unwrap().len(), 16);
    }

    s.put("k", "v", None).await;
    let r: Value = s.http.get(s.at("/cluster/replicas/k")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["key"], "k");
    assert!(r["partition"].as_u64().unwrap() < 8);
    assert_eq!(r["preference_list"], serde_json::json!(["solo-1"]));
    let rep = &r["replicas"][0];
    assert_eq!((rep["node"].as_str(), rep["reachable"].as_bool()), (Some("solo-1"), Some(true)));
    let v = &rep["versions"][0];
    assert!(v["clock"]["solo-1"].as_u64().unwrap() >= 1);
    assert_eq!(v["deleted"], false);
    assert!(v["timestamp"].is_u64());

    let text = s.http.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("dynakv_http_requests_total{method=\"PUT\",route=\"/kv/{key}\",status=\"204\"}"), "{text}");
    assert!(text.contains("dynakv_http_request_duration_seconds_bucket"));
    assert!(!text.contains("route=\"/kv/k\""), "raw keys must not be labels");
}

/// Every metric README names has a series on a fresh single node (a
/// labelled family starts at 0 for its fixed labels), so a dashboard built
/// from the README finds each one before its first event.
#[tokio::test]
async fn every_metric_the_readme_names_is_served_from_the_start() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut names: Vec<&str> =
        readme.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("dynakv_")).collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 30, "README lists the metrics: {names:?}");
    let s = Server::start(&[]).await;
    s.put("k", "v", None).await;
    let text = s.http.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
    let served: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| n.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count"))
        .collect();
    let missing: Vec<_> = names.iter().filter(|n| !served.contains(**n)).collect();
    assert!(missing.is_empty(), "README names metrics a fresh node does not serve: {missing:?}");
}

#[tokio::test]
async fn leave_answers_202_and_exits_zero() {
    let mut s = Server::start(&[]).await;
    let r = s.http.post(s.at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(s.wait().success());
}

#[tokio::test]
async fn the_context_stays_small_under_repeated_writes() {
    let s = Server::start(&[]).await;
    // Other keys first, so this node's counters are high.
    for i in 0..20 {
        s.put(&format!("other-{i}"), "x", None).await;
    }
    let (_, first) = s.put("hot", "v0", None).await;
    let mut last = first.clone();
    for i in 1..200 {
        last = s.put("hot", &format!("v{i}"), None).await.1;
    }
    let (first, last) = (first.unwrap(), last.unwrap());
    assert!(last.len() <= first.len() + 4, "context grew from {} to {} bytes", first.len(), last.len());
    let (_, read_ctx, body) = s.get("hot").await;
    assert_eq!(body, "v199");
    assert!(read_ctx.unwrap().len() <= first.len() + 4);
}
