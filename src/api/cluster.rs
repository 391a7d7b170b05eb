//! Operator routes: `/health`, `/metrics`, `/cluster/*` (SPEC §3).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use tower_http::validate_request::ValidateRequestHeaderLayer;

use super::error::ApiError;
use super::extract;
use crate::node::Node;
use crate::replica;
use crate::ring::{partition_end, partition_start};
use crate::storage::Record;

/// `GET /health`: liveness.
pub async fn health(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!({ "status": "ok", "node_id": node.id() }))
}

/// `GET /health/ready`: readiness (SPEC §3): 200 once the node serves, knows
/// the cluster and holds every partition it owns; 503 with the reason
/// before that and while it is leaving.
pub async fn ready(State(node): State<Arc<Node>>) -> Response {
    match node.not_ready() {
        None => Json(json!({ "status": "ready", "node_id": node.id() })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "node_id": node.id(), "reason": reason })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], node.metrics().render()).into_response()
}

/// `GET /cluster/members`.
pub async fn members(State(node): State<Arc<Node>>) -> Json<Value> {
    let view = node.view();
    let ring = view.ring();
    let owned = |id: &str| (0..ring.partition_count()).filter(|&p| ring.preference_list(p).contains(&id)).count();
    let members: Vec<Value> = view
        .members()
        .map(|m| {
            json!({
                "id": m.id,
                "address": m.address,
                "status": m.status,
                "heartbeat": m.heartbeat,
                "updated_at": humantime::format_rfc3339_millis(m.updated_at).to_string(),
                "partitions": owned(&m.id),
                "transfers_in": m.transfers_in,
                "transfers_out": m.transfers_out,
            })
        })
        .collect();
    Json(json!({ "node_id": node.id(), "members": members }))
}

/// `GET /cluster/ring`.
pub async fn ring(State(node): State<Arc<Node>>) -> Json<Value> {
    let view = node.view();
    let ring = view.ring();
    let q = ring.partition_count();
    let partitions: Vec<Value> = (0..q)
        .map(|p| {
            json!({
                "id": p,
                "start": format!("{:016x}", partition_start(p, q)),
                "end": format!("{:016x}", partition_end(p, q)),
                "preference_list": ring.preference_list(p),
            })
        })
        .collect();
    Json(json!({ "partition_count": q, "replicas": ring.replicas(), "partitions": partitions }))
}

/// `GET /cluster/replicas/{key}`: what each replica stores for one key now.
pub async fn replicas(
    State(node): State<Arc<Node>>,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let key = extract::key(&node, path, uri.path())?;
    let view = node.view();
    let partition = view.ring().partition_of(key.as_bytes());
    let list = replica::read_set(&view, partition);
    let asks = list.iter().map(|id| {
        let (node, view, key) = (node.clone(), view.clone(), key.clone());
        async move {
            match replica::inspect(&node, &view, id, partition, key.as_bytes()).await {
                Ok(record) => {
                    json!({ "node": id, "reachable": true, "versions": versions_json(&record.unwrap_or_default()) })
                }
                Err(_) => json!({ "node": id, "reachable": false, "versions": [] }),
            }
        }
    });
    let replicas = futures_util::future::join_all(asks).await;
    Ok(Json(json!({
        "key": key,
        "partition": partition,
        "preference_list": list,
        "replicas": replicas,
    })))
}

/// A record's versions as `/cluster/replicas` shows them.
pub fn versions_json(record: &Record) -> Vec<Value> {
    record
        .values()
        .iter()
        .map(|v| {
            let clock: serde_json::Map<String, Value> =
                v.history().summary().entries().map(|(n, c)| (n.to_string(), json!(c))).collect();
            json!({ "clock": clock, "deleted": v.payload.deleted, "timestamp": v.payload.timestamp_ms })
        })
        .collect()
}

/// A layer that lets an admin request through only with `Authorization:
/// Bearer <secret>` when `secret` is set (compared in constant time);
/// otherwise 401 `unauthorized` and nothing happens.
pub fn require_admin(
    secret: Option<String>,
) -> ValidateRequestHeaderLayer<impl FnMut(&mut Request) -> Result<(), Response> + Clone + Send + Sync + 'static> {
    super::internal::guard(secret, bearer, || ApiError::AdminUnauthorized.into_response())
}

/// The secret in `Authorization: Bearer <secret>`, if that is the header
/// (the scheme's name is case-insensitive, RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// `POST /cluster/leave`: 202, then hand off and exit 0. Client and replica
/// requests are refused from before the 202 on (the hand-off must see every
/// write this node acknowledged).
pub async fn leave(State(node): State<Arc<Node>>, Extension(intake): Extension<super::Intake>) -> Response {
    tracing::info!("leave requested");
    intake.refuse();
    node.request_leave();
    (StatusCode::ACCEPTED, Json(json!({ "status": "leaving", "node_id": node.id() }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, axum::http::HeaderValue::from_static(value));
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_is_a_bearer() {
        assert_eq!(bearer(&auth("Bearer s3cret")), Some(&b"s3cret"[..]));
        assert_eq!(bearer(&auth("bearer s3cret")), Some(&b"s3cret"[..]));
        assert_eq!(bearer(&auth("BEARER  s3cret ")), Some(&b"s3cret"[..]));
        assert_eq!(bearer(&auth("Basic s3cret")), None);
        assert_eq!(bearer(&auth("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
