//! Ownership moves with the ring (issue 10), with real processes: joins,
//! deaths, returns, leaves and wiped disks, checked through `/cluster/*`,
//! `/health/ready` and reads at r=1.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::support::{
    eventually, member_statuses, metric, reads_back_at_r1, ready_status, replica_versions, sorted_values, Cluster,
    Server, DEADLINE, FAST,
};

async fn put(s: &Server, key: &str, value: &str, query: &str) -> u16 {
    s.http.put(s.at(&format!("/kv/{key}{query}"))).body(value.to_string()).send().await.unwrap().status().as_u16()
}

/// Every running node of `c` is ready, stores nothing of a partition it
/// does not own, and has nothing left to move.
async fn settled(c: &Cluster, skip: &[usize]) -> bool {
    for (i, s) in c.nodes.iter().enumerate() {
        if skip.contains(&i) {
            continue;
        }
        if ready_status(s).await != 200 || metric(s, "dynakv_partitions_stored_unowned").await != 0.0 {
            return false;
        }
        let m: Value = s.http.get(s.at("/cluster/members")).send().await.unwrap().json().await.unwrap();
        let moving = |m: &&Value| m["status"] != "left" && (m["transfers_in"] != 0 || m["transfers_out"] != 0);
        if m["members"].as_array().unwrap().iter().any(|m| moving(&m)) {
            return false;
        }
    }
    true
}

/// Whether every replica of `key`, asked through `via`, holds one version.
async fn on_every_replica(via: &Server, key: &str) -> bool {
    let reps = replica_versions(via, key).await;
    !reps.is_empty() && reps.iter().all(|(_, reachable, v)| *reachable && v.len() == 1)
}

#[tokio::test]
async fn a_node_joining_a_loaded_cluster_serves_every_key_during_the_move() {
    let mut c = Cluster::start(3, &[]).await;
    let value = |i: usize| format!("{i}-{}", "x".repeat(4000));
    for i in 0..600 {
        assert_eq!(put(c.node(i % 3), &format!("k{i}"), &value(i), "?w=all").await, 204);
    }
    // Never read before they are overwritten (a read would repair them onto
    // n4 ahead of the move).
    for i in 0..300 {
        assert_eq!(put(c.node(i % 3), &format!("b{i}"), "old", "?w=all").await, 204);
    }
    let mut next_b = 0;
    // Throttled, so the move takes seconds.
    let n4 = c.join(FAST, &["--transfer-max-mib-per-sec", "1"]).await;
    let mut reads = 0;
    let mut not_ready_seen = false;
    let mut overwritten = 0;
    let start = std::time::Instant::now();
    loop {
        for s in &c.nodes {
            let i = (reads * 7) % 600;
            let r = s.http.get(s.at(&format!("/kv/k{i}?r=1"))).send().await.unwrap();
            let status = r.status();
            if status != 200 {
                panic!("k{i} missed through {} during the move: {status} {}", s.url, r.text().await.unwrap());
            }
            assert!(r.text().await.unwrap().starts_with(&format!("{i}-")));
            reads += 1;
        }
        // A blind overwrite through a node outside the key's preference
        // list is forwarded to n4 when n4 comes first: still receiving, it
        // must build the new version over the holders' copy, so the old
        // value is superseded, not left beside the new one as a sibling.
        while next_b < 300 && ready_status(c.node(n4)).await != 200 {
            let key = format!("b{next_b}");
            next_b += 1;
            let pref: Vec<String> = replica_versions(c.node(0), &key).await.into_iter().map(|(n, _, _)| n).collect();
            let Some(o) = (1..=c.nodes.len()).find(|j| !pref.contains(&format!("n{j}"))) else { continue };
            if pref.first().map(String::as_str) != Some("n4") {
                continue;
            }
            assert_eq!(put(c.node(o - 1), &key, "new", "?w=all").await, 204);
            let r = c.node(0).http.get(c.node(0).at(&format!("/kv/{key}?r=all"))).send().await.unwrap();
            assert_eq!(r.status(), 200, "{key} after a blind overwrite during the move");
            assert_eq!(r.text().await.unwrap(), "new");
            overwritten += 1;
            break;
        }
        match ready_status(c.node(n4)).await {
            200 => break,
            _ => not_ready_seen = true,
        }
        assert!(start.elapsed() < DEADLINE * 2, "n4 never became ready");
    }
    assert!(not_ready_seen, "readiness waited for the move");
    assert!(overwritten > 0, "no blind overwrite reached n4 during the move");
    assert!(reads > 20, "{reads} reads during the move");
    // Ready means it holds every key it replicates.
    for i in 0..600 {
        let key = format!("k{i}");
        let reps = replica_versions(c.node(n4), &key).await;
        if let Some((_, _, v)) = reps.iter().find(|(n, _, _)| n == "n4") {
            assert_eq!(v.len(), 1, "{key} not on n4 although it is ready");
        }
    }
    eventually("every node stores exactly what it owns", || settled(&c, &[])).await;
    let owned = metric(c.node(n4), "dynakv_partitions_owned").await;
    assert!(owned > 0.0 && owned < 64.0, "n4 owns a share: {owned}");
}

