//! A node's shared state: configuration, storage, the cluster view, the
//! transport to its peers, metrics, and the trackers of everything it runs
//! in the background. One `Arc<Node>` is the axum `State` and is handed to
//! every worker.
//!
//! `Node` holds state and small operations on it; it starts nothing. The
//! wiring (router, workers, serving, shutdown) is `crate::server`. Every
//! task a node spawns, from workers to replication tails, read repairs and
//! gossip exchanges, goes through [`Node::spawn`] into one `TaskTracker`, so
//! a shutdown can wait for all of them with a deadline.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{ClusterView, Membership};
use crate::config::Config;
use crate::membership::{Digest, Table, Timeouts};
use crate::metrics::Metrics;
use crate::ownership::{Mode, Ownership, Standing};
use crate::ring::RingParams;
use crate::storage::{Storage, StorageError, StorageOptions};
use crate::transport::batch::Batcher;
use crate::transport::wire::{BatchReply, GossipMessage};
use crate::transport::{Route, Target, Transport, TransportError};
use crate::worker::{self, Worker};

/// Most members a gossip message may list.
pub const MAX_GOSSIP_MEMBERS: usize = 10_000;

/// Heartbeats are reserved on disk this many at a time, so a restart (even
/// after SIGKILL) starts above any heartbeat already gossiped.
const HEARTBEAT_RESERVE: u64 = 1000;

/// Why a node could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data dir could not be used.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why gossip from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum GossipRefusal {
    /// The sender must not be a member here (answered 409,
    /// `membership_refused`).
    #[error("{0}")]
    NotAMember(String),
    /// The message is malformed (answered 400).
    #[error("{0}")]
    Invalid(String),
}

/// Members' refusals of this node (see `Node::refused_by`).
#[derive(Default)]
struct Refusal {
    /// Why the last refusal that counted was made.
    reason: Option<String>,
    /// When a member last accepted this node's gossip.
    accepted_at: Option<Instant>,
}

/// A node's shared state.
pub struct Node {
    cfg: Config,
    id: String,
    address: String,
    storage: Arc<Storage>,
    metrics: Metrics,
    membership: Membership,
    transport: Arc<dyn Transport>,
    batcher: Batcher,
    /// Every background task: workers, replication tails, read repairs,
    /// gossip exchanges.
    tasks: TaskTracker,
    /// Cancelled at shutdown: background work stops.
    stop: CancellationToken,
    /// Cancelled by `POST /cluster/leave`: the node hands off and stops.
    leave: CancellationToken,
    workers: worker::Registry,
    /// Problems already logged (refused peers), so a peer that keeps
    /// gossiping does not flood the log.
    logged: Mutex<HashSet<String>>,
    /// Whether gossip from another member was heard since start.
    heard_cluster: AtomicBool,
    /// Why members refuse this node's gossip (its id is alive at another
    /// address, or another `--partitions`), and when one last accepted it:
    /// refused and accepted by none lately, it does not act as a member
    /// (see [`Node::knows_cluster`]).
    refusal: Mutex<Refusal>,
    /// Whether `refusal` holds a reason (read per request, without the lock).
    is_refused: AtomicBool,
    /// Nodes (by address) a relayed client request lately got no answer
    /// from, and when (see [`Node::relay_lately_unanswered`]).
    unanswered: Mutex<HashMap<String, Instant>>,
    /// Started on a new data dir with no seeds and no members known, so it
    /// took every partition as its own; cleared once gossip shows whether
    /// that was a new cluster or a wiped member (see `apply_gossip`).
    started_alone: AtomicBool,
    /// Started alone under a configured `--node-id`: possibly a former
    /// member whose disk was lost (a generated id is new by construction),
    /// so it waits for the others' gossip a while (see [`Node::unsettled`]).
    settles: bool,
    /// When this node was opened (the settle of a node started alone).
    opened: Instant,
    /// Woken when gossip from another member is first heard.
    heard: tokio::sync::Notify,
    /// Whether this run has sent its member table to anyone: before that,
    /// nobody can know this run's heartbeat, so a digest naming this node
    /// comes from an earlier run.
    announced: AtomicBool,
    /// The seeds other than this node itself (kept, not re-parsed per
    /// request); a seed that keeps answering gossip as this node (its own
    /// address under another spelling) is dropped when that shows.
    seeds: Mutex<Vec<String>>,
    /// Per seed, how many gossip exchanges it answered as this node
    /// (`u32::MAX`: it answered as another node once, and is kept).
    seed_echoes: Mutex<HashMap<String, u32>>,
    /// Which partitions this node holds, receives and hands off; persisted.
    ownership: Mutex<Ownership>,
}

