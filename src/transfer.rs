//! Ownership transfers (SPEC §4, "Ownership moves with the ring"): when the
//! ring changes (a node joins, is declared dead, leaves or returns), each
//! node brings what it holds in line with what it now owns.
//!
//! The [`Transfers`] worker wakes on every ring change (a new `ring_epoch`,
//! not every published view) and every second. It
//! reconciles the node's [`crate::ownership::Ownership`] with the ring, then:
//!
//! - **receives** up to `--transfer-max-partitions` partitions at once by
//!   stream, and up to 16 by Merkle catch-up. A
//!   partition it has nothing of is *streamed* from a node that holds it
//!   (`POST /internal/transfer`, pages of up to 1,000 keys or 2 MiB, merged
//!   here with `Siblings::sync`), with a cursor persisted after every page so
//!   a restart resumes where it stopped. A partition it has a possibly stale
//!   copy of (it restarted, or came back after being declared dead) is
//!   *synced* by a Merkle exchange with every other owner that holds it
//!   (one is not enough: a write acknowledged by W of N replicas is on W of
//!   them only), which moves only what differs; a streamed partition is
//!   synced that way too once its stream ends. Stream sources are tried in
//!   ring order; one that fails, stalls past the request timeout or no
//!   longer holds the partition is replaced by the next, with a log line
//!   saying why; an owner that cannot be compared is asked again next
//!   round (for at most the dead timeout). If no member holds the partition
//!   and every member answered, it is taken as received: it is new (a new
//!   cluster), or only scattered early writes exist on nodes that never
//!   held it, which anti-entropy then merges (until it has, an `r=1` read
//!   through this node can miss such a key).
//! - **hands off** partitions it holds but no longer owns: every key goes to
//!   every current owner, and the partition is dropped only once all of them
//!   acknowledged every key, and only if nothing changed here meanwhile
//!   (`Storage::drop_partition_if_unchanged`); otherwise the pass runs again.
//!
//! Both directions are throttled to `--transfer-max-mib-per-sec`. Progress
//! shows in `/cluster/members` (per member: partitions owned, transfers in
//! and out), in `GET /health/ready` (503 while receiving) and in the
//! `dynakv_transfer*` metrics. Anti-entropy remains the safety net.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::antientropy;
use crate::cluster::ClusterView;
use crate::node::Node;
use crate::ownership::{Inbound, Mode};
use crate::replica;
use crate::storage::record;
use crate::transport::wire::{self, TransferReply, TransferRequest};
use crate::transport::{Route, Target, TransportError};
use crate::worker::{self, State, WorkError, Worker};

/// Keys asked for per page.
const PAGE_KEYS: u32 = 1000;
/// Keys handed off per page.
const HANDOFF_PAGE: usize = 500;
/// How long one partition is worked on per round before the others get a
/// turn (its cursor keeps its place).
const SLICE: Duration = Duration::from_secs(10);
/// How often the worker looks again without a ring change.
const TICK: Duration = Duration::from_secs(1);
/// Partitions caught up by Merkle exchange at once.
const SYNCS_AT_ONCE: usize = 16;

/// Spreads bytes over time: at most `per_sec` on average.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    state: Mutex<(tokio::time::Instant, f64)>,
}

impl RateLimit {
    /// A limit of `per_sec` bytes per second.
    pub fn new(per_sec: u64) -> Self {
        Self { per_sec: per_sec.max(1) as f64, state: Mutex::new((tokio::time::Instant::now(), 0.0)) }
    }

