//! Anti-entropy with real processes (issue 9): replicas that diverged
//! converge by themselves, without client reads, within a few
//! `--anti-entropy-interval-ms`; deletes stay deleted.

use serde_json::Value;

use crate::support::{eventually, member_statuses, replica_versions, Cluster, FAST};

/// Fast timers plus anti-entropy every 200 ms.
fn timers() -> Vec<&'static str> {
    let mut t = FAST.to_vec();
    t.extend_from_slice(&["--anti-entropy-interval-ms", "200"]);
    t
}

async fn put(c: &Cluster, i: usize, key: &str, value: &str, query: &str, ctx: Option<&str>) -> u16 {
    let s = c.node(i);
    let mut req = s.http.put(s.at(&format!("/kv/{key}{query}"))).body(value.to_string());
    if let Some(ctx) = ctx {
        req = req.header("X-Context", ctx);
    }
    req.send().await.unwrap().status().as_u16()
}

/// What `node` stores for `key`, seen through `via`'s replica view (no
/// client read, so no read repair).
async fn stored_on(c: &Cluster, via: usize, key: &str, node: &str) -> Option<Vec<Value>> {
    let reps = replica_versions(c.node(via), key).await;
    reps.into_iter().find(|(n, reachable, _)| n == node && *reachable).map(|(_, _, v)| v)
}

#[tokio::test]
async fn a_wiped_replica_holds_every_key_again_without_reads() {
    let mut c = Cluster::start_with(3, &timers(), &[]).await;
    for i in 0..200 {
        assert_eq!(put(&c, 0, &format!("w{i}"), &format!("v{i}"), "?w=all", None).await, 204);
    }
    c.nodes[2].kill();
    std::fs::remove_dir_all(c.nodes[2].data_dir()).unwrap();
    c.nodes[2].restart().await;
    c.wait_all_alive().await;
    eventually("n3 holds every key again", || async {
        for i in 0..200 {
            match stored_on(&c, 2, &format!("w{i}"), "n3").await {
                Some(v) if v.len() == 1 => {}
                _ => return false,
            }
        }
        true
    })
    .await;
}

