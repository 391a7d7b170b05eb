//! Hinted handoff (SPEC §4) and the hand-off of a leaving node.
//!
//! A stand-in keeps a write for an unreachable owner in the `hints` tree
//! (durable, merged per key). This loop delivers hints to owners that are
//! alive again and deletes a hint only after the owner acknowledged it and
//! only if it did not change meanwhile. A hint whose owner has left goes to the
//! key's current preference list instead.
//!
//! [`leave`] runs when `POST /cluster/leave` stops the node: every key it
//! stores is written to the key's preference list in the ring without this
//! node, its hints are delivered, and `left` is gossiped to every live peer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::membership::Status;
use crate::node::Node;
use crate::ring::Ring;

/// Hints looked at per round.
const BATCH: usize = 1000;

/// Runs delivery rounds until cancelled.
pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let every = Duration::from_millis(node.cfg.gossip_interval_ms.max(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => { deliver(&node).await; }
        }
    }
}

/// One delivery round; returns how many hints were delivered.
pub async fn deliver(node: &Node) -> usize {
    let hints = match node.storage.hints(BATCH) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "reading hints failed");
            return 0;
        }
    };
    node.metrics.hints_pending.set(node.storage.hints_pending() as i64);
    if hints.is_empty() {
        return 0;
    }
    let ring = node.ring();
    let mut owner_down: HashSet<String> = HashSet::new();
    let mut delivered = 0;
    for hint in hints {
        let targets: Vec<String> = match node.member(&hint.owner) {
            Some((addr, Status::Alive)) => vec![addr],
            Some((_, Status::Left)) | None => {
                // The owner is gone for good: the key's replicas now take it,
                // this node included when it is one.
                let pref = ring.preference_list(hint.partition);
                if pref.contains(&node.id.as_str()) {
                    if let Err(e) = crate::coordinator::merge_local(node, &hint.key, &hint.record) {
                        tracing::warn!(error = %e, "merging a hint locally failed");
                        continue;
                    }
                }
                let others: Vec<String> = pref
                    .into_iter()
                    .filter(|id| *id != node.id)
                    .filter_map(|id| node.member(id).map(|(a, _)| a))
                    .collect();
                if others.is_empty() {
                    remove(node, &hint, &mut delivered);
                    continue;
                }
                others
            }
            Some(_) => continue,
        };
        if owner_down.contains(&hint.owner) {
            continue;
        }
        let mut ok = false;
        for t in &targets {
            match node.peers.write(t, &hint.key, &hint.record).await {
                Ok(()) => ok = true,
                Err(e) => tracing::debug!(owner = %hint.owner, error = %e, "hint delivery failed"),
            }
        }
        if !ok {
            // Do not hammer an owner that just failed; next round.
            owner_down.insert(hint.owner.clone());
            continue;
        }
        remove(node, &hint, &mut delivered);
    }
    node.metrics.hints_pending.set(node.storage.hints_pending() as i64);
    delivered
}

/// Deletes a delivered hint (unless it changed meanwhile) and counts it.
fn remove(node: &Node, hint: &crate::storage::Hint, delivered: &mut usize) {
    match node.storage.remove_hint(hint) {
        Ok(true) => {
            *delivered += 1;
            node.metrics.hints_delivered.inc();
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "removing a delivered hint failed"),
    }
}

/// Hands everything this node holds to the ring without it, then gossips
/// `left` to every live peer.
pub async fn leave(node: &Node) {
    let remaining: Vec<String> = {
        let t = node.members.lock().expect("members lock");
        t.ring_members().into_iter().filter(|id| *id != node.id).collect()
    };
    let after = Ring::new(&remaining, node.cfg.partitions, node.cfg.vnodes, node.cfg.replicas);
    let mut handed = 0usize;
    for p in 0..node.cfg.partitions {
        let targets: Vec<String> =
            after.preference_list(p).into_iter().filter_map(|id| node.member(id).map(|(a, _)| a)).collect();
        if targets.is_empty() {
            continue;
        }
        let items = match node.storage.scan(p) {
            Ok(it) => it.filter_map(Result::ok).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "scan for hand-off failed");
                continue;
            }
        };
        for (key, record) in items {
            for t in &targets {
                if let Err(e) = node.peers.write(t, &key, &record).await {
                    tracing::warn!(partition = p, peer = %t, error = %e, "hand-off write failed");
                }
            }
            handed += 1;
        }
    }
    deliver(node).await;
    node.members.lock().expect("members lock").leave(SystemTime::now());
    let peers: Vec<String> = remaining.iter().filter_map(|id| node.member(id).map(|(a, _)| a)).collect();
    let calls = peers.iter().map(|url| crate::membership::gossip::exchange(node, url));
    futures_util::future::join_all(calls).await;
    tracing::info!(keys = handed, "left the cluster");
}
