//! Background purge of expired values and old tombstones: two workers.
//!
//! Driven by the storage's time-ordered indexes, so a round touches only keys
//! that are due, never a full scan. Every removal is a compare-and-swap on the
//! record as it is now: a write that lands in between wins, and its own index
//! entry brings the key back to the reaper later.
//!
//! A tombstone is purged only when every version of its key is a tombstone
//! (or expired) past `--tombstone-grace-ms` and every replica of its key holds
//! it (SPEC §3): the purge set (the preference list over every member that
//! has not left, dead ones included), so an unreachable replica postpones the
//! purge (the index entry is deferred and retried) and can never bring the
//! key back. The key's first replica decides: once every other replica
//! answered holding the same versions, it tells each to drop exactly those
//! versions, then drops its own copy. The other replicas only wait, so a
//! replica that already purged is never mistaken for one that missed the
//! delete.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::cluster::ClusterView;
use crate::node::Node;
use crate::replica;
use crate::storage::{purgeable, Record, StorageError};
use crate::version::Dot;
use crate::worker::{self, State, WorkError, Worker};

/// Pause between rounds.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// Index entries handled per round and kind.
const BATCH: usize = 1000;

/// Removes records whose every version expired.
pub struct Expiry {
    node: Arc<Node>,
    tick: tokio::time::Interval,
}

impl Expiry {
    /// A worker for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, tick: worker::ticker(INTERVAL) }
    }
}

impl Worker for Expiry {
    fn name(&self) -> &'static str {
        "expiry"
    }

    async fn work(&mut self) -> Result<State, WorkError> {
        let (_, handled) = expire_round(&self.node, now_ms())?;
        Ok(if handled == BATCH { State::Busy } else { State::Idle })
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

/// Purges tombstones every replica holds, past their grace period.
pub struct Tombstones {
    node: Arc<Node>,
    tick: tokio::time::Interval,
}

impl Tombstones {
    /// A worker for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, tick: worker::ticker(INTERVAL) }
    }
}

impl Worker for Tombstones {
    fn name(&self) -> &'static str {
        "tombstone-purge"
    }

    async fn work(&mut self) -> Result<State, WorkError> {
        tombstone_round(&self.node, now_ms()).await?;
        Ok(State::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

/// Logs and counts a due record that does not decode (once per key).
fn undecodable(node: &Node, due: &crate::storage::Due, e: &crate::storage::record::RecordError) {
    node.log_once(format!("undecodable {}/{}", due.partition, String::from_utf8_lossy(&due.key)), || {
        node.metrics().corrupt_records.inc();
        tracing::error!(partition = due.partition, key = %String::from_utf8_lossy(&due.key), error = %e, "a record due for expiry or purge does not decode; skipped");
    });
}

/// One expiry round at `now`: returns (versions purged, index entries handled).
pub fn expire_round(node: &Node, now: u64) -> Result<(u64, usize), StorageError> {
    let storage = node.storage();
    let due = storage.due(false, now, BATCH)?;
    let mut expired = 0;
    for d in &due {
        match storage.expire(d.partition, &d.key, now) {
            Ok(n) => expired += n,
            // A record that does not decode cannot be judged: its entry goes,
            // so that it does not hold up every later one.
            Err(StorageError::Record(e)) => undecodable(node, d, &e),
            Err(e) => return Err(e),
        }
        storage.done(false, d)?;
    }
    node.metrics().expired_purged.inc_by(expired);
    Ok((expired, due.len()))
}

/// One tombstone round at `now`: returns the tombstones purged.
pub async fn tombstone_round(node: &Node, now: u64) -> Result<u64, StorageError> {
    let storage = node.storage();
    let grace = node.cfg().tombstone_grace_ms;
    let retry = now + grace.clamp(250, 5_000);
    let due = storage.due(true, now, BATCH)?;
    if due.is_empty() {
        return Ok(0);
    }
    let view = node.view();
    let mut purged = 0;
    for due in due {
        let local = match storage.get(due.partition, &due.key) {
            // Gone, or already purged down to its marker.
            Ok(None) => None,
            Ok(Some(rec)) if rec.is_empty() => None,
            Ok(some) => some,
            Err(StorageError::Record(e)) => {
                undecodable(node, &due, &e);
                None
            }
            Err(e) => return Err(e),
        };
        let Some(local) = local else {
            storage.done(true, &due)?;
            continue;
        };
        if !purgeable(&local, now, grace) {
            // Written again since; a newer tombstone brings its own entry.
            storage.done(true, &due)?;
            continue;
        }
        let set = replica::purge_set(&view, due.partition);
        if set.first().map(String::as_str) != Some(node.id()) {
            // The first replica decides (and may be us later, if it leaves).
            storage.defer(true, &due, retry)?;
            continue;
        }
        if !every_replica_holds(node, &view, &set, due.partition, &due.key, &local).await {
            storage.defer(true, &due, retry)?;
            continue;
        }
        let dots: Vec<Dot> = local.values().iter().map(|v| v.dot.clone()).collect();
        for id in set.iter().filter(|id| *id != node.id()) {
            match replica::purge(node, &view, id, due.partition, &due.key, &dots).await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(peer = %id, "purge not applied there (changed since); it keeps its copy"),
                Err(e) => tracing::debug!(peer = %id, error = %e, "purge not applied there; it keeps the tombstone"),
            }
        }
        if storage.purge_if(due.partition, &due.key, &dots, now_ms(), 0)? {
            purged += 1;
        }
        storage.done(true, &due)?;
    }
    node.metrics().tombstones_purged.inc_by(purged);
    Ok(purged)
}

/// Whether every other replica in `set` answers holding `local`'s versions
/// and nothing else: each of its versions is one of ours and it has seen
/// every one of ours (a replica that already purged them, holding only the
/// marker, counts).
async fn every_replica_holds(
    node: &Node,
    view: &ClusterView,
    set: &[String],
    partition: u32,
    key: &[u8],
    local: &Record,
) -> bool {
    for id in set.iter().filter(|id| *id != node.id()) {
        match replica::read(node, view, id, partition, key).await {
            Ok(Some(theirs)) => {
                let seen = theirs.context();
                let same = theirs.values().iter().all(|t| local.values().iter().any(|v| v.dot == t.dot))
                    && local.values().iter().all(|v| seen.covers(&v.dot));
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}
