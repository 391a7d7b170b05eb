//! `PUT/GET/DELETE /kv/{key}` (SPEC §3).

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{self, KvRequest};
use super::X_CONTEXT;
use crate::clock::now_ms;
use crate::coordinator::{self, CoordError, Write};
use crate::node::Node;
use crate::storage::Content;
use crate::transport::http::RECIPIENT_HEADER;
use crate::transport::{ForwardRequest, Target, TransportError};
use crate::version::{token, Context};

/// `PUT /kv/{key}`: store a value.
pub async fn put(
    State(node): State<Arc<Node>>,
    req: KvRequest,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = extract::body(&node, body)?;
    let now = now_ms();
    let content = Content {
        value: value.clone(),
        content_type: req.content_type.clone(),
        timestamp_ms: now,
        expires_at_ms: req.ttl.map(|s| now.saturating_add(s.saturating_mul(1000))),
        deleted: false,
    };
    client_write(&node, req, value, content).await
}

/// `DELETE /kv/{key}`: write a tombstone.
pub async fn delete(State(node): State<Arc<Node>>, req: KvRequest) -> Result<Response, ApiError> {
    let content = Content {
        value: Bytes::new(),
        content_type: String::new(),
        timestamp_ms: now_ms(),
        expires_at_ms: None,
        deleted: true,
    };
    client_write(&node, req, Bytes::new(), content).await
}

