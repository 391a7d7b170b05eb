//! The one place that knows how failures look over HTTP: every error is
//! `{"error": "<sentence>", "code": "<machine_code>"}` with a fitting status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::coordinator::CoordError;
use crate::rpc::RpcError;
use crate::storage::StorageError;
use crate::transport::MEMBERSHIP_REFUSED;
use crate::version::token;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Empty key, bad percent-encoding, not UTF-8.
    #[error("{0}")]
    InvalidKey(String),
    /// Key over `--max-key-bytes`.
    #[error("key is {len} bytes; the limit is {limit} (--max-key-bytes)")]
    KeyTooLarge { len: usize, limit: u64 },
    /// Value over `--max-value-bytes`.
    #[error("value exceeds the limit of {limit} bytes (--max-value-bytes)")]
    ValueTooLarge { limit: u64 },
    /// Bad `r` or `w`.
    #[error(transparent)]
    InvalidQuorum(#[from] crate::coordinator::LevelError),
    /// Bad `ttl`.
    #[error("ttl={0:?} must be a whole number of seconds from 1 to 9999999999")]
    InvalidTtl(String),
    /// Query string that does not parse.
    #[error("query string does not parse: {0}")]
    InvalidQuery(String),
    /// Bad `X-Context`.
    #[error("{0}; send back the X-Context of a read unchanged, or none")]
    InvalidContext(#[from] token::ContextError),
    /// Bad `Content-Type` header.
    #[error("Content-Type must be a media type like text/plain (type/subtype, at most 256 bytes)")]
    InvalidContentType,
    /// Key never written, deleted or expired.
    #[error("key not found")]
    NotFound,
    /// No such route.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// Route exists, method does not.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// Internal route without the cluster secret.
    #[error("missing or wrong cluster secret")]
    Unauthorized,
    /// Admin route without `Authorization: Bearer <cluster secret>`.
    #[error("this route changes the cluster: send Authorization: Bearer <the cluster secret>")]
    AdminUnauthorized,
    /// Internal route body that does not decode.
    #[error("{0}")]
    InvalidBody(String),
    /// Gossip from a node that must not be a member here (its id is alive
    /// at another address, or it runs another `--partitions`).
    #[error("{0}")]
    MembershipRefused(String),
    /// Internal route body over its limit.
    #[error("request body exceeds this route's limit")]
    BodyTooLarge,
    /// A node-to-node request meant for another member (one that was at
    /// this address before): nothing was done.
    #[error("{0}")]
    Misdirected(String),
    /// This stand-in keeps no more hints.
    #[error("hint backlog full")]
    HintBacklogFull,
    /// A request relayed to a replica got no answer after it may have been
    /// applied there; it is not retried elsewhere.
    #[error("the request was relayed to replica {peer}, which did not answer ({reason}); the write may have been applied there and spreads from there if so")]
    ForwardFailed { peer: String, needed: usize, reason: String },
    /// More requests in progress than the node's budget (load shedding).
    #[error("this node is serving as many requests as it can; retry shortly, or ask another node")]
    Overloaded,
    /// The request ran past its deadline.
    #[error("the request did not finish within its deadline; if it was a write, it may have been applied")]
    DeadlineExceeded,
    /// This node cannot serve the request (it just started and has not
    /// heard from the cluster, or it is leaving); nothing was done, so
    /// another node may take it.
    #[error("{0}")]
    NotReady(String),
    /// Coordinator refused or failed.
    #[error(transparent)]
    Coord(CoordError),
    /// This node's storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Storage(s) => ApiError::Storage(s),
            other => ApiError::Coord(other),
        }
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::InvalidBody(msg) => ApiError::InvalidBody(msg),
            RpcError::MembershipRefused(msg) => ApiError::MembershipRefused(msg),
            RpcError::HintBacklogFull => ApiError::HintBacklogFull,
            RpcError::Storage(s) => ApiError::Storage(s),
        }
    }
}

impl ApiError {
    /// HTTP status and stable machine code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
            ApiError::KeyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "key_too_large"),
            ApiError::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"),
            ApiError::InvalidQuorum(_) => (StatusCode::BAD_REQUEST, "invalid_quorum"),
            ApiError::InvalidTtl(_) => (StatusCode::BAD_REQUEST, "invalid_ttl"),
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            ApiError::InvalidContext(_) => (StatusCode::BAD_REQUEST, "invalid_context"),
            ApiError::InvalidContentType => (StatusCode::BAD_REQUEST, "invalid_content_type"),
            ApiError::Unauthorized | ApiError::AdminUnauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::MembershipRefused(_) => (StatusCode::CONFLICT, MEMBERSHIP_REFUSED),
            ApiError::HintBacklogFull => (StatusCode::SERVICE_UNAVAILABLE, "hint_backlog_full"),
            ApiError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected"),
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Coord(CoordError::TooManySiblings { .. }) => (StatusCode::CONFLICT, "too_many_siblings"),
            ApiError::Coord(CoordError::QuorumNotMet { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "quorum_not_met"),
            // The client's situation is a quorum failure's: maybe stored, retry
            // with the context (SPEC §4, "Failures are 503").
            ApiError::ForwardFailed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "quorum_not_met"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            // Running past the deadline is a symptom of overload too.
            ApiError::DeadlineExceeded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Coord(CoordError::Storage(_)) | ApiError::Storage(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage_error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut body = json!({ "error": self.to_string(), "code": code });
        match &self {
            // The X-Context of a write's version is added by the handler,
            // which knows the key (`api::kv`).
            ApiError::Coord(CoordError::QuorumNotMet { needed, acked, .. }) => {
                body["needed"] = json!(needed);
                body["acked"] = json!(acked);
            }
            ApiError::Coord(CoordError::TooManySiblings { limit, would }) => {
                body["limit"] = json!(limit);
                body["would_keep"] = json!(would);
            }
            ApiError::ForwardFailed { needed, .. } => {
                // How many replicas acked is not known here: no count is made up.
                body["needed"] = json!(needed);
            }
            ApiError::Coord(CoordError::Storage(e)) | ApiError::Storage(e) => {
                // Details go to the log, not to the client.
                tracing::error!(error = %e, "storage failure");
                body["error"] = json!("internal storage error");
            }
            _ => {}
        }
        let mut resp = (status, Json(body)).into_response();
        if matches!(self, ApiError::AdminUnauthorized) {
            resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
