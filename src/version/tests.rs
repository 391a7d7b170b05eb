//! Laws of the dotted version vector set, checked over states reached by
//! random executions (writes with fresh or stale contexts, anti-entropy
//! syncs), since arbitrary hand-made sets need not satisfy the invariants.

use super::*;
use proptest::prelude::*;

type Set = Siblings<u32>;

const NODES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    /// Replica `at` writes, with the context of an earlier snapshot (a stale
    /// read), of its own state (a read just now), or with none (blind).
    Write { at: usize, ctx: Option<usize> },
    /// Replica `to` merges replica `from`'s state.
    Sync { from: usize, to: usize },
    /// Replica `at` purges what it holds (keeps only the context).
    Purge { at: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, proptest::option::of(0..64usize)).prop_map(|(at, ctx)| Op::Write { at, ctx }),
        (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Sync { from, to }),
        (0..3usize).prop_map(|at| Op::Purge { at }),
    ]
}

/// Runs an execution and returns every state it went through.
fn run(ops: &[Op]) -> Vec<Set> {
    let mut replicas = vec![Set::new(); 3];
    let mut seen = vec![Set::new()];
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { at, ctx } => {
                let ctx = match ctx {
                    Some(s) => seen[s % seen.len()].context(),
                    None => replicas[at].context(),
                };
                let dot = replicas[at].next_dot(&ctx, NODES[at], 0);
                replicas[at] = replicas[at].update(&ctx, dot, i as u32);
                seen.push(replicas[at].clone());
            }
            Op::Sync { from, to } => {
                replicas[to] = replicas[to].sync(&replicas[from]);
                seen.push(replicas[to].clone());
            }
            Op::Purge { at } => {
                replicas[at] = replicas[at].purge();
                seen.push(replicas[at].clone());
            }
        }
    }
    seen
}

fn states() -> impl Strategy<Value = (Set, Set, Set)> {
    (proptest::collection::vec(op(), 1..40), any::<usize>(), any::<usize>(), any::<usize>()).prop_map(
        |(ops, i, j, k)| {
            let s = run(&ops);
            let n = s.len();
            (s[i % n].clone(), s[j % n].clone(), s[k % n].clone())
        },
    )
}

fn is_antichain(s: &Set) -> bool {
    s.values().iter().all(|v| !s.values().iter().any(|o| v.dominated_by(o)))
}

proptest! {
    #[test]
    fn sync_is_commutative((a, b, _) in states()) {
        prop_assert_eq!(a.sync(&b), b.sync(&a));
    }

    #[test]
    fn sync_is_associative((a, b, c) in states()) {
        prop_assert_eq!(a.sync(&b).sync(&c), a.sync(&b.sync(&c)));
    }

    #[test]
    fn sync_is_idempotent((a, b, _) in states()) {
        prop_assert_eq!(a.sync(&a), a.clone());
        let ab = a.sync(&b);
        prop_assert_eq!(ab.sync(&b), ab.clone());
    }

    #[test]
    fn every_state_is_an_antichain((a, b, _) in states()) {
        prop_assert!(is_antichain(&a));
        prop_assert!(is_antichain(&a.sync(&b)));
    }

    #[test]
    fn sync_keeps_what_the_other_side_never_saw((a, b, _) in states()) {
        let merged = a.sync(&b);
        let theirs = b.context();
        for v in a.values() {
            if !theirs.covers(&v.dot) {
                prop_assert!(merged.values().contains(v), "lost {:?}", v.dot);
            }
        }
        for v in a.values().iter().chain(b.values()) {
            prop_assert!(merged.context().covers(&v.dot));
        }
    }

    #[test]
    fn reconcile_never_drops_an_undominated_version(
        (a, b, c) in states(),
    ) {
        let all: Vec<Version<u32>> =
            a.values().iter().chain(b.values()).chain(c.values()).cloned().collect();
        let kept = reconcile(all.clone());
        for v in &all {
            let dominated = all.iter().any(|o| v.dominated_by(o));
            prop_assert_eq!(kept.iter().any(|k| k.dot == v.dot), !dominated, "{:?}", v.dot);
        }
    }

    #[test]
    fn a_write_with_a_reads_context_supersedes_exactly_that_read(
        (read, other, _) in states(),
        at in 0..3usize,
    ) {
        // The replica holds what the read returned merged with something else.
        let replica = read.sync(&other);
        let ctx = read.context();
        let dot = replica.next_dot(&ctx, NODES[at], 0);
        let after = replica.update(&ctx, dot.clone(), 999);
        for v in replica.values() {
            let was_read = ctx.covers(&v.dot);
            prop_assert_eq!(after.values().contains(v), !was_read);
        }
        prop_assert!(after.values().iter().any(|v| v.dot == dot));
        prop_assert_eq!(after.len(), replica.values().iter().filter(|v| !ctx.covers(&v.dot)).count() + 1);
    }

    #[test]
    fn racing_writers_with_one_stale_context_leave_at_most_k_siblings(
        (start, _, _) in states(),
        writers in proptest::collection::vec(0..3usize, 1..10),
    ) {
        let ctx = start.context();
        // Each writer goes through some replica that already holds `start`;
        // all their results then meet by anti-entropy.
        let mut replicas = vec![start.clone(); 3];
        for &at in &writers {
            let dot = replicas[at].next_dot(&ctx, NODES[at], 0);
            replicas[at] = replicas[at].update(&ctx, dot, 1);
        }
        let merged = replicas[0].sync(&replicas[1]).sync(&replicas[2]);
        prop_assert!(merged.len() <= writers.len(), "{} siblings for {} writers", merged.len(), writers.len());
        // And a write with the merged read's context collapses them to one.
        let ctx = merged.context();
        let dot = merged.next_dot(&ctx, "a", 0);
        prop_assert_eq!(merged.update(&ctx, dot, 2).len(), 1);
    }

    #[test]
    fn update_does_not_modify_its_input((a, _, _) in states()) {
        let before = a.clone();
        let ctx = Context::new();
        let dot = a.next_dot(&ctx, "b", 0);
        let _ = a.update(&ctx, dot, 5);
        prop_assert_eq!(a, before);
    }
}

