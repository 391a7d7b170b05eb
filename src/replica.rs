//! Replica access in one place: who holds a partition for reads, writes and
//! purges, and "this replica's copy of a key", wherever the replica is.
//!
//! Every set is computed from one [`ClusterView`], so a request sees one
//! placement throughout:
//! - the **read set** and the owners of the **write set** are the
//!   preference list on the placement ring (alive and suspect members);
//! - the write set's **stand-ins** are the alive nodes past it clockwise
//!   (this node too), in order: sloppy quorum's replacements;
//! - the **purge set** is the preference list on the ring of every member
//!   that has not left, dead ones included (SPEC §3: a tombstone is never
//!   purged while one of its replicas is unreachable).
//!
//! The copy functions answer from local storage when the replica is this
//! node and through the batched transport otherwise.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::cluster::ClusterView;
use crate::node::Node;
use crate::storage::{Record, StorageError};
use crate::transport::wire::{self, BatchReply};
use crate::transport::{Route, Target, TransportError};
use crate::version::Dot;

/// Why a replica could not be reached or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// This node's storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The message got no (good) answer.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The replica is not in the cluster view.
    #[error("{0} is not a member")]
    UnknownMember(String),
    /// The replica refused: it keeps no more hints.
    #[error("the stand-in keeps no more hints")]
    HintRefused,
}

impl ReplicaError {
    /// Whether the operation surely did not happen on the replica.
    pub fn not_applied(&self) -> bool {
        match self {
            ReplicaError::Transport(e) => e.not_delivered(),
            ReplicaError::UnknownMember(_) | ReplicaError::HintRefused => true,
            ReplicaError::Storage(_) => false,
        }
    }
}

/// Where a write for one partition goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSet {
    /// The preference list: the nodes that own the partition.
    pub owners: Vec<String>,
    /// Alive nodes past the preference list, clockwise (this node included
    /// whatever its status): who keeps a hint for an owner that does not
    /// answer.
    pub standins: VecDeque<String>,
}

/// The nodes a read of `partition` asks.
pub fn read_set(view: &ClusterView, partition: u32) -> Vec<String> {
    view.ring().preference_list(partition).into_iter().map(str::to_string).collect()
}

/// The nodes a write of `partition` goes to, and their stand-ins.
pub fn write_set(view: &ClusterView, partition: u32) -> WriteSet {
    let owners = read_set(view, partition);
    let standins = view
        .ring()
        .walk(partition)
        .skip(owners.len())
        .filter(|id| *id == view.me() || view.is_alive(id))
        .map(str::to_string)
        .collect();
    WriteSet { owners, standins }
}

/// The nodes that must all hold a tombstone of `partition` before it is
/// purged, the first of them deciding.
pub fn purge_set(view: &ClusterView, partition: u32) -> Vec<String> {
    view.ring_not_left().preference_list(partition).into_iter().map(str::to_string).collect()
}

fn target<'a>(view: &'a ClusterView, id: &'a str) -> Result<Target<'a>, ReplicaError> {
    let address = view.address(id).ok_or_else(|| ReplicaError::UnknownMember(id.to_string()))?;
    Ok(Target { id, address })
}

fn written(reply: BatchReply) -> Result<(), ReplicaError> {
    match reply {
        BatchReply::Written => Ok(()),
        BatchReply::Failed(e) => Err(TransportError::Remote(e).into()),
        BatchReply::Read(_) | BatchReply::Digest(_) => Err(TransportError::Malformed.into()),
    }
}

/// Replica `id`'s copy of `key`.
pub async fn read(
    node: &Node,
    view: &ClusterView,
    id: &str,
    partition: u32,
    key: &[u8],
) -> Result<Option<Record>, ReplicaError> {
    if id == node.id() {
        return local_read(node, view, partition, key).await;
    }
    match node.batch(target(view, id)?, wire::read_op(key)).await? {
        BatchReply::Read(r) => Ok(r),
        BatchReply::Failed(e) => Err(TransportError::Remote(e).into()),
        BatchReply::Written | BatchReply::Digest(_) => Err(TransportError::Malformed.into()),
    }
}

/// What a replica answered to a digest read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaCopy {
    /// Its whole record (`None`: it has nothing for the key): what a
    /// replica still receiving the partition answers, completed from a
    /// holder.
    Full(Option<Record>),
    /// The digest of its record (`None`: it has nothing for the key).
    Digest(Option<u128>),
}

