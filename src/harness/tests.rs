//! The coordinator over an in-memory network: sloppy-quorum stand-in order,
//! hint placement and delivery, read repair, and quorum failures, with
//! chosen messages dropped or their answers lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::coordinator::{self, CoordError, Level, Write};
use crate::storage::Content;

/// A cluster of `n` in-memory nodes `a`, `b`, ... that all know each other.
struct Mem {
    net: Arc<MemNet>,
    nodes: Vec<Arc<Node>>,
    _dirs: Vec<tempfile::TempDir>,
}

const IDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

impl Mem {
    fn new(n: usize, extra: &[&str]) -> Self {
        let net = MemNet::new();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        let mut flags = vec!["--request-timeout-ms", "300"];
        flags.extend_from_slice(extra);
        for id in &IDS[..n] {
            let dir = tempfile::tempdir().unwrap();
            nodes.push(net.open(id, dir.path(), &flags).unwrap());
            dirs.push(dir);
        }
        introduce(&nodes);
        Mem { net, nodes, _dirs: dirs }
    }

    fn node(&self, id: &str) -> &Arc<Node> {
        self.nodes.iter().find(|n| n.id() == id).unwrap()
    }

    /// A key whose ring walk starts at `first`.
    fn key_led_by(&self, first: &str) -> (String, Vec<String>) {
        let view = self.nodes[0].view();
        for i in 0.. {
            let key = format!("key-{i}");
            let walk: Vec<String> =
                view.ring().walk(view.ring().partition_of(key.as_bytes())).map(str::to_string).collect();
            if walk[0] == first {
                return (key, walk);
            }
        }
        unreachable!()
    }

    fn held(&self, id: &str, key: &str) -> usize {
        let n = self.node(id);
        let p = n.view().ring().partition_of(key.as_bytes());
        n.storage().get(p, key.as_bytes()).unwrap().map(|r| r.len()).unwrap_or(0)
    }

    fn hints_for(&self, holder: &str, owner: &str) -> usize {
        self.node(holder).storage().hints(1000).unwrap().iter().filter(|h| h.owner == owner).count()
    }
}