impl Node {
    /// Validates `cfg`, opens the data dir and builds the node's state;
    /// peers are reached through `transport`.
    pub fn open(cfg: Config, transport: Arc<dyn Transport>) -> Result<Arc<Self>, OpenError> {
        cfg.validate()?;
        let storage = Storage::open(
            &cfg.data_dir,
            &StorageOptions {
                partitions: cfg.partitions,
                sync_writes: cfg.sync_writes,
                tombstone_grace_ms: cfg.tombstone_grace_ms,
            },
        )?;
        let id =
            storage.node_id(&cfg.data_dir, cfg.node_id.as_deref(), || format!("node-{:08x}", rand::random::<u32>()))?;
        let address = cfg.advertise_url();
        // Start above every heartbeat the previous run could have gossiped.
        let start = storage.heartbeat_reserved()?;
        storage.reserve_heartbeat(start.saturating_add(HEARTBEAT_RESERVE))?;
        let mut table = Table::new(&id, &address, start, SystemTime::now());
        // Start from the ring last known (SPEC §4): never act alone just
        // because gossip has not been heard yet.
        let remembered: Vec<Digest> =
            storage.members()?.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let now = SystemTime::now();
        table.restore(&remembered, now);
        // Members dead when the table was saved are dead from the start.
        table.refresh(now, timeouts_of(&cfg));
        let mut started_alone = false;
        let ownership = match storage.ownership()? {
            Some(bytes) => serde_json::from_slice::<Ownership>(&bytes).unwrap_or_default().restarted(),
            None if cfg.other_seed_urls().is_empty() && remembered.iter().all(|d| d.id == id) => {
                started_alone = true;
                Ownership::alone(cfg.partitions)
            }
            None => Ownership::joining(),
        };
        storage.save_ownership(&serde_json::to_vec(&ownership).expect("ownership serializes"))?;
        let params = RingParams { partitions: cfg.partitions, vnodes: cfg.vnodes, replicas: cfg.replicas };
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let node = Self {
            batcher: Batcher::new(transport.clone(), timeout),
            transport,
            id,
            address,
            storage,
            metrics: Metrics::new(),
            membership: Membership::new(table, params),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            leave: CancellationToken::new(),
            workers: worker::Registry::default(),
            logged: Mutex::default(),
            heard_cluster: AtomicBool::new(false),
            refusal: Mutex::default(),
            is_refused: AtomicBool::new(false),
            unanswered: Mutex::default(),
            started_alone: AtomicBool::new(started_alone),
            settles: started_alone && cfg.node_id.is_some(),
            opened: Instant::now(),
            heard: tokio::sync::Notify::new(),
            announced: AtomicBool::new(false),
            seeds: Mutex::new(cfg.other_seed_urls()),
            seed_echoes: Mutex::default(),
            ownership: Mutex::new(ownership),
            cfg,
        };
        node.update_members(|_| false);
        Ok(Arc::new(node))
    }

    /// The validated configuration.
    pub fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// Whether `msg` is this node's own gossip: its id, and its own entry at
    /// this node's address.
    pub fn is_own_echo(&self, msg: &GossipMessage) -> bool {
        msg.from == self.id && msg.members.iter().any(|d| d.id == self.id && d.address == self.address)
    }

    /// `--seeds` without this node's own address.
    pub fn seeds(&self) -> Vec<String> {
        self.seeds.lock().expect("seeds lock").clone()
    }

