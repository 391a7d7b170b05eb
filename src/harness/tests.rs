//! The coordinator over an in-memory network: sloppy-quorum stand-in order,
//! hint placement and delivery, read repair, and quorum failures, with
//! chosen messages dropped or their answers lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::coordinator::{self, CoordError, Level, Write};
use crate::storage::Content;
use crate::transport::Route;

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

    /// The value of the one version node `id` holds for `key`, if it holds
    /// exactly one.
    fn value(&self, id: &str, key: &str) -> Option<Vec<u8>> {
        let n = self.node(id);
        let p = n.view().ring().partition_of(key.as_bytes());
        let rec = n.storage().get(p, key.as_bytes()).unwrap()?;
        (rec.len() == 1).then(|| rec.values()[0].payload.value.to_vec())
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
            value: value.as_bytes().to_vec().into(),
            content_type: "text/plain".into(),
            timestamp_ms: crate::clock::now_ms(),
            expires_at_ms: None,
            deleted: false,
        },
        level,
    }
}

fn tombstone() -> Content {
    Content {
        value: Default::default(),
        content_type: String::new(),
        timestamp_ms: crate::clock::now_ms(),
        expires_at_ms: None,
        deleted: true,
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
    assert_eq!(rec.values()[0].payload.value, b"v2"[..]);
}

/// A stand-in that leaves hands its hints to the live replicas of their
/// keys even while the intended owner is unreachable, and one that cannot
/// hand a hint to anybody does not leave (it would take the extra copy of an
/// acknowledged write with it).
#[tokio::test]
async fn a_leaving_stand_in_hands_its_hints_on_or_does_not_leave() {
    let c = Mem::new(5, &[]);
    let (key, walk) = c.key_led_by("a");
    let (owner, standin) = (walk[1].as_str(), walk[3].as_str());
    c.net.set_link("a", owner, Link::Down);
    coordinator::write(c.node("a"), write(&key, "v", Level::All)).await.expect("w=all met with a stand-in");
    assert_eq!(c.hints_for(standin, owner), 1);
    assert_eq!(c.held(standin, &key), 0, "the stand-in keeps a hint, not a replica");
    let s = c.node(standin);

    // Nobody reachable: the leave fails, the stand-in stays a member and
    // keeps the hint.
    let others: Vec<&str> = IDS[..5].iter().copied().filter(|id| *id != standin).collect();
    c.net.isolate(standin, &others);
    let err = crate::handoff::leave(s).await.expect_err("no replica took the hint");
    assert!(err.contains("hints"), "{err}");
    assert_eq!(s.view().status(standin), Some(crate::membership::Status::Alive));
    assert_eq!(c.hints_for(standin, owner), 1);

    // The other replicas are back, the owner still is not: they take it.
    c.net.heal();
    c.net.set_link(standin, owner, Link::Down);
    crate::handoff::leave(s).await.expect("the live replicas took the hint");
    assert_eq!(c.hints_for(standin, owner), 0);
    assert_eq!(s.view().status(standin), Some(crate::membership::Status::Left));
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

/// Below quorum (w=1, w=async) the client's answer waits for the
/// coordinator's own copy only, but the write still goes to every other
/// replica, and one that cannot be reached gets its copy as a hint, as at
/// any other level. Anti-entropy is off: nothing else could carry it.
#[tokio::test]
async fn writes_below_quorum_still_reach_every_replica() {
    let c = Mem::new(4, &["--anti-entropy-interval-ms", "0"]);
    let (key, walk) = c.key_led_by("a");
    coordinator::write(c.node("a"), write(&key, "v1", Level::Count(1))).await.unwrap();
    for id in &walk[1..3] {
        until(&format!("{id} holds the w=1 write"), || c.value(id, &key).as_deref() == Some(&b"v1"[..])).await;
    }
    c.net.set_link("a", &walk[1], Link::Down);
    coordinator::write(c.node("a"), write(&key, "v2", Level::Async)).await.unwrap();
    until("the reachable owner holds the w=async write", || c.value(&walk[2], &key).as_deref() == Some(&b"v2"[..]))
        .await;
    until("the next node keeps a hint for the unreachable owner", || c.hints_for(&walk[3], &walk[1]) == 1).await;
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

/// Digest reads: of the three replicas of a key only the coordinator's own
/// copy is read whole; the other two send digests, so a read at `r=all`
/// moves a few dozen bytes between nodes instead of two copies of the value.
#[tokio::test]
async fn a_read_moves_digests_not_copies_from_replicas_that_agree() {
    let c = Mem::new(3, &[]);
    let (key, _) = c.key_led_by("a");
    let big = "x".repeat(20_000);
    coordinator::write(c.node("a"), write(&key, &big, Level::All)).await.unwrap();
    c.net.reset_traffic();
    let read = coordinator::read(c.node("a"), key.as_bytes(), Level::All).await.unwrap();
    assert_eq!(read.visible[0].payload.value, big.as_bytes());
    let moved = c.net.traffic(Route::Batch).bytes();
    assert!(moved < 1_000, "two digest reads moved {moved} bytes");
    assert_eq!(c.node("a").metrics().read_digest_mismatches.get(), 0);
}

/// A coordinator outside the preference list reads one replica whole; when
/// that one missed a write, the others' digests differ, they are read whole,
/// the client gets the write, and the stale replica is repaired.
#[tokio::test]
async fn a_stale_whole_copy_is_caught_by_the_other_replicas_digests() {
    let c = Mem::new(4, &[]);
    let (key, walk) = c.key_led_by("a");
    let (stale, outsider) = (walk[0].as_str(), walk[3].as_str());
    c.net.set_link(&walk[1], stale, Link::Down);
    coordinator::write(c.node(&walk[1]), write(&key, "v", Level::Quorum)).await.unwrap();
    assert_eq!(c.held(stale, &key), 0);
    c.net.heal();
    let read = coordinator::read(c.node(outsider), key.as_bytes(), Level::Quorum).await.unwrap();
    assert_eq!(read.visible.len(), 1);
    assert_eq!(read.visible[0].payload.value, b"v"[..]);
    assert!(c.node(outsider).metrics().read_digest_mismatches.get() >= 1);
    until("the stale replica repaired", || c.held(stale, &key) == 1).await;
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
    assert_eq!(read.visible[0].payload.value, b"v"[..]);
}

/// At r=1 the first reply may come from the one replica a w=quorum write
/// missed: a read that finds nothing waits for a quorum of replicas before
/// it answers not found, and any copy found answers at once.
#[tokio::test]
async fn a_read_at_r1_finds_a_quorum_write_through_the_replica_it_missed() {
    let c = Mem::new(3, &[]);
    let (key, walk) = c.key_led_by("a");
    let stale = walk[2].as_str();
    c.net.set_link("a", stale, Link::Down);
    coordinator::write(c.node("a"), write(&key, "v", Level::Quorum)).await.unwrap();
    assert_eq!(c.held(stale, &key), 0);
    c.net.heal();
    let read = coordinator::read(c.node(stale), key.as_bytes(), Level::Count(1)).await.unwrap();
    assert_eq!(read.visible.len(), 1, "the stale replica's own empty copy is not the answer");
    assert_eq!(read.visible[0].payload.value, b"v"[..]);
    // A key nobody holds is still not found, with replicas refusing too.
    let read = coordinator::read(c.node(stale), b"never-written", Level::Count(1)).await.unwrap();
    assert!(read.visible.is_empty());
    c.net.isolate(stale, &[&walk[0], &walk[1]]);
    let read = coordinator::read(c.node(stale), b"never-written", Level::Count(1)).await.unwrap();
    assert!(read.visible.is_empty());
    // A tombstone is no answer either: the write after the delete is found.
    c.net.heal();
    coordinator::write(c.node("a"), Write { content: tombstone(), ..write(&key, "", Level::All) }).await.unwrap();
    c.net.set_link("a", stale, Link::Down);
    coordinator::write(c.node("a"), write(&key, "again", Level::Quorum)).await.unwrap();
    c.net.heal();
    let read = coordinator::read(c.node(stale), key.as_bytes(), Level::Count(1)).await.unwrap();
    assert_eq!(read.visible.len(), 1, "the stale replica's tombstone is not the answer");
    assert_eq!(read.visible[0].payload.value, b"again"[..]);
}

/// A refusal (another process holds this node's id, or another Q) takes a
/// node out of the cluster until a member accepts it, unless members keep
/// accepting it: one seed of another cluster among members must not flip
/// it in and out.
#[tokio::test]
async fn a_refusal_counts_unless_members_accepted_the_node_lately() {
    let c = Mem::new(2, &[]);
    let a = c.node("a");
    assert!(a.knows_cluster());
    a.refused_by("http://elsewhere", "sender has --partitions 32, this node 64");
    assert!(!a.is_refused() && a.knows_cluster(), "accepted by its members moments ago");
    // A node no member accepted yet.
    let dir = tempfile::tempdir().unwrap();
    let lone = c.net.open("z", dir.path(), &["--seeds", &address_of("a")]).unwrap();
    lone.refused_by(&address_of("a"), "node id z is alive at another address");
    assert!(lone.is_refused() && !lone.knows_cluster());
    assert!(lone.not_ready().unwrap().contains("refused by the cluster"));
    // Accepted: a member again.
    let msg = a.gossip_message();
    lone.accept_gossip(&msg).unwrap();
    assert!(!lone.is_refused() && lone.knows_cluster());
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

// Anti-entropy over the in-memory network.

fn build_trees(n: &Node) {
    for p in 0..n.storage().partition_count() {
        n.storage().build_tree(p).unwrap();
    }
}

fn same_trees(a: &Node, b: &Node) -> bool {
    (0..a.storage().partition_count()).all(|p| a.storage().merkle(p).root() == b.storage().merkle(p).root())
}

fn record(node: &str, value: &[u8], deleted: bool) -> crate::storage::Record {
    let rec = crate::storage::Record::new();
    let ctx = crate::version::Context::new();
    let content = Content {
        value: value.to_vec().into(),
        content_type: "text/plain".into(),
        timestamp_ms: 1_700_000_000_000,
        expires_at_ms: None,
        deleted,
    };
    rec.update(&ctx, rec.next_dot(&ctx, node, 0), content)
}

async fn exchange(c: &Mem, from: &str, to: &str) -> crate::antientropy::Exchange {
    let n = c.node(from);
    crate::antientropy::exchange(n, &n.view(), to, &mut crate::antientropy::Budget::new()).await.unwrap()
}

/// The measure: finding and repairing one differing key among
/// 100,000 identical ones costs at most 4 KiB beyond the value itself, all
/// traffic counted (tree comparison and repair message bodies).
#[tokio::test]
async fn one_differing_key_among_100000_costs_under_4_kib() {
    let c = Mem::new(2, &["--replicas", "2"]);
    let (a, b) = (c.node("a"), c.node("b"));
    let q = a.cfg().partitions;
    let rec = record("w", b"same everywhere", false);
    for i in 0..100_000u32 {
        let key = format!("user:{i:06}");
        let p = crate::ring::partition_of(key.as_bytes(), q);
        a.storage().merge(p, key.as_bytes(), &rec).unwrap();
        b.storage().merge(p, key.as_bytes(), &rec).unwrap();
    }
    let value = vec![b'x'; 1000];
    let key = b"the-one-that-differs";
    let p = crate::ring::partition_of(key, q);
    a.storage().merge(p, key, &record("a", &value, false)).unwrap();
    build_trees(a);
    build_trees(b);
    assert!(!same_trees(a, b));

    c.net.reset_traffic();
    let x = exchange(&c, "b", "a").await;
    let ae = c.net.traffic(Route::AntiEntropy);
    let batch = c.net.traffic(Route::Batch);
    let total = ae.bytes() + batch.bytes();
    let beyond = total - value.len() as u64;
    println!(
        "1 of 100000 differing: {} AE calls, {} B tree comparison, {} B repair, {} B beyond the value",
        ae.calls,
        ae.bytes(),
        batch.bytes(),
        beyond
    );
    assert_eq!((x.partitions, x.differing, x.keys, x.pulled, x.pushed), (64, 1, 1, 1, 0));
    assert!(beyond <= 4096, "{beyond} bytes beyond the value");
    assert!(same_trees(a, b), "converged");
    assert_eq!(b.storage().get(p, key).unwrap().unwrap().values()[0].payload.value, value);
    // In sync: one request, a dozen bytes per partition, nothing repaired.
    c.net.reset_traffic();
    let x = exchange(&c, "a", "b").await;
    assert_eq!((x.keys, x.pulled, x.pushed), (0, 0, 0));
    assert_eq!(c.net.traffic(Route::AntiEntropy).calls, 1);
    assert!(c.net.traffic(Route::AntiEntropy).bytes() < 64 * 14);
}

/// Concurrent versions written on both sides of a cut end as the same
/// sibling set on both, without any read; a tombstone on one side wins over
/// the value it deleted on the other.
#[tokio::test]
async fn replicas_that_diverged_converge_both_ways() {
    let c = Mem::new(2, &["--replicas", "2"]);
    let (a, b) = (c.node("a"), c.node("b"));
    build_trees(a);
    build_trees(b);
    c.net.isolate("a", &["b"]);
    coordinator::write(a, write("both", "from-a", Level::Count(1))).await.unwrap();
    coordinator::write(b, write("both", "from-b", Level::Count(1))).await.unwrap();
    coordinator::write(a, write("only-a", "x", Level::Count(1))).await.unwrap();
    coordinator::write(b, write("gone", "v", Level::All)).await.unwrap_err();
    c.net.heal();
    exchange(&c, "a", "b").await;
    assert!(same_trees(a, b));
    let q = a.cfg().partitions;
    let p = crate::ring::partition_of(b"both", q);
    let on_a = a.storage().get(p, b"both").unwrap().unwrap();
    assert_eq!(on_a.len(), 2, "both concurrent writes kept");
    assert_eq!(Some(on_a), b.storage().get(p, b"both").unwrap());
    // A delete on one side (with the context of the value) reaches the other.
    let read = coordinator::read(b, b"gone", Level::Count(1)).await.unwrap();
    let mut del = write("gone", "", Level::Count(1));
    del.context = Some(read.context);
    del.content.deleted = true;
    c.net.isolate("a", &["b"]);
    coordinator::write(b, del).await.unwrap();
    c.net.heal();
    exchange(&c, "a", "b").await;
    let p = crate::ring::partition_of(b"gone", q);
    let on_a = a.storage().get(p, b"gone").unwrap().unwrap();
    assert!(on_a.values().iter().all(|v| v.payload.deleted), "no live version left: {on_a:?}");
    assert!(same_trees(a, b));
}

/// The late-hint case: a write kept as a hint for an owner that was away,
/// the key deleted and its tombstone purged on every replica, then the hint
/// delivered: the deleted value does not come back, not on the owner and not
/// through anti-entropy.
#[tokio::test]
async fn a_late_hint_does_not_resurrect_a_purged_delete() {
    let c = Mem::new(4, &["--tombstone-grace-ms", "0"]);
    for n in &c.nodes {
        build_trees(n);
    }
    let (key, walk) = c.key_led_by("a");
    let (owner, standin) = (walk[1].clone(), walk[3].clone());
    // The owner is cut off: the stand-in keeps the write for it.
    c.net.set_link("a", &owner, Link::Down);
    coordinator::write(c.node("a"), write(&key, "old", Level::All)).await.unwrap();
    assert_eq!(c.hints_for(&standin, &owner), 1);
    // The owner is back; the key is deleted everywhere before the hint
    // comes, with the context of a read.
    c.net.heal();
    let read = coordinator::read(c.node("a"), key.as_bytes(), Level::Count(1)).await.unwrap();
    let mut del = write(&key, "", Level::All);
    del.context = Some(read.context);
    del.content.deleted = true;
    coordinator::write(c.node("a"), del).await.unwrap();
    // The first replica purges once every replica holds the tombstone.
    let purged = crate::reaper::tombstone_round(c.node(&walk[0]), crate::clock::now_ms() + 1).await.unwrap();
    assert_eq!(purged, 1);
    for id in &walk[..3] {
        assert_eq!(c.held(id, &key), 0, "{id} purged it");
    }
    // Now the hint arrives.
    crate::handoff::deliver(c.node(&standin)).await.unwrap();
    assert_eq!(c.hints_for(&standin, &owner), 0);
    assert_eq!(c.held(&owner, &key), 0, "the late hint is dropped by the purge marker");
    for (x, y) in [(&walk[0], &walk[1]), (&walk[1], &walk[2]), (&walk[2], &walk[0])] {
        exchange(&c, x, y).await;
    }
    for id in &walk[..3] {
        assert_eq!(c.held(id, &key), 0, "{id} after anti-entropy");
    }
    let read = coordinator::read(c.node("b"), key.as_bytes(), Level::All).await.unwrap();
    assert!(read.visible.is_empty());
}

/// A replica that lost everything gets every key back from the others.
#[tokio::test]
async fn an_empty_replica_is_refilled() {
    let c = Mem::new(3, &[]);
    for i in 0..300 {
        coordinator::write(c.node("a"), write(&format!("k{i}"), "v", Level::All)).await.unwrap();
    }
    for n in &c.nodes {
        build_trees(n);
    }
    // c loses everything (through the change path, so its trees follow).
    let cn = c.node("c");
    for p in 0..cn.storage().partition_count() {
        let seen = cn.storage().partition_changes(p);
        cn.storage().drop_partition_if_unchanged(p, seen).unwrap().unwrap();
    }
    assert_eq!(cn.storage().partitions_with_data().unwrap(), Vec::<u32>::new());
    let x = exchange(&c, "c", "a").await;
    assert_eq!(x.pulled, 300);
    assert_eq!(exchange(&c, "c", "b").await.keys, 0, "already whole");
    for i in 0..300 {
        assert_eq!(c.held("c", &format!("k{i}")), 1, "k{i}");
    }
    assert!(same_trees(cn, c.node("a")));
}

/// A key the peer cannot read (its record there does not decode) is
/// skipped: the exchange still repairs every other key, and counts the one
/// it skipped (a later round tries it again).
#[tokio::test]
async fn a_key_the_peer_cannot_read_does_not_stop_the_repair_of_the_others() {
    let c = Mem::new(2, &["--replicas", "2"]);
    let (a, b) = (c.node("a"), c.node("b"));
    let q = a.cfg().partitions;
    let part = |k: &str| crate::ring::partition_of(k.as_bytes(), q);
    let rec = record("w", b"only on b", false);
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    for k in &keys {
        b.storage().merge(part(k), k.as_bytes(), &rec).unwrap();
    }
    build_trees(a);
    build_trees(b);
    // The key met first (lowest partition) goes bad on b's disk.
    let bad = keys.iter().min_by_key(|k| (part(k), crate::merkle::leaf_of(k.as_bytes()), (*k).clone())).unwrap();
    b.storage().corrupt(part(bad), bad.as_bytes());
    let x = crate::antientropy::exchange(a, &a.view(), "b", &mut crate::antientropy::Budget::new())
        .await
        .expect("the exchange goes on past the bad key");
    assert_eq!((x.skipped, x.pulled, x.truncated), (1, 199, false), "one key skipped, the rest repaired");
    for k in keys.iter().filter(|k| *k != bad) {
        assert_eq!(c.held("a", k), 1, "{k}");
    }
}

/// A coordinator whose own copy of a key does not decode still reads it
/// from the other replicas (instead of failing the request) and replaces
/// its copy with theirs; a write it coordinates over such a copy goes over
/// the other owners' copies.
#[tokio::test]
async fn a_copy_that_does_not_decode_is_read_around_and_healed() {
    let c = Mem::new(3, &[]);
    let a = c.node("a");
    coordinator::write(a, write("k", "v", Level::All)).await.unwrap();
    let p = crate::ring::partition_of(b"k", a.cfg().partitions);
    a.storage().corrupt(p, b"k");
    assert!(a.storage().get(p, b"k").is_err());
    let read = coordinator::read(a, b"k", Level::Quorum).await.expect("the others meet R");
    assert_eq!(read.visible.len(), 1);
    assert_eq!(read.visible[0].payload.value, b"v"[..]);
    assert_eq!(c.value("a", "k").as_deref(), Some(&b"v"[..]), "healed by the read");
    a.storage().corrupt(p, b"k");
    let mut w = write("k", "v2", Level::All);
    w.context = Some(read.context);
    coordinator::write(a, w).await.expect("written over the others' copies");
    for n in ["a", "b", "c"] {
        assert_eq!(c.value(n, "k").as_deref(), Some(&b"v2"[..]), "on {n}");
    }
}

/// A record due for expiry that does not decode is skipped (and counted):
/// it does not hold up the expiry of every key due after it.
#[tokio::test]
async fn an_undecodable_record_does_not_stop_expiry() {
    let c = Mem::new(1, &[]);
    let a = c.node("a");
    let now = crate::clock::now_ms();
    for (key, at) in [("first", now + 1_000), ("second", now + 2_000)] {
        let mut w = write(key, "v", Level::Count(1));
        w.content.expires_at_ms = Some(at);
        coordinator::write(a, w).await.unwrap();
    }
    let q = a.cfg().partitions;
    a.storage().corrupt(crate::ring::partition_of(b"first", q), b"first");
    let (expired, handled) = crate::reaper::expire_round(a, now + 3_000).expect("the round goes on");
    assert_eq!((expired, handled), (1, 2));
    assert_eq!(c.held("a", "second"), 0, "the key due after the bad one expired");
    assert_eq!(a.metrics().corrupt_records.get(), 1);
}

// Internal routes fed arbitrary bodies.

/// One in-memory node shared by the fuzzing cases (opening sled per case
/// would dominate), on a runtime of its own.
fn fuzz_target() -> &'static (tokio::runtime::Runtime, Mem) {
    static TARGET: std::sync::OnceLock<(tokio::runtime::Runtime, Mem)> = std::sync::OnceLock::new();
    TARGET.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mem = rt.block_on(async { Mem::new(2, &[]) });
        (rt, mem)
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Every internal route answers arbitrary bytes (raw, or behind the
    /// right format byte) with a refusal or an answer, never a panic, and
    /// the node keeps serving.
    #[test]
    fn internal_routes_survive_arbitrary_bodies(
        route in 0usize..5,
        framed in proptest::prelude::any::<bool>(),
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
    ) {
        let (rt, mem) = fuzz_target();
        let route = [Route::Gossip, Route::Batch, Route::Hint, Route::AntiEntropy, Route::Transfer][route];
        let mut body = if framed { vec![crate::transport::wire::FORMAT] } else { Vec::new() };
        body.extend_from_slice(&bytes);
        let node = mem.node("a").clone();
        rt.block_on(async move {
            let _ = crate::rpc::handle(&node, route, &body).await;
            // Still serving.
            coordinator::write(&node, write("after-fuzz", "v", Level::Count(1))).await.unwrap();
        });
    }
}

/// A partition this node was handing off is not vouched for when the ring
/// gives it back: its copy missed the writes made while it was owned
/// elsewhere, so it counts as receiving until the transfer worker has
/// verified it against the other owners.
#[tokio::test]
async fn a_partition_given_back_mid_hand_off_is_not_vouched_for_until_verified() {
    use crate::ownership::{Mode, Ownership, Standing};
    let c = Mem::new(3, &[]);
    let a = c.node("a");
    let view = a.view();
    let q = a.cfg().partitions;
    // a held every partition, then a ring change took them all away.
    a.update_ownership(|o| {
        *o = Ownership::alone(q);
        o.reconcile(q, |_| false, |_| true);
    });
    assert_eq!(a.standing(0), Standing::Outbound);
    // Three nodes and N = 3: the ring gives every partition back to a.
    assert!(view.ring().replicates(0, a.id()));
    assert!(a.receiving(&view, 0), "before the worker looked: not vouched for");
    a.update_ownership(|o| o.reconcile(q, |_| true, |_| true));
    assert_eq!(a.standing(0), Standing::Inbound(Mode::Sync));
    assert!(a.receiving(&view, 0), "being verified: not vouched for");
    a.update_ownership(|o| o.received(0));
    assert!(!a.receiving(&view, 0), "verified: held");
}