/// Replica `id`'s digest of `key` (a remote replica; this node reads its
/// own copy whole, see [`read`]).
pub async fn digest(node: &Node, view: &ClusterView, id: &str, key: &[u8]) -> Result<ReplicaCopy, ReplicaError> {
    match node.batch(target(view, id)?, wire::digest_op(key)).await? {
        BatchReply::Digest(d) => Ok(ReplicaCopy::Digest(d)),
        BatchReply::Read(r) => Ok(ReplicaCopy::Full(r)),
        BatchReply::Failed(e) => Err(TransportError::Remote(e).into()),
        BatchReply::Written => Err(TransportError::Malformed.into()),
    }
}

/// This node's copy of `key`. While this node is still receiving the
/// partition (`Node::receiving`) its copy may lack keys, so
/// the copy of a node that holds the partition (the transfer's source, or
/// another replica) is fetched and merged in: a receiving node never
/// answers for a key as if it did not exist. If no holder answers, neither
/// does this.
pub async fn local_read(
    node: &Node,
    view: &ClusterView,
    partition: u32,
    key: &[u8],
) -> Result<Option<Record>, ReplicaError> {
    let local = node.storage().get(partition, key)?;
    if !node.receiving(view, partition) {
        return Ok(local);
    }
    // The transfer's source (a confirmed holder) if there is one, else every
    // other replica: a replica that is itself receiving refuses, and what
    // the others hold is merged.
    let source = node.ownership(|o| o.inbound().get(&partition).and_then(|i| i.source.clone()));
    let asked: Vec<String> = match source.filter(|s| view.is_alive(s)) {
        Some(s) => vec![s],
        None => {
            let others: Vec<String> = read_set(view, partition).into_iter().filter(|id| id != node.id()).collect();
            if others.is_empty() && view.sole_member() {
                // Every other member left: this copy is all there is.
                return Ok(local);
            }
            // No other replica on the ring (the others are dead to this
            // node, cut off from them): the holders are down, not gone, and
            // this copy may lack their keys; the error below.
            others.into_iter().filter(|id| view.is_alive(id)).collect()
        }
    };
    let answers = futures_util::future::join_all(asked.iter().map(|id| read_held(node, view, id, key))).await;
    let mut merged = local;
    let mut answered = false;
    for a in answers {
        let Ok(theirs) = a else { continue };
        answered = true;
        merged = match (merged, theirs) {
            (Some(a), Some(b)) => Some(a.sync(&b)),
            (a, b) => a.or(b),
        };
    }
    if !answered {
        return Err(ReplicaError::UnknownMember(format!("no holder of partition {partition} answered")));
    }
    Ok(merged)
}

/// What replica `id` itself stores for `key`, never completed from
/// elsewhere; refused by a replica that does not hold the partition yet.
/// Sent on its own (not batched): a receiving node answers a batched read
/// with this, and waiting behind its own queue could deadlock two
/// receiving nodes.
pub async fn read_held(node: &Node, view: &ClusterView, id: &str, key: &[u8]) -> Result<Option<Record>, ReplicaError> {
    let body = wire::batch_body(&[wire::read_local_op(key)]);
    let answer = node.call(target(view, id)?, Route::Batch, body).await?;
    match wire::decode::<Vec<BatchReply>>(&answer).and_then(|mut r| r.pop()) {
        Some(BatchReply::Read(r)) => Ok(r),
        Some(BatchReply::Failed(e)) => Err(TransportError::Remote(e).into()),
        _ => Err(TransportError::Malformed.into()),
    }
}

/// What replica `id` stores for `key` right now, as it is (no holder's copy
/// merged in): what `/cluster/replicas` shows.
pub async fn inspect(
    node: &Node,
    view: &ClusterView,
    id: &str,
    partition: u32,
    key: &[u8],
) -> Result<Option<Record>, ReplicaError> {
    if id == node.id() {
        return Ok(node.storage().get(partition, key)?);
    }
    match node.batch(target(view, id)?, wire::inspect_op(key)).await? {
        BatchReply::Read(r) => Ok(r),
        BatchReply::Failed(e) => Err(TransportError::Remote(e).into()),
        BatchReply::Written | BatchReply::Digest(_) => Err(TransportError::Malformed.into()),
    }
}

