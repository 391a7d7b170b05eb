//! Coordination of client reads and writes (SPEC §3, §4).
//!
//! A write is computed on the coordinator: a fresh dot from this node's
//! counter supersedes what the context saw, the sibling cap is checked
//! against the coordinator's merged state, and the result is stored locally.
//! The coordinator's whole sibling set for the key then goes to the other
//! nodes of the preference list in parallel; each merges it with `sync`. A
//! node that is suspect or does not answer is replaced by the next healthy
//! node clockwise, which keeps the write as a hint for it (sloppy quorum). The
//! client gets its answer once W nodes acked; the rest finish in the
//! background.
//!
//! A read asks every node of the preference list in parallel, answers once R
//! replied, merges the replies (dominated versions dropped, siblings kept) and
//! hides expired values. When all replies are in (or the timeout passed), every
//! replica whose state differs from the merge gets the merge (read repair).
//!
//! N, R and W are capped by the ring's member count and never lowered because
//! members are down (SPEC §2).

pub mod quorum;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::membership::Status;
use crate::node::Node;
use crate::storage::{Content, Record, StorageError};
use crate::version::{next_dot, Context};

pub use quorum::{Level, LevelError};

/// Why a coordinated operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The write would leave more siblings than `--max-siblings`.
    #[error("the write would leave {would} versions of this key, more than --max-siblings ({limit}); read the key and write with its X-Context to resolve them")]
    TooManySiblings { limit: usize, would: usize },
    /// Too few replicas answered.
    #[error("only {acked} of the {needed} required replicas answered; the write, if any, stays where it landed and spreads from there")]
    QuorumNotMet { needed: usize, acked: usize, context: Option<Context> },
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
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where a write for one preference-list node ended up.
enum Ack {
    /// The node itself (or this coordinator) stored it.
    Stored,
    /// A stand-in keeps it as a hint.
    Hinted,
    /// Neither the node nor any stand-in took it.
    Failed,
}

/// Coordinates a client write; returns the new version's context (what the
/// client gets back in `X-Context`).
pub async fn write(node: &Arc<Node>, w: Write) -> Result<Context, CoordError> {
    let ring = node.ring();
    let partition = ring.partition_of(&w.key);
    let pref: Vec<String> = ring.preference_list(partition).into_iter().map(str::to_string).collect();
    let needed = w.level.required(node.quorum_n());
    let me_in_pref = pref.iter().any(|id| *id == node.id);
    let floor = node.storage.dot_floor();
    let limit = node.cfg.max_siblings as usize;
    let me = node.id.as_str();

    let compute = |current: Option<Record>| {
        let current = current.unwrap_or_default();
        let (next, clock) = new_version(&current, w.context.as_ref(), me, floor, w.content.clone());
        // A write that leaves fewer versions than before is never refused.
        if next.len() > limit && next.len() >= current.len() {
            return Err(CoordError::TooManySiblings { limit, would: next.len() });
        }
        // Durably above every issued counter before the dot is stored.
        node.storage.issued(clock.max_of(me))?;
        Ok((Some(next), clock))
    };
    // Stored here even when this node is not a replica (it coordinates from
    // outside the preference list only when no replica took the forwarded
    // request): it keeps every dot it issues, which keeps dots unique (see
    // `new_version`). Such a copy counts as no ack; the replicas get hints.
    let outcome = node.storage.update(partition, &w.key, compute)?;
    let (clock, record) = match outcome {
        Ok((clock, stored)) => (clock, stored.unwrap_or_default()),
        Err(e) => {
            if matches!(e, CoordError::TooManySiblings { .. }) {
                node.metrics.sibling_refusals.inc();
            }
            return Err(e);
        }
    };
    node.storage.durable().await?;

    let acked = replicate(node, partition, &pref, w.key, Arc::new(record), needed, me_in_pref).await;
    if acked >= needed {
        Ok(clock)
    } else {
        node.metrics.quorum_failures.with_label_values(&["write"]).inc();
        Err(CoordError::QuorumNotMet { needed, acked, context: Some(clock) })
    }
}

