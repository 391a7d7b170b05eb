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
//! A read asks every node of the preference list in parallel (one for its
//! record, the others for a digest of theirs, see [`read`]), answers once R
//! replied, merges the replies (dominated versions dropped, siblings kept) and
//! hides expired values. When all replies are in (or the timeout passed), every
//! replica whose state differs from the merge gets the merge (read repair).
//!
//! N, R and W are capped by the ring's member count and never lowered because
//! members are down (SPEC §2).

pub mod quorum;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::cluster::ClusterView;
use crate::node::Node;
use crate::replica::{self, ReplicaCopy, ReplicaError};
use crate::storage::{Content, Record, StorageError};
use crate::transport::wire;
use crate::version::{next_dot, Context};

pub use quorum::{Level, LevelError, Outcome, Tally};

/// Why a coordinated operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The write would leave more siblings than `--max-siblings`.
    #[error("the write would leave {would} versions of this key, more than --max-siblings ({limit}); read the key and write with its X-Context to resolve them")]
    TooManySiblings { limit: usize, would: usize },
    /// Too few replicas answered (`context`: the version a write stored).
    #[error("only {acked} of the {needed} required replicas answered{}", written_tail(.context))]
    QuorumNotMet { needed: usize, acked: usize, context: Option<Context> },
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a quorum failure adds for a write, which stored a version anyway.
fn written_tail(context: &Option<Context>) -> &'static str {
    match context {
        Some(_) => "; the write stays where it landed and spreads from there (retry with its X-Context)",
        None => "",
    }
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

/// Where a write for one preference-list node ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// The node itself stored it.
    Stored,
    /// A stand-in keeps it as a hint.
    Hinted,
    /// Neither the node nor any stand-in took it.
    Failed,
}

