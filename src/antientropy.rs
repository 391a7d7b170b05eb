//! Anti-entropy (SPEC §4, "Anti-entropy" and "Replicas converge"): replicas
//! compare their Merkle trees on a timer and repair only what differs, in
//! both directions.
//!
//! Every `--anti-entropy-interval-ms` the [`AntiEntropy`] worker exchanges
//! with the next [`PEERS_PER_ROUND`] alive peers that replicate a partition
//! with this node (rotating, so every pair of replicas of every partition is
//! compared within `ceil(peers / PEERS_PER_ROUND)` intervals from each side).
//! An exchange walks the trees top down ([`crate::merkle`]): the roots of
//! every shared partition in one request; the answer holds the children of
//! each root that differs; only the differing children are asked about next,
//! level by level, down to the leaves, whose `(key, item hash)` lists come
//! back. Those name exactly the keys that differ. A key the peer holds is
//! pulled and merged here; the merge is pushed back when the peer's copy is
//! not already it. Both go through the same merge as every replica write
//! (`Siblings::sync`): siblings are kept, tombstones and purge markers win
//! over what they deleted, the sibling cap never drops a version.
//!
//! Cost grows with the difference, not the data: in sync, an exchange is one
//! request of about 12 bytes per shared partition. Repairs are bounded per
//! round ([`MAX_KEYS_PER_ROUND`], [`MAX_BYTES_PER_ROUND`]; the rest waits for
//! the next round, the trees still differing) and paced
//! ([`MAX_REPAIR_RATE`]) so a large repair does not starve clients.
//! `--anti-entropy-interval-ms 0` turns all of it off, tree upkeep included.
//!
//! The [`TreeBuild`] worker builds every partition's tree once at start,
//! off the async threads, without blocking writers (see `storage`); until a
//! partition's tree is built it is not compared.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cluster::ClusterView;
use crate::merkle;
use crate::node::Node;
use crate::replica;
use crate::storage::record;
use crate::transport::wire::{self, AeCompare, AeDiff, AeReply, NodeHash};
use crate::transport::{Route, Target, TransportError};
use crate::worker::{self, State, WorkError, Worker};

/// Peers compared per round.
pub const PEERS_PER_ROUND: usize = 2;
/// Tree nodes asked about per request.
pub const MAX_NODES_PER_CALL: usize = 4096;
/// Leaves asked about per request: a leaf's answer lists its keys, and 256
/// leaves are a sixteenth of a partition, so a large difference comes in
/// pieces that each fit well within the request timeout.
const LEAVES_PER_CALL: usize = 256;
/// Keys repaired per round at most; the rest waits for the next round.
pub const MAX_KEYS_PER_ROUND: usize = 100_000;
/// Repair bytes (records pulled and pushed) per round at most.
pub const MAX_BYTES_PER_ROUND: u64 = 256 << 20;
/// Keys repaired per second at most, so a large repair leaves room for
/// clients.
pub const MAX_REPAIR_RATE: f64 = 50_000.0;
/// Keys pulled or pushed together.
const REPAIR_CHUNK: usize = 256;

/// What one exchange found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Partitions compared.
    pub partitions: u64,
    /// Partitions whose roots differed.
    pub differing: u64,
    /// Keys found differing.
    pub keys: u64,
    /// Keys fetched from the peer and merged here.
    pub pulled: u64,
    /// Keys sent to the peer.
    pub pushed: u64,
    /// Bytes sent (message bodies).
    pub sent: u64,
    /// Bytes received (message bodies).
    pub received: u64,
    /// Whether the round's limits cut the repair short.
    pub truncated: bool,
    /// Partitions the peer could not compare (it does not replicate them or
    /// has not built their trees yet).
    pub not_ready: u64,
    /// Keys that failed on their own (a record that does not decode on one
    /// side, a refused push): skipped, logged, tried again next round.
    pub skipped: u64,
}

impl Exchange {
    fn add(&mut self, o: &Exchange) {
        self.partitions += o.partitions;
        self.differing += o.differing;
        self.keys += o.keys;
        self.pulled += o.pulled;
        self.pushed += o.pushed;
        self.sent += o.sent;
        self.received += o.received;
        self.truncated |= o.truncated;
        self.not_ready += o.not_ready;
        self.skipped += o.skipped;
    }
}

/// Builds every partition's Merkle tree once, then is done.
pub struct TreeBuild {
    node: Arc<Node>,
}

