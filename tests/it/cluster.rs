//! Multi-node behaviour (issue 4): real processes on 127.0.0.1, each seeded
//! with the first, made unreachable for real with SIGSTOP.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    context_of, eventually, member_statuses, reads_back_at_r1, replica_versions, sorted_values, Cluster, Server,
};

async fn ring_nodes(s: &Server) -> std::collections::BTreeSet<String> {
    let r: Value = s.http.get(s.at("/cluster/ring")).send().await.unwrap().json().await.unwrap();
    r["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["preference_list"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()))
        .collect()
}

/// The sum over `nodes` of an unlabelled metric.
async fn metric_sum(nodes: &[Server], name: &str) -> f64 {
    let mut sum = 0.0;
    for s in nodes {
        let text = s.http.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
        sum += text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    sum
}

async fn put(s: &Server, key: &str, value: &str, query: &str, ctx: Option<&str>) -> reqwest::Response {
    let mut req = s.http.put(s.at(&format!("/kv/{key}{query}"))).body(value.to_string());
    if let Some(c) = ctx {
        req = req.header("X-Context", c);
    }
    req.send().await.unwrap()
}

async fn sibling_values(s: &Server, key: &str, query: &str) -> (u16, Vec<String>, Option<String>) {
    let r = s.http.get(s.at(&format!("/kv/{key}{query}"))).header("Accept", "application/json").send().await.unwrap();
    let status = r.status().as_u16();
    let ctx = context_of(&r);
    let body: Value = r.json().await.unwrap();
    (status, sorted_values(&body), ctx)
}

#[tokio::test]
async fn five_nodes_find_each_other_and_a_paused_node_goes_suspect_dead_and_back() {
    let timers = [
        "--gossip-interval-ms",
        "50",
        "--suspect-after-ms",
        "800",
        "--dead-after-ms",
        "2500",
        "--request-timeout-ms",
        "300",
    ];
    let c = Cluster::start_with(5, &timers, &[]).await;
    for s in &c.nodes {
        assert_eq!(ring_nodes(s).await.len(), 5);
    }
    let paused = c.node(4);
    paused.pause();
    let others = &c.nodes[..4];
    eventually("n5 suspect on every other node", || async {
        for s in others {
            if member_statuses(s).await.get("n5").map(String::as_str) != Some("suspect") {
                return false;
            }
        }
        true
    })
    .await;
    // Suspect stays on the ring.
    assert!(ring_nodes(&others[0]).await.contains("n5"));
    eventually("n5 dead on every other node and off every preference list", || async {
        for s in others {
            if member_statuses(s).await.get("n5").map(String::as_str) != Some("dead")
                || ring_nodes(s).await.contains("n5")
            {
                return false;
            }
        }
        true
    })
    .await;
    // Healthy nodes never looked suspect meanwhile.
    for s in others {
        let st = member_statuses(s).await;
        assert!(st.iter().filter(|(id, _)| *id != "n5").all(|(_, v)| v == "alive"), "{st:?}");
    }
    paused.resume();
    c.wait_all_alive().await;
    eventually("n5 back on every ring", || async {
        for s in &c.nodes {
            if !ring_nodes(s).await.contains("n5") {
                return false;
            }
        }
        true
    })
    .await;
    // A key's requests reach its replicas from any node (forwarding).
    let r = put(c.node(0), "fwd", "v", "?w=all", None).await;
    assert_eq!(r.status(), 204);
    for s in &c.nodes {
        assert_eq!(s.get("fwd").await.2, "v");
    }
    let forwarded = metric_sum(&c.nodes, "dynakv_forwarded_requests_total").await;
    assert!(forwarded >= 2.0, "with N=3 of 5 nodes, at least two requests were forwarded: {forwarded}");
}

#[tokio::test]
async fn w_all_reaches_every_replica_and_r_1_reads_it_everywhere() {
    let c = Cluster::start(3, &[]).await;
    let r = put(c.node(1), "k", "everywhere", "?w=all", None).await;
    assert_eq!(r.status(), 204);
    for s in &c.nodes {
        let r = s.http.get(s.at("/kv/k?r=1")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "everywhere");
    }
    let reps = replica_versions(c.node(0), "k").await;
    assert_eq!(reps.len(), 3);
    for (node, reachable, versions) in &reps {
        assert!(reachable, "{node}");
        assert_eq!(versions.len(), 1, "{node}: {versions:?}");
        assert_eq!(versions[0]["clock"], reps[0].2[0]["clock"], "identical version on {node}");
    }
}

#[tokio::test]
async fn nodes_with_one_worker_thread_each_serve_concurrent_quorum_traffic() {
    // One worker per node: a blocking wait anywhere on the request or
    // replication path would stall the node instead of slowing it.
    let c = Cluster::start(3, &["--worker-threads", "1"]).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let s = c.node(i % 3);
        let (http, put_url, get_url) =
            (s.http.clone(), s.at(&format!("/kv/w{i}?w=all")), s.at(&format!("/kv/w{i}?r=all")));
        tasks.push(tokio::spawn(async move {
            let put = http.put(put_url).body(format!("v{i}")).send().await.unwrap().status().as_u16();
            let got = http.get(get_url).send().await.unwrap().text().await.unwrap();
            (put, got)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (204, format!("v{i}")));
    }
    for s in &c.nodes {
        let r = s.http.get(s.at("/kv/w7?r=1")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "v7");
    }
}

#[tokio::test]
async fn replica_traffic_survives_a_peer_closing_idle_connections() {
    // n3 closes a connection idle for 200 ms; n1 and n2 (10 s, the default)
    // would reuse theirs to n3 for up to 5 s. Writes at w=all through n1 and
    // n2 after idle spells longer than n3's timeout must all be acked by n3:
    // a link notices that its peer closed the connection before it sends a
    // batch on it.
    let mut c = Cluster::start(2, &[]).await;
    c.join(crate::support::FAST, &["--header-timeout-ms", "200"]).await;
    c.wait_all_alive().await;
    c.wait_all_ready().await;
    for round in 0..4 {
        for i in 0..2 {
            let r = put(c.node(i), &format!("idle-{round}-{i}"), "v", "?w=all", None).await;
            assert_eq!(r.status(), 204, "round {round} through n{}: {}", i + 1, r.text().await.unwrap());
        }
        // The idle spell is the scenario itself: longer than n3's timeout,
        // shorter than its peers' reuse limit.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let r = c.node(0).http.get(c.node(0).at("/kv/idle-3-1?r=all")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// One raw HTTP/1.1 exchange with `s` (the request target sent as is, which
/// no URL-parsing client does for `.` segments): (status, body).
async fn raw(s: &Server, method: &str, target: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head =
        format!("{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut answer)).await.expect("an answer").unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_node_outside_the_preference_list_coordinates_when_every_replica_is_suspect() {
    // Suspect after 2 s, dead only after 60 s: the write below happens while
    // the key's replicas are suspect, still on the ring and still its
    // replicas.
    let timers = [
        "--gossip-interval-ms",
        "50",
        "--suspect-after-ms",
        "2000",
        "--dead-after-ms",
        "60000",
        "--request-timeout-ms",
        "500",
    ];
    let c = Cluster::start_with(5, &timers, &[]).await;
    let mut found = None;
    for i in 0..100 {
        let k = format!("s{i}");
        let pref = c.preference_list(&k).await;
        if !pref.iter().any(|id| id == "n5") {
            found = Some((k, pref));
            break;
        }
    }
    let (key, pref) = found.expect("a key n5 does not replicate");
    for id in &pref {
        c.node(c.index_of(id)).pause();
    }
    eventually("n5 holds the key's replicas suspect", || async {
        let st = member_statuses(c.node(4)).await;
        pref.iter().all(|id| st.get(id).map(String::as_str) == Some("suspect"))
    })
    .await;
    // A relay would wait for a paused replica and then answer 503; n5
    // coordinates instead, and it and the other live node keep the write
    // for the replicas as stand-ins.
    let r = put(c.node(4), &key, "kept", "?w=quorum", None).await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    for id in &pref {
        c.node(c.index_of(id)).resume();
    }
    eventually("the write reached every replica", || async {
        let s = c.node(c.index_of(&pref[0]));
        let r = s.http.get(s.at(&format!("/kv/{key}?r=all"))).send().await.unwrap();
        r.status() == 200 && r.text().await.unwrap() == "kept"
    })
    .await;
}

/// The keys `.` and `..` are keys like any other through every node,
/// including one that relays them (a URL parser would turn them into
/// another path on the way).
#[tokio::test]
async fn the_keys_dot_and_dot_dot_are_reached_through_every_node() {
    let c = Cluster::start(2, &["--replicas", "1", "--read-quorum", "1", "--write-quorum", "1"]).await;
    for (spelled, other) in [("%2E", "."), ("%2E%2E", ".."), (".", "%2e"), ("..", "%2e.")] {
        for (through, then) in [(0, 1), (1, 0)] {
            let value = format!("{spelled} through n{}", through + 1);
            assert_eq!(raw(c.node(through), "PUT", &format!("/kv/{spelled}"), &value).await.0, 204, "{value}");
            for (n, target) in [(then, other), (through, spelled)] {
                assert_eq!(
                    raw(c.node(n), "GET", &format!("/kv/{target}"), "").await,
                    (200, value.clone()),
                    "n{}",
                    n + 1
                );
            }
        }
        assert_eq!(raw(c.node(1), "DELETE", &format!("/kv/{spelled}"), "").await.0, 204);
        assert_eq!(raw(c.node(0), "GET", &format!("/kv/{other}"), "").await.0, 404);
    }
}

/// A link cut between a relaying node and one replica only (a partial
/// partition: gossip still holds that replica alive) costs the first
/// relayed request a timeout, not every one: relays then try the replica
/// last. Here the replica is a member that never answers anything, kept
/// alive by heartbeats sent in its name.
#[tokio::test]
async fn a_replica_that_does_not_answer_relays_is_tried_last() {
    // A mark that outlasts the requests below on a loaded machine.
    let timers = ["--gossip-interval-ms", "50", "--suspect-after-ms", "20000", "--dead-after-ms", "60000"];
    let c = Cluster::start_with(3, &timers, &["--request-timeout-ms", "500"]).await;
    // A black hole: it accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((sock, _)) = hole.accept().await {
            kept.push(sock);
        }
    });
    let n1 = c.node(0).http.clone();
    let url = c.node(0).url.clone();
    let beats = tokio::spawn(async move {
        for hb in 1u64.. {
            let msg = serde_json::json!({"from": "n9", "partitions": 64,
                "members": [{"id": "n9", "address": hole_url, "heartbeat": hb}]});
            let _ = n1.post(format!("{url}/internal/gossip")).json(&msg).send().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let ring = || async {
        let r: Value = c.node(0).http.get(c.node(0).at("/cluster/ring")).send().await.unwrap().json().await.unwrap();
        r
    };
    eventually("n1's ring holds n9", || async { ring().await.to_string().contains("\"n9\"") }).await;
    // A key whose preference list starts at n9 and leaves n1 out: n1 relays it.
    let ring = ring().await;
    let key = (0..)
        .map(|i| format!("hole{i}"))
        .find(|k| {
            let p = dynakv::ring::partition_of(k.as_bytes(), 64) as usize;
            let list: Vec<&str> = ring["partitions"][p]["preference_list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            list[0] == "n9" && !list.contains(&"n1")
        })
        .unwrap();
    // The first relay waits for n9 and, a write that may have been applied
    // there, is not tried elsewhere.
    let first = put(c.node(0), &key, "first", "", None).await;
    assert_eq!(first.status(), 503);
    // The next ones go to a replica that answers first.
    for i in 0..3 {
        let r = put(c.node(0), &key, &format!("v{i}"), "", None).await;
        assert_eq!(r.status(), 204, "write {i}");
        let r = c.node(0).http.get(c.node(0).at(&format!("/kv/{key}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
    beats.abort();
    held.abort();
}

/// A dead member still counts towards N (SPEC §2), so `w=all` and `r=all`
/// cannot be met while one of three is dead; the 503 counts every replica
/// that did answer, not only those in before the outcome was known.
#[tokio::test]
async fn a_503_at_all_counts_every_replica_that_answered_with_one_dead() {
    // A request timeout a loaded machine does not run out: n2's answer
    // must count.
    let timers = ["--gossip-interval-ms", "50", "--suspect-after-ms", "2000", "--dead-after-ms", "6000"];
    let c = Cluster::start_with(3, &timers, &["--request-timeout-ms", "10000"]).await;
    c.node(2).pause();
    eventually("n1 holds n3 dead", || async {
        member_statuses(c.node(0)).await.get("n3").map(String::as_str) == Some("dead")
    })
    .await;
    let r = put(c.node(0), "k", "v", "?w=all", None).await;
    assert_eq!(r.status(), 503);
    assert!(context_of(&r).is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["needed"].as_u64(), body["acked"].as_u64()), (Some(3), Some(2)), "{body}");
    let r = c.node(0).http.get(c.node(0).at("/kv/k?r=all")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["needed"].as_u64(), body["acked"].as_u64()), (Some(3), Some(2)), "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("only 2 of the 3"), "{body}");
    assert!(!body["error"].as_str().unwrap().contains("write"), "a read's 503 speaks of no write: {body}");
    c.node(2).resume();
}

#[tokio::test]
async fn two_of_three_replicas_paused_fail_quorum_but_not_w1_or_async() {
    let c = Cluster::start(3, &[]).await;
    c.node(1).pause();
    c.node(2).pause();
    for w in ["all", "quorum"] {
        let start = Instant::now();
        let r = put(c.node(0), "k", w, &format!("?w={w}"), None).await;
        assert!(start.elapsed() < Duration::from_secs(10), "w={w} took {:?}", start.elapsed());
        assert_eq!(r.status(), 503, "w={w}");
        assert!(context_of(&r).is_some(), "503 still carries the written version's context");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "quorum_not_met");
        assert_eq!(body["acked"], 1);
        assert!(body["error"].as_str().unwrap().contains("retry with its X-Context"), "{body}");
    }
    for w in ["1", "async"] {
        let r = put(c.node(0), "k", w, &format!("?w={w}"), None).await;
        assert_eq!(r.status(), 204, "w={w}");
    }
    let r = c.node(0).http.get(c.node(0).at("/kv/k?r=quorum")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // The replica view marks the paused nodes unreachable and still shows n1's copy.
    let reps = replica_versions(c.node(0), "k").await;
    for (node, reachable, versions) in &reps {
        assert_eq!(*reachable, node == "n1", "{reps:?}");
        assert_eq!(versions.is_empty(), node != "n1", "{reps:?}");
    }
    assert_eq!(c.node(0).http.get(c.node(0).at("/kv/k?r=1")).send().await.unwrap().text().await.unwrap(), "async");
    c.node(1).resume();
    c.node(2).resume();
}

#[tokio::test]
async fn truck_car_bike() {
    let c = Cluster::start(3, &[]).await;
    let pref = c.preference_list("key1").await;
    let primary = c.node(c.index_of(&pref[0]));
    let replica = c.node(c.index_of(&pref[1]));

    assert_eq!(put(primary, "key1", "TRUCK", "?w=all", None).await.status(), 204);
    let (_, values, ctx) = sibling_values(replica, "key1", "?r=all").await;
    assert_eq!(values, ["TRUCK"]);
    let ctx = ctx.unwrap();

    primary.pause();
    assert_eq!(put(replica, "key1", "CAR", "?w=quorum", Some(&ctx)).await.status(), 204);
    primary.resume();
    c.wait_all_alive().await;

    replica.pause();
    assert_eq!(put(primary, "key1", "BIKE", "?w=quorum", Some(&ctx)).await.status(), 204);
    replica.resume();
    c.wait_all_alive().await;

    let (status, values, ctx) = sibling_values(primary, "key1", "?r=all").await;
    assert_eq!(status, 300);
    assert_eq!(values, ["BIKE", "CAR"], "exactly the two concurrent writes, not TRUCK");

    assert_eq!(put(replica, "key1", "SCOOTER", "?w=all", Some(&ctx.unwrap())).await.status(), 204);
    for (node, reachable, versions) in replica_versions(c.node(0), "key1").await {
        assert!(reachable);
        assert_eq!(versions.len(), 1, "{node} holds {versions:?}");
    }
    assert_eq!(c.node(2).get("key1").await.2, "SCOOTER");
}

#[tokio::test]
async fn hinted_handoff_delivers_writes_missed_by_a_paused_replica() {
    let c = Cluster::start(3, &["--replicas", "2", "--write-quorum", "2", "--read-quorum", "1"]).await;
    let paused_id = "n3";
    // Preference lists while everyone answers (asking later would wait on n3).
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = format!("h{i}");
        let pref = c.preference_list(&key).await;
        if let Some(via) = pref.iter().find(|p| *p != paused_id).filter(|_| pref.iter().any(|p| p == paused_id)) {
            keys.push((key, c.index_of(via)));
        }
    }
    c.node(2).pause();
    // Wait until the others see it suspect: writes then go straight to a stand-in.
    eventually("n3 suspect", || async {
        member_statuses(c.node(0)).await.get(paused_id).map(String::as_str) == Some("suspect")
            && member_statuses(c.node(1)).await.get(paused_id).map(String::as_str) == Some("suspect")
    })
    .await;
    for (i, (key, via)) in keys.iter().enumerate() {
        let r = put(c.node(*via), key, &format!("v{i}"), "?w=2", None).await;
        assert_eq!(r.status(), 204, "{key}");
    }
    let keys: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
    assert!(
        metric_sum(&c.nodes[..2], "dynakv_hints_stored_total").await >= keys.len() as f64,
        "writes went to a stand-in"
    );
    assert!(keys.len() >= 5, "enough keys land on n3");
    c.node(2).resume();
    // No client reads of those keys: ask n3's own storage through its replica view.
    let n3 = c.node(2);
    eventually("every missed write handed to n3", || async {
        for key in &keys {
            let reps = replica_versions(n3, key).await;
            let mine = reps.iter().find(|(n, _, _)| n == paused_id).unwrap();
            if mine.2.len() != 1 {
                return false;
            }
        }
        true
    })
    .await;
    eventually("no hints pending", || async { metric_sum(&c.nodes, "dynakv_hints_pending").await == 0.0 }).await;
    assert!(metric_sum(&c.nodes, "dynakv_hints_delivered_total").await >= keys.len() as f64);
}

#[tokio::test]
async fn read_repair_fixes_a_stale_replica() {
    // Anti-entropy off: only a read may repair here.
    let c = Cluster::start(3, &["--anti-entropy-interval-ms", "0"]).await;
    assert_eq!(put(c.node(0), "rr", "old", "?w=all", None).await.status(), 204);
    // n3 misses the write without restarting (a restarted node catches up
    // by itself): paused until the others see it suspect, so the write is
    // not even sent to it (nothing waits in its socket), with no stand-in
    // among three nodes to keep a hint.
    c.nodes[2].pause();
    eventually("n3 suspect on n1", || async {
        member_statuses(c.node(0)).await.get("n3").map(String::as_str) == Some("suspect")
    })
    .await;
    assert_eq!(put(c.node(0), "rr", "new", "?w=quorum", None).await.status(), 204);
    c.nodes[2].resume();
    c.wait_all_alive().await;
    let n3_clock = |reps: &[(String, bool, Vec<Value>)]| reps.iter().find(|r| r.0 == "n3").unwrap().2.clone();
    let reps = replica_versions(c.node(0), "rr").await;
    let fresh = reps.iter().find(|r| r.0 == "n1").unwrap().2.clone();
    assert_ne!(n3_clock(&reps), fresh, "n3 missed the write");
    let r = c.node(0).http.get(c.node(0).at("/kv/rr?r=all")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "new");
    eventually("n3 repaired", || async { n3_clock(&replica_versions(c.node(0), "rr").await) == fresh }).await;
    assert_eq!(c.node(2).http.get(c.node(2).at("/kv/rr?r=1")).send().await.unwrap().text().await.unwrap(), "new");
}

#[tokio::test]
async fn ten_racing_clients_with_one_stale_context_leave_at_most_ten_siblings() {
    let c = Cluster::start(3, &[]).await;
    put(c.node(0), "race", "base", "?w=all", None).await;
    let (_, _, ctx) = sibling_values(c.node(0), "race", "?r=all").await;
    let ctx = ctx.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = c.node(i % 3);
        let (http, url, ctx) = (s.http.clone(), s.at("/kv/race"), ctx.clone());
        tasks.push(tokio::spawn(async move {
            http.put(url).header("X-Context", ctx).body(format!("w{i}")).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 204);
    }
    let (status, values, ctx) = sibling_values(c.node(1), "race", "?r=all").await;
    assert_eq!(status, 300);
    assert!(values.len() <= 10 && values.len() >= 2, "{values:?}");
    assert!(!values.contains(&"base".to_string()));
    assert_eq!(put(c.node(2), "race", "one", "?w=all", Some(&ctx.unwrap())).await.status(), 204);
    for (node, _, versions) in replica_versions(c.node(0), "race").await {
        assert_eq!(versions.len(), 1, "{node}");
    }
    assert_eq!(c.node(0).get("race").await.2, "one");
}

#[tokio::test]
async fn cluster_secret_guards_internal_routes() {
    use dynakv::storage::{Content, Record};
    use dynakv::transport::wire::{batch_body, write_op};
    use dynakv::version::Context;

    let c = Cluster::start(3, &["--cluster-secret", "s3cret"]).await;
    assert_eq!(put(c.node(0), "k", "v", "?w=all", None).await.status(), 204);
    assert_eq!(c.node(2).get("k").await.2, "v");

    let rec = Record::new();
    let ctx = Context::new();
    let content = Content {
        value: bytes::Bytes::from_static(b"evil"),
        content_type: "text/plain".into(),
        timestamp_ms: 1,
        expires_at_ms: None,
        deleted: false,
    };
    let rec = rec.update(&ctx, rec.next_dot(&ctx, "intruder", 0), content);
    let body = batch_body(&[write_op(b"victim", &rec)]).to_vec();
    let s = c.node(0);
    for secret in [None, Some("wrong")] {
        let mut req = s.http.post(s.at("/internal/batch")).body(body.clone());
        if let Some(sec) = secret {
            req = req.header("x-dynakv-secret", sec);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
        let r = s.http.post(s.at("/internal/gossip")).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(s.get("victim").await.0, 404, "nothing stored");
    // A wrong method is a 405 with or without the secret: the method is
    // checked before the secret (as for every route).
    for path in ["/internal/batch", "/internal/gossip", "/cluster/leave"] {
        let r = s.http.get(s.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "method_not_allowed", "{path}");
    }
    // With the secret the same body is accepted.
    let r = s.http.post(s.at("/internal/batch")).header("x-dynakv-secret", "s3cret").body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Merged into n1's copy (with N = 3 of 3 nodes, n1 is a replica of every key).
    let reps = crate::support::replica_versions(s, "victim").await;
    let n1 = reps.iter().find(|(n, _, _)| n == "n1").expect("n1 replicates every key");
    assert_eq!(n1.2.len(), 1, "{reps:?}");
}

#[tokio::test]
async fn internal_garbage_is_4xx_and_changes_nothing() {
    let c = Cluster::start(2, &[]).await;
    let s = c.node(0);
    for (path, body) in [
        ("/internal/gossip", "not json"),
        (
            "/internal/gossip",
            r#"{"from":"x","partitions":64,"members":[{"id":"bad id","address":"http://x","heartbeat":1}]}"#,
        ),
        ("/internal/batch", "garbage"),
        ("/internal/batch", ""),
        ("/internal/hint", "\u{1}\u{ff}"),
    ] {
        let r = s.http.post(s.at(path)).body(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path} {body}");
        assert!(r.json::<Value>().await.unwrap()["code"].is_string());
    }
    // Well formed, from a node that must not be a member: 409, saying why.
    let r =
        s.http.post(s.at("/internal/gossip")).body(r#"{"from":"x","partitions":7,"members":[]}"#).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "membership_refused");
    assert!(body["error"].as_str().unwrap().contains("--partitions 7"), "{body}");
    // Over the gossip limit: a JSON 413, not a buffered megabyte.
    let r = s.http.post(s.at("/internal/gossip")).body(vec![b' '; (1 << 20) + 1]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "body_too_large");
    let m = member_statuses(s).await;
    assert_eq!(m.len(), 2, "{m:?}");
    c.wait_all_alive().await;
}

#[tokio::test]
async fn a_restarted_node_starts_from_the_ring_it_knew() {
    let mut c = Cluster::start(3, &[]).await;
    let n3 = &mut c.nodes[2];
    assert!(n3.terminate().success());
    n3.restart().await;
    // Right away, before any gossip round could have taught it.
    let st = member_statuses(&c.nodes[2]).await;
    assert_eq!(st.len(), 3, "{st:?}");
    assert_eq!(ring_nodes(&c.nodes[2]).await.len(), 3);
    c.wait_all_alive().await;
}

/// Writes 30 keys at w=all, stops every node (`crash`: SIGKILL, else
/// SIGTERM), starts them all again, the seed last (so the others start with
/// nobody to talk to), and reads every key at r=1 through every node.
async fn whole_cluster_restart(crash: bool, extra: &[&str]) {
    let mut c = Cluster::start(3, extra).await;
    for i in 0..30 {
        assert_eq!(put(c.node(i % 3), &format!("o{i}"), &format!("v{i}"), "?w=all", None).await.status(), 204);
    }
    for n in c.nodes.iter_mut() {
        if crash {
            n.kill();
        } else {
            assert!(n.terminate().success());
        }
    }
    for i in (0..3).rev() {
        c.nodes[i].restart().await;
    }
    c.wait_all_ready().await;
    for s in &c.nodes {
        reads_back_at_r1(s, "o", 30, &format!("through {}", s.url)).await;
    }
    assert_eq!(put(c.node(1), "after", "v", "?w=all", None).await.status(), 204);
}

#[tokio::test]
async fn a_whole_cluster_stopped_and_started_again_serves_every_key() {
    // `docker compose down` and `up`.
    whole_cluster_restart(false, &[]).await;
}

#[tokio::test]
async fn a_whole_cluster_killed_at_once_with_sync_writes_serves_every_key() {
    // A power cut of every machine: with --sync-writes nothing acknowledged
    // is lost.
    whole_cluster_restart(true, &["--sync-writes"]).await;
}

#[tokio::test]
async fn leave_hands_off_and_the_others_drop_it_at_once() {
    // Five nodes and N = 3: the leaver's share goes to nodes that did not
    // hold it, so only the hand-off can put it there.
    let mut c = Cluster::start(5, &[]).await;
    let mut moved = Vec::new();
    for i in 0..30 {
        let key = format!("l{i}");
        assert_eq!(put(c.node(0), &key, &format!("v{i}"), "?w=all", None).await.status(), 204);
        let pref = c.preference_list(&key).await;
        if pref.iter().any(|id| id == "n3") {
            moved.push((key, pref));
        }
    }
    assert!(moved.len() >= 5, "enough keys replicated on the leaver: {}", moved.len());
    let r = c.nodes[2].http.post(c.nodes[2].at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(c.nodes[2].wait().success(), "a leaving node exits 0");
    for (i, s) in c.nodes.iter().enumerate() {
        if i == 2 {
            continue;
        }
        eventually("n3 listed as left and off the ring", || async {
            member_statuses(s).await.get("n3").map(String::as_str) == Some("left")
                && !ring_nodes(s).await.contains("n3")
        })
        .await;
    }
    // Before any client read could repair anything: every new owner of the
    // leaver's keys holds them.
    for (key, old) in &moved {
        let reps = replica_versions(c.node(1), key).await;
        let new: Vec<&String> = reps.iter().map(|r| &r.0).collect();
        assert!(!new.contains(&&"n3".to_string()));
        assert!(new.iter().any(|id| !old.contains(id)), "{key}: {old:?} -> {new:?} has a new owner");
        for (node, reachable, versions) in &reps {
            assert!(*reachable && versions.len() == 1, "{key} on {node}: {versions:?}");
        }
    }
    for i in 0..30 {
        let r = c.node(1).http.get(c.node(1).at(&format!("/kv/l{i}?r=all"))).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
    // Started again with its data dir, it joins as alive.
    c.nodes[2].restart().await;
    c.wait_all_alive().await;
}

#[tokio::test]
async fn dead_members_still_count_for_n_r_and_w() {
    let timers = [
        "--gossip-interval-ms",
        "50",
        "--suspect-after-ms",
        "300",
        "--dead-after-ms",
        "800",
        "--request-timeout-ms",
        "300",
    ];
    let mut c = Cluster::start_with(3, &timers, &[]).await;
    c.nodes[1].kill();
    c.nodes[2].kill();
    let s = c.node(0);
    eventually("n2 and n3 dead on n1", || async {
        let st = member_statuses(s).await;
        st.get("n2").map(String::as_str) == Some("dead") && st.get("n3").map(String::as_str) == Some("dead")
    })
    .await;
    assert_eq!(ring_nodes(s).await.len(), 1, "dead members leave the ring");
    // N stays 3: quorum is still 2, and w=3 is still a valid request.
    for w in ["quorum", "all", "3", "2"] {
        let r = put(s, "k", "v", &format!("?w={w}"), None).await;
        assert_eq!(r.status(), 503, "w={w} must not be met by one live node");
    }
    assert_eq!(put(s, "k", "v", "?w=1", None).await.status(), 204);
    assert_eq!(s.http.get(s.at("/kv/k?r=quorum")).send().await.unwrap().status(), 503);
    assert_eq!(s.http.get(s.at("/kv/k?r=1")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn tombstones_are_purged_on_every_replica_once_all_hold_them() {
    let c = Cluster::start(3, &["--tombstone-grace-ms", "300"]).await;
    assert_eq!(put(c.node(0), "gone", "v", "?w=all", None).await.status(), 204);
    let r = c.node(1).http.delete(c.node(1).at("/kv/gone?w=all")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    eventually("the tombstone purged on all three replicas", || async {
        replica_versions(c.node(2), "gone")
            .await
            .iter()
            .all(|(_, reachable, versions)| *reachable && versions.is_empty())
    })
    .await;
    assert_eq!(c.node(0).get("gone").await.0, 404);
}

#[tokio::test]
async fn the_first_node_restarted_after_the_others_left_is_alone_and_ready() {
    // n1 has no seeds; n2 joins, then leaves. n1 remembers n2 as left: it
    // is alone by design again, so after a restart it must serve, not wait
    // for gossip nobody will send.
    let mut c = Cluster::start(2, &[]).await;
    assert_eq!(put(c.node(0), "k", "v", "?w=all", None).await.status(), 204);
    let r = c.nodes[1].http.post(c.nodes[1].at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(c.nodes[1].wait().code(), Some(0));
    eventually("n1 lists n2 left", || async {
        member_statuses(c.node(0)).await.get("n2").map(String::as_str) == Some("left")
    })
    .await;
    assert!(c.nodes[0].terminate().success());
    c.nodes[0].restart().await;
    eventually("n1 ready", || async { crate::support::ready_status(c.node(0)).await == 200 }).await;
    assert_eq!(c.node(0).get("k").await.2, "v");
    assert_eq!(put(c.node(0), "k2", "v2", "?w=quorum", None).await.status(), 204);
}

#[tokio::test]
async fn a_leave_whose_hand_off_is_not_acknowledged_exits_1_and_stays_a_member() {
    let mut c = Cluster::start(2, &[]).await;
    for i in 0..10 {
        assert_eq!(put(c.node(0), &format!("f{i}"), "v", "?w=all", None).await.status(), 204);
    }
    // The only node that could take n2's keys does not answer.
    c.node(0).pause();
    let r = c.nodes[1].http.post(c.nodes[1].at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let status = c.nodes[1].wait();
    c.node(0).resume();
    assert_eq!(status.code(), Some(1), "a leave that could not hand off exits 1");
    // n1, back from its pause, answers once it has caught up.
    let n2 = crate::support::eventually_opt(|| async { member_statuses(c.node(0)).await.get("n2").cloned() }).await;
    assert!(n2.is_some() && n2.as_deref() != Some("left"), "n2 never announced left: {n2:?}");
}

#[tokio::test]
async fn a_leave_waits_for_a_new_owner_that_stops_answering_to_be_declared_dead_and_goes_on() {
    // Five nodes and N = 3. n1 stops answering as n5 starts to leave: the
    // partitions n1 was to take wait until it is declared dead, then go to
    // the owners that replace it, and the leave ends with exit 0.
    let mut c = Cluster::start(5, &[]).await;
    let mut held = Vec::new();
    for i in 0..40 {
        let key = format!("h{i}");
        assert_eq!(put(c.node(1), &key, &format!("v{i}"), "?w=all", None).await.status(), 204);
        if c.preference_list(&key).await.iter().any(|id| id == "n5") {
            held.push(key);
        }
    }
    assert!(held.len() >= 5, "enough keys replicated on the leaver: {}", held.len());
    c.node(0).pause();
    let r = c.nodes[4].http.post(c.nodes[4].at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let status = c.nodes[4].wait();
    assert!(status.success(), "the leave went on past the dead owner: {status:?}");
    eventually("n2 lists n1 dead and n5 left", || async {
        let st = member_statuses(c.node(1)).await;
        st.get("n1").map(String::as_str) == Some("dead") && st.get("n5").map(String::as_str) == Some("left")
    })
    .await;
    // The leaver's keys are on every owner the ring has without n1 and n5,
    // handed off by the leave itself.
    for key in &held {
        let reps = replica_versions(c.node(1), key).await;
        assert_eq!(reps.len(), 3, "{key}: {reps:?}");
        for (node, reachable, versions) in &reps {
            assert!(node != "n1" && node != "n5", "{key}: {reps:?}");
            assert!(*reachable && versions.len() == 1, "{key} on {node}: {versions:?}");
        }
    }
    c.node(0).resume();
}

#[tokio::test]
async fn a_leaving_node_answers_not_ready_until_it_has_left_and_relays_go_past_it() {
    // Four nodes, N = 2. n1 does not answer, so n4's hand-off of the keys
    // n1 is to take stalls (retried for seconds): n4 is leaving meanwhile.
    let timers = [
        "--gossip-interval-ms",
        "50",
        "--suspect-after-ms",
        "5000",
        "--dead-after-ms",
        "20000",
        "--request-timeout-ms",
        "2000",
    ];
    let mut c = Cluster::start_with(4, &timers, &["--replicas", "2"]).await;
    for i in 0..60 {
        assert_eq!(put(c.node(0), &format!("g{i}"), "v", "?w=all", None).await.status(), 204);
    }
    // New keys n3 must relay: to n4 (leaving) first, then to n2.
    let mut relayed = Vec::new();
    for i in 0..100 {
        let key = format!("h{i}");
        if c.preference_list(&key).await == ["n4", "n2"] {
            relayed.push(key);
        }
    }
    assert!(!relayed.is_empty(), "some key lives on n4, then n2");
    c.node(0).pause();
    let (n3, n4) = (c.node(2), c.node(3));
    let r = n4.http.post(n4.at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    // Leaving: still serving, not ready, and refusing data without doing it.
    let r = n4.http.get(n4.at("/health/ready")).send().await.expect("a leaving node still answers readiness");
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert!(body["reason"].as_str().unwrap().contains("leaving"), "{body}");
    let r = n4.http.put(n4.at("/kv/refused")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_ready");
    assert_eq!(n4.http.get(n4.at("/cluster/members")).send().await.unwrap().status(), 200);
    assert_eq!(n4.http.get(n4.at("/health")).send().await.unwrap().status(), 200);
    // A write through n3 that n3 relays to n4 first is taken by n2 instead.
    for key in &relayed {
        let r = put(n3, key, "new", "?w=1", None).await;
        assert_eq!(r.status(), 204, "{key}: {}", r.text().await.unwrap_or_default());
    }
    // Still leaving (so n3 got an answer from it, not a refused connection).
    assert_eq!(crate::support::ready_status(n4).await, 503);
    c.node(0).resume();
    // Whether the hand-off then finished (0) or ran out of attempts (1).
    let _ = c.nodes[3].wait();
    for key in &relayed {
        let r = c.node(1).http.get(c.node(1).at(&format!("/kv/{key}?r=1"))).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "new", "{key} on n2");
    }
}

#[tokio::test]
async fn leave_needs_the_bearer_secret_when_one_is_set() {
    let mut c = Cluster::start(2, &["--cluster-secret", "s3cret"]).await;
    let s = c.node(1);
    for auth in [None, Some("Bearer wrong"), Some("s3cret"), Some("Basic s3cret")] {
        let mut req = s.http.post(s.at("/cluster/leave"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
    }
    // Nothing happened: it still serves and both still see it alive.
    assert_eq!(put(s, "k", "v", "?w=all", None).await.status(), 204);
    for n in &c.nodes {
        assert_eq!(member_statuses(n).await.get("n2").map(String::as_str), Some("alive"));
    }
    // Read-only routes stay open.
    assert_eq!(s.http.get(s.at("/cluster/members")).send().await.unwrap().status(), 200);
    let r = s.http.post(s.at("/cluster/leave")).header("Authorization", "Bearer s3cret").send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(c.nodes[1].wait().success(), "a leaving node exits 0");
    eventually("n2 left", || async { member_statuses(c.node(0)).await.get("n2").map(String::as_str) == Some("left") })
        .await;
}
