//! What a node answers to its peers: the internal services behind
//! [`Route`]s, independent of HTTP. `api::internal` serves them over
//! `/internal/*` (with the body limits and the cluster secret); in-memory
//! networks in tests call [`handle`] directly.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::config::valid_node_id;
use crate::merkle;
use crate::node::{GossipRefusal, Node};
use crate::ownership::Standing;
use crate::storage::StorageError;
use crate::transport::wire::{
    self, AeCompare, AeDiff, AeReply, BatchOp, BatchReply, GossipMessage, HintRequest, TransferReply, TransferRequest,
};
use crate::transport::Route;

/// Why an internal request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The body does not decode or is not acceptable.
    #[error("{0}")]
    InvalidBody(String),
    /// Gossip from a node that must not be a member here.
    #[error("{0}")]
    MembershipRefused(String),
    /// This stand-in keeps no more hints.
    #[error("hint backlog full")]
    HintBacklogFull,
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Serves one internal request.
pub async fn handle(node: &Arc<Node>, route: Route, body: &[u8]) -> Result<Bytes, RpcError> {
    match route {
        Route::Gossip => gossip(node, body),
        Route::Batch => batch(node, body).await,
        Route::Hint => hint(node, body).await.map(|()| Bytes::new()),
        Route::AntiEntropy => anti_entropy(node, body).await,
        Route::Transfer => transfer(node, body).await,
    }
}

/// Keys in one transfer page at most.
pub const MAX_TRANSFER_KEYS: u32 = 10_000;
/// Record bytes in one transfer page, about.
pub const TRANSFER_PAGE_BYTES: usize = 2 << 20;

/// Ownership transfer: says whether this node holds the partition and, if
/// it does, sends a page of it. A record that does not decode is logged and
/// counted, and left out.
pub async fn transfer(node: &Arc<Node>, body: &[u8]) -> Result<Bytes, RpcError> {
    let req: TransferRequest = decode(body)?;
    if req.partition >= node.cfg().partitions {
        return Err(RpcError::InvalidBody(format!("no partition {}", req.partition)));
    }
    let holds = node.ownership(|o| o.holds(req.partition));
    let storage = node.storage().clone();
    let has_data = storage.has_data(req.partition)?;
    let mut reply = TransferReply { holds, has_data, items: Vec::new(), next: None };
    if holds && req.limit > 0 {
        let (p, after, limit) = (req.partition, req.after.map(|a| a.into_vec()), req.limit.min(MAX_TRANSFER_KEYS));
        let page = tokio::task::spawn_blocking(move || {
            storage.scan_bounded(p, after.as_deref(), limit as usize, TRANSFER_PAGE_BYTES)
        })
        .await
        .map_err(|e| RpcError::Storage(StorageError::Blocking(e.to_string())))??;
        for (key, rec) in page.items {
            match rec {
                Ok(r) => reply.items.push((key.into(), r)),
                Err(e) => {
                    node.metrics().corrupt_records.inc();
                    tracing::error!(partition = p, key = %String::from_utf8_lossy(&key), error = %e, "record does not decode; not transferred");
                }
            }
        }
        reply.next = page.next.map(Into::into);
    }
    Ok(Bytes::from(wire::encode(&reply)))
}

/// Most tree nodes one anti-entropy request may ask about.
pub const MAX_AE_NODES: usize = 1 << 16;

