//! How a node talks to its peers: the [`Transport`] seam, its typed errors,
//! the wire messages ([`wire`]) and per-peer batching ([`batch`]).
//!
//! Everything above this module (coordinator, replica access, gossip,
//! hand-off, anti-entropy) sends encoded messages to a [`Target`] on a
//! [`Route`] and gets the encoded answer back; it never sees HTTP. The real
//! transport is [`http::HttpTransport`] (one pooled reqwest client,
//! `/internal/*` routes, the cluster secret); tests and simulations plug in
//! an in-memory network that drops or delays chosen messages
//! (`crate::harness`).

pub mod batch;
pub mod http;
pub mod wire;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

/// A boxed, sendable future: what [`Transport`] methods return, so the trait
/// can be used as `Arc<dyn Transport>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The node a message goes to.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Its node id.
    pub id: &'a str,
    /// Its base URL.
    pub address: &'a str,
}

/// The internal services a node offers its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Push-pull membership exchange (JSON).
    Gossip,
    /// Batched replica reads, writes and purges.
    Batch,
    /// A write kept by a stand-in for an unreachable owner.
    Hint,
    /// Anti-entropy: Merkle tree comparison.
    AntiEntropy,
    /// Ownership transfer: pages of a partition.
    Transfer,
}

impl Route {
    /// The HTTP path of the route.
    pub fn path(self) -> &'static str {
        match self {
            Route::Gossip => "/internal/gossip",
            Route::Batch => "/internal/batch",
            Route::Hint => "/internal/hint",
            Route::AntiEntropy => "/internal/anti-entropy",
            Route::Transfer => "/internal/transfer",
        }
    }

    /// The content type of the route's bodies: gossip is JSON, the rest
    /// binary ([`wire`]).
    pub fn content_type(self) -> &'static str {
        if self == Route::Gossip {
            "application/json"
        } else {
            "application/octet-stream"
        }
    }
}

/// The error code of a gossip exchange refused because the sender must not
/// be a member (HTTP 409): its id is alive at another address, or it runs
/// another `--partitions`.
pub const MEMBERSHIP_REFUSED: &str = "membership_refused";

/// Why a message got no answer. `Clone`, so one failed batch can tell every
/// operation in it what happened, keeping the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made: the message surely never arrived.
    #[error("could not connect: {0}")]
    Connect(String),
    /// Sent, but no answer in time: it may have been applied.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke while sending or receiving: it may have been
    /// applied.
    #[error("connection failed: {0}")]
    Io(String),
    /// The peer answered with an error status.
    #[error("peer answered {0}")]
    Status(u16),
    /// The peer refuses this node as a member (its answer's reason).
    #[error("refused as a member: {0}")]
    Refused(String),
    /// The peer's answer did not decode.
    #[error("peer sent a malformed answer")]
    Malformed,
    /// The peer received the operation and reports it failed there.
    #[error("failed on the peer: {0}")]
    Remote(String),
    /// This node is shutting down; the message was not sent.
    #[error("not sent: this node is shutting down")]
    Closed,
}

impl TransportError {
    /// Whether the message surely never reached the peer (so retrying it
    /// elsewhere cannot apply it twice).
    pub fn not_delivered(&self) -> bool {
        matches!(self, TransportError::Connect(_) | TransportError::Closed)
    }
}

/// A client request relayed to another node unchanged (SPEC §4: a node
/// outside a key's preference list forwards to one inside).
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    /// `GET`, `PUT` or `DELETE`.
    pub method: axum::http::Method,
    /// Path and query as the client sent them.
    pub path_and_query: String,
    /// The headers that matter to the receiving coordinator.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// The answer to a forwarded request.
#[derive(Debug, Clone)]
pub struct ForwardResponse {
    /// HTTP status.
    pub status: u16,
    /// The headers passed back to the client.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Bytes,
}

/// One peer's own connection, carrying one call at a time: what a per-peer
/// sender with a steady stream of calls (the batcher) talks through. Calls
/// are bounded and typed as [`Transport::call`]'s.
pub trait PeerLink: Send + 'static {
    /// Sends `body` to `route` of the link's peer and returns the answer's
    /// body.
    fn call(&mut self, route: Route, body: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes, TransportError>>;
}

/// Delivers internal messages. Implementations bound every call by
/// `timeout` and type their failures ([`TransportError`]).
pub trait Transport: Send + Sync + 'static {
    /// A [`PeerLink`] to `to`, when this transport carries a stream of calls
    /// to one peer more cheaply on a connection of its own; `None` (the
    /// default) sends them through [`Transport::call`].
    fn link(&self, _to: Target<'_>) -> Option<Box<dyn PeerLink>> {
        None
    }

    /// Sends `body` to `route` of `to` and returns the answer's body.
    fn call<'a>(
        &'a self,
        to: Target<'a>,
        route: Route,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Bytes, TransportError>>;

    /// Relays a client request to the node at `to`.
    fn forward<'a>(
        &'a self,
        to: Target<'a>,
        req: ForwardRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ForwardResponse, TransportError>>;
}