    /// Accounts for `bytes` and waits until they are within the limit.
    pub async fn spend(&self, bytes: usize) {
        let wait = {
            let mut st = self.state.lock().expect("rate lock");
            let now = tokio::time::Instant::now();
            // Unused allowance does not pile up beyond one second.
            let floor = now.duration_since(st.0).as_secs_f64() - 1.0;
            if st.1 / self.per_sec < floor {
                st.1 = floor * self.per_sec;
            }
            st.1 += bytes as f64;
            let due = st.0 + Duration::from_secs_f64(st.1 / self.per_sec);
            due.checked_duration_since(now)
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

/// The transfer worker.
pub struct Transfers {
    node: Arc<Node>,
    tick: tokio::time::Interval,
    views: watch::Receiver<Arc<ClusterView>>,
    inbound_rate: Arc<RateLimit>,
    outbound_rate: Arc<RateLimit>,
    /// Where the next round starts among the inbound and the outbound
    /// partitions: it moves past a partition that made no progress (no
    /// source answered, a new owner is unreachable), so one that cannot
    /// move does not hold up all the others behind it.
    next_stream: u32,
    next_sync: u32,
    next_out: u32,
    /// Since when each inbound partition has been caught up with some of
    /// its owners but waits for another that holds it and cannot be
    /// compared (see [`sync`]).
    waits: Waits,
}

/// Per partition, since when it waits for an owner (see [`sync`]).
type Waits = Mutex<std::collections::HashMap<u32, Instant>>;

impl Transfers {
    /// A worker for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        let rate = node.cfg().transfer_max_mib_per_sec.saturating_mul(1 << 20);
        Self {
            tick: worker::ticker(TICK),
            views: node.subscribe(),
            inbound_rate: Arc::new(RateLimit::new(rate)),
            outbound_rate: Arc::new(RateLimit::new(rate)),
            next_stream: 0,
            next_sync: 0,
            next_out: 0,
            waits: Waits::default(),
            node,
        }
    }
}

impl Worker for Transfers {
    fn name(&self) -> &'static str {
        "transfers"
    }

    async fn work(&mut self) -> Result<State, WorkError> {
        let node = &self.node;
        if !node.knows_cluster() {
            return Ok(State::Idle);
        }
        let view = node.view();
        reconcile(node, &view)?;
        // Up to `--transfer-max-partitions` streams at once, and up to
        // SYNCS_AT_ONCE Merkle catch-ups (cheap where nothing differs: a
        // restart verifies every partition it holds this way; without
        // trees a catch-up is a stream too), each kind in its own rotation.
        let trees = node.cfg().anti_entropy_interval_ms > 0;
        let is_stream = |i: &Inbound| i.mode == Mode::Stream || !trees;
        let max = node.cfg().transfer_max_partitions as usize;
        let pick = |from: u32, stream: bool, n: usize| -> Vec<(u32, Inbound)> {
            node.ownership(|o| {
                let all = o.inbound();
                all.range(from..)
                    .chain(all.range(..from))
                    .filter(|(_, i)| is_stream(i) == stream)
                    .take(n)
                    .map(|(p, i)| (*p, i.clone()))
                    .collect()
            })
        };
        let streams = pick(self.next_stream, true, max);
        let syncs = pick(self.next_sync, false, SYNCS_AT_ONCE);
        // A wait that no longer applies (the partition was received, or is
        // no longer owned) must not cut a later one short.
        let waiting_may: std::collections::HashSet<u32> =
            node.ownership(|o| o.inbound().iter().filter(|(_, i)| !is_stream(i)).map(|(p, _)| *p).collect());
        self.waits.lock().expect("waits lock").retain(|p, _| waiting_may.contains(p));
        let rate = self.inbound_rate.clone();
        let waits = &self.waits;
        let (moved_streams, moved_syncs) = futures_util::future::join(
            futures_util::future::join_all(
                streams.iter().map(|(p, i)| receive(node, &view, *p, i.clone(), rate.clone(), waits)),
            ),
            futures_util::future::join_all(
                syncs.iter().map(|(p, i)| receive(node, &view, *p, i.clone(), rate.clone(), waits)),
            ),
        )
        .await;
        // Past a partition that made no progress, so one that cannot move
        // does not hold up those behind it.
        if moved_streams.iter().any(|m| !m) {
            self.next_stream = streams.last().map_or(0, |(p, _)| p + 1);
        }
        if moved_syncs.iter().any(|m| !m) {
            self.next_sync = syncs.last().map_or(0, |(p, _)| p + 1);
        }
        let mut progress = moved_streams.into_iter().chain(moved_syncs).any(|m| m);
        let from = self.next_out;
        let next =
            node.ownership(|o| o.outbound().range(from..).next().or_else(|| o.outbound().iter().next()).copied());
        if let Some(p) = next {
            let moved = hand_off(node, &view, p, &self.outbound_rate).await;
            self.next_out = if moved { p } else { p + 1 };
            progress |= moved;
        }
        let (i, o) = node.ownership(|o| o.counts());
        Ok(if progress && i + o > 0 { State::Busy } else { State::Idle })
    }

    async fn wait_for_work(&mut self) {
        // A new view comes with every heartbeat; only a new ring is news.
        let ring = self.views.borrow_and_update().ring_epoch();
        loop {
            tokio::select! {
                _ = self.tick.tick() => return,
                changed = self.views.changed() => {
                    if changed.is_err() || self.views.borrow_and_update().ring_epoch() != ring {
                        return;
                    }
                }
            }
        }
    }

    fn status(&self) -> Option<String> {
        let (i, o) = self.node.ownership(|o| o.counts());
        Some(format!("{i} partition(s) to receive, {o} to hand off"))
    }
}

/// Brings the ownership state in line with the current ring.
fn reconcile(node: &Node, view: &ClusterView) -> Result<(), crate::storage::StorageError> {
    let q = node.cfg().partitions;
    let me = node.id();
    let owned: Vec<bool> = (0..q).map(|p| view.ring().preference_list(p).contains(&me)).collect();
    let mut has = Vec::with_capacity(q as usize);
    for p in 0..q {
        has.push(node.storage().has_data(p)?);
    }
    node.metrics().partitions_owned.set(owned.iter().filter(|o| **o).count() as i64);
    node.metrics().partitions_stored.set(has.iter().filter(|h| **h).count() as i64);
    let unowned = owned.iter().zip(&has).filter(|(o, h)| !**o && **h).count();
    node.metrics().partitions_stored_unowned.set(unowned as i64);
    let before = node.ownership(|o| o.counts());
    if node.update_ownership(|o| o.reconcile(q, |p| owned[p as usize], |p| has[p as usize])) {
        let after = node.ownership(|o| o.counts());
        tracing::info!(receive = after.0, hand_off = after.1, was = ?before, "ownership changed with the ring");
    }
    Ok(())
}

/// The members that may hold `partition`, in ring order from it (its
/// preference list first), alive, this node excluded.
fn candidates(view: &ClusterView, partition: u32) -> Vec<String> {
    view.ring().walk(partition).filter(|id| *id != view.me() && view.is_alive(id)).map(str::to_string).collect()
}

async fn ask(
    node: &Node,
    view: &ClusterView,
    id: &str,
    req: &TransferRequest,
) -> Result<TransferReply, TransportError> {
    let address = view.address(id).ok_or_else(|| TransportError::Connect(format!("{id} is not a member")))?;
    let body = Bytes::from(wire::encode(req));
    let answer = node.call(Target { id, address }, Route::Transfer, body).await?;
    wire::decode(&answer).ok_or(TransportError::Malformed)
}

/// Works on one inbound partition for up to a slice; returns whether it
/// made progress.
async fn receive(
    node: &Node,
    view: &ClusterView,
    partition: u32,
    inbound: Inbound,
    rate: Arc<RateLimit>,
    waits: &Waits,
) -> bool {
    let trees = node.cfg().anti_entropy_interval_ms > 0;
    match inbound.mode {
        Mode::Sync if trees && node.storage().tree_ready(partition) => sync(node, view, partition, waits).await,
        // The trees are still being built.
        Mode::Sync if trees => false,
        // Without Merkle trees (anti-entropy off) a stale copy is
        // completed by streaming everything over it.
        _ => stream(node, view, partition, inbound, &rate).await,
    }
}

/// What one Merkle exchange with a holder did for an inbound partition.
enum CatchUp {
    /// Compared to the end: this copy now has everything the holder has.
    Done,
    /// Compared in part (the round's repair budget ran out): more next round.
    Partial,
    /// Not compared (the holder's tree is still building, or it failed).
    Not,
}

async fn catch_up(node: &Node, view: &ClusterView, partition: u32, from: &str) -> CatchUp {
    node.update_ownership(|o| o.progress(partition, from, None));
    node.metrics().transfers_started.with_label_values(&["in"]).inc();
    let mut budget = antientropy::Budget::new();
    match antientropy::exchange_partitions(node, view, from, &mut budget, |p| p == partition).await {
        Ok(x) if x.not_ready > 0 || x.partitions == 0 => CatchUp::Not,
        Ok(x) if !x.truncated => {
            let m = node.metrics();
            m.transfer_keys.with_label_values(&["in"]).inc_by(x.pulled);
            m.transfer_bytes.with_label_values(&["in"]).inc_by(x.received);
            tracing::debug!(partition, from, pulled = x.pulled, pushed = x.pushed, "caught up with a holder");
            CatchUp::Done
        }
        Ok(_) => CatchUp::Partial,
        Err(e) => {
            node.metrics().transfers_failed.with_label_values(&["in"]).inc();
            tracing::warn!(partition, from, error = %e, "catching up from this holder failed; retrying");
            CatchUp::Not
        }
    }
}

/// Catches a possibly stale copy up by Merkle exchange with every other
/// member of the partition's preference list that holds it. One holder is
/// not enough: a write acknowledged by W of N replicas is on W of them
/// only, so the holder asked first may lack what another has (and a node
/// that lost its data, then wrote over a key it lacked, would supersede
/// the version it never saw). An owner that holds the partition but cannot
/// be compared now (unreachable, paused, its tree still building) is tried
/// again next round, until it can or it is off the ring (dead); once some
/// owner was compared, the wait for the others lasts at most the dead
/// timeout (an owner this node cannot reach while the others can, or one
/// running without Merkle trees, would otherwise keep it unready for good),
/// and anti-entropy compares them later. Only when no owner holds it (they
/// are receiving it too), or none could be compared for the dead timeout,
/// is the first other holder in ring order enough, as for a stream.
async fn sync(node: &Node, view: &ClusterView, partition: u32, waits: &Waits) -> bool {
    let probe = TransferRequest { partition, after: None, limit: 0 };
    let owners: Vec<String> =
        view.ring().preference_list(partition).into_iter().filter(|id| *id != view.me()).map(str::to_string).collect();
    let (mut done, mut waiting, mut moved) = (0usize, false, false);
    for c in &owners {
        match ask(node, view, c, &probe).await {
            Ok(r) if r.holds => match catch_up(node, view, partition, c).await {
                CatchUp::Done => done += 1,
                CatchUp::Partial => (waiting, moved) = (true, true),
                CatchUp::Not => waiting = true,
            },
            Ok(_) => {}
            Err(_) => waiting = true,
        }
    }
    if done > 0 && !waiting {
        synced(node, waits, partition);
        tracing::info!(partition, holders = done, "partition caught up with every owner holding it");
        return true;
    }
    if done > 0 && !moved {
        if waited_out(node, waits, partition) {
            synced(node, waits, partition);
            tracing::warn!(
                partition,
                holders = done,
                "an owner holding this partition could not be compared for the dead timeout; \
                 taking it as caught up (anti-entropy compares it later)"
            );
            return true;
        }
        node.log_once(format!("waiting for an owner of partition {partition}"), || {
            tracing::info!(partition, "caught up with some owners; waiting for another that holds it to answer")
        });
        return false;
    }
    if done > 0 || moved {
        return moved;
    }
    // No owner could be compared (unreachable, paused, or not ready): not
    // another holder, which may lack what the owners have, unless that went
    // on for the dead timeout (an owner this node cannot reach while the
    // others can stays on the ring).
    if waiting && !waited_out(node, waits, partition) {
        return false;
    }
    let others: Vec<String> = candidates(view, partition).into_iter().filter(|c| !owners.contains(c)).collect();
    let mut all_answered = !waiting;
    for c in &others {
        match ask(node, view, c, &probe).await {
            Ok(r) if r.holds => match catch_up(node, view, partition, c).await {
                CatchUp::Done => {
                    synced(node, waits, partition);
                    tracing::info!(partition, from = %c, "partition caught up");
                    return true;
                }
                CatchUp::Partial => return true,
                CatchUp::Not => continue,
            },
            Ok(_) => {}
            Err(_) => all_answered = false,
        }
    }
    let asked: Vec<String> = owners.iter().chain(&others).cloned().collect();
    if all_answered && node.view().sole_member() {
        node.update_ownership(|o| o.received(partition));
        tracing::info!(partition, "no other member holds this partition: this copy is all there is");
        return true;
    }
    if all_answered && !asked.is_empty() && nobody_holds_among(node, view, &asked, partition).await {
        node.update_ownership(|o| o.received(partition));
        tracing::info!(partition, "no reachable member holds this partition: keeping this copy");
        return true;
    }
    node.log_once(format!("no holder of partition {partition}"), || {
        tracing::warn!(partition, "no holder of this partition answered; retrying")
    });
    false
}

/// Whether `partition` has waited for an owner for the dead timeout (the
/// wait starts at the first call).
fn waited_out(node: &Node, waits: &Waits, partition: u32) -> bool {
    let since = *waits.lock().expect("waits lock").entry(partition).or_insert_with(Instant::now);
    since.elapsed() >= Duration::from_millis(node.cfg().dead_after_ms)
}

/// A catch-up of `partition` is done: received, counted, its wait over.
fn synced(node: &Node, waits: &Waits, partition: u32) {
    waits.lock().expect("waits lock").remove(&partition);
    node.update_ownership(|o| o.received(partition));
    node.metrics().transfers_finished.with_label_values(&["in"]).inc();
}

/// Whether every not-left member answered and none holds `partition`.
/// "Every member" is the current view's, not the one the round started with:
/// a round that began while this node knew nobody must not conclude that
/// once it knows the others (the same for `sole_member`, asked of
/// `node.view()`).
async fn nobody_holds_among(node: &Node, view: &ClusterView, asked: &[String], partition: u32) -> bool {
    let current = node.view();
    let everyone: Vec<&str> = current
        .members()
        .filter(|m| m.id != view.me() && m.status != crate::membership::Status::Left)
        .map(|m| m.id.as_str())
        .collect();
    if everyone.iter().any(|id| !asked.iter().any(|a| a == id)) {
        return false;
    }
    let probe = TransferRequest { partition, after: None, limit: 0 };
    for id in asked {
        match ask(node, view, id, &probe).await {
            Ok(r) if !r.holds => {}
            _ => return false,
        }
    }
    true
}

/// Pulls a partition page by page from a holder, resuming from the cursor.
async fn stream(node: &Node, view: &ClusterView, partition: u32, inbound: Inbound, rate: &RateLimit) -> bool {
    let mut order = candidates(view, partition);
    if let Some(src) = &inbound.source {
        if let Some(at) = order.iter().position(|c| c == src) {
            let s = order.remove(at);
            order.insert(0, s);
        }
    }
    let started = Instant::now();
    let mut progress = false;
    let mut nobody_has_data = true;
    let mut all_answered = true;
    for c in &order {
        let mut cursor = if inbound.source.as_deref() == Some(c.as_str()) { inbound.cursor.clone() } else { None };
        let mut first = true;
        loop {
            let req = TransferRequest { partition, after: cursor.clone().map(Into::into), limit: PAGE_KEYS };
            let reply = match ask(node, view, c, &req).await {
                Ok(r) => r,
                Err(e) => {
                    all_answered = false;
                    node.metrics().transfers_failed.with_label_values(&["in"]).inc();
                    tracing::warn!(partition, from = %c, error = %e, "receiving from this holder failed or stalled; trying another");
                    break;
                }
            };
            nobody_has_data &= !reply.has_data;
            if !reply.holds {
                if cursor.is_some() {
                    tracing::info!(partition, from = %c, "this node stopped holding the partition; starting over from another holder");
                    node.update_ownership(|o| o.restart_inbound(partition));
                }
                break;
            }
            if first && cursor.is_none() {
                node.metrics().transfers_started.with_label_values(&["in"]).inc();
            }
            first = false;
            let next = reply.next.map(|n| n.into_vec());
            let q = node.cfg().partitions;
            let items: Vec<(Vec<u8>, crate::storage::Record)> = reply
                .items
                .into_iter()
                .map(|(k, r)| (k.into_vec(), r))
                .filter(|(k, _)| !k.is_empty() && crate::ring::partition_of(k, q) == partition)
                .collect();
            let keys = items.len() as u64;
            let bytes: usize = items.iter().map(|(k, r)| k.len() + record::encode(r).len()).sum();
            let storage = node.storage().clone();
            let merged = tokio::task::spawn_blocking(move || -> Result<(), crate::storage::StorageError> {
                for (k, r) in &items {
                    storage.merge(partition, k, r)?;
                }
                Ok(())
            })
            .await;
            if !matches!(merged, Ok(Ok(()))) {
                tracing::error!(partition, "storing a received page failed; will retry");
                return progress;
            }
            let m = node.metrics();
            m.transfer_keys.with_label_values(&["in"]).inc_by(keys);
            m.transfer_bytes.with_label_values(&["in"]).inc_by(bytes as u64);
            progress = true;
            rate.spend(bytes).await;
            node.update_ownership(|o| o.progress(partition, c, next.clone()));
            match next {
                // With Merkle trees, the copy streamed from one holder is
                // then compared with every owner holding it (`sync`): another
                // may have writes this holder missed.
                None if node.cfg().anti_entropy_interval_ms > 0 => {
                    node.update_ownership(|o| o.streamed(partition));
                    tracing::info!(partition, from = %c, took = ?started.elapsed(), "partition streamed; comparing with the other owners");
                    return true;
                }
                None => {
                    node.update_ownership(|o| o.received(partition));
                    node.metrics().transfers_finished.with_label_values(&["in"]).inc();
                    tracing::info!(partition, from = %c, took = ?started.elapsed(), "partition received");
                    return true;
                }
                Some(n) => cursor = Some(n),
            }
            if started.elapsed() > SLICE {
                return true;
            }
        }
    }
    // Nobody holds it, and every member answered: it is new (a new cluster),
    // or only scattered early writes exist (before any node held it). Take
    // what is here; anti-entropy merges the rest.
    if all_answered && nobody_holds_among(node, view, &order, partition).await {
        node.update_ownership(|o| o.received(partition));
        if nobody_has_data {
            tracing::info!(partition, "no member holds or stores this partition: it is new");
        } else {
            tracing::info!(
                partition,
                "no member holds this partition; taking this copy, anti-entropy merges the others"
            );
        }
        return true;
    }
    if order.is_empty() && node.view().sole_member() {
        node.update_ownership(|o| o.received(partition));
        return true;
    }
    node.log_once(format!("no holder of partition {partition}"), || {
        tracing::warn!(partition, "no holder of this partition answered; retrying")
    });
    progress
}

/// Hands a partition this node no longer owns to its owners, then drops it
/// if nothing changed meanwhile. Returns whether it made progress.
async fn hand_off(node: &Node, view: &ClusterView, partition: u32, rate: &RateLimit) -> bool {
    let targets: Vec<String> =
        view.ring().preference_list(partition).into_iter().filter(|id| *id != node.id()).map(str::to_string).collect();
    if targets.is_empty() || targets.iter().any(|t| !view.is_alive(t)) {
        return false;
    }
    let storage = node.storage();
    let before = storage.partition_changes(partition);
    let started = Instant::now();
    node.metrics().transfers_started.with_label_values(&["out"]).inc();
    let mut cursor: Option<Vec<u8>> = None;
    let mut moved = 0u64;
    loop {
        let page = match storage.scan_from_async(partition, cursor.take(), HANDOFF_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(partition, error = %e, "scan for hand-off failed");
                return false;
            }
        };
        let mut records = Vec::with_capacity(page.items.len());
        for (key, rec) in page.items {
            match rec {
                Ok(r) => records.push((key, r)),
                Err(e) => {
                    node.metrics().corrupt_records.inc();
                    tracing::error!(partition, key = %String::from_utf8_lossy(&key), error = %e, "record does not decode; not handed off");
                }
            }
        }
        let sends = records
            .iter()
            .flat_map(|(k, r)| targets.iter().map(move |t| (t, k, r)))
            .map(|(t, k, r)| async move { replica::merge(node, view, t, partition, k, r).await });
        if let Some(e) = futures_util::future::join_all(sends).await.into_iter().find_map(Result::err) {
            node.metrics().transfers_failed.with_label_values(&["out"]).inc();
            tracing::warn!(partition, error = %e, "hand-off not acknowledged; will retry");
            return false;
        }
        let bytes: usize = records.iter().map(|(k, r)| k.len() + record::encode(r).len()).sum();
        moved += records.len() as u64;
        let m = node.metrics();
        m.transfer_keys.with_label_values(&["out"]).inc_by(records.len() as u64);
        m.transfer_bytes.with_label_values(&["out"]).inc_by(bytes as u64);
        rate.spend(bytes * targets.len()).await;
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    // Owned again meanwhile (the ring flipped back while the pages went
    // out): keep it; the next reconcile takes it back as held.
    if node.view().ring().replicates(partition, node.id()) || !node.ownership(|o| o.outbound().contains(&partition)) {
        return true;
    }
    let s = storage.clone();
    match tokio::task::spawn_blocking(move || s.drop_partition_if_unchanged(partition, before)).await {
        Ok(Ok(Some(_))) => {
            node.update_ownership(|o| o.dropped(partition));
            node.metrics().transfers_finished.with_label_values(&["out"]).inc();
            tracing::info!(partition, keys = moved, to = ?targets, took = ?started.elapsed(), "partition handed off and dropped");
            true
        }
        Ok(Ok(None)) => {
            tracing::debug!(partition, "partition changed during its hand-off; handing off again");
            true
        }
        _ => {
            tracing::warn!(partition, "dropping a handed-off partition failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spreads_bytes_over_time() {
        let r = RateLimit::new(1000);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            r.spend(1000).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(4900) && took <= Duration::from_millis(5100), "{took:?}");
    }
}
