//! Restarts with the same data dir lose nothing acknowledged.

use std::time::Duration;

use serde_json::Value;

use crate::support::Server;

async fn write_many(s: &Server, n: usize) {
    for i in 0..n {
        assert_eq!(s.put(&format!("key-{i}"), &format!("value-{i}"), None).await.0, 204);
    }
}

async fn assert_all_there(s: &Server, n: usize) {
    for i in 0..n {
        let (status, _, body) = s.get(&format!("key-{i}")).await;
        assert_eq!((status, body), (200, format!("value-{i}")), "key-{i} lost");
    }
}

#[tokio::test]
async fn graceful_restart_keeps_data_and_node_id() {
    let mut s = Server::start(&[]).await;
    let id = s.http.get(s.at("/health")).send().await.unwrap().json::<Value>().await.unwrap()["node_id"].clone();
    let hb = heartbeat(&s).await;
    write_many(&s, 50).await;
    // Siblings and tombstones survive too.
    s.put("sib", "base", None).await;
    let ctx = s.get("sib").await.1.unwrap();
    s.put("sib", "x", Some(&ctx)).await;
    s.put("sib", "y", Some(&ctx)).await;
    s.http.delete(s.at("/kv/key-0")).send().await.unwrap();

    assert!(s.terminate().success(), "SIGTERM must exit 0");
    s.restart().await;

    let id2 = s.http.get(s.at("/health")).send().await.unwrap().json::<Value>().await.unwrap()["node_id"].clone();
    assert_eq!(id, id2, "node id must survive a restart");
    assert!(heartbeat(&s).await > hb, "heartbeat must stay monotonic across restarts");
    assert_eq!(s.get("key-0").await.0, 404);
    for i in 1..50 {
        assert_eq!(s.get(&format!("key-{i}")).await.2, format!("value-{i}"));
    }
    assert_eq!(s.http.get(s.at("/kv/sib")).send().await.unwrap().status(), 300);
}

#[tokio::test]
async fn sigkill_after_the_flush_interval_loses_nothing() {
    let mut s = Server::start(&[]).await;
    write_many(&s, 50).await;
    // The documented guarantee is time-based (sled flushes every 500 ms), so
    // waiting past it is the condition under test, not a stand-in for one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill();
    s.restart().await;
    assert_all_there(&s, 50).await;
}

#[tokio::test]
async fn sigkill_straight_after_the_ack_with_sync_writes_loses_nothing() {
    let mut s = Server::start(&["--sync-writes"]).await;
    // Concurrent writers share flushes (group commit).
    let mut tasks = Vec::new();
    for t in 0..4 {
        let http = s.http.clone();
        let url = s.url.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let k = t * 25 + i;
                let r = http.put(format!("{url}/kv/key-{k}")).body(format!("value-{k}")).send().await.unwrap();
                assert_eq!(r.status(), 204);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    s.kill();
    s.restart().await;
    assert_all_there(&s, 100).await;
}

async fn heartbeat(s: &Server) -> u64 {
    let m: Value = s.http.get(s.at("/cluster/members")).send().await.unwrap().json().await.unwrap();
    m["members"][0]["heartbeat"].as_u64().unwrap()
}