/// Anti-entropy: compares the asker's tree nodes with this node's trees and
/// answers for each that differs (children's hashes, or a leaf's keys), or
/// that cannot be compared (a partition this node does not replicate or has
/// not built its tree for).
pub async fn anti_entropy(node: &Arc<Node>, body: &[u8]) -> Result<Bytes, RpcError> {
    let ask: AeCompare = decode(body)?;
    if ask.nodes.len() > MAX_AE_NODES {
        return Err(RpcError::InvalidBody(format!("more than {MAX_AE_NODES} tree nodes asked")));
    }
    let view = node.view();
    let storage = node.storage().clone();
    let me = node.id().to_string();
    let q = node.cfg().partitions;
    let held: std::collections::BTreeSet<u32> =
        ask.nodes.iter().map(|n| n.partition).filter(|&p| node.ownership(|o| o.holds(p))).collect();
    let holds = move |p: u32| held.contains(&p);
    let answer = tokio::task::spawn_blocking(move || -> Result<AeReply, RpcError> {
        let mut diffs = Vec::new();
        for n in ask.nodes {
            if n.partition >= q || n.level > merkle::DEPTH || n.index >= merkle::width(n.level) {
                return Err(RpcError::InvalidBody(format!("no tree node {}/{}/{}", n.partition, n.level, n.index)));
            }
            let replicates = view.ring().preference_list(n.partition).contains(&me.as_str()) || holds(n.partition);
            if !replicates || !storage.tree_ready(n.partition) {
                diffs.push(AeDiff::NotReady { partition: n.partition });
                continue;
            }
            let tree = storage.merkle(n.partition);
            if tree.get(n.level, n.index) == Some(u64::from_le_bytes(n.hash)) {
                continue;
            }
            diffs.push(match tree.children(n.level, n.index) {
                Some(children) => AeDiff::Children {
                    partition: n.partition,
                    level: n.level,
                    index: n.index,
                    hashes: children.iter().map(|h| h.to_le_bytes()).collect(),
                },
                None => AeDiff::Leaf {
                    partition: n.partition,
                    index: n.index,
                    items: storage
                        .leaf_items(n.partition, n.index as u16)?
                        .into_iter()
                        .map(|(k, h)| (k.into(), h.to_le_bytes()))
                        .collect(),
                },
            });
        }
        Ok(AeReply { diffs })
    })
    .await
    .map_err(|e| RpcError::Storage(StorageError::Blocking(e.to_string())))??;
    Ok(Bytes::from(wire::encode(&answer)))
}

/// A gossip exchange: merge the sender's table, answer with ours (JSON).
pub fn gossip(node: &Node, body: &[u8]) -> Result<Bytes, RpcError> {
    let msg: GossipMessage =
        serde_json::from_slice(body).map_err(|e| RpcError::InvalidBody(format!("invalid gossip JSON: {e}")))?;
    node.accept_gossip(&msg).map_err(|e| match e {
        GossipRefusal::NotAMember(why) => RpcError::MembershipRefused(why),
        GossipRefusal::Invalid(why) => RpcError::InvalidBody(why),
    })?;
    Ok(Bytes::from(serde_json::to_vec(&node.gossip_message()).expect("gossip serializes")))
}

/// Most holder reads one batch has in flight at once (see [`batch`]).
const REMOTE_READS: usize = 16;