impl TreeBuild {
    /// A worker for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl Worker for TreeBuild {
    fn name(&self) -> &'static str {
        "merkle-build"
    }

    async fn work(&mut self) -> Result<State, WorkError> {
        let started = Instant::now();
        let storage = self.node.storage().clone();
        let mut ready = 0;
        for p in 0..storage.partition_count() {
            let s = storage.clone();
            tokio::task::spawn_blocking(move || s.build_tree(p)).await??;
            ready += 1;
            self.node.metrics().ae_trees_ready.set(ready);
        }
        let took = started.elapsed();
        self.node.metrics().ae_tree_build_seconds.set(took.as_secs_f64());
        tracing::info!(partitions = ready, took = ?took, "Merkle trees built");
        Ok(State::Done)
    }

    async fn wait_for_work(&mut self) {}
}

/// The anti-entropy worker.
pub struct AntiEntropy {
    node: Arc<Node>,
    tick: tokio::time::Interval,
    next_peer: usize,
}

impl AntiEntropy {
    /// Rounds every `--anti-entropy-interval-ms` (which must not be 0).
    pub fn new(node: Arc<Node>) -> Self {
        let tick = worker::ticker(Duration::from_millis(node.cfg().anti_entropy_interval_ms.max(1)));
        Self { node, tick, next_peer: 0 }
    }
}

