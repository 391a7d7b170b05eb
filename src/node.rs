//! Wiring: one [`Node`] holds the configuration, storage, membership and the
//! current ring; [`run`] serves the API on a bound listener and runs the
//! background loops until the shutdown future resolves.
//!
//! Shutdown (SIGTERM, Ctrl-C, or the future in tests): stop accepting, let
//! in-flight requests finish (bounded by [`DRAIN_TIMEOUT`]), cancel the loops,
//! wait for them, then flush sled, so a graceful stop never loses an
//! acknowledged write whatever `--sync-writes` says.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::membership::{Digest, Status, Table, Timeouts};
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::ring::Ring;
use crate::storage::{Storage, StorageError, StorageOptions};

/// How long a graceful shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeats are reserved on disk this many at a time, so a restart (even
/// after SIGKILL) starts above any heartbeat already gossiped.
const HEARTBEAT_RESERVE: u64 = 1000;

/// A node's shared state: the axum `State`.
pub struct Node {
    /// Validated configuration.
    pub cfg: Config,
    /// This node's id (from the flag or the data dir).
    pub id: String,
    /// Base URL peers use for this node.
    pub address: String,
    /// The sled database.
    pub storage: Arc<Storage>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Membership table. A std mutex: held only for short sections, never
    /// across an `.await`.
    pub members: Mutex<Table>,
    /// Members that have not left, kept by [`Node::publish_members`] so the
    /// request path reads a number instead of locking the table.
    not_left: AtomicUsize,
    /// Cancelled by `POST /cluster/leave`: the node hands off and stops.
    pub leave: CancellationToken,
    /// The pooled client for node-to-node calls.
    pub peers: Peers,
    ring: watch::Sender<Arc<Ring>>,
}

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data dir could not be used.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

impl Node {
    /// Validates `cfg`, opens the data dir and builds the node's state.
    pub fn open(cfg: Config) -> Result<Arc<Self>, StartError> {
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
        table.restore(&storage.members()?, SystemTime::now());
        let ring = Ring::new(&table.ring_members(), cfg.partitions, cfg.vnodes, cfg.replicas);
        let (ring, _) = watch::channel(Arc::new(ring));
        let peers = Peers::new(Duration::from_millis(cfg.request_timeout_ms), cfg.cluster_secret.clone());
        let node = Self {
            cfg,
            id,
            address,
            storage,
            metrics: Metrics::new(),
            members: Mutex::new(table),
            not_left: AtomicUsize::new(1),
            leave: CancellationToken::new(),
            peers,
            ring,
        };
        node.publish_members();
        Ok(Arc::new(node))
    }

