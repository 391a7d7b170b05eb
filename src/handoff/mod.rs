//! Hinted handoff (SPEC §4) and the hand-off of a leaving node.
//!
//! A stand-in keeps a write for an unreachable owner in the `hints` tree
//! (durable, merged per key). The [`HintDelivery`] worker hands hints to
//! owners that are alive again and deletes a hint only after the owner
//! acknowledged it and only if it did not change meanwhile. A hint whose
//! owner has left or is dead goes to the key's current preference list
//! instead of waiting for ever (a dead owner that returns catches up from
//! the partition's holders, see `crate::transfer`).
//!
//! [`leave`] runs when `POST /cluster/leave` stops the node: every key it
//! stores is written to the key's preference list in the ring without this
//! node, every hint it keeps goes to the live members of its key's
//! preference list, and `left` is gossiped to every live peer; if anything
//! was not taken, the node does not announce `left`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::ClusterView;
use crate::membership::Status;
use crate::node::Node;
use crate::replica;
use crate::ring::Ring;
use crate::storage::Hint;
use crate::worker::{self, State, WorkError, Worker};

/// Hints looked at per round.
const BATCH: usize = 1000;
/// Keys read per page while handing a partition off.
const PAGE: usize = 500;

/// The hint delivery worker: a round every gossip interval (at least 50 ms).
pub struct HintDelivery {
    node: Arc<Node>,
    tick: tokio::time::Interval,
    /// Where the next round starts: rounds go through the hints page by
    /// page, so hints for one owner that stays unreachable (a thousand
    /// and more) do not keep those for every other owner waiting.
    after: Option<Vec<u8>>,
}

impl HintDelivery {
    /// A worker for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        let tick = worker::ticker(Duration::from_millis(node.cfg().gossip_interval_ms.max(50)));
        Self { node, tick, after: None }
    }
}