/// Sends `record` to every other node of `pref` (stand-ins for the ones that
/// are suspect or do not answer) and returns once `needed` acks are in
/// (counting this node when it is in `pref`) or no more can come.
async fn replicate(
    node: &Arc<Node>,
    partition: u32,
    pref: &[String],
    key: Vec<u8>,
    record: Arc<Record>,
    needed: usize,
    me_in_pref: bool,
) -> usize {
    let mut acked = usize::from(me_in_pref);
    let others: Vec<String> = pref.iter().filter(|id| **id != node.id).cloned().collect();
    if others.is_empty() {
        return acked;
    }
    // Stand-ins in ring order: healthy nodes past the preference list (this
    // node too, when it coordinates from outside the list).
    let ring = node.ring();
    let standins: VecDeque<String> = ring
        .walk(partition)
        .skip(pref.len())
        .filter(|id| *id == node.id || matches!(node.member(id), Some((_, Status::Alive))))
        .map(str::to_string)
        .collect();
    let standins = Arc::new(Mutex::new(standins));
    // One encoding for every replica.
    let body = crate::peer::batch::write_op(&key, &record);
    let key = Arc::new(key);
    let (tx, mut rx) = mpsc::channel(others.len());
    for owner in others {
        let (node, tx, key, record, standins, body) =
            (node.clone(), tx.clone(), key.clone(), record.clone(), standins.clone(), body.clone());
        tokio::spawn(async move {
            let ack = send_one(&node, partition, &owner, &key, &record, body, &standins).await;
            let _ = tx.send(ack).await;
        });
    }
    drop(tx);
    // A direct attempt and one stand-in, each bounded by the request timeout.
    let deadline = Instant::now() + node.peers.timeout() * 2 + Duration::from_millis(50);
    while acked < needed {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ack::Stored | Ack::Hinted)) => acked += 1,
            Ok(Some(Ack::Failed)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    acked
}

/// Delivers one replica's copy: directly when the owner is alive, else (or
/// when it fails) as a hint on the next stand-in that accepts.
async fn send_one(
    node: &Node,
    partition: u32,
    owner: &str,
    key: &[u8],
    record: &Record,
    body: bytes::Bytes,
    standins: &Mutex<VecDeque<String>>,
) -> Ack {
    if let Some((addr, Status::Alive)) = node.member(owner) {
        // Bounded as a whole, time queued behind other batches included, so
        // a stand-in still gets its turn before the coordinator's deadline.
        match tokio::time::timeout(node.peers.timeout(), node.peers.write_encoded(&addr, body)).await {
            Ok(Ok(())) => return Ack::Stored,
            Ok(Err(e)) => tracing::debug!(peer = %owner, error = %e, "replica write failed; trying a stand-in"),
            Err(_) => tracing::debug!(peer = %owner, "replica write timed out; trying a stand-in"),
        }
    }
    loop {
        let Some(standin) = standins.lock().expect("stand-in queue").pop_front() else {
            return Ack::Failed;
        };
        if standin == node.id {
            match node.storage.store_hint(owner, partition, key, record) {
                Ok(true) => {
                    node.metrics.hints_stored.inc();
                    return Ack::Hinted;
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "storing a hint failed");
                    continue;
                }
            }
        }
        let Some((addr, _)) = node.member(&standin) else { continue };
        match node.peers.hint(&addr, owner, key, record).await {
            Ok(()) => return Ack::Hinted,
            Err(e) => tracing::debug!(standin = %standin, error = %e, "stand-in refused the hint"),
        }
    }
}

/// The state after a client write to `current`, and the new version's
/// context.
///
/// Without a context the write supersedes everything held here (SPEC §3: plain
/// sequential PUTs overwrite). Expired versions are superseded by any write:
/// a value written after an expiry replaces the expired one rather than
/// standing beside it as an invisible sibling.
///
/// Dots come from [`next_dot`]. When this node holds nothing of the key (a
/// new key, or one purged after a delete or an expiry), the context claims
/// every counter below the new dot as seen: that supersedes any leftover of
/// the key's earlier life on a stale replica (none is live: it was purged
/// here only once dead everywhere).
pub fn new_version(
    current: &Record,
    context: Option<&Context>,
    node: &str,
    floor: u64,
    content: Content,
) -> (Record, Context) {
    let held = current.context();
    let mut ctx = context.cloned().unwrap_or_else(|| held.clone());
    let now = content.timestamp_ms;
    for v in current.values().iter().filter(|v| v.payload.expired(now)) {
        ctx.add(v.dot.clone());
        ctx.join(&v.context);
    }
    let dot = next_dot(&held, &ctx, node, floor);
    if held.max_of(node) == 0 {
        // Nothing of this node is live for the key: claim its earlier
        // counters, so leftovers of a purged life are superseded.
        ctx.witness(node, dot.counter - 1);
    }
    let next = current.update(&ctx, dot.clone(), content);
    let mut clock = ctx;
    clock.add(dot);
    (next, clock)
}