/// Timers under which a silent node is declared dead within 1.5 s.
const QUICK_DEATH: &[&str] = &[
    "--gossip-interval-ms",
    "50",
    "--suspect-after-ms",
    "600",
    "--dead-after-ms",
    "1500",
    "--request-timeout-ms",
    "300",
];

#[tokio::test]
async fn a_dead_nodes_partitions_are_re_replicated_and_move_back_when_it_returns() {
    let mut c = Cluster::start_with(4, QUICK_DEATH, &[]).await;
    for i in 0..200 {
        assert_eq!(put(c.node(0), &format!("d{i}"), "v", "?w=all").await, 204);
    }
    eventually("settled", || settled(&c, &[])).await;
    c.nodes[3].kill();
    eventually("n4 dead everywhere", || async {
        for s in &c.nodes[..3] {
            if member_statuses(s).await.get("n4").map(String::as_str) != Some("dead") {
                return false;
            }
        }
        true
    })
    .await;
    eventually("every key on three live replicas again", || async {
        for i in 0..200 {
            let reps = replica_versions(c.node(0), &format!("d{i}")).await;
            if reps.len() != 3
                || reps.iter().any(|(n, _, _)| n == "n4")
                || !on_every_replica(c.node(0), &format!("d{i}")).await
            {
                return false;
            }
        }
        true
    })
    .await;
    eventually("the survivors settled", || settled(&c, &[3])).await;
    c.nodes[3].restart().await;
    c.wait_all_alive().await;
    eventually("the ring moved n4's partitions back, with every key", || async {
        let mut n4_replicates = 0;
        for i in 0..200 {
            let key = format!("d{i}");
            let reps = replica_versions(c.node(3), &key).await;
            n4_replicates += usize::from(reps.iter().any(|(n, _, _)| n == "n4"));
            if !on_every_replica(c.node(3), &key).await {
                return false;
            }
        }
        n4_replicates > 0
    })
    .await;
    eventually("every node stores exactly what it owns", || settled(&c, &[])).await;
}

#[tokio::test]
async fn a_wiped_node_rejoining_under_its_old_id_loses_no_write_made_through_it() {
    // Durable acks: nodes are killed in this test.
    let mut c = Cluster::start(3, &["--sync-writes"]).await;
    for round in 0..3 {
        for i in 0..40 {
            assert_eq!(put(c.node(2), &format!("a{i}"), &format!("old{round}-{i}"), "?w=all").await, 204);
        }
    }
    c.nodes[2].kill();
    std::fs::remove_dir_all(c.nodes[2].data_dir()).unwrap();
    c.nodes[2].restart().await;
    // At once, while it refills, then once it is ready (it coordinates).
    for i in 0..20 {
        assert_eq!(put(c.node(2), &format!("a{i}"), &format!("new-{i}"), "?w=quorum").await, 204);
    }
    eventually("n3 ready", || async { ready_status(c.node(2)).await == 200 }).await;
    for i in 20..40 {
        assert_eq!(put(c.node(2), &format!("a{i}"), &format!("new-{i}"), "?w=quorum").await, 204);
    }
    for i in 0..10 {
        assert_eq!(put(c.node(2), &format!("fresh{i}"), "f", "?w=quorum").await, 204);
    }
    for s in &c.nodes {
        for i in 0..40 {
            let r =
                s.http.get(s.at(&format!("/kv/a{i}?r=all"))).header("Accept", "application/json").send().await.unwrap();
            let body: Value = r.json().await.unwrap();
            assert_eq!(sorted_values(&body), [format!("new-{i}")], "a{i} through {}", s.url);
        }
        for i in 0..10 {
            assert_eq!(s.get(&format!("fresh{i}")).await.2, "f");
        }
    }
}

