//! Background purge of expired values and old tombstones.
//!
//! Driven by the storage's time-ordered indexes, so a round touches only keys
//! that are due, never a full scan. Every removal is a compare-and-swap on the
//! record as it is now: a write that lands in between wins, and its own index
//! entry brings the key back to the reaper later.
//!
//! A tombstone is purged only when every version of its key is a tombstone
//! (or expired) past `--tombstone-grace-ms` and every replica of its key holds
//! it (SPEC §3): the preference list over every member that has not left,
//! dead ones included, so an unreachable replica postpones the purge (the
//! index entry is deferred and retried) and can never bring the key back.
//! The key's first replica decides: once every other replica answered holding
//! the same versions, it tells each to drop exactly those versions, then
//! drops its own copy. The other replicas only wait, so a replica that already
//! purged is never mistaken for one that missed the delete.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::coordinator::now_ms;
use crate::node::Node;
use crate::ring::Ring;
use crate::storage::{Record, StorageError};
use crate::version::Dot;

/// Pause between rounds.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// Index entries handled per round and kind.
const BATCH: usize = 1000;

/// Runs rounds until cancelled.
pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = round(&node, now_ms()).await {
                    tracing::warn!(error = %e, "reaper round failed");
                }
            }
        }
    }
}

/// One round at `now`: returns (expired values purged, tombstones purged).
pub async fn round(node: &Node, now: u64) -> Result<(u64, u64), StorageError> {
    let storage = &node.storage;
    let mut expired = 0;
    for due in storage.due(false, now, BATCH)? {
        // Only whole records go: a record keeping a live version keeps its
        // expired ones too (the next write supersedes them), so this node
        // still holds every dot it issued (see `coordinator::new_version`).
        let removed = storage.update(due.partition, &due.key, |cur| match cur {
            Some(rec) if rec.values().iter().all(|v| v.payload.expired(now)) => {
                let n = rec.len() as u64;
                Ok::<_, ()>((None, n))
            }
            other => Ok((other, 0)),
        })?;
        expired += removed.map(|(n, _)| n).unwrap_or(0);
        storage.done(false, &due)?;
    }
    node.metrics.expired_purged.inc_by(expired);

    let grace = node.cfg.tombstone_grace_ms;
    let retry = now + grace.clamp(250, 5_000);
    let due = storage.due(true, now, BATCH)?;
    let ring = if due.is_empty() { None } else { Some(node.ring_not_left()) };
    let mut purged = 0;
    for due in due {
        let ring = ring.as_ref().expect("built when anything is due");
        let Some(local) = storage.get(due.partition, &due.key)? else {
            storage.done(true, &due)?;
            continue;
        };
        if !purgeable(&local, now, grace) {
            // Written again since; a newer tombstone brings its own entry.
            storage.done(true, &due)?;
            continue;
        }
        let pref = ring.preference_list(due.partition);
        if pref.first() != Some(&node.id.as_str()) {
            // The first replica decides (and may be us later, if it leaves).
            storage.defer(true, &due, retry)?;
            continue;
        }
        if !every_replica_holds(node, ring, due.partition, &due.key, &local).await {
            storage.defer(true, &due, retry)?;
            continue;
        }
        let dots: Vec<Dot> = local.values().iter().map(|v| v.dot.clone()).collect();
        for id in pref.iter().filter(|id| **id != node.id) {
            if let Some((addr, _)) = node.member(id) {
                if let Err(e) = node.peers.purge(&addr, &due.key, &dots).await {
                    tracing::debug!(peer = %id, error = %e, "purge not applied there; it keeps the tombstone");
                }
            }
        }
        if purge_if(node, &due.key, &dots)? {
            purged += 1;
        }
        storage.done(true, &due)?;
    }
    node.metrics.tombstones_purged.inc_by(purged);
    Ok((expired, purged))
}

/// Drops `key` if this node holds exactly the versions `dots` and they are
/// all tombstones or expired values; returns whether it did.
pub fn purge_if(node: &Node, key: &[u8], dots: &[Dot]) -> Result<bool, StorageError> {
    let partition = node.ring().partition_of(key);
    let now = now_ms();
    let out = node.storage.update(partition, key, |cur| match cur {
        // The first replica checked the grace period; here only that
        // nothing live came in since.
        Some(rec)
            if rec.len() == dots.len()
                && rec.values().iter().all(|v| dots.contains(&v.dot))
                && purgeable(&rec, now, 0) =>
        {
            Ok::<_, ()>((None, true))
        }
        other => Ok((other, false)),
    })?;
    Ok(out.map(|(gone, _)| gone).unwrap_or(false))
}

/// Whether every other replica of the key (in `ring`) answers holding exactly
/// `local`'s versions.
async fn every_replica_holds(node: &Node, ring: &Ring, partition: u32, key: &[u8], local: &Record) -> bool {
    for id in ring.preference_list(partition) {
        if id == node.id {
            continue;
        }
        let Some((addr, _)) = node.member(id) else { return false };
        match node.peers.read(&addr, key).await {
            Ok(Some(theirs)) => {
                let same = theirs.len() == local.len()
                    && local.values().iter().all(|v| theirs.values().iter().any(|t| t.dot == v.dot));
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// Whether a record holds nothing but tombstones past their grace period (or
/// expired values).
pub fn purgeable(rec: &Record, now: u64, grace_ms: u64) -> bool {
    rec.values().iter().all(|v| {
        v.payload.expired(now) || (v.payload.deleted && v.payload.timestamp_ms.saturating_add(grace_ms) <= now)
    })
}