impl Worker for AntiEntropy {
    fn name(&self) -> &'static str {
        "anti-entropy"
    }

    async fn work(&mut self) -> Result<State, WorkError> {
        let node = &self.node;
        let view = node.view();
        let peers = peers(&view);
        node.metrics().ae_rounds.inc();
        if peers.is_empty() {
            return Ok(State::Idle);
        }
        let mut total = Exchange::default();
        let mut budget = Budget::new();
        for k in 0..PEERS_PER_ROUND.min(peers.len()) {
            let peer = &peers[(self.next_peer + k) % peers.len()];
            match exchange(node, &view, peer, &mut budget).await {
                Ok(x) => total.add(&x),
                Err(e) => {
                    node.metrics().ae_exchange_failures.inc();
                    tracing::debug!(peer = %peer, error = %e, "anti-entropy exchange failed");
                }
            }
        }
        self.next_peer = (self.next_peer + PEERS_PER_ROUND) % peers.len();
        if total.pulled + total.pushed > 0 {
            tracing::info!(
                partitions = total.partitions,
                differing = total.differing,
                pulled = total.pulled,
                pushed = total.pushed,
                bytes_sent = total.sent,
                bytes_received = total.received,
                truncated = total.truncated,
                skipped = total.skipped,
                "anti-entropy repaired replicas"
            );
        }
        Ok(State::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

/// The alive peers this node shares at least one partition with, in id order.
pub fn peers(view: &ClusterView) -> Vec<String> {
    let me = view.me();
    let ring = view.ring();
    let mut out: Vec<String> = (0..ring.partition_count())
        .flat_map(|p| ring.preference_list(p))
        .filter(|id| *id != me && view.is_alive(id))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    let shares = |id: &str| {
        (0..ring.partition_count()).any(|p| {
            let pref = ring.preference_list(p);
            pref.contains(&me) && pref.contains(&id)
        })
    };
    out.retain(|id| shares(id));
    out
}

/// What a round may still spend on repairs.
#[derive(Debug)]
pub struct Budget {
    keys: usize,
    bytes: u64,
    started: Instant,
    repaired: usize,
}

impl Budget {
    /// A full round's budget.
    pub fn new() -> Self {
        Self { keys: MAX_KEYS_PER_ROUND, bytes: MAX_BYTES_PER_ROUND, started: Instant::now(), repaired: 0 }
    }

    fn exhausted(&self) -> bool {
        self.keys == 0 || self.bytes == 0
    }

    fn spend(&mut self, keys: usize, bytes: u64) {
        self.keys = self.keys.saturating_sub(keys);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.repaired += keys;
    }

    /// Waits as long as needed to stay under [`MAX_REPAIR_RATE`].
    async fn pace(&self) {
        let due = Duration::from_secs_f64(self.repaired as f64 / MAX_REPAIR_RATE);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

/// A key that differs, and the peer's item hash of it (`None`: it lacks it).
type Differing = (Vec<u8>, Option<u64>);

/// Compares every partition shared with `peer` and repairs what differs,
/// but for partitions this node is still receiving (the transfer worker
/// brings those in).
pub async fn exchange(
    node: &Node,
    view: &ClusterView,
    peer: &str,
    budget: &mut Budget,
) -> Result<Exchange, TransportError> {
    let receiving: Vec<u32> = node.ownership(|o| o.inbound().keys().copied().collect());
    exchange_partitions(node, view, peer, budget, |p| !receiving.contains(&p)).await
}

/// Compares the partitions shared with `peer` that `wanted` accepts (a
/// partition is shared when both are in its preference list, or when the
/// peer holds it) and repairs what differs.
pub async fn exchange_partitions(
    node: &Node,
    view: &ClusterView,
    peer: &str,
    budget: &mut Budget,
    wanted: impl Fn(u32) -> bool,
) -> Result<Exchange, TransportError> {
    let me = node.id();
    let storage = node.storage();
    let ring = view.ring();
    let address = view.address(peer).ok_or_else(|| TransportError::Connect(format!("{peer} is not a member")))?;
    let target = Target { id: peer, address };
    let mut x = Exchange::default();
    let mut frontier: Vec<NodeHash> = (0..ring.partition_count())
        .filter(|&p| wanted(p) && storage.tree_ready(p))
        .filter(|&p| {
            let pref = ring.preference_list(p);
            // Both replicate it, or this node catches up with a holder.
            (pref.contains(&me) && pref.contains(&peer)) || node.ownership(|o| o.is_inbound(p))
        })
        .map(|p| NodeHash { partition: p, level: 0, index: 0, hash: storage.merkle(p).root().to_le_bytes() })
        .collect();
    x.partitions = frontier.len() as u64;
    let mut differing: BTreeMap<u32, Vec<Differing>> = BTreeMap::new();
    let mut found = 0usize;
    // Nodes asked about but not answered (the key budget ran out, or a call
    // failed after others had found keys to repair).
    let mut unexplored = false;
    'levels: while !frontier.is_empty() && found < budget.keys {
        let mut next = Vec::new();
        let per_call = if frontier[0].level >= merkle::DEPTH { LEAVES_PER_CALL } else { MAX_NODES_PER_CALL };
        for chunk in frontier.chunks(per_call) {
            if found >= budget.keys {
                unexplored = true;
                break 'levels;
            }
            let body = Bytes::from(wire::encode(&AeCompare { nodes: chunk.to_vec() }));
            x.sent += body.len() as u64;
            let answer = match node.call(target, Route::AntiEntropy, body).await {
                Ok(a) => a,
                // What was found so far is repaired; the rest next round.
                Err(e) if found > 0 => {
                    tracing::debug!(peer = %peer, error = %e, "anti-entropy comparison cut short");
                    unexplored = true;
                    break 'levels;
                }
                Err(e) => return Err(e),
            };
            x.received += answer.len() as u64;
            let reply: AeReply = wire::decode(&answer).ok_or(TransportError::Malformed)?;
            // Only answers about what was asked: a peer's partition numbers
            // index this node's trees.
            let asked = |p: u32| chunk.iter().any(|n| n.partition == p);
            for diff in reply.diffs {
                match diff {
                    AeDiff::Children { partition, .. } | AeDiff::Leaf { partition, .. } if !asked(partition) => {
                        return Err(TransportError::Malformed);
                    }
                    AeDiff::Children { partition, level, index, hashes } => {
                        let Some(mine) = storage.merkle(partition).children(level, index) else { continue };
                        if level == 0 {
                            x.differing += 1;
                        }
                        let theirs: Vec<u64> = hashes.iter().map(|h| u64::from_le_bytes(*h)).collect();
                        for j in merkle::differing(&mine, &theirs) {
                            let Some(&hash) = mine.get(j as usize) else { continue };
                            next.push(NodeHash {
                                partition,
                                level: level + 1,
                                index: index * merkle::FANOUT + j,
                                hash: hash.to_le_bytes(),
                            });
                        }
                    }
                    AeDiff::Leaf { partition, index, items } => {
                        let theirs: Vec<(Vec<u8>, u64)> =
                            items.into_iter().map(|(k, h)| (k.into_vec(), u64::from_le_bytes(h))).collect();
                        let s = storage.clone();
                        let mine = tokio::task::spawn_blocking(move || s.leaf_items(partition, index as u16))
                            .await
                            .map_err(|e| TransportError::Io(e.to_string()))?
                            .map_err(|e| TransportError::Io(e.to_string()))?;
                        let hash_of: HashMap<&[u8], u64> = theirs.iter().map(|(k, h)| (k.as_slice(), *h)).collect();
                        let q = storage.partition_count();
                        for key in merkle::differing_keys(&mine, &theirs) {
                            // A key that does not belong here is the peer's
                            // mistake: never stored in the wrong partition.
                            if crate::ring::partition_of(&key, q) != partition || key.is_empty() {
                                return Err(TransportError::Malformed);
                            }
                            let h = hash_of.get(key.as_slice()).copied();
                            differing.entry(partition).or_default().push((key, h));
                            found += 1;
                        }
                    }
                    AeDiff::NotReady { .. } => x.not_ready += 1,
                }
            }
        }
        frontier = next;
    }
    // Stopped at the key budget with branches left unexplored: more may
    // differ than was found, so the exchange is not complete.
    if !frontier.is_empty() || unexplored {
        x.truncated = true;
    }
    x.keys = found as u64;
    for (partition, keys) in differing {
        if budget.exhausted() {
            x.truncated = true;
            break;
        }
        let before = (x.pulled, x.pushed);
        repair(node, view, target, partition, &keys, budget, &mut x).await?;
        tracing::debug!(
            peer = %peer,
            partition,
            differing = keys.len(),
            pulled = x.pulled - before.0,
            pushed = x.pushed - before.1,
            "anti-entropy repaired a partition"
        );
    }
    let m = node.metrics();
    m.ae_partitions_compared.inc_by(x.partitions);
    m.ae_partitions_differing.inc_by(x.differing);
    m.ae_keys_pulled.inc_by(x.pulled);
    m.ae_keys_pushed.inc_by(x.pushed);
    m.ae_bytes_sent.inc_by(x.sent);
    m.ae_bytes_received.inc_by(x.received);
    Ok(x)
}

/// Pulls what the peer holds of `keys` and merges it here, then pushes this
/// node's merged copy wherever the peer's differs.
async fn repair(
    node: &Node,
    view: &ClusterView,
    target: Target<'_>,
    partition: u32,
    keys: &[Differing],
    budget: &mut Budget,
    x: &mut Exchange,
) -> Result<(), TransportError> {
    let storage = node.storage();
    for chunk in keys.chunks(REPAIR_CHUNK) {
        if budget.exhausted() {
            x.truncated = true;
            return Ok(());
        }
        let mut bytes = 0u64;
        // Pull.
        let pulls = chunk
            .iter()
            .filter(|(_, theirs)| theirs.is_some())
            .map(|(key, _)| async move { (key, replica::read(node, view, target.id, partition, key).await) });
        let mut failed = 0usize;
        for (key, got) in futures_util::future::join_all(pulls).await {
            x.sent += wire::read_op(key).len() as u64;
            match got {
                Ok(Some(rec)) => {
                    let n = record::encode(&rec).len() as u64;
                    x.received += n;
                    bytes += n;
                    match storage.merge(partition, key, &rec) {
                        Ok(_) => x.pulled += 1,
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(partition, error = %e, "anti-entropy could not merge a key; it stays for a later round");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) if peer_unwell(&e) => return Err(into_transport(e)),
                // One key the peer could not read (a record of its that does
                // not decode): the others still go.
                Err(e) => {
                    failed += 1;
                    tracing::warn!(partition, error = %e, "anti-entropy could not pull a key; it stays for a later round");
                }
            }
        }
        // Push where the peer's copy is not this node's merged one.
        let mut pushes = Vec::new();
        for (key, theirs) in chunk {
            let local = match storage.get(partition, key) {
                Ok(Some(local)) => local,
                Ok(None) => continue,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(partition, error = %e, "anti-entropy could not read a key here; it stays for a later round");
                    continue;
                }
            };
            let encoded = record::encode(&local);
            if Some(merkle::item_hash(key, &encoded)) != *theirs {
                pushes.push((key, local));
            }
        }
        let sends = pushes.iter().map(|(key, local)| async move {
            let op_len = wire::write_op(key, local).len() as u64;
            (op_len, replica::merge(node, view, target.id, partition, key, local).await)
        });
        for (op_len, sent) in futures_util::future::join_all(sends).await {
            match sent {
                Ok(()) => {
                    x.sent += op_len;
                    bytes += op_len;
                    x.pushed += 1;
                }
                Err(e) if peer_unwell(&e) => return Err(into_transport(e)),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(partition, error = %e, "the peer refused a key anti-entropy pushed; it stays for a later round");
                }
            }
        }
        x.skipped += failed as u64;
        budget.spend(chunk.len(), bytes);
        budget.pace().await;
    }
    Ok(())
}

/// Whether a failure of one key's pull or push says the peer cannot be
/// talked to now (the exchange stops; a later round tries again), rather
/// than that this key failed there (skipped; the others go on).
fn peer_unwell(e: &replica::ReplicaError) -> bool {
    // Only the peer's own report that this one operation failed there (a
    // record of its that does not decode) is a key's failure: an error
    // status (load shedding answers a whole batch 503) is the peer's.
    !matches!(e, replica::ReplicaError::Transport(TransportError::Remote(_)))
}

fn into_transport(e: replica::ReplicaError) -> TransportError {
    match e {
        replica::ReplicaError::Transport(t) => t,
        other => TransportError::Io(other.to_string()),
    }
}