#[tokio::test]
async fn a_wiped_node_catches_up_with_every_replica_not_only_the_one_it_streamed_from() {
    // A write acknowledged by two of three replicas, then the coordinator's
    // disk is lost: of the two others, the one the wiped node streams from
    // first lacks the write. Ready means it holds what it owns, so it must
    // have compared with the other replica too. Anti-entropy rounds are an
    // hour apart: only the refill can bring the write back.
    let timers = ["--gossip-interval-ms", "50", "--suspect-after-ms", "4000", "--dead-after-ms", "12000"];
    let extra = ["--sync-writes", "--anti-entropy-interval-ms", "3600000", "--request-timeout-ms", "5000"];
    let mut c = Cluster::start_with(3, &timers, &extra).await;
    for i in 0..20 {
        assert_eq!(put(c.node(0), &format!("base{i}"), "b", "?w=all").await, 204);
    }
    // n3 coordinates and loses its disk; `first` is where n3 streams the
    // key's partition from (the first other node of its preference list).
    let key = "lonely";
    let pref = c.preference_list(key).await;
    let others: Vec<usize> = pref.iter().filter(|n| *n != "n3").map(|n| c.index_of(n)).collect();
    let (first, second) = (others[0], others[1]);
    // With `first` paused, one batch to it is in the air (it may sit in its
    // socket, to be served on resume): the key's copy for `first` queues
    // behind it in n3 and dies with n3.
    c.node(first).pause();
    assert_eq!(put(c.node(2), "in-the-air", "x", "?w=2").await, 204);
    assert_eq!(put(c.node(2), key, "acked", "?w=2").await, 204);
    c.nodes[2].kill();
    c.node(first).resume();
    std::fs::remove_dir_all(c.nodes[2].data_dir()).unwrap();
    // The premise: `first` lacks the key (n3, wiped, is not asked yet).
    let first_id = format!("n{}", first + 1);
    let reps = replica_versions(c.node(second), key).await;
    let on_first = reps.iter().find(|(n, _, _)| *n == first_id).map(|(_, _, v)| v.len());
    assert_eq!(on_first, Some(0), "{key} reached {first_id}: {reps:?}");
    c.nodes[2].restart().await;
    eventually("n3 ready", || async { ready_status(c.node(2)).await == 200 }).await;
    let reps = replica_versions(c.node(second), key).await;
    let n3 = reps.iter().find(|(n, _, _)| n == "n3").expect("n3 replicates every key of three");
    assert_eq!(n3.2.len(), 1, "{key} on n3 once it is ready: {reps:?}");
    assert_eq!(c.node(2).get(key).await.2, "acked");
}