/// Coordinates a client read at `level`.
pub async fn read(node: &Arc<Node>, key: &[u8], level: Level) -> Result<ReadResult, CoordError> {
    let ring = node.ring();
    let partition = ring.partition_of(key);
    let pref: Vec<String> = ring.preference_list(partition).into_iter().map(str::to_string).collect();
    let needed = level.required(node.quorum_n());
    let key = Arc::new(key.to_vec());
    let (tx, rx) = mpsc::channel::<(String, Option<Option<Record>>)>(pref.len().max(1));
    for id in &pref {
        if *id == node.id {
            let local = node.storage.get(partition, &key)?;
            let _ = tx.send((id.clone(), Some(local))).await;
            continue;
        }
        let (node, tx, key, id) = (node.clone(), tx.clone(), key.clone(), id.clone());
        tokio::spawn(async move {
            let reply = match node.member(&id) {
                Some((addr, _)) => node.peers.read(&addr, &key).await.ok(),
                None => None,
            };
            let _ = tx.send((id, reply)).await;
        });
    }
    drop(tx);
    let (quorum_tx, quorum_rx) = oneshot::channel();
    let deadline = Instant::now() + node.peers.timeout() + Duration::from_millis(50);
    tokio::spawn(gather(node.clone(), partition, key, pref.len(), needed, deadline, rx, quorum_tx));
    match quorum_rx.await {
        Ok(Ok(merged)) => Ok(visible(merged, now_ms())),
        Ok(Err(acked)) => {
            node.metrics.quorum_failures.with_label_values(&["read"]).inc();
            Err(CoordError::QuorumNotMet { needed, acked, context: None })
        }
        Err(_) => Err(CoordError::QuorumNotMet { needed, acked: 0, context: None }),
    }
}

/// Collects read replies: answers the client through `quorum` as soon as
/// `needed` arrived (or `Err(replies)` once that cannot happen), then waits
/// for the rest and repairs every replica that differs from the merge.
#[allow(clippy::too_many_arguments)]
async fn gather(
    node: Arc<Node>,
    partition: u32,
    key: Arc<Vec<u8>>,
    total: usize,
    needed: usize,
    deadline: Instant,
    mut rx: mpsc::Receiver<(String, Option<Option<Record>>)>,
    quorum: oneshot::Sender<Result<Record, usize>>,
) {
    let mut quorum = Some(quorum);
    let mut replies: Vec<(String, Option<Record>)> = Vec::with_capacity(total);
    let mut merged = Record::new();
    let mut failed = 0;
    while replies.len() + failed < total {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((id, Some(rec)))) => {
                if let Some(r) = &rec {
                    merged = merged.sync(r);
                }
                replies.push((id, rec));
            }
            Ok(Some((_, None))) => failed += 1,
            Ok(None) | Err(_) => break,
        }
        if replies.len() >= needed {
            if let Some(q) = quorum.take() {
                let _ = q.send(Ok(merged.clone()));
            }
        } else if total - failed < needed {
            if let Some(q) = quorum.take() {
                let _ = q.send(Err(replies.len()));
            }
        }
    }
    if let Some(q) = quorum.take() {
        let _ = q.send(if replies.len() >= needed { Ok(merged.clone()) } else { Err(replies.len()) });
    }
    if merged.is_empty() {
        return;
    }
    for (id, rec) in replies {
        if rec.as_ref() == Some(&merged) {
            continue;
        }
        node.metrics.read_repairs.inc();
        if id == node.id {
            let m = merged.clone();
            let r =
                node.storage.update(partition, &key, |cur| Ok::<_, ()>((Some(cur.unwrap_or_default().sync(&m)), ())));
            if let Err(e) = r {
                tracing::warn!(error = %e, "local read repair failed");
            }
        } else if let Some((addr, _)) = node.member(&id) {
            if let Err(e) = node.peers.write(&addr, &key, &merged).await {
                tracing::debug!(peer = %id, error = %e, "read repair failed");
            }
        }
    }
}