/// Merges `record` into replica `id`'s copy of `key`.
pub async fn merge(
    node: &Node,
    view: &ClusterView,
    id: &str,
    partition: u32,
    key: &[u8],
    record: &Record,
) -> Result<(), ReplicaError> {
    if id == node.id() {
        node.storage().merge(partition, key, record)?;
        return Ok(());
    }
    written(node.batch(target(view, id)?, wire::write_op(key, record)).await?)
}

/// Sends a write encoded once by [`wire::write_op`] to a remote replica.
pub async fn send_write(node: &Node, view: &ClusterView, id: &str, op: Bytes) -> Result<(), ReplicaError> {
    written(node.batch(target(view, id)?, op).await?)
}

/// Asks replica `id` to drop `key` if it holds exactly `dots`, all
/// purgeable; returns whether it did.
pub async fn purge(
    node: &Node,
    view: &ClusterView,
    id: &str,
    partition: u32,
    key: &[u8],
    dots: &[Dot],
) -> Result<bool, ReplicaError> {
    if id == node.id() {
        // The first replica checked the grace period; here only that nothing
        // live came in since.
        return Ok(node.storage().purge_if(partition, key, dots, crate::clock::now_ms(), 0)?);
    }
    match node.batch(target(view, id)?, wire::purge_op(key, dots)).await? {
        BatchReply::Written => Ok(true),
        BatchReply::Failed(_) => Ok(false),
        BatchReply::Read(_) | BatchReply::Digest(_) => Err(TransportError::Malformed.into()),
    }
}

/// Leaves `record` with stand-in `standin` as a hint for `owner`.
pub async fn hint(
    node: &Node,
    view: &ClusterView,
    standin: &str,
    owner: &str,
    partition: u32,
    key: &[u8],
    record: &Record,
) -> Result<(), ReplicaError> {
    if standin == node.id() {
        return match node.storage().store_hint(owner, partition, key, record)? {
            true => Ok(()),
            false => Err(ReplicaError::HintRefused),
        };
    }
    node.call(target(view, standin)?, Route::Hint, wire::hint_request(owner, key, record)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Membership;
    use crate::membership::{Digest, Table};
    use crate::ring::RingParams;
    use std::time::{Duration, SystemTime};

    #[test]
    fn sets_follow_the_view() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let params = RingParams { partitions: 8, vnodes: 8, replicas: 2 };
        let m = Membership::new(Table::new("a", "http://a", 1, now), params);
        let digests: Vec<Digest> = ["b", "c", "d"]
            .iter()
            .map(|id| Digest {
                id: id.to_string(),
                address: format!("http://{id}"),
                heartbeat: 1,
                ..Default::default()
            })
            .collect();
        let (_, view) = m.update(|t| t.merge(&digests, now));
        for p in 0..8 {
            let set = write_set(&view, p);
            assert_eq!(set.owners, read_set(&view, p));
            assert_eq!(set.owners.len(), 2);
            let walk: Vec<&str> = view.ring().walk(p).collect();
            assert_eq!(set.standins.iter().map(String::as_str).collect::<Vec<_>>(), walk[2..].to_vec());
            assert_eq!(purge_set(&view, p), set.owners, "nobody dead: the same nodes");
        }
        // d goes quiet and dies: it leaves the placement ring but stays in
        // the purge set.
        let timeouts = crate::membership::Timeouts {
            suspect_after: Duration::from_millis(500),
            dead_after: Duration::from_millis(1000),
            interval: Duration::from_millis(100),
        };
        let (_, view) = m.update(|t| {
            for i in 1..=30u64 {
                let at = now + Duration::from_millis(100 * i);
                let alive: Vec<Digest> = ["b", "c"]
                    .iter()
                    .map(|id| Digest {
                        id: id.to_string(),
                        address: format!("http://{id}"),
                        heartbeat: 1 + i,
                        ..Default::default()
                    })
                    .collect();
                t.merge(&alive, at);
                t.refresh(at, timeouts);
            }
        });
        assert_eq!(view.status("d"), Some(crate::membership::Status::Dead));
        let with_d = (0..8).find(|&p| view.ring_not_left().preference_list(p).contains(&"d")).unwrap();
        assert!(purge_set(&view, with_d).contains(&"d".to_string()));
        assert!(!write_set(&view, with_d).owners.contains(&"d".to_string()));
        assert!(!write_set(&view, with_d).standins.contains(&"d".to_string()));
    }
}