#[tokio::test]
async fn an_owner_that_cannot_compare_delays_readiness_by_at_most_the_dead_timeout() {
    // n3 runs without Merkle trees, so it answers every comparison "not
    // ready". n2 restarts and verifies what it holds against the other
    // owners: n1 compares, n3 never will. n2 must not stay unready for
    // good (its wait for n3 ends after the dead timeout, 6 s here).
    let mut c = Cluster::start(2, &[]).await;
    let n3 = c.join(FAST, &["--anti-entropy-interval-ms", "0"]).await;
    c.wait_all_alive().await;
    c.wait_all_ready().await;
    for i in 0..20 {
        assert_eq!(put(c.node(0), &format!("r{i}"), "v", "?w=all").await, 204);
    }
    assert!(c.nodes[1].terminate().success());
    c.nodes[1].restart().await;
    let restarted = std::time::Instant::now();
    eventually("n2 ready again", || async { ready_status(c.node(1)).await == 200 }).await;
    assert!(restarted.elapsed() < DEADLINE, "ready within the deadline");
    assert_eq!(ready_status(c.node(n3)).await, 200);
    for i in 0..20 {
        assert_eq!(c.node(1).get(&format!("r{i}")).await.2, "v");
    }
}

#[tokio::test]
async fn a_wiped_first_node_without_seeds_refills_instead_of_passing_for_a_new_cluster() {
    // n1 runs without --seeds (it is the others' seed). Wiped and started
    // again, it first looks like a new cluster's only node; the others'
    // gossip shows its id was a member, and it must refill like a joining
    // node. Anti-entropy is off: only that refill can bring the keys back.
    // Gossip slow next to a restart: n1 is up well before the others'
    // gossip reaches it.
    let timers = [
        "--gossip-interval-ms",
        "500",
        "--suspect-after-ms",
        "3000",
        "--dead-after-ms",
        "9000",
        "--request-timeout-ms",
        "500",
    ];
    let mut c = Cluster::start_with(3, &timers, &["--sync-writes", "--anti-entropy-interval-ms", "0"]).await;
    for i in 0..40 {
        assert_eq!(put(c.node(1), &format!("w{i}"), &format!("v{i}"), "?w=all").await, 204);
    }
    c.nodes[0].kill();
    std::fs::remove_dir_all(c.nodes[0].data_dir()).unwrap();
    c.nodes[0].restart().await;
    // Read through it at once, before the others' gossip reached it: a key
    // it does not have yet is not answered 404 while it may still learn it
    // was wiped.
    reads_back_at_r1(c.node(0), "w", 40, "through n1 straight after its restart").await;
    // As a checker would: wait for readiness alone, then read through it.
    eventually("n1 ready", || async { ready_status(c.node(0)).await == 200 }).await;
    reads_back_at_r1(c.node(0), "w", 40, "through n1 once it is ready").await;
    let alive = member_statuses(c.node(0)).await.values().filter(|s| s.as_str() == "alive").count();
    assert_eq!(alive, 3, "ready only once it heard the others");
    // Ready: it holds what it owns, so its own copy has every key.
    for i in 0..40 {
        let key = format!("w{i}");
        let reps = replica_versions(c.node(0), &key).await;
        let n1 = reps.iter().find(|(n, _, _)| n == "n1").expect("n1 replicates every key of three");
        assert_eq!(n1.2.len(), 1, "{key}: {reps:?}");
    }
    assert_eq!(c.node(0).get("w7").await.2, "v7");
}

/// The layout of a first try, `n` nodes with `timers`: n1 without --seeds
/// and without --node-id, the others (`n2`..) seeded with it. Once
/// `{prefix}0..40` are on every replica, n1 is SIGKILLed, its data dir
/// deleted, and it is started again with the same command: a new generated
/// id at the old address. Returns the cluster and n1's old id.
async fn first_node_wiped_under_a_new_id(timers: &[&str], n: usize, prefix: &str) -> (Cluster, String) {
    let mut nodes = vec![Server::start(timers).await];
    for i in 2..=n {
        let id = format!("n{i}");
        let mut args = timers.to_vec();
        args.extend_from_slice(&["--node-id", &id, "--seeds", &nodes[0].url]);
        nodes.push(Server::start(&args).await);
    }
    let mut c = Cluster { nodes };
    c.wait_all_alive().await;
    c.wait_all_ready().await;
    let old_id = crate::support::node_id(c.node(0)).await;
    for i in 0..40 {
        assert_eq!(put(c.node(1), &format!("{prefix}{i}"), &format!("v{i}"), "?w=all").await, 204);
    }
    c.nodes[0].kill();
    std::fs::remove_dir_all(c.nodes[0].data_dir()).unwrap();
    c.nodes[0].restart().await;
    assert_ne!(crate::support::node_id(c.node(0)).await, old_id, "a generated id is new");
    (c, old_id)
}

