//! Wiring: the only module that sees both the HTTP edge and the background
//! work. [`start`] opens a node on a bound listener; [`run`] builds the
//! router, starts the workers, serves until the shutdown future resolves (or
//! the node has left, when it is asked to leave), and shuts down.
//!
//! Shutdown (SIGTERM, Ctrl-C, or the future in tests): stop accepting and
//! let in-flight requests finish (bounded by [`DRAIN_TIMEOUT`]); stop the
//! workers and wait for every tracked task (replication tails, read repairs,
//! exchanges), bounded too; close the peer queues; flush sled. So a graceful
//! stop never loses an acknowledged write, whatever `--sync-writes` says.
//!
//! A leave (`POST /cluster/leave`) goes the same way, except that the node
//! keeps serving until it has left: client and replica requests are refused
//! (503 `not_ready`) and those in progress finish, the workers stop, every
//! partition and hint is handed off (bounded by [`LEAVE_TIMEOUT`]), and only
//! then does HTTP stop. Meanwhile `/health/ready` answers 503 "leaving" (SPEC
//! §3); gossip, `/health`, `/metrics`, `/cluster/members` and
//! `/cluster/ring` keep answering.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::{Node, OpenError};
use crate::storage::StorageError;
use crate::transport::http::HttpTransport;

/// How long a graceful shutdown waits for in-flight requests, and then for
/// background tasks.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving node may spend handing its data off.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(120);

/// A failure to start or to serve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration or the data dir could not be used.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// The final flush failed.
    #[error(transparent)]
    Flush(#[from] StorageError),
    /// A leave could not hand everything off; the node did not announce
    /// `left` and stays a member (start it again and retry the leave).
    #[error("leave failed, this node is still a member: {0}")]
    Leave(String),
}

/// Opens a node for `cfg` (peers over HTTP), binds its listen address and
/// serves until `shutdown` resolves.
pub async fn start(mut cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    let listen = cfg.listen;
    let bind_error = |source| StartError::Bind { addr: listen, source };
    // `--listen host:0` takes a free port, reserved here (bound, not yet
    // listening: connections are refused until the node is open), so the
    // node advertises, and recognises itself in seeds under, the one it
    // got. Any other address is bound once the data dir is open, so a
    // second start of the same node says its data dir is in use.
    let reserved = if listen.port() == 0 {
        let socket = if listen.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(bind_error)?;
        socket.bind(listen).map_err(bind_error)?;
        cfg.listen = socket.local_addr().map_err(bind_error)?;
        Some(socket)
    } else {
        None
    };
    // Links reconnect after idling half of this node's idle-connection
    // timeout, which the cluster's nodes share.
    let transport = HttpTransport::new(
        Duration::from_millis(cfg.request_timeout_ms),
        cfg.cluster_secret.clone(),
        Duration::from_millis(cfg.header_timeout_ms / 2),
    );
    let node = Node::open(cfg, Arc::new(transport))?;
    let listener = match reserved {
        Some(socket) => socket.listen(1024).map_err(bind_error)?,
        None => TcpListener::bind(listen).await.map_err(bind_error)?,
    };
    run(node, listener, shutdown).await
}

/// Starts every background worker of `node`.
pub fn spawn_workers(node: &Arc<Node>) {
    node.spawn_worker(crate::gossip::Gossip::new(node.clone()));
    node.spawn_worker(crate::handoff::HintDelivery::new(node.clone()));
    node.spawn_worker(crate::reaper::Expiry::new(node.clone()));
    node.spawn_worker(crate::reaper::Tombstones::new(node.clone()));
    node.spawn_worker(crate::transfer::Transfers::new(node.clone()));
    if node.cfg().anti_entropy_interval_ms > 0 {
        node.spawn_worker(crate::antientropy::TreeBuild::new(node.clone()));
        node.spawn_worker(crate::antientropy::AntiEntropy::new(node.clone()));
    }
}