proptest! {
    /// Once purged, a version never comes back through a merge, whatever
    /// stale copy arrives and in whatever order.
    #[test]
    fn a_purged_version_never_returns((a, b, c) in states()) {
        let marker = a.purge();
        let merged = marker.sync(&b).sync(&c).sync(&a);
        for v in a.values() {
            prop_assert!(!merged.values().iter().any(|m| m.dot == v.dot), "{:?} came back", v.dot);
        }
        prop_assert!(merged.context().covers_all(&a.context()));
    }
}

proptest! {
    /// A context is exactly the set of dots added to it, whatever their
    /// order, kept in normal form: every cloud dot is past the vector and
    /// not next to it (else it would be in the vector), in dot order.
    #[test]
    fn a_context_holds_exactly_the_dots_added_in_normal_form(
        dots in proptest::collection::vec((0usize..3, 1u64..10), 0..40),
    ) {
        let mut ctx = Context::new();
        let mut seen = std::collections::BTreeSet::new();
        for (n, c) in dots {
            ctx.add(Dot { node: NODES[n].to_string(), counter: c });
            seen.insert((n, c));
            for (n2, node) in NODES.iter().enumerate() {
                for c2 in 1..10 {
                    let d = Dot { node: node.to_string(), counter: c2 };
                    prop_assert_eq!(ctx.covers(&d), seen.contains(&(n2, c2)), "{:?} in {:?}", d, ctx);
                }
            }
            for d in ctx.cloud() {
                prop_assert!(ctx.vector().get(&d.node) + 1 < d.counter, "{:?} not in normal form", ctx);
            }
            prop_assert!(ctx.cloud().windows(2).all(|w| w[0] < w[1]), "{:?}", ctx);
        }
    }
}

/// The late-hint story: a value written while one replica was away, deleted,
/// the tombstone purged everywhere; the old value arriving afterwards stays
/// gone, and a new write supersedes the marker.
#[test]
fn a_late_copy_of_a_deleted_value_stays_deleted() {
    let s = Set::new();
    let ctx = Context::new();
    let v1 = s.update(&ctx, s.next_dot(&ctx, "a", 0), 1);
    let ctx = v1.context();
    let tomb = v1.update(&ctx, v1.next_dot(&ctx, "b", 0), 0);
    let marker = tomb.purge();
    assert!(marker.is_empty());
    assert!(marker.sync(&v1).is_empty(), "the late copy is dropped");
    assert!(v1.sync(&marker).is_empty());
    assert_eq!(marker.sync(&v1), marker);
    let ctx = marker.context();
    let v2 = marker.update(&ctx, marker.next_dot(&ctx, "a", 0), 2);
    let merged = v2.sync(&v1).sync(&tomb);
    assert_eq!(merged.len(), 1);
    assert_eq!(merged.values()[0].payload, 2);
}