    /// The seed at `address` answered gossip as this very node. After
    /// [`SELF_ECHOES`] such answers, and never one from another
    /// node, it is taken for this node under another name (`localhost` for
    /// `127.0.0.1`, say) and dropped, so that a node whose seeds all name
    /// itself is alone by design, as one without seeds. (A name that
    /// balances over several nodes, this one included, answers as another
    /// node sooner or later, and stays.)
    pub fn seed_echoed(&self, address: &str) {
        let mut echoes = self.seed_echoes.lock().expect("seed echoes lock");
        let n = echoes.entry(address.to_string()).or_insert(0);
        if *n == u32::MAX {
            return;
        }
        *n += 1;
        if *n >= SELF_ECHOES {
            let mut seeds = self.seeds.lock().expect("seeds lock");
            if let Some(at) = seeds.iter().position(|s| s == address) {
                seeds.remove(at);
                tracing::info!(seed = address, "this seed is this node itself; ignored from now on");
            }
        }
    }

    /// The seed at `address` answered gossip as another node: it is kept.
    pub fn seed_answered(&self, address: &str) {
        self.seed_echoes.lock().expect("seed echoes lock").insert(address.to_string(), u32::MAX);
    }

    /// This node's id (from the flag or the data dir).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The base URL peers use for this node.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The sled database.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The current cluster view: one snapshot per request.
    pub fn view(&self) -> Arc<ClusterView> {
        self.membership.view()
    }