/// Coordinates a client write; returns the new version's context (what the
/// client gets back in `X-Context`).
pub async fn write(node: &Arc<Node>, w: Write) -> Result<Context, CoordError> {
    let view = node.view();
    let partition = view.ring().partition_of(&w.key);
    let set = replica::write_set(&view, partition);
    let needed = w.level.required(view.quorum_n());
    let me = node.id();
    let me_in_pref = set.owners.iter().any(|id| id == me);
    let storage = node.storage();
    // A node still receiving the partition (a forwarded write reached it: a
    // joining or wiped node is first among the live owners) takes in a
    // holder's copy first, so the new version is built over what the
    // cluster holds, as on a holder: a blind write then supersedes the
    // key's versions instead of standing beside them as a sibling. With no
    // holder answering it writes over its own copy, as before.
    //
    // `complete`: this node's copy of the key is known to hold every dot it
    // issued for the key, so a new version may claim the counters below its
    // dot (see `new_version`). True where the partition is held here (and
    // not being verified), or where every other live owner's copy came in
    // first; not where the copy was dropped (handed off) or an owner did
    // not answer: one holder may lack a write another owner has.
    let receiving = node.receiving(&view, partition);
    let mut complete = !receiving && node.ownership(|o| o.holds(partition));
    if receiving {
        // Both at once: a holder's copy (the source may be no owner) and
        // every other live owner's.
        let (holder, owners) = futures_util::future::join(
            replica::local_read(node, &view, partition, &w.key),
            catch_up(node, &view, &set.owners, partition, &w.key),
        )
        .await;
        if let Ok(Some(copy)) = holder {
            storage.merge(partition, &w.key, &copy)?;
        }
        complete = owners?;
    }
    let floor = storage.dot_floor();
    let run_floor = storage.run_floor();
    let limit = node.cfg().max_siblings as usize;

    // A receiving node caught up with the owners just above.
    let mut caught_up = receiving;
    let mut healed = false;
    // Stored here even when this node is not a replica (it coordinates from
    // outside the preference list only when no replica took the forwarded
    // request): it keeps every dot it issues, which keeps dots unique (see
    // `new_version`). Such a copy counts as no ack; the replicas get hints.
    let (clock, record) = loop {
        let compute = |current: Option<Record>| {
            let current = current.unwrap_or_default();
            // This node's first write to the key in this run, over dots it
            // issued in an earlier one: its last dots may have reached the
            // other replicas but not this copy (a crash before the flush, a
            // wiped data dir refilled from a replica that missed them).
            // Their copies are merged in first, so the write sees them.
            let mine = current.max_of(me);
            if !caught_up && mine > 0 && mine < run_floor {
                return Err(Step::CatchUp);
            }
            let (next, clock) =
                new_version(&current, w.context.as_ref(), me, (floor, run_floor), complete, w.content.clone());
            // A write that leaves fewer versions than before is never refused.
            if next.len() > limit && next.len() >= current.len() {
                return Err(Step::Refused(CoordError::TooManySiblings { limit, would: next.len() }));
            }
            // Durably above every issued counter before the dot is stored.
            storage.issued(clock.max_of(me)).map_err(|e| Step::Refused(e.into()))?;
            Ok((Some(next), clock))
        };
        let updated = match storage.update(partition, &w.key, compute) {
            // This node's copy does not decode: it is replaced (a merge
            // takes bytes that are no record for absent) by the other
            // owners' copies, and the write goes over those, claiming
            // nothing (the lost copy may have held this node's dots).
            Err(StorageError::Record(e)) if !healed => {
                node.metrics().corrupt_records.inc();
                tracing::error!(partition, error = %e, "this node's copy of a key does not decode; replacing it with the other owners'");
                storage.merge(partition, &w.key, &Record::default())?;
                catch_up(node, &view, &set.owners, partition, &w.key).await?;
                (complete, healed, caught_up) = (false, true, true);
                continue;
            }
            other => other?,
        };
        match updated {
            Ok((clock, stored)) => break (clock, stored.unwrap_or_default()),
            Err(Step::CatchUp) => {
                complete &= catch_up(node, &view, &set.owners, partition, &w.key).await?;
                caught_up = true;
            }
            Err(Step::Refused(e)) => {
                if matches!(e, CoordError::TooManySiblings { .. }) {
                    node.metrics().sibling_refusals.inc();
                }
                return Err(e);
            }
        }
    };
    storage.durable().await?;

    let mut tally = Tally::new(needed, set.owners.len());
    if me_in_pref {
        tally.ok();
    }
    let acked = replicate(node, view, partition, set, w.key, Arc::new(record), tally).await;
    if acked >= needed {
        Ok(clock)
    } else {
        node.metrics().quorum_failures.with_label_values(&["write"]).inc();
        Err(CoordError::QuorumNotMet { needed, acked, context: Some(clock) })
    }
}

/// Why a write's update of the local copy stopped.
enum Step {
    /// Catch up with the other owners first (see `write`).
    CatchUp,
    /// The write is refused.
    Refused(CoordError),
}

/// Merges into this node's copy of `key` what the other live owners hold
/// (those that answer; a write goes ahead with what it got). Returns
/// whether every live one answered, and at least one did if there are
/// other owners at all; with none on the ring, whether every other member
/// left (a dead one is down, not gone, and may hold this node's dots).
async fn catch_up(
    node: &Node,
    view: &ClusterView,
    owners: &[String],
    partition: u32,
    key: &[u8],
) -> Result<bool, CoordError> {
    let any_other = owners.iter().any(|id| id != node.id());
    let others = owners.iter().filter(|id| *id != node.id() && view.is_alive(id));
    let copies = futures_util::future::join_all(others.map(|id| replica::read_held(node, view, id, key))).await;
    let all = copies.iter().all(Result::is_ok) && if any_other { !copies.is_empty() } else { view.sole_member() };
    for copy in copies.into_iter().flatten().flatten() {
        node.storage().merge(partition, key, &copy)?;
    }
    Ok(all)
}