#[test]
fn compare_covers_all_four_cases() {
    let a = VersionVector::from_entries([("x".into(), 1)]);
    let b = VersionVector::from_entries([("x".into(), 2)]);
    let c = VersionVector::from_entries([("y".into(), 1)]);
    assert_eq!(a.compare(&b), Causality::Before);
    assert_eq!(b.compare(&a), Causality::After);
    assert_eq!(a.compare(&a.clone()), Causality::Equal);
    assert_eq!(a.compare(&c), Causality::Concurrent);
}

#[test]
fn blind_sequential_writes_overwrite() {
    let mut s = Set::new();
    for i in 0..5 {
        let ctx = s.context();
        let dot = s.next_dot(&ctx, "a", 0);
        s = s.update(&ctx, dot, i);
    }
    assert_eq!(s.len(), 1);
    assert_eq!(s.values()[0].payload, 4);
}

/// The seed's story from issue 4, on the algorithm alone: TRUCK read by a
/// client; CAR and BIKE written through different replicas with that stale
/// context end up as exactly two siblings, and a write with their context
/// leaves one.
#[test]
fn truck_car_bike() {
    let truck = {
        let s = Set::new();
        let dot = s.next_dot(&Context::new(), "a", 0);
        s.update(&Context::new(), dot, 0)
    };
    let ctx = truck.context();
    let car = truck.update(&ctx, truck.next_dot(&ctx, "b", 0), 1);
    let bike = truck.update(&ctx, truck.next_dot(&ctx, "a", 0), 2);
    let both = car.sync(&bike);
    let mut payloads: Vec<u32> = both.values().iter().map(|v| v.payload).collect();
    payloads.sort();
    assert_eq!(payloads, vec![1, 2]);
    let ctx = both.context();
    let resolved = both.update(&ctx, both.next_dot(&ctx, "c", 0), 3);
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved.sync(&car).sync(&bike).len(), 1);
}

#[test]
fn floor_keeps_dots_unique_after_a_purge() {
    let s = Set::new();
    let d = s.next_dot(&Context::new(), "a", 41);
    assert_eq!(d.counter, 42);
}

/// Counterexample found by proptest: a writer with a stale context at the
/// node that also wrote a concurrent sibling must not get back a context that
/// claims that sibling (a plain vector entry `a: 2` would claim `a: 1`).
#[test]
fn a_stale_writer_does_not_claim_its_nodes_other_sibling() {
    let s = Set::new();
    let ctx = Context::new();
    let first = s.update(&ctx, s.next_dot(&ctx, "a", 0), 1);
    let dot = first.next_dot(&ctx, "a", 0);
    let both = first.update(&ctx, dot.clone(), 2);
    assert_eq!(both.len(), 2);
    let mut returned = ctx.clone();
    returned.add(dot);
    assert!(!returned.covers(&first.values()[0].dot));
    // Writing again with what the stale writer got back keeps the sibling.
    let again = both.update(&returned, both.next_dot(&returned, "a", 0), 3);
    assert_eq!(again.len(), 2);
    assert!(again.values().iter().any(|v| v.payload == 1));
}

proptest! {
    /// A clock encodes byte for byte as the `BTreeMap` of its entries (what
    /// it was before it became a sorted vector) and decodes back to itself;
    /// a map with its entries in any order, repeats included, decodes as a
    /// `BTreeMap` reads it (sorted, the last of a repeated node kept).
    #[test]
    fn a_clock_encodes_and_decodes_as_the_map_of_its_entries(
        entries in proptest::collection::vec((0..3usize, 1..100u64), 0..8),
    ) {
        let entries: Vec<(String, u64)> = entries.into_iter().map(|(n, c)| (NODES[n].to_string(), c)).collect();
        let vv = VersionVector::from_entries(entries.clone());
        let mut max = std::collections::BTreeMap::new();
        for (n, c) in &entries {
            let e = max.entry(n.clone()).or_insert(0);
            *e = (*e).max(*c);
        }
        let bytes = postcard::to_allocvec(&vv).unwrap();
        prop_assert_eq!(&bytes, &postcard::to_allocvec(&max).unwrap());
        prop_assert_eq!(postcard::from_bytes::<VersionVector>(&bytes).unwrap(), vv);
        let json = format!("{{{}}}", entries.iter().map(|(n, c)| format!("\"{n}\":{c}")).collect::<Vec<_>>().join(","));
        let as_map: std::collections::BTreeMap<String, u64> = serde_json::from_str(&json).unwrap();
        let as_clock: VersionVector = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(
            as_clock.entries().map(|(n, c)| (n.to_string(), c)).collect::<Vec<_>>(),
            as_map.into_iter().collect::<Vec<_>>()
        );
    }
}