    /// A receiver of every cluster view published from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.membership.subscribe()
    }

    /// The per-call timeout of node-to-node requests.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// The transport to peers.
    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    /// One replica operation for `to`, batched with others to that peer.
    pub async fn batch(&self, to: Target<'_>, op: Bytes) -> Result<BatchReply, TransportError> {
        self.batcher.call(to, op).await
    }

    /// One unbatched internal call, bounded by the request timeout.
    pub async fn call(&self, to: Target<'_>, route: Route, body: Bytes) -> Result<Bytes, TransportError> {
        self.transport.call(to, route, body, self.timeout()).await
    }

    /// Runs `fut` in the background, tracked: shutdown waits for it.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// Starts a background worker under this node's tracker; it stops at
    /// shutdown.
    pub fn spawn_worker<W: Worker>(&self, w: W) {
        worker::spawn(w, &self.tasks, self.stop.child_token(), self.workers.clone());
    }

    /// Every worker's status.
    pub fn workers(&self) -> &worker::Registry {
        &self.workers
    }

    /// Cancelled once background work must stop.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stop
    }

    /// Stops background work and waits up to `deadline` for every tracked
    /// task; returns whether all finished.
    pub async fn stop_tasks(&self, deadline: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait()).await.is_ok()
    }

    /// Closes the peer queues (last, after a leave hand-off used them).
    pub async fn close_transport(&self, deadline: Duration) {
        self.batcher.shutdown(deadline).await;
    }

    /// Asks the node to leave the cluster (`POST /cluster/leave`).
    pub fn request_leave(&self) {
        self.leave.cancel();
    }

    /// Cancelled once a leave was requested.
    pub fn leave_requested(&self) -> &CancellationToken {
        &self.leave
    }

    /// The membership timeouts from the configuration.
    pub fn timeouts(&self) -> Timeouts {
        timeouts_of(&self.cfg)
    }

    /// Changes the member table through the one publishing path, updates the
    /// member gauges, and persists the table when `f` says the members
    /// changed.
    fn update_members(&self, f: impl FnOnce(&mut Table) -> bool) -> Arc<ClusterView> {
        let (changed, view) = self.membership.update(f);
        let mut counts = [0i64; 4];
        for m in view.members() {
            counts[m.status as usize] += 1;
        }
        for (status, n) in ["alive", "suspect", "dead", "left"].iter().zip(counts) {
            self.metrics.members.with_label_values(&[status]).set(n);
        }
        if changed {
            let json = serde_json::to_vec(&view.table().digests_at(SystemTime::now())).expect("digests serialize");
            if let Err(e) = self.storage.save_members(&json) {
                tracing::warn!(error = %e, "membership not persisted");
            }
        }
        view
    }

    /// One heartbeat: bump our counter, re-derive statuses, reserve more
    /// heartbeats on disk when needed.
    pub fn heartbeat(&self) -> Result<(), StorageError> {
        let timeouts = self.timeouts();
        let mut back = false;
        let view = self.update_members(|t| {
            let now = SystemTime::now();
            // A status that changed is saved with the table, so that a
            // restart does not bring a member back alive (`idle_ms`).
            let changed = t.refresh(now, timeouts);
            t.bump(now);
            back = t.take_back_from_isolation();
            changed
        });
        if back {
            self.back_from_isolation();
        }
        let hb = view.table().heartbeat();
        self.metrics.heartbeat.set(hb as i64);
        if hb >= self.storage.heartbeat_reserved()? {
            self.storage.reserve_heartbeat(hb.saturating_add(HEARTBEAT_RESERVE))?;
        }
        Ok(())
    }

    /// Checks a gossip message from a peer (either direction of an
    /// exchange) and applies it. A sender that must not be a member is
    /// refused whole and logged once: another `--partitions`, or an id
    /// alive here at another address (SPEC §4, "Safety of membership"): it
    /// learns nothing of the cluster, so it never coordinates a write under
    /// an id whose dots another process issues. A message too large or with
    /// a malformed entry is refused too. Hearing from a member other than
    /// itself is what "knows the cluster" means for readiness.
    pub fn accept_gossip(&self, msg: &GossipMessage) -> Result<(), GossipRefusal> {
        // This node talking to itself through a seed under another name:
        // nothing to learn, and no sign of a cluster. (Another process
        // claiming this id sends another address, and is refused below.)
        if self.is_own_echo(msg) {
            return Ok(());
        }
        let ours = self.cfg.partitions;
        if msg.partitions != ours {
            self.log_once(format!("partitions {} from {}", msg.partitions, msg.from), || {
                tracing::error!(
                    peer = %msg.from,
                    theirs = msg.partitions,
                    ours,
                    "refusing gossip from a node with another --partitions; it stays off the ring"
                )
            });
            return Err(GossipRefusal::NotAMember(format!(
                "sender has --partitions {}, this node {ours}; Q must match cluster-wide",
                msg.partitions
            )));
        }
        if msg.members.len() > MAX_GOSSIP_MEMBERS {
            return Err(GossipRefusal::Invalid("too many members".into()));
        }
        for m in &msg.members {
            let url_ok = m.address.starts_with("http://") || m.address.starts_with("https://");
            if !crate::config::valid_node_id(&m.id) || !url_ok || m.address.len() > 512 {
                return Err(GossipRefusal::Invalid(format!("invalid member entry {:?}", m.id)));
            }
        }
        let sender = msg.members.iter().find(|d| d.id == msg.from);
        if let Some(c) = sender.and_then(|d| self.view().table().conflict(d)) {
            self.log_conflict(&c);
            return Err(GossipRefusal::NotAMember(format!(
                "node id {} is alive at {}, not at {}: two processes must not share an id",
                c.id, c.alive_at, c.claimed_by
            )));
        }
        self.apply_gossip(&msg.members);
        if msg.from != self.id {
            let mut refusal = self.refusal.lock().expect("refusal lock");
            refusal.accepted_at = Some(Instant::now());
            refusal.reason = None;
            self.is_refused.store(false, Ordering::SeqCst);
            drop(refusal);
            if !self.heard_cluster.swap(true, Ordering::SeqCst) {
                self.heard.notify_waiters();
            }
        }
        Ok(())
    }

    /// The node at `address` refused this node's gossip. Unless a member
    /// accepted it within the last `--suspect-after-ms` (one seed of
    /// another cluster, say, among members that accept it every round), it
    /// does not act as a member until one accepts it again, and says why in
    /// its readiness. (A node the cluster took for gone and replaced by
    /// another process under its id was last accepted longer ago than
    /// that.) Logged once per refusing node.
    pub fn refused_by(&self, address: &str, why: &str) {
        let mut refusal = self.refusal.lock().expect("refusal lock");
        let accepted_lately = refusal.accepted_at.is_some_and(|at| at.elapsed() < self.timeouts().suspect_after);
        if !accepted_lately {
            refusal.reason = Some(format!("{address} refuses this node: {why}"));
            self.is_refused.store(true, Ordering::SeqCst);
        }
        drop(refusal);
        self.log_once(
            format!("refused by {address}"),
            || tracing::error!(peer = %address, reason = %why, "a member refuses this node; it stays off the ring"),
        );
    }

    /// Whether members refuse this node as one (see `refusal`).
    pub fn is_refused(&self) -> bool {
        self.is_refused.load(Ordering::Relaxed)
    }

    /// A request relayed to the node at `address` got no answer (no
    /// connection, a timeout, a broken connection), or (`answered`) it did.
    pub fn relay_outcome(&self, address: &str, answered: bool) {
        let mut unanswered = self.unanswered.lock().expect("relay lock");
        if answered {
            unanswered.remove(address);
        } else {
            unanswered.insert(address.to_string(), Instant::now());
        }
    }

    /// Whether a request relayed to the node at `address` got no answer
    /// within the last `--dead-after-ms`: relays then try it after the
    /// others, since gossip may still hold it alive while only the link
    /// from this node is cut, and trying it first would cost every request
    /// a timeout. (Once the mark is older, one request tries it again.)
    pub fn relay_lately_unanswered(&self, address: &str) -> bool {
        let window = self.timeouts().dead_after;
        let unanswered = self.unanswered.lock().expect("relay lock");
        unanswered.get(address).is_some_and(|at| at.elapsed() < window)
    }

    /// Logs a refused claim on an id (once per id and claimant).
    fn log_conflict(&self, c: &crate::membership::Conflict) {
        self.log_once(format!("id {} at {}", c.id, c.claimed_by), || {
            tracing::error!(
                id = %c.id,
                alive_at = %c.alive_at,
                claimed_by = %c.claimed_by,
                "refusing a member that claims an id already alive at another address; it stays off the ring"
            )
        });
    }

    /// Applies digests heard by gossip; refused claims (an id alive at
    /// another address) are logged once each.
    pub fn apply_gossip(&self, digests: &[Digest]) {
        let mut conflicts = Vec::new();
        let mut overflow = 0;
        let mut back = false;
        let mut forgot = false;
        let mut merged = false;
        let timeouts = self.timeouts();
        self.update_members(|t| {
            // A node that took every partition for a new cluster of its own
            // hears of its id from an earlier run: it is a wiped member started without seeds (typically
            // the first node, the others' seed), and its empty partitions
            // must not pass for complete copies. Given up under the member
            // lock, before the merge: no view ever shows the cluster while
            // this node still holds everything.
            if self.started_alone.load(Ordering::SeqCst) {
                // Its id at its address, either with a heartbeat above
                // this run's, or heard before this run told anyone its
                // table (an earlier run shorter than this one so far has
                // the lower heartbeat).
                let mine = t.heartbeat();
                let unannounced = !self.announced.load(Ordering::SeqCst);
                let earlier = digests
                    .iter()
                    .any(|d| d.id == self.id && d.address == self.address && (unannounced || d.heartbeat > mine));
                // Or it hears of another member: it is one of a cluster
                // now, which may have held these partitions all along (a
                // wiped first node restarted under a generated id, which
                // nobody's gossip names). What it took for itself alone is
                // verified like a copy from before a restart: it stays a
                // holder others may stream from (a joining node's only
                // one, when this is a new cluster's first node), but
                // vouches for nothing until compared with every other
                // owner holding it, or until none does.
                let others = digests.iter().any(|d| d.id != self.id && !d.left);
                if earlier || others {
                    // The flag clears under the ownership lock, with the
                    // partitions already given up: a readiness check that
                    // sees it cleared (and so skips the settle) then waits
                    // for the lock and finds them inbound.
                    let mut o = self.ownership.lock().expect("ownership lock");
                    if self.started_alone.load(Ordering::SeqCst) {
                        if earlier {
                            o.forget_held();
                            forgot = true;
                        } else {
                            o.reverify();
                            merged = true;
                        }
                        self.started_alone.store(false, Ordering::SeqCst);
                    }
                }
            }
            let now = SystemTime::now();
            let changed = t.merge(digests, now);
            // Members first heard of start as old as the sender's news of
            // them: one it holds dead is dead here too, before any view shows
            // it on the ring.
            let refreshed = t.refresh(now, timeouts);
            conflicts = t.take_conflicts();
            overflow = t.take_overflow();
            back = t.take_back_from_isolation();
            changed || refreshed
        });
        if forgot {
            tracing::warn!(
                "this node's id was a member before this data dir existed (a wiped disk): \
                 it gives up the partitions it took as its own and refills them like a joining node"
            );
            self.ownership_changed();
        }
        if merged {
            tracing::info!(
                "joined by other members after starting alone: every partition taken while alone is \
                 verified against the other owners before this node answers for it"
            );
            self.ownership_changed();
        }
        if back {
            self.back_from_isolation();
        }
        if overflow > 0 {
            self.log_once("member table full".into(), || {
                tracing::error!(
                    limit = crate::membership::MAX_TABLE,
                    "the member table is full; new members heard by gossip are ignored"
                )
            });
        }
        for c in conflicts {
            self.log_conflict(&c);
        }
    }

    /// This node was cut off from most of the cluster, or paused for the
    /// dead timeout, and is back: the others may have declared it dead and
    /// written without it, so what it holds is verified (a Merkle exchange
    /// with every other replica holding it, per partition) before it
    /// answers for it alone again.
    fn back_from_isolation(&self) {
        tracing::info!("back from a spell cut off from the cluster; verifying every partition held");
        self.update_ownership(Ownership::reverify);
    }

    /// Runs `log` the first time `key` is seen.
    pub fn log_once(&self, key: String, log: impl FnOnce()) {
        if self.logged.lock().expect("log set").insert(key) {
            log();
        }
    }

    /// Whether this node has heard gossip from another member since it
    /// started.
    pub fn heard_cluster(&self) -> bool {
        self.heard_cluster.load(Ordering::SeqCst)
    }

    /// Whether this node knows the cluster: it is alone by design (no seeds,
    /// no other member known but ones that left) or has heard gossip from a
    /// member, and no member refuses it since.
    pub fn knows_cluster(&self) -> bool {
        self.knows_cluster_in(&self.view())
    }

    /// [`Node::knows_cluster`], asked of `view` rather than a fresh one.
    fn knows_cluster_in(&self, view: &ClusterView) -> bool {
        (self.heard_cluster() && !self.is_refused())
            || (self.seeds.lock().expect("seeds lock").is_empty() && view.sole_member())
    }

    /// Reads the ownership state.
    pub fn ownership<R>(&self, f: impl FnOnce(&Ownership) -> R) -> R {
        f(&self.ownership.lock().expect("ownership lock"))
    }

    /// Changes the ownership state; persists it and announces the transfer
    /// counts when it changed.
    pub fn update_ownership<R>(&self, f: impl FnOnce(&mut Ownership) -> R) -> R {
        let (out, changed) = {
            let mut o = self.ownership.lock().expect("ownership lock");
            let before = o.clone();
            let out = f(&mut o);
            (out, *o != before)
        };
        if changed {
            self.ownership_changed();
        }
        out
    }

    /// Persists the ownership state and announces its transfer counts.
    fn ownership_changed(&self) {
        let (counts, bytes) = {
            let o = self.ownership.lock().expect("ownership lock");
            (o.counts(), serde_json::to_vec(&*o).expect("ownership serializes"))
        };
        if let Err(e) = self.storage.save_ownership(&bytes) {
            tracing::warn!(error = %e, "ownership not persisted");
        }
        self.metrics.transfers_pending.with_label_values(&["in"]).set(i64::from(counts.0));
        self.metrics.transfers_pending.with_label_values(&["out"]).set(i64::from(counts.1));
        self.update_members(|t| {
            t.set_transfers(counts.0, counts.1);
            false
        });
    }

    /// What partition `p` is to this node.
    pub fn standing(&self, p: u32) -> Standing {
        self.ownership(|o| o.standing(p))
    }

    /// Whether this node cannot vouch for partition `p` yet: it has not
    /// heard from the cluster, or it owns `p` (in `view`) without holding it
    /// completely and up to date (being received or verified, or not yet
    /// noticed by the transfer worker: one it never held, or one it was
    /// handing off, whose copy missed the writes made while it was not an
    /// owner). Such a node never answers for `p`'s keys alone.
    pub fn receiving(&self, view: &ClusterView, p: u32) -> bool {
        if !self.knows_cluster_in(view) {
            return true;
        }
        match self.standing(p) {
            Standing::Inbound(_) => true,
            Standing::None | Standing::Outbound => view.ring().replicates(p, &self.id),
            Standing::Held => false,
        }
    }

    /// Why this node is not ready to serve as a full member (SPEC §3,
    /// `GET /health/ready`), or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if self.leave.is_cancelled() {
            return Some("leaving the cluster".into());
        }
        if !self.knows_cluster() {
            if let Some(why) = self.refusal.lock().expect("refusal lock").reason.clone() {
                return Some(format!("refused by the cluster: {why}"));
            }
            return Some("has not heard from any member of the cluster yet".into());
        }
        // Started alone (no seeds, an empty data dir) under a configured
        // id: a new cluster, or a former member whose disk was lost, whom
        // the others will gossip to within a few rounds (see
        // `apply_gossip`). It serves at once, but reports ready only once
        // that had its chance.
        if let Some(left) = self.unsettled() {
            return Some(format!(
                "started alone on an empty data dir without seeds: {} ms more for gossip from a cluster that may already know this node id",
                left.as_millis()
            ));
        }
        // Inbound, not yet taken up by the transfer worker, or held from
        // before a restart and not yet verified: every partition this node
        // cannot vouch for.
        let view = self.view();
        let inbound: Vec<u32> = (0..self.cfg.partitions).filter(|p| self.receiving(&view, *p)).collect();
        if inbound.is_empty() {
            return None;
        }
        // Those with a copy here are compared (Merkle), not copied again.
        let verifying = inbound.iter().filter(|p| self.standing(**p) == Standing::Inbound(Mode::Sync)).count();
        Some(format!(
            "receiving {} partition(s) it owns ({verifying} of them being verified against the other replicas)",
            inbound.len()
        ))
    }

    /// How long a node started alone under a configured id reports not
    /// ready while it waits for gossip that would show its id was a member
    /// before: three gossip rounds, at least a second.
    pub fn alone_settle(&self) -> Duration {
        (Duration::from_millis(self.cfg.gossip_interval_ms) * 3).max(Duration::from_secs(1))
    }

    /// How much longer this node waits for gossip before it takes itself
    /// for a new cluster, or `None` when it does not wait (it did not
    /// start alone under a configured id, heard a member, found out it was
    /// wiped, or the settle passed).
    pub fn unsettled(&self) -> Option<Duration> {
        if !self.settles || !self.started_alone.load(Ordering::SeqCst) || self.heard_cluster() {
            return None;
        }
        let left = self.alone_settle().saturating_sub(self.opened.elapsed());
        (!left.is_zero()).then_some(left)
    }

    /// Resolves once [`Node::unsettled`] is `None`: at the latest when the
    /// settle ends, at once when gossip from a member arrives.
    pub async fn settled(&self) {
        loop {
            let heard = self.heard.notified();
            tokio::pin!(heard);
            heard.as_mut().enable();
            let Some(left) = self.unsettled() else { return };
            tokio::select! {
                _ = heard => {}
                _ = tokio::time::sleep(left) => {}
            }
        }
    }

    /// Marks this node as left (the end of a leave hand-off).
    pub fn mark_left(&self) {
        self.update_members(|t| {
            t.leave(SystemTime::now());
            true
        });
    }

    /// What this node sends in a gossip exchange (from then on, others may
    /// know this run's heartbeat).
    pub fn gossip_message(&self) -> GossipMessage {
        self.announced.store(true, Ordering::SeqCst);
        let members = self.view().table().digests_at(SystemTime::now());
        GossipMessage { from: self.id.clone(), partitions: self.cfg.partitions, members }
    }
}

/// Gossip answers from a seed as this node itself (and none as another)
/// after which the seed is taken for this node under another name.
const SELF_ECHOES: u32 = 10;

/// The failure detector's timeouts as configured.
fn timeouts_of(cfg: &Config) -> Timeouts {
    Timeouts {
        suspect_after: Duration::from_millis(cfg.suspect_after()),
        dead_after: Duration::from_millis(cfg.dead_after_ms),
        interval: Duration::from_millis(cfg.gossip_interval_ms),
    }
}