/// Sends `record` to every other owner in `set` (stand-ins for the ones that
/// are not alive or do not answer) and returns the acks counted once the
/// tally is decided or the deadline passed. Every other owner gets the write
/// whatever the level, even one the coordinator's own copy already met
/// (w=1, w=async); sends still under way carry on in the background.
async fn replicate(
    node: &Arc<Node>,
    view: Arc<ClusterView>,
    partition: u32,
    set: replica::WriteSet,
    key: Vec<u8>,
    record: Arc<Record>,
    mut tally: Tally,
) -> usize {
    let others: Vec<String> = set.owners.iter().filter(|id| *id != node.id()).cloned().collect();
    if others.is_empty() {
        return tally.acked();
    }
    let standins = Arc::new(Mutex::new(set.standins));
    // One encoding for every replica.
    let body = wire::write_op(&key, &record);
    let key = Arc::new(key);
    let mut sends = Finishing::new(node);
    for owner in others {
        let (n, view, key, record, standins, body) =
            (node.clone(), view.clone(), key.clone(), record.clone(), standins.clone(), body.clone());
        sends.push(async move { send_one(&n, &view, partition, &owner, &key, &record, body, &standins).await });
    }
    // A direct attempt and one stand-in, each bounded by the request timeout.
    // A write that cannot reach W (more replicas counted than the ring
    // holds: some are dead) still waits for the sends under way, so that
    // its 503 counts every ack.
    let deadline = Instant::now() + node.timeout() * 2 + Duration::from_millis(50);
    while tally.outcome() == Outcome::Pending || (tally.outcome() == Outcome::Failed && !tally.complete()) {
        match tokio::time::timeout_at(deadline, sends.next()).await {
            Ok(Some(Ack::Stored | Ack::Hinted)) => {
                tally.ok();
            }
            Ok(Some(Ack::Failed)) => {
                tally.fail();
            }
            Ok(None) | Err(_) => break,
        }
    }
    tally.acked()
}

/// Futures a request polls while it waits for them, which finish in a
/// tracked background task once it stops waiting (it has what it needs, its
/// deadline passed, or it was cancelled): replies reach the waiting request
/// without a task of their own in between, and none is abandoned.
struct Finishing<T: Send + 'static> {
    node: Arc<Node>,
    futs: FuturesUnordered<BoxFuture<'static, T>>,
}

impl<T: Send + 'static> Finishing<T> {
    fn new(node: &Arc<Node>) -> Self {
        Self { node: node.clone(), futs: FuturesUnordered::new() }
    }

    fn push(&mut self, fut: impl Future<Output = T> + Send + 'static) {
        self.futs.push(Box::pin(fut));
    }

    /// The next one to finish, or `None` when none is left.
    async fn next(&mut self) -> Option<T> {
        self.futs.next().await
    }
}

impl<T: Send + 'static> Drop for Finishing<T> {
    fn drop(&mut self) {
        // Outside a runtime (dropped while it shuts down) there is nothing
        // left to finish them on.
        if !self.futs.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            let mut rest = std::mem::take(&mut self.futs);
            self.node.spawn(async move { while rest.next().await.is_some() {} });
        }
    }
}