/// What a client may see of a record at `now_ms`.
pub fn visible(mut record: Record, now_ms: u64) -> ReadResult {
    let context = record.context();
    record.retain(|v| !v.payload.expired(now_ms));
    ReadResult { visible: record.into_versions(), context }
}

/// Merges a replica's incoming state into this node's copy of `key` (replica
/// writes, hints delivered, read repair). Never refuses for the sibling cap.
pub fn merge_local(node: &Node, key: &[u8], incoming: &Record) -> Result<(), StorageError> {
    let partition = node.ring().partition_of(key);
    node.storage
        .update(partition, key, |cur| Ok::<_, ()>((Some(cur.unwrap_or_default().sync(incoming)), ())))?
        .expect("merge never refuses");
    Ok(())
}

/// The nodes a request for `key` should be forwarded to, in order, when this
/// node is not in its preference list (alive ones first); `None` when this
/// node coordinates itself.
pub fn forward_targets(node: &Node, key: &[u8]) -> Option<Vec<String>> {
    let ring = node.ring();
    let pref = ring.preference_list(ring.partition_of(key));
    if pref.contains(&node.id.as_str()) {
        return None;
    }
    let mut alive = Vec::new();
    let mut other = Vec::new();
    for id in pref {
        match node.member(id) {
            Some((addr, Status::Alive)) => alive.push(addr),
            Some((addr, _)) => other.push(addr),
            None => {}
        }
    }
    alive.extend(other);
    Some(alive)
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
        assert!(!clock.covers(&r.values()[0].dot));
        assert!(clock.covers(&r.values()[1].dot));
    }

    #[test]
    fn repeated_writes_keep_the_context_compact() {
        // A high floor (a busy node) must not leave a trail of isolated dots.
        let mut r = Record::new();
        let mut clock = Context::new();
        for i in 0..50 {
            let (next, c) = new_version(&r, None, "a", 1_000_000, content("v", i, None));
            r = next;
            clock = c;
        }
        assert_eq!(r.len(), 1);
        assert!(clock.cloud().is_empty(), "{clock:?}");
        assert!(r.values()[0].context.cloud().is_empty());
        assert_eq!(r.values()[0].dot.counter, 1_000_050);
    }

    #[test]
    fn a_key_written_again_after_a_purge_supersedes_its_earlier_life() {
        // Earlier life: written and deleted via node a; a stale replica still
        // holds the tombstone after a purged its copy.
        let (live, _) = new_version(&Record::new(), None, "a", 0, content("old", 1, None));
        let mut tomb = content("", 2, None);
        tomb.deleted = true;
        let (stale, _) = new_version(&live, None, "a", 0, tomb);
        let floor = stale.values()[0].dot.counter;
        // New life, from an empty record at a with the node's floor.
        let (fresh, _) = new_version(&Record::new(), None, "a", floor, content("new", 3, None));
        assert!(fresh.values()[0].dot.counter > floor, "no dot of the earlier life is reused");
        let merged = fresh.sync(&stale);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged.values()[0].payload.value, b"new");
    }

    #[test]
    fn a_context_from_an_earlier_life_does_not_reuse_a_dot() {
        // The client kept a context naming a:5 from before a purge; the node
        // now holds nothing of the key and its floor is lower (say, a wiped
        // node with a fixed id).
        let mut old = Context::new();
        old.witness("a", 5);
        let (r, clock) = new_version(&Record::new(), Some(&old), "a", 2, content("x", 1, None));
        assert_eq!(r.values()[0].dot.counter, 6);
        assert!(clock.cloud().is_empty());
    }

    #[test]
    fn expired_values_are_hidden_but_their_clock_is_kept() {
        let (r, _) = new_version(&Record::new(), None, "a", 0, content("x", 1, Some(5)));
        let seen = visible(r.clone(), 10);
        assert!(seen.visible.is_empty());
        assert!(seen.context.covers(&r.values()[0].dot));
        assert_eq!(visible(r, 4).visible.len(), 1);
    }
}