impl Worker for HintDelivery {
    fn name(&self) -> &'static str {
        "hint-delivery"
    }

    async fn work(&mut self) -> Result<State, WorkError> {
        let (_, next) = deliver_page(&self.node, self.after.take()).await?;
        self.after = next;
        Ok(State::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

/// One delivery round over the first page of hints; returns how many
/// were delivered.
pub async fn deliver(node: &Node) -> Result<usize, crate::storage::StorageError> {
    Ok(deliver_page(node, None).await?.0)
}

/// One delivery round over the page of hints after `after`; returns how
/// many were delivered and where the next page starts (`None`: from the
/// first again).
async fn deliver_page(
    node: &Node,
    after: Option<Vec<u8>>,
) -> Result<(usize, Option<Vec<u8>>), crate::storage::StorageError> {
    let storage = node.storage();
    let page = storage.hints_after(after.as_deref(), BATCH)?;
    node.metrics().hints_pending.set(storage.hints_pending() as i64);
    if page.corrupt > 0 {
        // Counted and logged once (every round meets them again).
        node.log_once("corrupt hints".to_string(), || {
            node.metrics().corrupt_records.inc_by(page.corrupt);
            tracing::error!(
                entries = page.corrupt,
                "hints that do not decode are skipped; anti-entropy repairs their keys"
            )
        });
    }
    let (hints, next) = (page.hints, page.next);
    if hints.is_empty() {
        return Ok((0, next));
    }
    let view = node.view();
    let mut owner_down: HashSet<String> = HashSet::new();
    let mut delivered = 0;
    for hint in hints {
        let targets: Vec<String> = match view.status(&hint.owner) {
            Some(Status::Alive) => vec![hint.owner.clone()],
            Some(Status::Left | Status::Dead) | None => {
                // The owner is gone (for good, or until it returns, when it
                // catches up from the partition's holders): the key's
                // replicas now take it, this node included when it is one.
                let pref = replica::read_set(&view, hint.partition);
                if pref.iter().any(|id| id == node.id()) {
                    if let Err(e) = storage.merge(hint.partition, &hint.key, &hint.record) {
                        tracing::warn!(error = %e, "merging a hint locally failed");
                        continue;
                    }
                }
                let others: Vec<String> = pref.into_iter().filter(|id| id != node.id()).collect();
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
            match replica::merge(node, &view, t, hint.partition, &hint.key, &hint.record).await {
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
    node.metrics().hints_pending.set(storage.hints_pending() as i64);
    Ok((delivered, next))
}

/// Deletes a delivered hint (unless it changed meanwhile) and counts it.
fn remove(node: &Node, hint: &Hint, delivered: &mut usize) {
    match node.storage().remove_hint(hint) {
        Ok(true) => {
            *delivered += 1;
            node.metrics().hints_delivered.inc();
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "removing a delivered hint failed"),
    }
}

/// Hands everything this node holds to the ring without it, then gossips
/// `left` to every live peer. Each page of keys goes to every new owner at
/// once and must be acknowledged by all of them ([`hand_off_partition`]); a
/// record that does not decode is logged and counted
/// (`dynakv_corrupt_records_total`), never silently skipped. If anything
/// could not be handed off, the node does not announce `left` (it stays a
/// member, and its copies with it) and says why.
pub async fn leave(node: &Node) -> Result<u64, String> {
    if node.view().sole_member() {
        tracing::info!(
            data_dir = %node.cfg().data_dir.display(),
            "the last member leaves: nobody to hand its data to, which stays in its data dir"
        );
    }
    let mut handed = 0u64;
    for p in 0..node.cfg().partitions {
        handed += hand_off_partition(node, p).await?;
    }
    let view = node.view();
    let after = view.ring_without(node.id());
    let hints = hand_off_hints(node, &view, &after).await?;
    node.mark_left();
    let view = node.view();
    let peers: Vec<(String, String)> = view
        .members()
        .filter(|m| m.id != node.id() && m.status.on_ring())
        .map(|m| (m.id.clone(), m.address.clone()))
        .collect();
    let calls = peers.iter().map(|(id, address)| crate::gossip::exchange(node, id, address));
    futures_util::future::join_all(calls).await;
    tracing::info!(keys = handed, hints, "left the cluster");
    Ok(handed)
}

/// Hands partition `p` to its owners in the ring without this node, a page
/// of keys at a time, every page to every owner; returns the keys handed.
///
/// A page not acknowledged is sent again (pauses growing to a second) to the
/// owners the ring has then. An owner that stopped answering is waited for
/// until it is declared dead and leaves the ring (up to twice
/// `--dead-after-ms`, plus a few request timeouts), and the partition then starts over from its first
/// page with the owners that replaced it, so each of them gets every key.
/// The leave fails when that time runs out, or when no owner is left on the
/// ring while other members have not left (dead ones still hold copies and
/// come back; leaving would take this copy away). A partition with nowhere
/// to go because every other member left goes nowhere.
async fn hand_off_partition(node: &Node, p: u32) -> Result<u64, String> {
    let storage = node.storage();
    // Twice the time to be declared dead: its heartbeat may have advanced
    // last a little after its first failure here, and the others' verdict
    // reaches this node by gossip.
    let wait = Duration::from_millis(node.cfg().dead_after_ms) * 2 + node.timeout() * 4;
    let mut give_up: Option<tokio::time::Instant> = None;
    'owners: loop {
        let view = node.view();
        let owners = owners_after_leave(node, &view, p);
        if !storage.has_data(p).map_err(|e| e.to_string())? || (owners.is_empty() && view.sole_member()) {
            return Ok(0);
        }
        if owners.is_empty() {
            return Err(format!(
                "partition {p} has no owner on the ring without this node, and other members have not left"
            ));
        }
        let mut handed = 0u64;
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = storage.scan_from_async(p, cursor.take(), PAGE).await.map_err(|e| e.to_string())?;
            let mut records = Vec::with_capacity(page.items.len());
            for (key, record) in page.items {
                match record {
                    Ok(r) => records.push((key, r)),
                    Err(e) => {
                        node.metrics().corrupt_records.inc();
                        tracing::error!(partition = p, key = %String::from_utf8_lossy(&key), error = %e, "record does not decode; not handed off");
                    }
                }
            }
            let mut attempt = 0u64;
            loop {
                let sends = records
                    .iter()
                    .flat_map(|(k, r)| owners.iter().map(move |t| (t, k, r)))
                    .map(|(t, k, r)| replica::merge(node, &view, t, p, k, r));
                let Some(e) = futures_util::future::join_all(sends).await.into_iter().find_map(Result::err) else {
                    break;
                };
                let deadline = *give_up.get_or_insert_with(|| tokio::time::Instant::now() + wait);
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("partition {p} not acknowledged by its new owners: {e}"));
                }
                attempt += 1;
                tracing::warn!(partition = p, error = %e, attempt, "hand-off page not acknowledged; again");
                tokio::time::sleep(Duration::from_millis((200 * attempt).min(1000))).await;
                if owners_after_leave(node, &node.view(), p) != owners {
                    tracing::info!(
                        partition = p,
                        "the partition's owners changed during the hand-off; starting it over"
                    );
                    continue 'owners;
                }
            }
            handed += records.len() as u64;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(handed),
            }
        }
    }
}

/// The owners of partition `p` in `view`'s ring without this node.
fn owners_after_leave(node: &Node, view: &ClusterView, p: u32) -> Vec<String> {
    let after = view.ring_without(node.id());
    after.preference_list(p).into_iter().filter(|id| view.member(id).is_some()).map(str::to_string).collect()
}

/// Hands every hint this node keeps to the live members of its key's
/// preference list in the ring without this node (the intended owner too
/// when it is alive), deleting each one at least one of them acknowledged.
/// A hint nobody takes is tried again a few times; then the leave fails
/// rather than take the only extra copy of an acknowledged write with it.
/// Returns how many hints were handed off.
async fn hand_off_hints(node: &Node, view: &ClusterView, after: &Ring) -> Result<u64, String> {
    const ATTEMPTS: u64 = 5;
    let storage = node.storage();
    let alive = |id: &str| id != node.id() && matches!(view.status(id), Some(Status::Alive));
    let mut handed = 0u64;
    let mut stalled = 0u64;
    loop {
        // One pass over every hint that decodes, a page at a time (one that
        // does not cannot be handed to anyone, and does not hide those
        // after it).
        let (mut seen, mut progress) = (false, false);
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = storage.hints_after(cursor.as_deref(), BATCH).map_err(|e| e.to_string())?;
            for hint in page.hints {
                seen = true;
                let mut targets: Vec<&str> =
                    after.preference_list(hint.partition).into_iter().filter(|id| alive(id)).collect();
                if alive(&hint.owner) && !targets.contains(&hint.owner.as_str()) {
                    targets.push(&hint.owner);
                }
                let sends =
                    targets.iter().map(|t| replica::merge(node, view, t, hint.partition, &hint.key, &hint.record));
                let acked = futures_util::future::join_all(sends).await.into_iter().filter(Result::is_ok).count();
                if acked > 0 && storage.remove_hint(&hint).map_err(|e| e.to_string())? {
                    handed += 1;
                    progress = true;
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if !seen {
            return Ok(handed);
        }
        if progress {
            stalled = 0;
            continue;
        }
        stalled += 1;
        if stalled >= ATTEMPTS {
            return Err(format!("{} hints could not be handed to any live replica", storage.hints_pending()));
        }
        tracing::warn!(
            pending = storage.hints_pending(),
            attempt = stalled,
            "hints not taken by any live replica; again"
        );
        tokio::time::sleep(Duration::from_millis(200 * stalled)).await;
    }
}
