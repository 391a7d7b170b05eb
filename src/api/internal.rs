//! `/internal/*`: the HTTP face of [`crate::rpc`] (gossip, batched replica
//! operations, hints). Guarded by `--cluster-secret` when it is set: a
//! request without it gets 401 and changes nothing. Bodies that do not decode
//! get 400, bodies over their limit a JSON 413.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower_http::validate_request::ValidateRequestHeaderLayer;

use super::error::ApiError;
use crate::node::Node;
use crate::rpc;
use crate::transport::http::{RECIPIENT_HEADER, SECRET_HEADER};

/// Largest gossip body accepted.
pub const MAX_GOSSIP_BYTES: usize = 1 << 20;

/// A layer that rejects internal requests without the cluster secret (401
/// `unauthorized`, the request never reaches its handler) when `secret` is
/// set, and lets every request through when it is not.
pub fn require_secret(
    secret: Option<String>,
) -> ValidateRequestHeaderLayer<impl FnMut(&mut Request) -> Result<(), Response> + Clone + Send + Sync + 'static> {
    guard(secret, |h| h.get(SECRET_HEADER).map(|v| v.as_bytes()), || ApiError::Unauthorized.into_response())
}

/// A layer that lets a request through when `secret` is unset or when
/// `given` finds it in the request's headers (compared in constant time),
/// and answers `refusal()` otherwise (tower-http's header validation: no
/// boxed service or future per request).
// The Err of a tower-http validator is the refusal itself, a Response.
#[allow(clippy::result_large_err)]
pub fn guard(
    secret: Option<String>,
    given: fn(&HeaderMap) -> Option<&[u8]>,
    refusal: fn() -> Response,
) -> ValidateRequestHeaderLayer<impl FnMut(&mut Request) -> Result<(), Response> + Clone + Send + Sync + 'static> {
    ValidateRequestHeaderLayer::custom(move |req: &mut Request| match &secret {
        Some(secret) if !given(req.headers()).is_some_and(|g| constant_time_eq(g, secret.as_bytes())) => Err(refusal()),
        _ => Ok(()),
    })
}

/// A layer that refuses (421 `misdirected`, nothing done) a node-to-node
/// request naming another member as its recipient: a process that took
/// over a member's address under a new id (a wiped node restarted without
/// `--node-id`) must not answer replica reads, writes or transfers as that
/// member, or a coordinator would count its empty copy as the member's.
/// Requests that name nobody (gossip) pass.
// The Err of a tower-http validator is the refusal itself, a Response.
#[allow(clippy::result_large_err)]
pub fn require_recipient(
    id: String,
) -> ValidateRequestHeaderLayer<impl FnMut(&mut Request) -> Result<(), Response> + Clone + Send + Sync + 'static> {
    ValidateRequestHeaderLayer::custom(move |req: &mut Request| {
        check_recipient(req.headers(), &id).map_err(IntoResponse::into_response)
    })
}

/// Refuses a request whose `headers` name a recipient other than node `id`
/// (421 `misdirected`); one naming nobody passes.
pub fn check_recipient(headers: &HeaderMap, id: &str) -> Result<(), ApiError> {
    match headers.get(RECIPIENT_HEADER) {
        Some(to) if to.as_bytes() != id.as_bytes() => Err(ApiError::Misdirected(format!(
            "this request is for member {}, but this is node {id} (the member's address now serves another node)",
            String::from_utf8_lossy(to.as_bytes())
        ))),
        _ => Ok(()),
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /internal/gossip`: merge the sender's table, answer with ours.
pub async fn gossip(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let answer = rpc::gossip(&node, &read_body(body)?)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response())
}

/// `POST /internal/batch`: replica reads, writes and purges, answered in order.
pub async fn batch(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let answer = rpc::batch(&node, &read_body(body)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response())
}

/// `POST /internal/hint`: keep a write for an unreachable owner.
pub async fn hint(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Result<StatusCode, ApiError> {
    rpc::hint(&node, &read_body(body)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /internal/anti-entropy`: compare Merkle tree nodes.
pub async fn anti_entropy(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let answer = rpc::anti_entropy(&node, &read_body(body)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response())
}

/// `POST /internal/transfer`: a page of a partition this node holds.
pub async fn transfer(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let answer = rpc::transfer(&node, &read_body(body)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response())
}

/// The request body, or a JSON 413 past the route's limit.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge,
        _ => ApiError::InvalidBody(format!("request body could not be read: {}", e.body_text())),
    })
}