/// Serves `node` on `listener` until `shutdown` resolves or the node has
/// left (once asked to leave), then shuts down as the module docs say.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    spawn_workers(&node);
    let (app, intake) = crate::api::router(node.clone());
    let stop_serving = CancellationToken::new();
    let cfg = node.cfg();
    let limits = ConnLimits {
        max_connections: cfg.max_connections as usize,
        header_timeout: Duration::from_millis(cfg.header_timeout_ms),
    };
    tracing::info!(node_id = %node.id(), address = %node.address(), "dynakv serving");
    let mut served = Some(tokio::spawn(serve_http(listener, app, limits, stop_serving.clone())));
    let leave = node.leave_requested().clone();
    tokio::select! {
        _ = shutdown => {},
        _ = leave.cancelled() => {},
    }
    let leaving = leave.is_cancelled();
    // A serving error is returned once everything is stopped and flushed.
    let mut serving = Ok(());
    if leaving {
        // A leaving node keeps serving gossip, health (`/health/ready` is
        // 503 "leaving"), metrics, `/cluster/members` and `/cluster/ring`
        // until it has left; client
        // and replica requests are refused from now on (503 `not_ready`,
        // which relays and coordinators take as "not applied, try another
        // node"), and those in progress finish before the hand-off reads
        // the partitions.
        tracing::info!("leaving: refusing new requests, finishing those in progress");
        if !intake.close().await {
            tracing::warn!("requests still running past their deadline; handing off anyway");
        }
    } else {
        tracing::info!("shutting down: draining in-flight requests");
        stop_serving.cancel();
        serving = wait_served(served.take()).await;
    }
    if !node.stop_tasks(DRAIN_TIMEOUT).await {
        tracing::warn!("background tasks still running after {DRAIN_TIMEOUT:?}; closing anyway");
    }
    // After the workers stopped, so no heartbeat revives us as alive. A
    // hand-off that fails or runs out of time does not announce `left`:
    // the node stays a member with all its data, and exits 1.
    // A leave asked for on a connection still open during a SIGTERM drain
    // was answered 202: it is handed off too (HTTP has already stopped).
    let mut left = Ok(());
    if leaving || leave.is_cancelled() {
        left = match tokio::time::timeout(LEAVE_TIMEOUT, crate::handoff::leave(&node)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StartError::Leave(e)),
            Err(_) => Err(StartError::Leave(format!("hand-off not finished within {LEAVE_TIMEOUT:?}"))),
        };
        stop_serving.cancel();
        serving = serving.and(wait_served(served.take()).await);
    }
    node.close_transport(DRAIN_TIMEOUT).await;
    node.storage().flush().await?;
    tracing::info!("stopped; data flushed");
    left.and(serving)
}

/// Waits for [`serve_http`] to finish its graceful stop, at most
/// [`DRAIN_TIMEOUT`] and a second.
async fn wait_served(served: Option<tokio::task::JoinHandle<Result<(), std::io::Error>>>) -> Result<(), StartError> {
    let Some(served) = served else { return Ok(()) };
    match tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), served).await {
        Ok(Ok(Err(e))) => Err(StartError::Serve(e)),
        Ok(_) => Ok(()),
        Err(_) => {
            tracing::warn!("in-flight requests still running after {DRAIN_TIMEOUT:?}; closing anyway");
            Ok(())
        }
    }
}

/// Limits on connections (SPEC §3, "Overload": slow and idle clients).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at most; past it new ones wait in the backlog.
    pub max_connections: usize,
    /// Time to send a request's headers, and to send the next request on an
    /// idle keep-alive connection (hyper starts the header timer whenever a
    /// connection waits for a request head).
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` with [`ConnLimits`] until `stop` fires, then
/// lets open connections finish their requests (at most
/// [`DRAIN_TIMEOUT`]). HTTP/1.1.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    stop: CancellationToken,
) -> Result<(), std::io::Error> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1.1 only: hyper starts the header timer as soon as a connection
    // waits for a request head, the first one included, so a connection that
    // never sends anything is closed too (protocol detection for HTTP/2
    // would read its first bytes with no timeout).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("connection semaphore never closed"),
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off a moment
                    // rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing anyway");
    }
    Ok(())
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