#[tokio::test]
async fn a_wiped_first_node_with_a_generated_id_does_not_vouch_for_what_it_took_while_alone() {
    // The layout of a first try: n1 without --seeds and without --node-id,
    // the others seeded with it. Wiped and started again with the same
    // command, n1 is a new id: nobody's gossip names it, so it cannot tell
    // it was a member. It took every partition of a new cluster of its own;
    // once the others' gossip reaches it and it is one of theirs, those
    // empty partitions must not pass for complete copies. The old id stays
    // on the ring (suspect) for the whole test, and anti-entropy is off:
    // only n1's own catch-up brings the keys to it.
    let timers = [
        "--gossip-interval-ms",
        "100",
        "--suspect-after-ms",
        "2000",
        "--dead-after-ms",
        "120000",
        "--request-timeout-ms",
        "500",
        "--sync-writes",
        "--anti-entropy-interval-ms",
        "0",
    ];
    let (c, _) = first_node_wiped_under_a_new_id(&timers, 3, "g").await;
    // Once it has merged with the others (it lists them), it is a member of
    // their cluster: every key is answered through it at r=1, never 404.
    eventually("the new n1 lists the others", || async { member_statuses(c.node(0)).await.len() >= 3 }).await;
    // Before anything is read (a read repairs the copies it reads): a
    // blind write through it supersedes the cluster's version: it is
    // built over the holders' copy, not over an empty one taken for whole
    // (which would leave the old value beside it as a sibling).
    for i in 0..40 {
        // (w=quorum: the old id, still a replica, does not ack.)
        assert_eq!(put(c.node(0), &format!("g{i}"), &format!("w{i}"), "").await, 204);
        let (status, _, body) = c.node(1).get(&format!("g{i}")).await;
        assert_eq!((status, body), (200, format!("w{i}")), "g{i} overwritten through the new n1");
        assert_eq!(put(c.node(0), &format!("g{i}"), &format!("v{i}"), "").await, 204);
    }
    reads_back_at_r1(c.node(0), "g", 40, "through the new n1 once it merged with the others").await;
    // And through the others at r=quorum, where the new n1 is a replica
    // (its empty copy must not count as one that lacks the key).
    for s in &c.nodes[1..] {
        for i in 0..40 {
            let r = s.http.get(s.at(&format!("/kv/g{i}"))).send().await.unwrap();
            assert_eq!(r.status(), 200, "g{i} through {}", s.url);
        }
    }
    eventually("the new n1 ready", || async { ready_status(c.node(0)).await == 200 }).await;
    reads_back_at_r1(c.node(0), "g", 40, "through the new n1 once it is ready").await;
}

#[tokio::test]
async fn a_new_id_at_a_members_address_does_not_answer_for_that_member() {
    // As above, but read through the others in the moment before their
    // gossip reaches the new n1 (slow gossip makes that moment long). They
    // still take the old n1 for alive at that address and relay to it, or
    // ask it as a replica; the new process there, a cluster of one in its
    // own eyes, must refuse what is meant for the old id instead of
    // answering from its empty copy.
    let timers = [
        "--gossip-interval-ms",
        "2000",
        "--suspect-after-ms",
        "30000",
        "--dead-after-ms",
        "120000",
        "--request-timeout-ms",
        "500",
        "--sync-writes",
        "--anti-entropy-interval-ms",
        "0",
    ];
    let (c, old_id) = first_node_wiped_under_a_new_id(&timers, 4, "m").await;
    for s in &c.nodes[1..] {
        for q in ["1", "quorum"] {
            for i in 0..40 {
                let r = s.http.get(s.at(&format!("/kv/m{i}?r={q}"))).send().await.unwrap();
                assert_eq!(r.status(), 200, "m{i} at r={q} through {}", s.url);
                assert_eq!(r.text().await.unwrap(), format!("v{i}"));
            }
        }
    }
    // A request naming another member is refused by the process now at
    // its address, before anything is done.
    let s = c.node(0);
    let r = s.http.post(s.at("/internal/batch")).header("x-dynakv-to", old_id.as_str()).body("").send().await.unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "misdirected");
    let r = s
        .http
        .put(s.at("/kv/m0"))
        .header("x-dynakv-forwarded", "1")
        .header("x-dynakv-to", old_id.as_str())
        .body("stray")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(c.node(1).get("m0").await.2, "v0", "the misdirected write was not applied");
}