/// Delivers one replica's copy: directly when the owner is alive, else (or
/// when it fails) as a hint on the next stand-in that accepts.
#[allow(clippy::too_many_arguments)]
async fn send_one(
    node: &Node,
    view: &ClusterView,
    partition: u32,
    owner: &str,
    key: &[u8],
    record: &Record,
    body: bytes::Bytes,
    standins: &Mutex<VecDeque<String>>,
) -> Ack {
    if view.is_alive(owner) {
        // Bounded as a whole, time queued behind other batches included, so
        // a stand-in still gets its turn before the coordinator's deadline.
        match tokio::time::timeout(node.timeout(), replica::send_write(node, view, owner, body)).await {
            Ok(Ok(())) => return Ack::Stored,
            Ok(Err(e)) => tracing::debug!(peer = %owner, error = %e, "replica write failed; trying a stand-in"),
            Err(_) => tracing::debug!(peer = %owner, "replica write timed out; trying a stand-in"),
        }
    }
    loop {
        let Some(standin) = standins.lock().expect("stand-in queue").pop_front() else {
            return Ack::Failed;
        };
        match replica::hint(node, view, &standin, owner, partition, key, record).await {
            Ok(()) => {
                if standin == node.id() {
                    node.metrics().hints_stored.inc();
                }
                return Ack::Hinted;
            }
            Err(e @ ReplicaError::Storage(_)) => tracing::warn!(error = %e, "storing a hint failed"),
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
/// Dots come from [`next_dot`] (`floors`: the highest counter issued, and
/// the floor when this run started). While the context's vector does not
/// reach this run's counters (this node holds nothing of the key, or only
/// an earlier run's dots, or a jump was made beside a sibling) and the
/// write supersedes every version of this node held here, the context
/// claims every counter of this node below the new dot as seen, as a blind
/// write claims what the coordinator holds: this keeps the context one
/// vector entry instead of a cloud that grows with every write, and
/// supersedes leftovers of the key's earlier life on a stale replica. Only
/// when `complete` says `current` holds every dot this node issued for the
/// key: otherwise a claim could cover a version neither this copy nor the
/// writer ever saw (this node handed the partition off and dropped it, or
/// no other owner answered its catch-up), and the dot stays in the cloud.
pub fn new_version(
    current: &Record,
    context: Option<&Context>,
    node: &str,
    floors: (u64, u64),
    complete: bool,
    content: Content,
) -> (Record, Context) {
    let (floor, run_floor) = floors;
    let held = current.context();
    let mut ctx = context.cloned().unwrap_or_else(|| held.clone());
    let now = content.timestamp_ms;
    for v in current.values().iter().filter(|v| v.payload.expired(now)) {
        ctx.add(v.dot.clone());
        ctx.join(&v.context);
    }
    let dot = next_dot(&held, &ctx, node, floor, run_floor);
    // The vector does not reach this run's counters yet (nothing held, or
    // only an earlier run's dots, or a jump made beside a sibling).
    let behind = held.max_of(node) == 0 || ctx.vector_of(node) < run_floor;
    // A version of this node's held here and not in the writer's context
    // stays a sibling: no claim then (the dot waits in the cloud until a
    // write that resolves the siblings makes the claim).
    let supersedes_own = current.values().iter().all(|v| v.dot.node != node || ctx.covers(&v.dot));
    if behind && supersedes_own && complete {
        // Claim the counters below the dot, so the vector absorbs it.
        ctx.witness(node, dot.counter - 1);
    }
    let next = current.update(&ctx, dot.clone(), content);
    let mut clock = ctx;
    clock.add(dot);
    (next, clock)
}

/// A replica's answer to a read: its copy (whole, or a digest), or `None`
/// when it did not answer.
type Reply = (String, Option<ReplicaCopy>);

/// Coordinates a client read at `level`.
///
/// Every replica of the preference list is asked at once, but only one for
/// its whole record: this node when it is a replica, else the first of the
/// list. The others answer with a digest of theirs (Cassandra's digest
/// reads), which counts towards R when it matches what the read has merged;
/// one that differs is asked for its record before it counts. Replies and
/// read repair otherwise work as if every replica had sent its record.
///
/// The request itself collects replies until R are in (or R can no longer
/// be met, or the deadline passed); the rest of the replies, and the repair
/// of every replica that differs from the merge, continue in one background
/// task.
pub async fn read(node: &Arc<Node>, key: &[u8], level: Level) -> Result<ReadResult, CoordError> {
    let view = node.view();
    let partition = view.ring().partition_of(key);
    let needed = level.required(view.quorum_n());
    // This node is the only replica and one reply is all that is needed (a
    // single-node cluster): no fan-out, nothing to gather or repair.
    if needed == 1
        && view.ring().effective_replicas() == 1
        && view.ring().replicates(partition, node.id())
        && !node.receiving(&view, partition)
    {
        let local = node.storage().get(partition, key)?;
        return Ok(visible(local.unwrap_or_default(), now_ms()));
    }
    let pref = replica::read_set(&view, partition);
    // The whole record from this node when it is a replica, else from the
    // first replica seen alive (a down one would only delay the read).
    let whole_from: String = if pref.iter().any(|id| id == node.id()) {
        node.id().to_string()
    } else {
        pref.iter().find(|id| view.is_alive(id)).or(pref.first()).cloned().unwrap_or_default()
    };
    let receiving = node.receiving(&view, partition);
    let tally = Tally::new(needed, pref.len());
    let mut g = Gather::new(node, view, partition, Arc::new(key.to_vec()), whole_from, tally);
    let mut local_bad = false;
    for id in &pref {
        if id == node.id() && !receiving {
            match node.storage().get(partition, key) {
                Ok(local) => g.take((id.clone(), Some(ReplicaCopy::Full(local)))),
                // This node's copy does not decode: it counts as a replica
                // that did not answer (the others can still meet R), and the
                // merge of theirs replaces it below.
                Err(StorageError::Record(e)) => {
                    node.metrics().corrupt_records.inc();
                    tracing::error!(partition, error = %e, "this node's copy of a key does not decode; read from the others");
                    g.take((id.clone(), None));
                    local_bad = true;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            // Remote replicas, and this node while it is still receiving the
            // partition (its answer then includes a holder's copy).
            g.ask(id.clone());
        }
    }
    let deadline = Instant::now() + node.timeout() + Duration::from_millis(50);
    // Nothing live found (nothing at all, or only tombstones and expired
    // values) is an answer only once a quorum of the replicas not held
    // down said so (Riak's notfound_ok = false with basic_quorum): below a
    // quorum, the first replies may all come from replicas that a w=quorum
    // write has not reached yet, and a read at r=1 right after its ack
    // would answer 404. A live value found ends the wait.
    let not_found_needs = |g: &Gather| {
        let live = pref.iter().filter(|id| *id == node.id() || g.view.is_alive(id)).count();
        Level::Quorum.required(g.view.quorum_n()).min(live)
    };
    loop {
        let outcome = g.tally.outcome();
        // A read that cannot reach R still takes the replies under way, so
        // that its 503 counts them.
        let settled = (outcome == Outcome::Failed && g.tally.complete())
            || (outcome == Outcome::Reached
                && (g.found_live() || g.tally.complete() || g.tally.acked() >= not_found_needs(&g)));
        if settled {
            break;
        }
        match tokio::time::timeout_at(deadline, g.replies.next()).await {
            Ok(Some(reply)) => g.take(reply),
            Ok(None) | Err(_) => break,
        }
    }
    if local_bad && g.tally.outcome() == Outcome::Reached {
        // Read repair of this node's own copy: the others' merge replaces it.
        if let Err(e) = node.storage().merge(partition, key, &g.merged) {
            tracing::warn!(partition, error = %e, "replacing this node's copy failed");
        }
    }
    let answer = match g.tally.outcome() {
        Outcome::Reached => Ok(visible(g.merged.clone(), now_ms())),
        _ => {
            node.metrics().quorum_failures.with_label_values(&["read"]).inc();
            Err(CoordError::QuorumNotMet { needed, acked: g.tally.acked(), context: None })
        }
    };
    if !g.tally.complete() || g.behind() {
        node.spawn(g.finish(deadline));
    }
    answer
}

/// What a read knows of one replica's copy once it counted: the record, or
/// only its digest (which matched the merge at the time).
enum Known {
    Record(Option<Record>),
    Digest(Option<u128>),
}

/// The digest a replica holding exactly `merged` would send (`None` for
/// nothing at all: no whole record had anything for the key).
fn digest_of(merged: &Record, any: bool) -> Option<u128> {
    any.then(|| crate::storage::record::digest(&crate::storage::record::encode(merged)))
}

/// The replies of one read, as they come: merges the whole records, compares
/// digests with the merge of the whole records so far (one that differs, or
/// that cannot be compared because `whole_from`, the replica asked for its
/// record, failed, is followed by a read of that replica's record, answered
/// like the rest), and at the end repairs every replica that differs from the
/// merge.
struct Gather {
    node: Arc<Node>,
    view: Arc<ClusterView>,
    partition: u32,
    key: Arc<Vec<u8>>,
    whole_from: String,
    tally: Tally,
    replies: Finishing<Reply>,
    known: Vec<(String, Known)>,
    merged: Record,
    /// Whether a whole record has come in, whether one had the key, and
    /// whether the replica asked for one failed before any came.
    whole: bool,
    any: bool,
    whole_lost: bool,
    /// The digest of the merge, kept with it (encoding it per digest reply
    /// would repeat the work).
    current: Option<u128>,
    /// Digests waiting for a whole record to compare with.
    early: Vec<(String, Option<u128>)>,
}

impl Gather {
    fn new(
        node: &Arc<Node>,
        view: Arc<ClusterView>,
        partition: u32,
        key: Arc<Vec<u8>>,
        whole_from: String,
        tally: Tally,
    ) -> Self {
        Self {
            node: node.clone(),
            view,
            partition,
            key,
            whole_from,
            tally,
            replies: Finishing::new(node),
            known: Vec::new(),
            merged: Record::new(),
            whole: false,
            any: false,
            whole_lost: false,
            current: None,
            early: Vec::new(),
        }
    }

    /// Asks replica `id` for its digest, or for its record if it is
    /// `whole_from`.
    fn ask(&mut self, id: String) {
        let whole = id == self.whole_from;
        let (n, key, view, partition) = (self.node.clone(), self.key.clone(), self.view.clone(), self.partition);
        self.replies.push(async move {
            let reply = if whole {
                replica::read(&n, &view, &id, partition, &key).await.map(ReplicaCopy::Full)
            } else {
                replica::digest(&n, &view, &id, &key).await
            };
            (id, reply.ok())
        });
    }

    /// Asks replica `id` for its record after its digest could not count.
    fn follow_up(&mut self, id: String) {
        self.node.metrics().read_digest_mismatches.inc();
        let (n, key, view, partition) = (self.node.clone(), self.key.clone(), self.view.clone(), self.partition);
        self.replies.push(async move {
            let reply = replica::read(&n, &view, &id, partition, &key).await.ok();
            (id, reply.map(ReplicaCopy::Full))
        });
    }

    /// Counts one reply.
    fn take(&mut self, reply: Reply) {
        match reply {
            (id, Some(ReplicaCopy::Full(rec))) => {
                if let Some(r) = &rec {
                    self.merged = if self.any { self.merged.sync(r) } else { r.clone() };
                    self.any = true;
                }
                self.whole = true;
                self.known.push((id, Known::Record(rec)));
                self.tally.ok();
                self.current = digest_of(&self.merged, self.any);
                // Digests that came first are compared now.
                for (id, d) in std::mem::take(&mut self.early) {
                    if d == self.current {
                        self.known.push((id, Known::Digest(d)));
                        self.tally.ok();
                    } else {
                        self.follow_up(id);
                    }
                }
            }
            (id, Some(ReplicaCopy::Digest(d))) => {
                if self.whole && d == self.current {
                    self.known.push((id, Known::Digest(d)));
                    self.tally.ok();
                } else if self.whole || self.whole_lost {
                    self.follow_up(id);
                } else {
                    self.early.push((id, d));
                }
            }
            (id, None) => {
                self.tally.fail();
                // The whole record will not come: digests are read whole.
                if !self.whole && id == self.whole_from {
                    self.whole_lost = true;
                    for (id, _) in std::mem::take(&mut self.early) {
                        self.follow_up(id);
                    }
                }
            }
        }
    }

    /// Whether the merge so far holds a live value (not deleted, not
    /// expired).
    fn found_live(&self) -> bool {
        let now = now_ms();
        self.merged.values().iter().any(|v| !v.payload.deleted && !v.payload.expired(now))
    }

    /// Whether a replica whose copy is `copy` differs from the merge.
    fn differs(&self, copy: &Known) -> bool {
        match copy {
            Known::Record(rec) => rec.as_ref() != Some(&self.merged),
            Known::Digest(d) => *d != self.current,
        }
    }

    /// Whether a replica that counted differs from the merge.
    fn behind(&self) -> bool {
        !self.merged.is_empty() && self.known.iter().any(|(_, copy)| self.differs(copy))
    }

    /// Waits for the rest of the replies (until `deadline`), then repairs
    /// every replica that differs from the merge.
    async fn finish(mut self, deadline: Instant) {
        while !self.tally.complete() {
            match tokio::time::timeout_at(deadline, self.replies.next()).await {
                Ok(Some(reply)) => self.take(reply),
                Ok(None) | Err(_) => break,
            }
        }
        if self.merged.is_empty() {
            return;
        }
        for (id, copy) in std::mem::take(&mut self.known) {
            if !self.differs(&copy) {
                continue;
            }
            self.node.metrics().read_repairs.inc();
            if let Err(e) = replica::merge(&self.node, &self.view, &id, self.partition, &self.key, &self.merged).await {
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

/// The nodes (id, address) a request for `key` should be forwarded to, in
/// order (alive ones first), when this node is not in its preference list
/// or is still receiving the partition (`receiving`: it must not answer for
/// keys it may not have yet, nor write over versions it has not seen);
/// `None` when this node coordinates itself.
pub fn forward_targets(view: &ClusterView, key: &[u8], receiving: bool) -> Option<Vec<(String, String)>> {
    let ring = view.ring();
    let pref: Vec<&str> =
        ring.preference_list(ring.partition_of(key)).into_iter().filter(|id| *id != view.me()).collect();
    if pref.len() < ring.preference_list(ring.partition_of(key)).len() && !receiving {
        return None;
    }
    let mut alive = Vec::new();
    let mut other = Vec::new();
    for id in pref {
        let Some(m) = view.member(id) else { continue };
        let entry = (id.to_string(), m.address.clone());
        if view.is_alive(id) {
            alive.push(entry);
        } else {
            other.push(entry);
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
            value: v.to_owned().into(),
            content_type: "text/plain".into(),
            timestamp_ms: ts,
            expires_at_ms: expires,
            deleted: false,
        }
    }

    #[test]
    fn a_write_after_expiry_replaces_the_expired_value() {
        let (r, _) = new_version(&Record::new(), None, "a", (0, 0), true, content("old", 10, Some(20)));
        // A stale context that never saw the expiring value.
        let (r, _) = new_version(&r, Some(&Context::new()), "b", (0, 0), true, content("new", 30, None));
        assert_eq!(r.len(), 1);
        assert_eq!(r.values()[0].payload.value, b"new"[..]);
    }

    #[test]
    fn the_returned_clock_is_the_new_versions_not_the_keys() {
        let (r, _) = new_version(&Record::new(), None, "a", (0, 0), true, content("x", 1, None));
        let (r, clock) = new_version(&r, Some(&Context::new()), "b", (0, 0), true, content("y", 2, None));
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
            let (next, c) = new_version(&r, None, "a", (1_000_000, 0), true, content("v", i, None));
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
        let (live, _) = new_version(&Record::new(), None, "a", (0, 0), true, content("old", 1, None));
        let mut tomb = content("", 2, None);
        tomb.deleted = true;
        let (stale, _) = new_version(&live, None, "a", (0, 0), true, tomb);
        let floor = stale.values()[0].dot.counter;
        // New life, from an empty record at a with the node's floor.
        let (fresh, _) = new_version(&Record::new(), None, "a", (floor, 0), true, content("new", 3, None));
        assert!(fresh.values()[0].dot.counter > floor, "no dot of the earlier life is reused");
        let merged = fresh.sync(&stale);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged.values()[0].payload.value, b"new"[..]);
    }

    #[test]
    fn a_context_from_an_earlier_life_does_not_reuse_a_dot() {
        // The client kept a context naming a:5 from before a purge; the node
        // now holds nothing of the key and its floor is lower (say, a wiped
        // node with a fixed id).
        let mut old = Context::new();
        old.witness("a", 5);
        let (r, clock) = new_version(&Record::new(), Some(&old), "a", (2, 0), true, content("x", 1, None));
        assert_eq!(r.values()[0].dot.counter, 6);
        assert!(clock.cloud().is_empty());
    }

    #[test]
    fn a_copy_not_known_complete_claims_nothing_below_the_new_dot() {
        // a wrote v1 (a:5), then handed the partition off and dropped its
        // copy; a write it coordinates later, over an empty copy, must not
        // supersede v1, which neither it nor the writer saw.
        let (elsewhere, _) = new_version(&Record::new(), None, "a", (4, 0), true, content("v1", 1, None));
        let v1 = elsewhere.values()[0].dot.clone();
        let (mine, clock) =
            new_version(&Record::new(), Some(&Context::new()), "a", (10, 10), false, content("v2", 2, None));
        assert!(!clock.covers(&v1), "{clock:?}");
        let merged = elsewhere.sync(&mine);
        assert_eq!(merged.len(), 2, "v1 survives as a sibling: {merged:?}");
        // Over a copy known complete, the same write claims the counters
        // below its dot (this copy would hold v1 if a had issued it).
        let (_, clock) =
            new_version(&Record::new(), Some(&Context::new()), "a", (10, 10), true, content("v2", 2, None));
        assert!(clock.covers(&v1));
    }

    #[test]
    fn a_key_whose_dots_of_this_node_are_all_from_an_earlier_run_gets_a_new_counter() {
        // Node a wrote v1 (a:5) and v2 (a:6) in an earlier run; its data dir
        // was wiped and refilled from a replica that had only v1, which
        // another replica still holds v2 beside. This run's floor is far
        // above: the next write must not be a:6 again.
        let (stale, _) = new_version(&Record::new(), None, "a", (4, 0), true, content("v1", 1, None));
        assert_eq!(stale.values()[0].dot.counter, 5);
        let (newer, _) = new_version(&stale, None, "a", (5, 0), true, content("v2", 2, None));
        assert_eq!(newer.values()[0].dot.counter, 6);
        let run_floor = 1 << 40;
        let (after, clock) = new_version(&stale, None, "a", (run_floor, run_floor), true, content("v3", 3, None));
        let dot = &after.values()[0].dot;
        assert!(dot.counter > run_floor, "{dot:?}");
        assert!(clock.cloud().is_empty(), "the vector absorbs the jump: {clock:?}");
        // Merged with a replica holding v2 that this copy never had though
        // it was taken for complete, v3 stands: a blind write supersedes the
        // key's earlier life, as after a purge. (A copy not known complete
        // claims nothing: see the next test.)
        let merged = after.sync(&newer);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged.values()[0].payload.value, b"v3"[..]);
        // A writer whose context missed a version of this node held here
        // makes a sibling of it, jump or not.
        let (sib, _) =
            new_version(&stale, Some(&Context::new()), "a", (run_floor, run_floor), true, content("s", 3, None));
        assert_eq!(sib.len(), 2, "{sib:?}");
        // Within the run, consecutive writes stay contiguous.
        let (next, _) = new_version(&after, None, "a", (dot.counter, run_floor), true, content("v4", 4, None));
        assert_eq!(next.values()[0].dot.counter, dot.counter + 1);
    }

    #[test]
    fn a_jump_beside_a_sibling_is_absorbed_once_a_write_resolves_the_siblings() {
        let run_floor = 1 << 40;
        let (stale, _) = new_version(&Record::new(), None, "a", (4, 0), true, content("v1", 1, None));
        // A writer that saw nothing: a sibling, its dot left in the cloud.
        let (sib, _) =
            new_version(&stale, Some(&Context::new()), "a", (run_floor, run_floor), true, content("s", 2, None));
        assert_eq!(sib.len(), 2);
        // Blind writes resolve both; from the first, contexts stay compact.
        let mut r = sib;
        for i in 0..20 {
            let floor = r.values().iter().map(|v| v.dot.counter).max().unwrap();
            let (next, clock) = new_version(&r, None, "a", (floor, run_floor), true, content("x", 3 + i, None));
            assert_eq!(next.len(), 1);
            assert!(clock.cloud().is_empty(), "write {i}: {clock:?}");
            r = next;
        }
        assert!(r.values()[0].context.cloud().is_empty());
    }

    #[test]
    fn expired_values_are_hidden_but_their_clock_is_kept() {
        let (r, _) = new_version(&Record::new(), None, "a", (0, 0), true, content("x", 1, Some(5)));
        let seen = visible(r.clone(), 10);
        assert!(seen.visible.is_empty());
        assert!(seen.context.covers(&r.values()[0].dot));
        assert_eq!(visible(r, 4).visible.len(), 1);
    }
}