/// The common end of PUT and DELETE, once the request is valid: forward it to
/// a replica, or coordinate the write here; 204 with the new context.
async fn client_write(node: &Arc<Node>, req: KvRequest, body: Bytes, content: Content) -> Result<Response, ApiError> {
    if let Some(resp) = forward(node, &req, body).await? {
        return Ok(resp);
    }
    let key = req.key;
    let write = Write { key: key.clone().into_bytes(), context: req.context, content, level: req.level };
    match coordinator::write(node, write).await {
        Ok(clock) => Ok(with_context(StatusCode::NO_CONTENT.into_response(), &clock, &key)),
        // Still the context of the version written: a retry carrying it
        // supersedes it rather than standing beside it (SPEC §3).
        Err(CoordError::QuorumNotMet { needed, acked, context: Some(clock) }) => {
            let e = ApiError::from(CoordError::QuorumNotMet { needed, acked, context: Some(clock.clone()) });
            Ok(with_context(e.into_response(), &clock, &key))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /kv/{key}`: one value (200), siblings (300), or 404.
pub async fn get(State(node): State<Arc<Node>>, req: KvRequest) -> Result<Response, ApiError> {
    // Taken first: gossip that shows this node was wiped may arrive while
    // it reads its empty copy.
    let unsettled = node.unsettled().is_some();
    if let Some(resp) = forward(&node, &req, Bytes::new()).await? {
        return Ok(resp);
    }
    let mut read = coordinator::read(&node, req.key.as_bytes(), req.level).await?;
    if read.visible.is_empty() && unsettled {
        // A node started alone moments ago under a configured id may be a
        // former member whose disk was lost: a key it does not have may be
        // one it has not received. Wait for the others' gossip (or the end
        // of the settle), then read again the way the node now knows. At
        // most a request timeout and a second: the relay and read after it
        // take at most four request timeouts and half a second more, inside
        // the request's deadline of five and two seconds; and it covers the
        // whole settle at the default timers (3 s against a 2 s timeout).
        let wait = node.timeout() + std::time::Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, node.settled()).await;
        if let Some(resp) = forward(&node, &req, Bytes::new()).await? {
            return Ok(resp);
        }
        read = coordinator::read(&node, req.key.as_bytes(), req.level).await?;
    }
    let live = read.visible.iter().filter(|v| !v.payload.deleted).count();
    if live == 0 {
        let resp = ApiError::NotFound.into_response();
        // A known tombstone: hand out its context so a later write supersedes it.
        return Ok(if read.visible.is_empty() { resp } else { with_context(resp, &read.context, &req.key) });
    }
    if read.visible.len() == 1 && !req.wants_json {
        let v = read.visible.pop().expect("one version").payload;
        let ct = HeaderValue::from_str(&v.content_type);
        let mut resp = (StatusCode::OK, v.value).into_response();
        if let Ok(ct) = ct {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(with_context(resp, &read.context, &req.key));
    }
    let status = if read.visible.len() == 1 { StatusCode::OK } else { StatusCode::MULTIPLE_CHOICES };
    let body = json!({
        "key": req.key,
        "context": token::encode(&read.context, req.key.as_bytes()),
        "siblings": read.visible.iter().map(|v| sibling_json(&v.payload)).collect::<Vec<_>>(),
    });
    Ok(with_context((status, Json(body)).into_response(), &read.context, &req.key))
}

/// One sibling in the JSON shape of SPEC §3.
pub fn sibling_json(c: &Content) -> Value {
    if c.deleted {
        return json!({
            "deleted": true, "value": null, "encoding": null, "content_type": null, "timestamp": c.timestamp_ms,
        });
    }
    let (value, encoding) = match std::str::from_utf8(&c.value) {
        Ok(s) => (s.to_string(), "utf-8"),
        Err(_) => (STANDARD.encode(&c.value), "base64"),
    };
    json!({
        "deleted": false, "value": value, "encoding": encoding, "content_type": c.content_type, "timestamp": c.timestamp_ms,
    })
}

/// Relays a validated request to a node of the key's preference list when
/// this node is not in it (SPEC §4). `Ok(None)`: coordinate here (this node
/// is a replica, the request was already forwarded once, or no replica
/// answered a request that was surely not delivered or refused as not
/// ready). A write whose relay may have been applied is never tried a
/// second time.
async fn forward(node: &Node, req: &KvRequest, body: Bytes) -> Result<Option<Response>, ApiError> {
    let view = node.view();
    let alone = || view.members().all(|m| m.id == node.id());
    if req.forwarded {
        // Relayed once already: coordinate here, unless this node knows
        // nobody (it must not act as a cluster of one).
        if node.is_refused() || (!node.knows_cluster() && alone()) {
            return Err(ApiError::NotReady("this node has not heard from the cluster yet".into()));
        }
        return Ok(None);
    }
    let partition = view.ring().partition_of(req.key.as_bytes());
    // A node that has not heard from the cluster yet (it just started)
    // knows neither the ring nor what it should hold: it answers nothing
    // itself, and relays to the members it remembers or to its seeds.
    let knows = node.knows_cluster();
    let receiving = node.receiving(&view, partition);
    // The common case: a replica holding the partition coordinates.
    if !receiving && view.ring().replicates(partition, node.id()) {
        return Ok(None);
    }
    let Some(mut targets) = coordinator::forward_targets(&view, req.key.as_bytes(), receiving) else {
        return Ok(None);
    };
    if !knows && targets.is_empty() {
        targets = node.seeds().into_iter().map(|u| (SEED.to_string(), u)).collect();
    }
    // No replica is alive (each is suspect: no heartbeat lately) while some
    // other member is: a relay would most likely wait out its timeout and
    // then, for a write that may have landed, answer 503. The key's
    // preference list is out of reach, so this node coordinates, writing to
    // stand-ins with hints (sloppy quorum), as Dynamo's coordinator does
    // when the first N are unreachable. When no other member at all is
    // alive, this node's view is the likely stale one (it was paused, or
    // is cut off), and it relays as usual.
    let fresh = || view.members().any(|m| m.id != node.id() && view.is_alive(&m.id));
    if knows && !receiving && !node.is_refused() && targets.iter().all(|(id, _)| !view.is_alive(id)) && fresh() {
        return Ok(None);
    }
    // Alive ones first, and of each kind the ones that did not fail to
    // answer a relay lately (a stable sort keeps the ring's order
    // otherwise).
    targets.sort_by_cached_key(|(id, address)| (!view.is_alive(id), node.relay_lately_unanswered(address)));
    let path = req.path_and_query.as_ref().map(|p| p.as_str()).unwrap_or("/").to_string();
    let pass: Vec<(String, String)> = req
        .forward_headers
        .iter()
        .filter_map(|(h, v)| v.to_str().ok().map(|v| (h.to_string(), v.to_string())))
        .collect();
    // The receiving coordinator may itself wait for a direct attempt and a
    // stand-in; give it that long and a little more.
    let timeout = node.timeout() * 3 + std::time::Duration::from_millis(500);
    for (id, address) in targets {
        let mut headers = pass.clone();
        // Named, so that another process at its address refuses it (a seed
        // asked before this node knows the cluster is nobody in particular).
        if id != SEED {
            headers.push((RECIPIENT_HEADER.to_string(), id.clone()));
        }
        let fwd =
            ForwardRequest { method: req.method.clone(), path_and_query: path.clone(), headers, body: body.clone() };
        let outcome = node.transport().forward(Target { id: &id, address: &address }, fwd, timeout).await;
        let unanswered =
            matches!(outcome, Err(TransportError::Connect(_) | TransportError::Timeout(_) | TransportError::Io(_)));
        node.relay_outcome(&address, !unanswered);
        match outcome {
            Ok(resp) if refused_unapplied(&resp) => {
                tracing::debug!(peer = %id, "forwarded request refused as not ready (leaving or starting); trying the next replica")
            }
            Ok(resp) => {
                node.metrics().forwarded.inc();
                let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut out = Response::builder().status(status);
                for (name, value) in &resp.headers {
                    if let Ok(v) = HeaderValue::from_bytes(value) {
                        out = out.header(name.as_str(), v);
                    }
                }
                return Ok(Some(out.body(axum::body::Body::from(resp.body)).expect("valid response")));
            }
            Err(e) if e.not_delivered() || matches!(req.method, Method::GET | Method::HEAD) => {
                tracing::debug!(peer = %id, error = %e, "forwarding failed; trying the next replica")
            }
            Err(e) => {
                // The write may have been applied there: do not apply it twice.
                tracing::debug!(peer = %id, error = %e, "forwarded write got no answer");
                let needed = req.level.required(view.quorum_n());
                return Err(ApiError::ForwardFailed { peer: id, needed, reason: e.to_string() });
            }
        }
    }
    // Nobody answered. A node that remembers its cluster coordinates itself
    // (always writable); one that knows nobody yet must not act as if it
    // were alone (N would be 1), and one the cluster refuses never does (it
    // would issue dots under an id another process uses).
    if node.is_refused() || (!knows && alone()) {
        return Err(ApiError::NotReady(
            "this node has not heard from the cluster yet; retry or ask another node".into(),
        ));
    }
    Ok(None)
}

/// Whether a relayed request was refused before anything was done (503
/// `not_ready`: the node is leaving, or has not heard from the cluster;
/// 421: another node now serves the replica's address), so another
/// replica may take it, a write included.
fn refused_unapplied(resp: &crate::transport::ForwardResponse) -> bool {
    resp.status == StatusCode::MISDIRECTED_REQUEST.as_u16()
        || (resp.status == StatusCode::SERVICE_UNAVAILABLE.as_u16()
            && serde_json::from_slice::<serde_json::Value>(&resp.body).is_ok_and(|v| v["code"] == "not_ready"))
}

/// The id a relay to a seed goes under (before this node knows the
/// cluster, a seed is nobody in particular).
const SEED: &str = "seed";

/// `resp` with the `X-Context` of `clock`, the context of `key`.
fn with_context(mut resp: Response, clock: &Context, key: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&token::encode(clock, key.as_bytes())) {
        resp.headers_mut().insert(X_CONTEXT, v);
    }
    resp
}