/// Replica reads, writes and purges, answered in order. One flush covers
/// every write of the batch when `--sync-writes` is on.
pub async fn batch(node: &Node, body: &[u8]) -> Result<Bytes, RpcError> {
    let ops: Vec<BatchOp> = decode(body)?;
    let storage = node.storage();
    let view = node.view();
    let q = node.cfg().partitions;
    let partition_of = |key: &[u8]| crate::ring::partition_of(key, q);
    let mut replies = Vec::with_capacity(ops.len());
    let mut wrote = false;
    // Reads of a partition this node is still receiving ask a holder too:
    // done together after the rest, so a batch full of them waits for one
    // round trip instead of one each (which could outlast the sender's
    // timeout and fail the batch's writes with it).
    let mut remote: Vec<(usize, u32, &[u8])> = Vec::new();
    for op in &ops {
        let reply = match op {
            // A partition this node is still receiving is answered with a
            // holder's copy merged in (a digest read too: its own copy may
            // lack the key), and one it neither owns nor holds (a
            // coordinator with an older ring asks) is not answered: never
            // as if its keys did not exist. Otherwise a digest read gets
            // the digest of the stored bytes.
            BatchOp::Read { key } | BatchOp::Digest { key } if key_ok(node, key) => {
                let p = partition_of(key);
                let mine = view.ring().replicates(p, node.id()) || node.standing(p) != Standing::None;
                // A node started alone moments ago (`Node::unsettled`) may be
                // a wiped former member: a peer asking it proves as much.
                if !mine || !node.knows_cluster() || node.unsettled().is_some() {
                    BatchReply::Failed(format!("not a replica of partition {p} here"))
                } else if matches!(op, BatchOp::Digest { .. }) && !node.receiving(&view, p) {
                    match storage.digest(p, key) {
                        Ok(d) => BatchReply::Digest(d),
                        Err(e) => BatchReply::Failed(e.to_string()),
                    }
                } else if node.receiving(&view, p) {
                    remote.push((replies.len(), p, key));
                    BatchReply::Failed("unanswered".into()) // replaced below
                } else {
                    match storage.get(p, key) {
                        Ok(r) => BatchReply::Read(r),
                        Err(e) => BatchReply::Failed(e.to_string()),
                    }
                }
            }
            // Only a holder's own copy: a node still receiving the partition
            // has nothing to vouch for.
            BatchOp::Inspect { key } if key_ok(node, key) => match storage.get(partition_of(key), key) {
                Ok(r) => BatchReply::Read(r),
                Err(e) => BatchReply::Failed(e.to_string()),
            },
            BatchOp::ReadLocal { key } if key_ok(node, key) => {
                let p = partition_of(key);
                if (node.receiving(&view, p) && !node.ownership(|o| o.holds(p))) || node.unsettled().is_some() {
                    BatchReply::Failed(format!("partition {p} is not held here yet"))
                } else {
                    match storage.get(p, key) {
                        Ok(r) => BatchReply::Read(r),
                        Err(e) => BatchReply::Failed(e.to_string()),
                    }
                }
            }
            BatchOp::Write { key, record } if key_ok(node, key) => {
                match storage.merge(partition_of(key), key, record) {
                    Ok(_) => {
                        wrote = true;
                        BatchReply::Written
                    }
                    Err(e) => BatchReply::Failed(e.to_string()),
                }
            }
            BatchOp::Purge { key, dots } if key_ok(node, key) => {
                // The first replica checked the grace period; here only that
                // nothing live came in since.
                match storage.purge_if(partition_of(key), key, dots, crate::clock::now_ms(), 0) {
                    Ok(true) => {
                        wrote = true;
                        BatchReply::Written
                    }
                    Ok(false) => BatchReply::Failed("changed since".into()),
                    Err(e) => BatchReply::Failed(e.to_string()),
                }
            }
            _ => BatchReply::Failed("invalid key".into()),
        };
        replies.push(reply);
    }
    // At most REMOTE_READS at a time: each is a call of its own to a holder.
    let mut reads = Vec::with_capacity(remote.len());
    for (_, p, key) in &remote {
        reads.push(crate::replica::local_read(node, &view, *p, key));
    }
    let reads: Vec<_> = futures_util::stream::iter(reads).buffered(REMOTE_READS).collect().await;
    for ((i, _, _), read) in remote.iter().zip(reads) {
        replies[*i] = match read {
            Ok(r) => BatchReply::Read(r),
            Err(e) => BatchReply::Failed(e.to_string()),
        };
    }
    if wrote {
        if let Err(e) = storage.durable().await {
            let msg = e.to_string();
            for r in replies.iter_mut().filter(|r| **r == BatchReply::Written) {
                *r = BatchReply::Failed(msg.clone());
            }
        }
    }
    Ok(Bytes::from(wire::encode(&replies)))
}

/// Keeps a write for an unreachable owner.
pub async fn hint(node: &Node, body: &[u8]) -> Result<(), RpcError> {
    let req: HintRequest = decode(body)?;
    if !key_ok(node, &req.key) {
        return Err(RpcError::InvalidBody("invalid key".into()));
    }
    if !valid_node_id(&req.owner) {
        return Err(RpcError::InvalidBody("invalid owner id".into()));
    }
    let partition = crate::ring::partition_of(&req.key, node.cfg().partitions);
    let storage = node.storage();
    if !storage.store_hint(&req.owner, partition, &req.key, &req.record)? {
        return Err(RpcError::HintBacklogFull);
    }
    storage.durable().await?;
    node.metrics().hints_stored.inc();
    node.metrics().hints_pending.set(storage.hints_pending() as i64);
    Ok(())
}

fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, RpcError> {
    wire::decode(body).ok_or_else(|| RpcError::InvalidBody("body is not a dynakv internal message".into()))
}

fn key_ok(node: &Node, key: &[u8]) -> bool {
    !key.is_empty() && key.len() as u64 <= node.cfg().max_key_bytes && std::str::from_utf8(key).is_ok()
}
