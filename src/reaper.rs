//! Background purge of expired values and old tombstones.
//!
//! Driven by the storage's time-ordered indexes, so a round touches only keys
//! that are due, never a full scan. Every removal is a compare-and-swap on the
//! record as it is now: a write that lands in between wins, and its own index
//! entry brings the key back to the reaper later.
//!
//! A tombstone is purged only when every version of its key is a tombstone
//! (or expired) past `--tombstone-grace-ms` and every replica of its key holds
//! it (SPEC §3). With this node as the key's only replica that is immediate;
//! with peers the entry waits until they can be asked.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::coordinator::now_ms;
use crate::node::Node;
use crate::storage::{Record, StorageError};

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
                let n = node.clone();
                match tokio::task::spawn_blocking(move || round(&n, now_ms())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "reaper round failed"),
                    Err(e) => tracing::error!(error = %e, "reaper round panicked"),
                }
            }
        }
    }
}

/// One round at `now`: returns (expired values purged, tombstones purged).
pub fn round(node: &Node, now: u64) -> Result<(u64, u64), StorageError> {
    let storage = &node.storage;
    let mut expired = 0;
    for due in storage.due(false, now, BATCH)? {
        let removed = storage.update(due.partition, &due.key, |cur| {
            let Some(mut rec) = cur else {
                return Ok::<_, ()>((None, 0u64));
            };
            let before = rec.len();
            rec.retain(|v| !v.payload.expired(now));
            let removed = (before - rec.len()) as u64;
            Ok(((!rec.is_empty()).then_some(rec), removed))
        })?;
        expired += removed.unwrap_or(0);
        storage.done(false, &due)?;
    }
    node.metrics.expired_purged.inc_by(expired);

    let grace = node.cfg.tombstone_grace_ms;
    let mut purged = 0;
    for due in storage.due(true, now, BATCH)? {
        let sole_replica = {
            let ring = node.ring();
            ring.preference_list(due.partition) == [node.id.as_str()]
        };
        if sole_replica {
            let gone = storage.update(due.partition, &due.key, |cur| match cur {
                Some(rec) if purgeable(&rec, now, grace) => Ok::<_, ()>((None, 1u64)),
                other => Ok((other, 0)),
            })?;
            purged += gone.unwrap_or(0);
        }
        storage.done(true, &due)?;
    }
    node.metrics.tombstones_purged.inc_by(purged);
    Ok((expired, purged))
}

/// Whether a record holds nothing but tombstones past their grace period (or
/// expired values).
pub fn purgeable(rec: &Record, now: u64, grace_ms: u64) -> bool {
    rec.values().iter().all(|v| {
        v.payload.expired(now)
            || (v.payload.deleted && v.payload.timestamp_ms.saturating_add(grace_ms) <= now)
    })
}
