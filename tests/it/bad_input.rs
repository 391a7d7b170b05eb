//! SPEC §3's bad-input table: every rejected request is a 4xx with the JSON
//! error body, stores nothing, and the node keeps serving.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::Server;

async fn assert_error(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["error"].as_str().unwrap().is_empty());
}

/// The node still serves, and `key` was never stored.
async fn assert_nothing_stored(s: &Server, key: &str) {
    assert_eq!(s.http.get(s.at("/health")).send().await.unwrap().status(), 200);
    let r: Value = s.http.get(s.at(&format!("/cluster/replicas/{key}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["replicas"][0]["versions"], serde_json::json!([]), "{key} was stored: {r}");
}

#[tokio::test]
async fn bad_keys() {
    let s = Server::start(&["--max-key-bytes", "16"]).await;
    assert_error(s.http.put(s.at("/kv/")).body("v").send().await.unwrap(), 400, "invalid_key").await;
    assert_error(s.http.get(s.at("/kv/")).send().await.unwrap(), 400, "invalid_key").await;
    let long = "k".repeat(17);
    assert_error(s.http.put(s.at(&format!("/kv/{long}"))).body("v").send().await.unwrap(), 413, "key_too_large").await;
    assert_error(s.http.get(s.at(&format!("/kv/{long}"))).send().await.unwrap(), 413, "key_too_large").await;
    // Exactly at the limit is fine.
    let max = "k".repeat(16);
    assert_eq!(s.put(&max, "v", None).await.0, 204);
    // Percent-decoding that is not UTF-8.
    assert_error(s.http.put(s.at("/kv/%FF%FE")).body("v").send().await.unwrap(), 400, "invalid_key").await;
    // Multi-byte UTF-8 counts bytes, not characters: 6 x 3 bytes = 18 > 16.
    let wide = "%E2%82%AC".repeat(6);
    assert_error(s.http.put(s.at(&format!("/kv/{wide}"))).body("v").send().await.unwrap(), 413, "key_too_large").await;
    // A % that starts no escape is refused, not taken as itself.
    for bad in ["a%2", "z%ZZ", "%", "a%g0"] {
        assert_error(s.http.put(s.at(&format!("/kv/{bad}"))).body("v").send().await.unwrap(), 400, "invalid_key").await;
        assert_error(s.http.get(s.at(&format!("/kv/{bad}"))).send().await.unwrap(), 400, "invalid_key").await;
    }
    assert_nothing_stored(&s, "z%25ZZ").await;
    assert_eq!(s.put("100%25", "v", None).await.0, 204, "an escaped % is a key like any other");
    assert_eq!(s.http.get(s.at("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn values_over_the_limit_are_413_and_not_stored() {
    let s = Server::start(&["--max-value-bytes", "1024"]).await;
    let r = s.http.put(s.at("/kv/big")).body(vec![b'x'; 1025]).send().await.unwrap();
    assert_error(r, 413, "value_too_large").await;
    assert_nothing_stored(&s, "big").await;
    // Chunked upload without Content-Length is cut off too.
    let stream = futures_stream(vec![vec![b'y'; 800], vec![b'y'; 800]]);
    let r = s.http.put(s.at("/kv/big")).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_error(r, 413, "value_too_large").await;
    assert_nothing_stored(&s, "big").await;
    // A declared length past the limit is refused before any of the body
    // is read, not left to wait for a body that may never come (the
    // deadline would answer 503). No body byte is sent, so nothing unread
    // is left to turn the node's close into a reset.
    let head =
        raw_until(&s, b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n", "value_too_large")
            .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("value_too_large"), "{head}");
    assert_nothing_stored(&s, "big").await;
    let r = s.http.put(s.at("/kv/ok")).body(vec![b'x'; 1024]).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

/// Sends `request` to `s` as raw bytes on a connection of its own and reads
/// the answer until it contains `until` (or the connection ends).
async fn raw_until(s: &Server, request: &[u8], until: &str) -> String {
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut answer = String::new();
    let mut chunk = [0u8; 4096];
    while !answer.contains(until) {
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), c.read(&mut chunk));
        let n = read.await.expect("an answer").unwrap_or(0);
        if n == 0 {
            break;
        }
        answer.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    answer
}

fn futures_stream(chunks: Vec<Vec<u8>>) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for c in chunks {
        tx.send(Ok(c)).unwrap();
    }
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
}

#[tokio::test]
async fn malformed_or_tampered_contexts_are_400() {
    let s = Server::start(&[]).await;
    s.put("k", "v", None).await;
    let (_, ctx, _) = s.get("k").await;
    let ctx = ctx.unwrap();
    let mut tampered = ctx.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in ["garbage!", "AAAA", "dGhpcyBpcyBub3QgYSBjb250ZXh0IGF0IGFsbA", &tampered, &ctx[..ctx.len() - 2]] {
        let r = s.http.put(s.at("/kv/other")).header("X-Context", bad).body("x").send().await.unwrap();
        assert_error(r, 400, "invalid_context").await;
        let r = s.http.delete(s.at("/kv/other")).header("X-Context", bad).send().await.unwrap();
        assert_error(r, 400, "invalid_context").await;
    }
    assert_nothing_stored(&s, "other").await;
    assert_eq!(s.get("k").await.2, "v");
    // Two headers: which one meant is unknown.
    let r = s.http.put(s.at("/kv/other")).header("X-Context", &ctx).header("X-Context", &ctx).body("x");
    assert_error(r.send().await.unwrap(), 400, "invalid_context").await;
    assert_nothing_stored(&s, "other").await;
}

/// A node's counters are shared by every key it writes: another key's
/// context would claim to have seen versions of this one it never saw, and
/// a write carrying it would silently drop them. It is refused.
#[tokio::test]
async fn the_context_of_another_key_is_refused_and_the_siblings_stay() {
    let s = Server::start(&[]).await;
    let (_, base) = s.put("k", "a", None).await;
    assert_eq!(s.put("k", "b", base.as_deref()).await.0, 204);
    assert_eq!(s.put("k", "c", base.as_deref()).await.0, 204);
    let (_, foreign) = s.put("x", "later", None).await;
    let foreign = foreign.unwrap();
    for r in [
        s.http.put(s.at("/kv/k")).header("X-Context", &foreign).body("d"),
        s.http.delete(s.at("/kv/k")).header("X-Context", &foreign),
    ] {
        assert_error(r.send().await.unwrap(), 400, "invalid_context").await;
    }
    let r = s.http.get(s.at("/kv/k")).header("Accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 300);
    let body: Value = r.json().await.unwrap();
    assert_eq!(crate::support::sorted_values(&body), ["b", "c"]);
    // The key's own context resolves them.
    let own = body["context"].as_str().unwrap();
    assert_eq!(s.put("k", "d", Some(own)).await.0, 204);
    assert_eq!(s.get("k").await.2, "d");
}

#[tokio::test]
async fn a_body_that_cannot_be_read_is_400_invalid_body() {
    let s = Server::start(&[]).await;
    let chunked =
        b"PUT /kv/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n0\r\n\r\n";
    let answer = raw_until(&s, chunked, "}").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"invalid_body\""), "{answer}");
    assert_nothing_stored(&s, "chunky").await;
}

#[tokio::test]
async fn unknown_r_w_and_ttl_values_are_400() {
    let s = Server::start(&[]).await;
    for q in [
        "w=0",
        "w=-1",
        "w=most",
        "w=",
        "w=1.5",
        "w=10000000000",
        "w=02",
        "ttl=0",
        "ttl=010",
        "ttl=-5",
        "ttl=abc",
        "ttl=1.5",
        "ttl=+5",
        "ttl=10000000000",
    ] {
        let r = s.http.put(s.at(&format!("/kv/q?{q}"))).body("v").send().await.unwrap();
        let code = if q.starts_with('w') { "invalid_quorum" } else { "invalid_ttl" };
        assert_error(r, 400, code).await;
    }
    for q in ["r=0", "r=async", "r=x", "r=-2", "r=01"] {
        let r = s.http.get(s.at(&format!("/kv/q?{q}"))).send().await.unwrap();
        assert_error(r, 400, "invalid_quorum").await;
    }
    for q in ["w=0", "w=none"] {
        let r = s.http.delete(s.at(&format!("/kv/q?{q}"))).send().await.unwrap();
        assert_error(r, 400, "invalid_quorum").await;
    }
    // A known parameter that means nothing to the method is still checked.
    for (method, q, code) in [
        (reqwest::Method::PUT, "r=foo", "invalid_quorum"),
        (reqwest::Method::DELETE, "r=0", "invalid_quorum"),
        (reqwest::Method::GET, "w=foo", "invalid_quorum"),
        (reqwest::Method::GET, "ttl=-5", "invalid_ttl"),
    ] {
        let r = s.http.request(method, s.at(&format!("/kv/q?{q}"))).body("v").send().await.unwrap();
        assert_error(r, 400, code).await;
    }
    assert_eq!(s.http.get(s.at("/kv/q?w=2&ttl=5")).send().await.unwrap().status(), 404, "good ones are ignored");
    assert_nothing_stored(&s, "q").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let s = Server::start(&[]).await;
    assert_error(s.http.get(s.at("/nope")).send().await.unwrap(), 404, "route_not_found").await;
    assert_error(s.http.get(s.at("/kv")).send().await.unwrap(), 400, "invalid_key").await;
    assert_error(s.http.post(s.at("/kv/k")).body("v").send().await.unwrap(), 405, "method_not_allowed").await;
    assert_error(s.http.patch(s.at("/kv/k")).send().await.unwrap(), 405, "method_not_allowed").await;
    assert_error(s.http.delete(s.at("/health")).send().await.unwrap(), 405, "method_not_allowed").await;
    assert_error(s.http.get(s.at("/cluster/leave")).send().await.unwrap(), 405, "method_not_allowed").await;
    // A wrong method on a key route is a 405 whether or not the key is empty.
    for path in ["/kv/", "/kv", "/cluster/replicas/"] {
        let r = s.http.post(s.at(path)).body("v").send().await.unwrap();
        assert!(r.headers().contains_key("allow"), "{path}: {:?}", r.headers());
        assert_error(r, 405, "method_not_allowed").await;
    }
    assert_nothing_stored(&s, "k").await;
}

#[tokio::test]
async fn bad_content_type_is_400() {
    let s = Server::start(&[]).await;
    let long = "a/".to_string() + &"b".repeat(300);
    for bad in [long.as_str(), "foo", "text/", "/plain", "te xt/plain"] {
        let r = s.http.put(s.at("/kv/ct")).header("Content-Type", bad).body("v").send().await.unwrap();
        assert_error(r, 400, "invalid_content_type").await;
    }
    assert_nothing_stored(&s, "ct").await;
    let r =
        s.http.put(s.at("/kv/ct")).header("Content-Type", "text/plain; charset=utf-8").body("v").send().await.unwrap();
    assert_eq!(r.status(), 204);
}