#[tokio::test]
async fn a_node_paused_until_declared_dead_does_not_answer_from_its_stale_copy_when_it_resumes() {
    // Anti-entropy off: only n3's own verification can catch it up.
    let c = Cluster::start_with(3, QUICK_DEATH, &["--anti-entropy-interval-ms", "0"]).await;
    c.node(2).pause();
    eventually("n3 dead to the others", || async {
        member_statuses(c.node(0)).await.get("n3").map(String::as_str) == Some("dead")
            && member_statuses(c.node(1)).await.get("n3").map(String::as_str) == Some("dead")
    })
    .await;
    for i in 0..20 {
        assert_eq!(put(c.node(0), &format!("p{i}"), &format!("v{i}"), "?w=quorum").await, 204);
    }
    c.node(2).resume();
    // Its table froze with the others alive: wait for its first heartbeat
    // after the pause (where the stall is seen), then for the others.
    let beat = metric(c.node(2), "dynakv_heartbeat").await;
    eventually("n3 beats again and sees the others alive", || async {
        let m = member_statuses(c.node(2)).await;
        metric(c.node(2), "dynakv_heartbeat").await > beat
            && m.get("n1").map(String::as_str) == Some("alive")
            && m.get("n2").map(String::as_str) == Some("alive")
    })
    .await;
    // Its copy missed every one of those writes; r=1 through it must not
    // answer from that copy alone.
    reads_back_at_r1(c.node(2), "p", 20, "through the resumed n3").await;
    eventually("n3 ready again once verified", || async { ready_status(c.node(2)).await == 200 }).await;
    for i in 0..20 {
        let reps = replica_versions(c.node(2), &format!("p{i}")).await;
        let n3 = reps.iter().find(|(n, _, _)| n == "n3").expect("n3 replicates every key of three");
        assert_eq!(n3.2.len(), 1, "p{i} on n3 once it is ready: {reps:?}");
    }
}

#[tokio::test]
async fn another_partition_count_and_a_duplicate_live_id_are_refused() {
    let c = Cluster::start(2, &[]).await;
    let seed = c.node(0).url.clone();
    let mut odd_args = vec!["--node-id", "odd", "--partitions", "32", "--seeds", &seed];
    odd_args.extend_from_slice(FAST);
    let odd = Server::start(&odd_args).await;
    let mut dup_args = vec!["--node-id", "n2", "--seeds", &seed];
    dup_args.extend_from_slice(FAST);
    let dup = Server::start(&dup_args).await;
    eventually("both tried to join for a while", || async {
        metric(&odd, "dynakv_gossip_rounds_total").await >= 20.0
            && metric(&dup, "dynakv_gossip_rounds_total").await >= 20.0
    })
    .await;
    for s in &c.nodes {
        let m: Value = s.http.get(s.at("/cluster/members")).send().await.unwrap().json().await.unwrap();
        let members: BTreeMap<String, (String, String)> = m["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let f = |k: &str| m[k].as_str().unwrap().to_string();
                (f("id"), (f("address"), f("status")))
            })
            .collect();
        assert_eq!(members.len(), 2, "{members:?}");
        assert_eq!(members["n2"], (c.node(1).url.clone(), "alive".to_string()), "n2 stays where it is alive");
    }
    // Neither acts as a member, and each says why it is not ready.
    for (s, why) in [(&odd, "--partitions"), (&dup, "alive at")] {
        let r = s.http.get(s.at("/health/ready")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains("refused") && reason.contains(why), "{reason}");
    }
    // The cluster keeps serving.
    assert_eq!(put(c.node(1), "still", "here", "?w=all").await, 204);
    assert_eq!(c.node(0).get("still").await.2, "here");
    // A write through the duplicate is coordinated by a member (it relays
    // to its seed), never under n2's id by a second process: a later plain
    // write through the real n2 supersedes it instead of passing for older
    // than the duplicate's dots and being dropped.
    for i in 0..10 {
        let key = format!("dup{i}");
        assert_eq!(put(&dup, &key, "through the duplicate", "").await, 204);
        assert_eq!(put(c.node(1), &key, "through n2", "").await, 204);
        for s in &c.nodes {
            let r = s.http.get(s.at(&format!("/kv/{key}?r=all"))).send().await.unwrap();
            assert_eq!(r.status(), 200, "{key}");
            assert_eq!(r.text().await.unwrap(), "through n2", "{key}");
        }
    }
}