#[tokio::test]
async fn keys_deleted_while_a_replica_was_paused_stay_deleted_everywhere() {
    let c = Cluster::start_with(3, &timers(), &[]).await;
    for i in 0..30 {
        assert_eq!(put(&c, 0, &format!("d{i}"), "v", "?w=all", None).await, 204);
    }
    c.node(2).pause();
    for i in 0..30 {
        let s = c.node(0);
        let r = s.http.delete(s.at(&format!("/kv/d{i}?w=quorum"))).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
    c.node(2).resume();
    c.wait_all_alive().await;
    eventually("no replica holds a live version of a deleted key", || async {
        for i in 0..30 {
            let reps = replica_versions(c.node(2), &format!("d{i}")).await;
            for (_, reachable, versions) in reps {
                if !reachable || versions.is_empty() || versions.iter().any(|v| v["deleted"] != true) {
                    return false;
                }
            }
        }
        true
    })
    .await;
    for s in &c.nodes {
        assert_eq!(s.get("d0").await.0, 404);
    }
}

#[tokio::test]
async fn concurrent_versions_on_different_replicas_end_as_one_sibling_set_without_reads() {
    // Durable acks: the nodes are killed right after writing.
    let mut c = Cluster::start_with(3, &timers(), &["--sync-writes"]).await;
    assert_eq!(put(&c, 0, "car", "TRUCK", "?w=all", None).await, 204);
    let ctx = crate::support::context_of(&c.node(0).http.get(c.node(0).at("/kv/car?r=all")).send().await.unwrap());
    let ctx = ctx.unwrap();
    // CAR is written through n1 while n2 and n3 are down, BIKE through n2
    // while n1 and n3 are down (killed, so nothing queued reaches them
    // later): three replicas, three different states.
    c.nodes[1].kill();
    c.nodes[2].kill();
    assert_eq!(put(&c, 0, "car", "CAR", "?w=1", Some(&ctx)).await, 204);
    c.nodes[0].kill();
    c.nodes[1].restart().await;
    assert_eq!(put(&c, 1, "car", "BIKE", "?w=1", Some(&ctx)).await, 204);
    c.nodes[0].restart().await;
    c.nodes[2].restart().await;
    c.wait_all_alive().await;
    eventually("every replica holds the same two siblings", || async {
        let reps = replica_versions(c.node(2), "car").await;
        reps.len() == 3
            && reps.iter().all(|(_, reachable, v)| *reachable && v.len() == 2)
            && reps.iter().all(|(_, _, v)| v == &reps[0].2)
    })
    .await;
    let mut repaired = 0.0;
    for s in &c.nodes {
        repaired += metric(s, "dynakv_ae_keys_pulled_total").await + metric(s, "dynakv_ae_keys_pushed_total").await;
    }
    assert!(repaired >= 2.0, "anti-entropy did the repair: {repaired}");
    let r = c.node(2).http.get(c.node(2).at("/kv/car?r=1")).header("Accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 300);
    let body: Value = r.json().await.unwrap();
    assert_eq!(crate::support::sorted_values(&body), ["BIKE", "CAR"]);
}

/// A node that left with its data and comes back after the keys were
/// deleted and the tombstones purged does not bring them back.
#[tokio::test]
async fn a_returning_node_with_old_values_does_not_resurrect_purged_deletes() {
    let mut c = Cluster::start_with(4, &timers(), &["--tombstone-grace-ms", "200"]).await;
    for i in 0..20 {
        assert_eq!(put(&c, 0, &format!("r{i}"), "old", "?w=all", None).await, 204);
    }
    // n4 leaves, keeping its data dir (and its copies).
    let r = c.nodes[3].http.post(c.nodes[3].at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(c.nodes[3].wait().success());
    eventually("n4 left on n1", || async {
        member_statuses(c.node(0)).await.get("n4").map(String::as_str) == Some("left")
    })
    .await;
    for i in 0..20 {
        let s = c.node(0);
        let r = s.http.delete(s.at(&format!("/kv/r{i}?w=all"))).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
    eventually("every tombstone purged", || async {
        for i in 0..20 {
            for (_, reachable, versions) in replica_versions(c.node(0), &format!("r{i}")).await {
                if !reachable || !versions.is_empty() {
                    return false;
                }
            }
        }
        true
    })
    .await;
    // n4 returns with its old copies; anti-entropy runs; nothing comes back.
    c.nodes[3].restart().await;
    c.wait_all_alive().await;
    eventually("n4 compared its partitions with the others", || async {
        metric(&c.nodes[3], "dynakv_ae_partitions_compared_total").await >= 8.0
    })
    .await;
    eventually("n4's old copies gave way to the purge markers", || async {
        for i in 0..20 {
            for (_, reachable, versions) in replica_versions(c.node(3), &format!("r{i}")).await {
                if !reachable || !versions.is_empty() {
                    return false;
                }
            }
        }
        true
    })
    .await;
    for i in 0..20 {
        for s in &c.nodes {
            let r = s.http.get(s.at(&format!("/kv/r{i}?r=all"))).send().await.unwrap();
            assert_eq!(r.status(), 404, "r{i} came back through {}", s.url);
        }
    }
}

/// A value that replaced another and then expired leaves a purge marker: a
/// replica that missed the replacement and comes back cannot bring back
/// what it replaced, a deleted value ("d") or an overwritten one ("o").
#[tokio::test]
async fn a_replica_that_missed_an_expiring_write_does_not_bring_back_what_it_replaced() {
    // Synced writes: n3's copies of "old" survive its SIGKILL.
    let mut c = Cluster::start_with(3, &timers(), &["--sync-writes"]).await;
    for key in ["d", "o"] {
        assert_eq!(put(&c, 0, key, "old", "?w=all", None).await, 204);
    }
    c.nodes[2].kill();
    // Once n3 is held down there is no stand-in for it among three nodes
    // and no hint: n3 learns of the delete and the writes only from the
    // others' copies.
    eventually("n1 holds n3 down", || async {
        member_statuses(c.node(0)).await.get("n3").is_some_and(|s| s != "alive")
    })
    .await;
    let s = c.node(0);
    assert_eq!(s.http.delete(s.at("/kv/d?w=quorum")).send().await.unwrap().status(), 204);
    for key in ["d", "o"] {
        assert_eq!(put(&c, 0, key, "brief", "?w=quorum&ttl=1", None).await, 204);
    }
    eventually("n1 and n2 purged the expired values", || async {
        for key in ["d", "o"] {
            for node in ["n1", "n2"] {
                if !matches!(stored_on(&c, 0, key, node).await, Some(v) if v.is_empty()) {
                    return false;
                }
            }
        }
        true
    })
    .await;
    // n3 returns with "old" for both; anti-entropy runs; neither comes back.
    c.nodes[2].restart().await;
    c.wait_all_alive().await;
    eventually("n3's old copies gave way to the markers", || async {
        for key in ["d", "o"] {
            if !matches!(stored_on(&c, 2, key, "n3").await, Some(v) if v.is_empty()) {
                return false;
            }
        }
        true
    })
    .await;
    for key in ["d", "o"] {
        for s in &c.nodes {
            let r = s.http.get(s.at(&format!("/kv/{key}?r=all"))).send().await.unwrap();
            assert_eq!(r.status(), 404, "{key} came back through {}", s.url);
        }
    }
}

async fn metric(s: &crate::support::Server, name: &str) -> f64 {
    let text = s.http.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
