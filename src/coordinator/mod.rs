//! Coordination of client reads and writes (SPEC §3, §4).
//!
//! The coordinator turns a client request into replica operations. A write
//! computes the new version on this node (a fresh dot from this node's
//! counter, superseding what the context saw), checks the sibling cap against
//! the merged state, stores it, and waits until the requested W replicas hold
//! it. A read gathers R replicas' records, merges them with
//! [`Siblings::sync`](crate::version::Siblings::sync), and hides expired values.
//!
//! With one member the preference list is this node alone, so R and W are
//! capped to 1 (SPEC §2) and every operation is local.

pub mod quorum;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::node::Node;
use crate::storage::{Content, Record, StorageError};
use crate::version::Context;

pub use quorum::{Level, LevelError};

/// Why a coordinated operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The write would leave more siblings than `--max-siblings`.
    #[error("the write would leave {would} versions of this key, more than --max-siblings ({limit}); read the key and write with its X-Context to resolve them")]
    TooManySiblings { limit: usize, would: usize },
    /// Too few replicas answered.
    #[error("only {acked} of the {needed} required replicas answered")]
    QuorumNotMet {
        needed: usize,
        acked: usize,
        context: Option<Context>,
    },
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A client write (PUT or DELETE).
#[derive(Debug, Clone)]
pub struct Write {
    /// The key.
    pub key: Vec<u8>,
    /// The context from an earlier read, or `None` for a blind write.
    pub context: Option<Context>,
    /// The value, or a tombstone.
    pub content: Content,
    /// Requested W.
    pub level: Level,
}

/// The merged state of a key as a read saw it.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Versions visible to clients (expired ones hidden), live and deleted.
    pub visible: Vec<crate::version::Version<Content>>,
    /// The causal context of everything read, expired versions included.
    pub context: Context,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Coordinates a client write; returns the new version's clock, which is the
/// context the client gets back.
pub async fn write(node: &Node, w: Write) -> Result<Context, CoordError> {
    let partition = node.ring().partition_of(&w.key);
    let floor = node.storage.next_counter()?;
    let limit = node.cfg.max_siblings as usize;
    let me = node.id.as_str();
    let result = node.storage.update(partition, &w.key, |current| {
        let current = current.unwrap_or_default();
        let (next, clock) = new_version(&current, w.context.as_ref(), me, floor, w.content.clone());
        // A write that leaves fewer versions than before is never refused.
        if next.len() > limit && next.len() >= current.len() {
            return Err(CoordError::TooManySiblings {
                limit,
                would: next.len(),
            });
        }
        Ok((Some(next), clock))
    })?;
    let clock = match result {
        Ok(clock) => clock,
        Err(e) => {
            if matches!(e, CoordError::TooManySiblings { .. }) {
                node.metrics.sibling_refusals.inc();
            }
            return Err(e);
        }
    };
    node.storage.durable().await?;
    Ok(clock)
}

/// The state after a client write to `current`, and the new version's clock.
///
/// Without a context the write supersedes everything held here (SPEC §3: plain
/// sequential PUTs overwrite). Expired versions are superseded by any write:
/// a value written after an expiry replaces the expired one rather than
/// standing beside it as an invisible sibling.
pub fn new_version(
    current: &Record,
    context: Option<&Context>,
    node: &str,
    floor: u64,
    content: Content,
) -> (Record, Context) {
    let mut ctx = context.cloned().unwrap_or_else(|| current.context());
    let now = content.timestamp_ms;
    for v in current.values().iter().filter(|v| v.payload.expired(now)) {
        ctx.add(v.dot.clone());
        ctx.join(&v.context);
    }
    let dot = current.next_dot(&ctx, node, floor);
    let next = current.update(&ctx, dot.clone(), content);
    let mut clock = ctx;
    clock.add(dot);
    (next, clock)
}

/// Coordinates a client read at level `_level`.
pub async fn read(node: &Node, key: &[u8], _level: Level) -> Result<ReadResult, CoordError> {
    let partition = node.ring().partition_of(key);
    let record = node.storage.get(partition, key)?.unwrap_or_default();
    Ok(visible(&record, now_ms()))
}

/// What a client may see of a record at `now_ms`.
pub fn visible(record: &Record, now_ms: u64) -> ReadResult {
    ReadResult {
        visible: record
            .values()
            .iter()
            .filter(|v| !v.payload.expired(now_ms))
            .cloned()
            .collect(),
        context: record.context(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(v: &str, ts: u64, expires: Option<u64>) -> Content {
        Content {
            value: v.into(),
            content_type: "text/plain".into(),
            timestamp_ms: ts,
            expires_at_ms: expires,
            deleted: false,
        }
    }

    #[test]
    fn a_write_after_expiry_replaces_the_expired_value() {
        let (r, _) = new_version(&Record::new(), None, "a", 0, content("old", 10, Some(20)));
        // A stale context that never saw the expiring value.
        let (r, _) = new_version(&r, Some(&Context::new()), "b", 0, content("new", 30, None));
        assert_eq!(r.len(), 1);
        assert_eq!(r.values()[0].payload.value, b"new");
    }

    #[test]
    fn the_returned_clock_is_the_new_versions_not_the_keys() {
        let (r, _) = new_version(&Record::new(), None, "a", 0, content("x", 1, None));
        let (r, clock) = new_version(&r, Some(&Context::new()), "b", 0, content("y", 2, None));
        assert_eq!(r.len(), 2);
        // The sibling written by "a" is not in the context handed back.
        assert!(!clock.covers(&r.values()[0].dot));
        assert!(clock.covers(&r.values()[1].dot));
    }

    #[test]
    fn expired_values_are_hidden_but_their_clock_is_kept() {
        let (r, _) = new_version(&Record::new(), None, "a", 0, content("x", 1, Some(5)));
        let seen = visible(&r, 10);
        assert!(seen.visible.is_empty());
        assert!(seen.context.covers(&r.values()[0].dot));
        assert_eq!(visible(&r, 4).visible.len(), 1);
    }
}