/// Waits until n2 (`c.node(1)`) is ready at its current address and the
/// other two list it alive there.
async fn taken_back_at(c: &Cluster, which: &str) {
    let new = c.node(1).url.clone();
    eventually(&format!("n2 ready at its {which} address"), || async { ready_status(c.node(1)).await == 200 }).await;
    for s in [c.node(0), c.node(2)] {
        eventually(&format!("the others list n2 alive at its {which} address"), || async {
            let m: Value = s.http.get(s.at("/cluster/members")).send().await.unwrap().json().await.unwrap();
            m["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == "n2" && m["address"] == new && m["status"] == "alive")
        })
        .await;
    }
}

#[tokio::test]
async fn a_member_restarted_at_another_address_is_taken_back_once_its_old_one_falls_silent() {
    let mut c = Cluster::start(3, &[]).await;
    for i in 0..20 {
        assert_eq!(put(c.node(0), &format!("m{i}"), &format!("v{i}"), "?w=all").await, 204);
    }
    let old = c.node(1).url.clone();
    c.nodes[1].terminate();
    c.nodes[1].restart_elsewhere().await;
    let new = c.node(1).url.clone();
    assert_ne!(new, old);
    // The others refuse n2's new address while the old one is alive to
    // them; once it falls silent (suspect), the move is taken.
    taken_back_at(&c, "new").await;
    reads_back_at_r1(c.node(1), "m", 20, "through n2 at its new address").await;
    assert_eq!(put(c.node(1), "after-move", "here", "?w=all").await, 204);
    assert_eq!(c.node(2).get("after-move").await.2, "here");
    // Moved again, its data dir lost on the way: its heartbeat starts
    // below the one the others hold for its old address, and it jumps past
    // that, or they would never take the new address.
    let old = c.node(1).url.clone();
    c.nodes[1].terminate();
    std::fs::remove_dir_all(c.nodes[1].data_dir()).unwrap();
    c.nodes[1].restart_elsewhere().await;
    let new = c.node(1).url.clone();
    assert_ne!(new, old);
    taken_back_at(&c, "third").await;
    reads_back_at_r1(c.node(1), "m", 20, "through n2 refilled at its third address").await;
}

/// Cut off from every other member until it holds them all dead, a node
/// owns every partition on its ring of one, including those it never held:
/// their holders are down, not gone, so it answers 503 for their keys at
/// any R, never 404; those it holds it still answers from its copy.
#[tokio::test]
async fn a_node_cut_off_from_everyone_does_not_answer_404_for_partitions_it_never_held() {
    let c = Cluster::start(4, &[]).await;
    let (mut held, mut not_held) = (Vec::new(), Vec::new());
    for i in 0.. {
        if held.len() >= 5 && not_held.len() >= 5 {
            break;
        }
        let key = format!("cut{i}");
        assert_eq!(put(c.node(0), &key, "v", "?w=all").await, 204);
        if c.preference_list(&key).await.iter().any(|id| id == "n4") {
            held.push(key);
        } else {
            not_held.push(key);
        }
    }
    for s in &c.nodes[..3] {
        s.pause();
    }
    eventually("n4 holds every other member dead", || async {
        let m = member_statuses(c.node(3)).await;
        m.iter().all(|(id, st)| id == "n4" || st == "dead")
    })
    .await;
    for key in &not_held {
        let r = c.node(3).http.get(c.node(3).at(&format!("/kv/{key}?r=1"))).send().await.unwrap();
        assert_eq!(r.status(), 503, "{key}, never held by n4");
    }
    for key in &held {
        assert_eq!(c.node(3).get(key).await.0, 503, "{key} at the default r=quorum");
        let r = c.node(3).http.get(c.node(3).at(&format!("/kv/{key}?r=1"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{key}, held by n4");
    }
    for s in &c.nodes[..3] {
        s.resume();
    }
    for key in not_held.iter().chain(&held) {
        eventually("the key readable at r=1 through n4 once the others are back", || async {
            let r = c.node(3).http.get(c.node(3).at(&format!("/kv/{key}?r=1"))).send().await.unwrap();
            r.status() == 200
        })
        .await;
    }
}

#[tokio::test]
async fn writes_under_load_survive_a_join_a_leave_and_a_join() {
    let mut c = Cluster::start(3, &[]).await;
    let targets = Arc::new(Mutex::new(c.nodes.iter().map(|s| s.url.clone()).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Four writers, each with its own keys, through the nodes in turn.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (targets, stop, count) = (targets.clone(), stop.clone(), acked_so_far.clone());
            tokio::spawn(async move {
                let http = crate::support::client();
                let (mut attempted, mut acked) = (0usize, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let url = {
                        let t = targets.lock().unwrap();
                        t[(attempted + w) % t.len()].clone()
                    };
                    let key = format!("load{w}-{attempted}");
                    attempted += 1;
                    let ok = http
                        .put(format!("{url}/kv/{key}?w=quorum"))
                        .body(format!("v-{key}"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 204);
                    if ok {
                        acked.push(key);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
                (attempted, acked)
            })
        })
        .collect();
    let n4 = c.join(FAST, &[]).await;
    targets.lock().unwrap().push(c.node(n4).url.clone());
    eventually("n4 ready", || async { ready_status(c.node(n4)).await == 200 }).await;
    // n2 leaves: clients stop using it first, as a load balancer would.
    targets.lock().unwrap().retain(|u| *u != c.node(1).url);
    let r = c.nodes[1].http.post(c.nodes[1].at("/cluster/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(c.nodes[1].wait().success());
    let n5 = c.join(FAST, &[]).await;
    targets.lock().unwrap().push(c.node(n5).url.clone());
    eventually("n5 ready", || async { ready_status(c.node(n5)).await == 200 }).await;
    let seen = acked_so_far.load(Ordering::SeqCst);
    eventually("more writes after the last join", || async { acked_so_far.load(Ordering::SeqCst) >= seen + 100 }).await;
    stop.store(true, Ordering::SeqCst);
    let (mut attempted, mut acked) = (0, Vec::new());
    for w in writers {
        let (a, k) = w.await.unwrap();
        attempted += a;
        acked.extend(k);
    }
    eventually("settled", || settled(&c, &[1])).await;
    let mut lost = Vec::new();
    for key in &acked {
        for (i, s) in c.nodes.iter().enumerate() {
            if i == 1 {
                continue;
            }
            let r = s.http.get(s.at(&format!("/kv/{key}?r=quorum"))).send().await.unwrap();
            if r.status() != 200 || r.text().await.unwrap() != format!("v-{key}") {
                lost.push((key.clone(), s.url.clone()));
            }
        }
    }
    println!(
        "load through join, leave, join: attempted {attempted}, acknowledged {}, lost {}",
        acked.len(),
        lost.len()
    );
    assert!(acked.len() > 100, "the load ran: {} of {attempted}", acked.len());
    assert!(lost.is_empty(), "lost: {lost:?}");
}
