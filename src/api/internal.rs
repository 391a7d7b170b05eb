//! `/internal/*`: node-to-node routes (gossip, batched replica reads and
//! writes, hints). Guarded by `--cluster-secret` when it is set: a request without
//! it gets 401 and changes nothing. Bodies that do not decode get 400.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;

use super::error::ApiError;
use crate::config::valid_node_id;
use crate::coordinator::merge_local;
use crate::node::Node;
use crate::peer::batch::{BatchOp, BatchReply};
use crate::peer::{self, GossipMessage, HintRequest, SECRET_HEADER};

/// Largest gossip body accepted.
pub const MAX_GOSSIP_BYTES: usize = 1 << 20;
/// Most members a gossip message may list.
const MAX_MEMBERS: usize = 10_000;

/// Rejects internal requests without the cluster secret.
pub async fn require_secret(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if let Some(secret) = &node.cfg.cluster_secret {
        let given = req.headers().get(SECRET_HEADER).map(|v| v.as_bytes());
        if !given.is_some_and(|g| constant_time_eq(g, secret.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /internal/gossip`: merge the sender's table, answer with ours.
pub async fn gossip(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<GossipMessage>, ApiError> {
    let body = read_body(body)?;
    let msg: GossipMessage =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidBody(format!("invalid gossip JSON: {e}")))?;
    if msg.partitions != node.cfg.partitions {
        return Err(ApiError::InvalidBody(format!(
            "sender has --partitions {}, this node {}; Q must match cluster-wide",
            msg.partitions, node.cfg.partitions
        )));
    }
    if msg.members.len() > MAX_MEMBERS {
        return Err(ApiError::InvalidBody("too many members".into()));
    }
    for m in &msg.members {
        let url_ok = m.address.starts_with("http://") || m.address.starts_with("https://");
        if !valid_node_id(&m.id) || !url_ok || m.address.len() > 512 {
            return Err(ApiError::InvalidBody(format!("invalid member entry {:?}", m.id)));
        }
    }
    node.apply_gossip(&msg.members);
    Ok(Json(node.gossip_message()))
}

/// `POST /internal/batch`: replica reads and writes, answered in order. One
/// flush covers every write of the batch when `--sync-writes` is on.
pub async fn batch(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let ops: Vec<BatchOp> = decode(&read_body(body)?)?;
    let mut replies = Vec::with_capacity(ops.len());
    let mut wrote = false;
    for op in &ops {
        let reply = match op {
            BatchOp::Read { key } if key_ok(&node, key) => {
                let partition = node.ring().partition_of(key);
                match node.storage.get(partition, key) {
                    Ok(r) => BatchReply::Read(r),
                    Err(e) => BatchReply::Failed(e.to_string()),
                }
            }
            BatchOp::Write { key, record } if key_ok(&node, key) => match merge_local(&node, key, record) {
                Ok(()) => {
                    wrote = true;
                    BatchReply::Written
                }
                Err(e) => BatchReply::Failed(e.to_string()),
            },
            BatchOp::Purge { key, dots } if key_ok(&node, key) => match crate::reaper::purge_if(&node, key, dots) {
                Ok(true) => {
                    wrote = true;
                    BatchReply::Written
                }
                Ok(false) => BatchReply::Failed("changed since".into()),
                Err(e) => BatchReply::Failed(e.to_string()),
            },
            _ => BatchReply::Failed("invalid key".into()),
        };
        replies.push(reply);
    }
    if wrote {
        if let Err(e) = node.storage.durable().await {
            let msg = e.to_string();
            for r in replies.iter_mut().filter(|r| **r == BatchReply::Written) {
                *r = BatchReply::Failed(msg.clone());
            }
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], peer::encode(&replies)).into_response())
}

/// `POST /internal/hint`: keep a write for an unreachable owner.
pub async fn hint(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> Result<StatusCode, ApiError> {
    let req: HintRequest = decode(&read_body(body)?)?;
    check_key(&node, &req.key)?;
    if !valid_node_id(&req.owner) {
        return Err(ApiError::InvalidBody("invalid owner id".into()));
    }
    let partition = node.ring().partition_of(&req.key);
    let kept = node
        .storage
        .store_hint(&req.owner, partition, &req.key, &req.record)
        .map_err(crate::coordinator::CoordError::from)?;
    if !kept {
        return Err(ApiError::HintBacklogFull);
    }
    node.storage.durable().await.map_err(crate::coordinator::CoordError::from)?;
    node.metrics.hints_stored.inc();
    node.metrics.hints_pending.set(node.storage.hints_pending() as i64);
    Ok(StatusCode::NO_CONTENT)
}

/// The request body, or a JSON 413 past the route's limit.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge,
        _ => ApiError::InvalidBody(format!("request body could not be read: {}", e.body_text())),
    })
}

fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    peer::decode(body).ok_or_else(|| ApiError::InvalidBody("body is not a dynakv internal message".into()))
}

fn key_ok(node: &Node, key: &[u8]) -> bool {
    !key.is_empty() && key.len() as u64 <= node.cfg.max_key_bytes && std::str::from_utf8(key).is_ok()
}

fn check_key(node: &Node, key: &[u8]) -> Result<(), ApiError> {
    if !key_ok(node, key) {
        return Err(ApiError::InvalidBody("invalid key".into()));
    }
    Ok(())
}