    /// The current ring (an immutable snapshot).
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.borrow().clone()
    }

    /// The membership timeouts from the configuration.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            suspect_after: Duration::from_millis(self.cfg.suspect_after()),
            dead_after: Duration::from_millis(self.cfg.dead_after_ms),
        }
    }

    /// One heartbeat: bump our counter, re-derive statuses, reserve more
    /// heartbeats on disk when needed.
    pub fn heartbeat(&self) -> Result<(), StorageError> {
        let (hb, changed) = {
            let mut t = self.members.lock().expect("members lock");
            let changed = t.refresh(SystemTime::now(), self.timeouts());
            (t.bump(SystemTime::now()), changed)
        };
        self.metrics.heartbeat.set(hb as i64);
        if changed {
            self.publish_members();
        }
        if hb >= self.storage.heartbeat_reserved()? {
            self.storage.reserve_heartbeat(hb.saturating_add(HEARTBEAT_RESERVE))?;
        }
        Ok(())
    }

    /// Applies digests heard by gossip.
    pub fn apply_gossip(&self, digests: &[Digest]) {
        let changed = self.members.lock().expect("members lock").merge(digests, SystemTime::now());
        if changed {
            self.publish_members();
            let digests = self.members.lock().expect("members lock").digests();
            if let Err(e) = self.storage.save_members(&digests) {
                tracing::warn!(error = %e, "membership not persisted");
            }
        }
    }

    /// Rebuilds the ring if its member set changed, and updates the member
    /// gauges.
    pub fn publish_members(&self) {
        // Under the table lock, so two concurrent callers cannot publish an
        // older member set after a newer one.
        let t = self.members.lock().expect("members lock");
        let mut counts = [0i64; 4];
        for m in t.members() {
            counts[m.status as usize] += 1;
        }
        for (status, n) in ["alive", "suspect", "dead", "left"].iter().zip(counts) {
            self.metrics.members.with_label_values(&[status]).set(n);
        }
        self.not_left.store(t.not_left_count(), Ordering::SeqCst);
        let ring_members = t.ring_members();
        if self.ring.borrow().nodes() != ring_members.as_slice() {
            let ring = Ring::new(&ring_members, self.cfg.partitions, self.cfg.vnodes, self.cfg.replicas);
            tracing::info!(members = ?ring_members, "ring changed");
            self.ring.send_replace(Arc::new(ring));
        }
    }

    /// N for quorum arithmetic: `--replicas` capped by the members that have
    /// not left. Dead members still count (SPEC §2: N, R and W are never
    /// lowered because members are down); the ring, which places data, holds
    /// only alive and suspect ones, and stand-ins make up the difference.
    pub fn quorum_n(&self) -> usize {
        (self.cfg.replicas as usize).min(self.not_left.load(Ordering::SeqCst)).max(1)
    }

    /// Base URL and status of member `id`.
    pub fn member(&self, id: &str) -> Option<(String, Status)> {
        self.members.lock().expect("members lock").get(id).map(|m| (m.address.clone(), m.status))
    }

    /// The ring over every member that has not left, dead ones included:
    /// whose replicas must all hold a tombstone before it is purged.
    pub fn ring_not_left(&self) -> Ring {
        let ids = self.members.lock().expect("members lock").not_left();
        Ring::new(&ids, self.cfg.partitions, self.cfg.vnodes, self.cfg.replicas)
    }
}

/// Serves `node` on `listener` until `shutdown` resolves, then drains and
/// flushes.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    spawn_loops(&node, &cancel, &tasks);

    let app = crate::api::router(node.clone());
    let stop = CancellationToken::new();
    let stop_serving = stop.clone();
    let leave = node.leave.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {},
            _ = leave.cancelled() => {},
        }
        stop_serving.cancel();
    });
    let graceful = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { graceful.cancelled().await });
    tracing::info!(node_id = %node.id, address = %node.address, "dynakv serving");
    let served = tokio::spawn(async move { server.await });
    stop.cancelled().await;
    tracing::info!("shutting down: draining in-flight requests");
    match tokio::time::timeout(DRAIN_TIMEOUT, served).await {
        Ok(Ok(Err(e))) => return Err(StartError::Serve(e)),
        Ok(_) => {}
        Err(_) => tracing::warn!("in-flight requests still running after {DRAIN_TIMEOUT:?}; closing anyway"),
    }
    cancel.cancel();
    tasks.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await;
    // After the loops stopped, so no heartbeat revives us as alive.
    if node.leave.is_cancelled() {
        crate::handoff::leave(&node).await;
    }
    node.storage.flush().await?;
    tracing::info!("stopped; data flushed");
    Ok(())
}

/// Starts the background loops, each with a child token and a tracker slot.
fn spawn_loops(node: &Arc<Node>, cancel: &CancellationToken, tasks: &TaskTracker) {
    let n = node.clone();
    let c = cancel.child_token();
    tasks.spawn(async move { crate::membership::gossip::run(n, c).await });
    let n = node.clone();
    let c = cancel.child_token();
    tasks.spawn(async move { crate::handoff::run(n, c).await });
    let n = node.clone();
    let c = cancel.child_token();
    tasks.spawn(async move { crate::reaper::run(n, c).await });
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives
/// while the server starts is not lost to the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                _ = recv(term.as_mut()) => {},
                _ = recv(int.as_mut()) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for one delivery of a signal (forever if it could not be installed).
#[cfg(unix)]
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