fn write(key: &str, value: &str, level: Level) -> Write {
    Write {
        key: key.as_bytes().to_vec(),
        context: None,
        content: Content {
            value: value.as_bytes().to_vec(),
            content_type: "text/plain".into(),
            timestamp_ms: crate::clock::now_ms(),
            expires_at_ms: None,
            deleted: false,
        },
        level,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn stand_ins_are_taken_in_ring_order_and_hints_go_back_to_the_owner() {
    let c = Mem::new(5, &[]);
    let (key, walk) = c.key_led_by("a");
    let (owner, first_standin, second_standin) = (walk[1].as_str(), walk[3].as_str(), walk[4].as_str());
    let a = c.node("a");

    // The owner cannot be reached: the first node past the preference list
    // keeps the write for it.
    c.net.set_link("a", owner, Link::Down);
    coordinator::write(a, write(&key, "v1", Level::All)).await.expect("w=all met with a stand-in");
    assert_eq!(c.hints_for(first_standin, owner), 1);
    assert_eq!(c.hints_for(second_standin, owner), 0);
    assert_eq!(c.held(owner, &key), 0);

    // The first stand-in cannot be reached either: the next one in ring order.
    c.net.set_link("a", first_standin, Link::Down);
    coordinator::write(a, write(&key, "v2", Level::All)).await.expect("w=all met with the second stand-in");
    assert_eq!(c.hints_for(second_standin, owner), 1);

    // Back: each stand-in hands its hint to the owner, which ends with the
    // latest write.
    c.net.heal();
    for s in [first_standin, second_standin] {
        crate::handoff::deliver(c.node(s)).await.unwrap();
        assert_eq!(c.hints_for(s, owner), 0, "{s} delivered and dropped its hint");
    }
    let p = a.view().ring().partition_of(key.as_bytes());
    let rec = c.node(owner).storage().get(p, key.as_bytes()).unwrap().unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec.values()[0].payload.value, b"v2");
}

#[tokio::test]
async fn no_stand_in_left_means_no_quorum_but_the_write_stays() {
    // Three nodes, N = 3: nobody stands in.
    let c = Mem::new(3, &[]);
    let (key, walk) = c.key_led_by("a");
    c.net.set_link("a", &walk[1], Link::Down);
    c.net.set_link("a", &walk[2], Link::Down);
    let err = coordinator::write(c.node("a"), write(&key, "v", Level::Quorum)).await.unwrap_err();
    match err {
        CoordError::QuorumNotMet { needed: 2, acked: 1, context: Some(_) } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c.held("a", &key), 1, "the write stays where it landed");
    // w=1 is met by the coordinator alone.
    coordinator::write(c.node("a"), write(&key, "w", Level::Count(1))).await.unwrap();
}

#[tokio::test]
async fn a_lost_ack_is_not_counted_though_the_replica_applied_it() {
    let c = Mem::new(3, &[]);
    let (key, walk) = c.key_led_by("a");
    c.net.set_link("a", &walk[1], Link::ReplyLost);
    c.net.set_link("a", &walk[2], Link::Down);
    let err = coordinator::write(c.node("a"), write(&key, "v", Level::Quorum)).await.unwrap_err();
    assert!(matches!(err, CoordError::QuorumNotMet { needed: 2, acked: 1, .. }), "{err:?}");
    assert_eq!(c.held(&walk[1], &key), 1, "applied there, unacknowledged");
}

#[tokio::test]
async fn read_repair_brings_a_replica_that_missed_a_write_up_to_date() {
    let c = Mem::new(3, &[]);
    let (key, walk) = c.key_led_by("a");
    let stale = walk[2].clone();
    c.net.set_link("a", &stale, Link::Down);
    coordinator::write(c.node("a"), write(&key, "v", Level::Quorum)).await.unwrap();
    assert_eq!(c.held(&stale, &key), 0);
    c.net.heal();
    // A read through another replica sees the stale copy and repairs it in
    // the background, after answering.
    let read = coordinator::read(c.node(&walk[1]), key.as_bytes(), Level::Quorum).await.unwrap();
    assert_eq!(read.visible.len(), 1);
    until("the stale replica repaired", || c.held(&stale, &key) == 1).await;
    assert!(c.node(&walk[1]).metrics().read_repairs.get() >= 1);
}

#[tokio::test]
async fn a_read_fails_fast_when_r_replicas_cannot_answer() {
    let c = Mem::new(3, &[]);
    let (key, walk) = c.key_led_by("a");
    coordinator::write(c.node("a"), write(&key, "v", Level::All)).await.unwrap();
    c.net.set_link("a", &walk[1], Link::Down);
    c.net.set_link("a", &walk[2], Link::Down);
    let started = Instant::now();
    let err = coordinator::read(c.node("a"), key.as_bytes(), Level::Quorum).await.unwrap_err();
    assert!(matches!(err, CoordError::QuorumNotMet { needed: 2, acked: 1, .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused connections decide at once");
    // r=1 is answered by the coordinator's own copy.
    let read = coordinator::read(c.node("a"), key.as_bytes(), Level::Count(1)).await.unwrap();
    assert_eq!(read.visible[0].payload.value, b"v");
}

#[tokio::test]
async fn a_slow_replica_does_not_hold_a_quorum_back() {
    let c = Mem::new(3, &[]);
    let (key, walk) = c.key_led_by("a");
    c.net.set_link("a", &walk[2], Link::Delay(Duration::from_secs(5)));
    coordinator::write(c.node("a"), write(&key, "v", Level::Quorum)).await.unwrap();
    let read = coordinator::read(c.node("a"), key.as_bytes(), Level::Quorum).await.unwrap();
    assert_eq!(read.visible.len(), 1);
}
