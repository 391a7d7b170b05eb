//! `PUT/GET/DELETE /kv/{key}` (SPEC §3).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{extract, X_CONTEXT};
use crate::coordinator::{self, now_ms, Write};
use crate::node::Node;
use crate::peer::FORWARDED_HEADER;
use crate::storage::Content;
use crate::version::{token, Context, Version};

/// `PUT /kv/{key}`: store a value.
pub async fn put(
    State(node): State<Arc<Node>>,
    OriginalUri(uri): OriginalUri,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = extract::key(&node, path)?;
    let q = extract::query(q)?;
    let level = extract::level(&node, &q, true)?;
    let ttl = extract::ttl(&q)?;
    let ctx = extract::context(&headers)?;
    let content_type = extract::content_type(&headers)?;
    let value = extract::body(&node, body)?;
    let now = now_ms();
    let content = Content {
        value: value.to_vec(),
        content_type,
        timestamp_ms: now,
        expires_at_ms: ttl.map(|s| now.saturating_add(s.saturating_mul(1000))),
        deleted: false,
    };
    let write = Write { key: key.into_bytes(), context: ctx, content, level };
    client_write(&node, Method::PUT, &uri, &headers, value, write).await
}

/// `DELETE /kv/{key}`: write a tombstone.
pub async fn delete(
    State(node): State<Arc<Node>>,
    OriginalUri(uri): OriginalUri,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = extract::key(&node, path)?;
    let q = extract::query(q)?;
    let level = extract::level(&node, &q, true)?;
    extract::ttl(&q)?;
    let ctx = extract::context(&headers)?;
    let content = Content {
        value: Vec::new(),
        content_type: String::new(),
        timestamp_ms: now_ms(),
        expires_at_ms: None,
        deleted: true,
    };
    let write = Write { key: key.into_bytes(), context: ctx, content, level };
    client_write(&node, Method::DELETE, &uri, &headers, Bytes::new(), write).await
}

/// The common end of PUT and DELETE, once the request is valid: forward it to
/// a replica, or coordinate the write here; 204 with the new context.
async fn client_write(
    node: &Arc<Node>,
    method: Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
    write: Write,
) -> Result<Response, ApiError> {
    if let Some(resp) = forward(node, &write.key, method, uri, headers, body).await {
        return Ok(resp);
    }
    let clock = coordinator::write(node, write).await?;
    Ok(with_context(StatusCode::NO_CONTENT.into_response(), &clock))
}

/// `GET /kv/{key}`: one value (200), siblings (300), or 404.
pub async fn get(
    State(node): State<Arc<Node>>,
    OriginalUri(uri): OriginalUri,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = extract::key(&node, path)?;
    let q = extract::query(q)?;
    let level = extract::level(&node, &q, false)?;
    if let Some(resp) = forward(&node, key.as_bytes(), Method::GET, &uri, &headers, Bytes::new()).await {
        return Ok(resp);
    }
    let read = coordinator::read(&node, key.as_bytes(), level).await?;
    let live: Vec<&Version<Content>> = read.visible.iter().filter(|v| !v.payload.deleted).collect();
    if live.is_empty() {
        let resp = ApiError::NotFound.into_response();
        // A known tombstone: hand out its context so a later write supersedes it.
        return Ok(if read.visible.is_empty() { resp } else { with_context(resp, &read.context) });
    }
    if read.visible.len() == 1 && !extract::wants_json(&headers) {
        let v = &live[0].payload;
        let mut resp = (StatusCode::OK, v.value.clone()).into_response();
        if let Ok(ct) = HeaderValue::from_str(&v.content_type) {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(with_context(resp, &read.context));
    }
    let status = if read.visible.len() == 1 { StatusCode::OK } else { StatusCode::MULTIPLE_CHOICES };
    let body = json!({
        "key": key,
        "context": token::encode(&read.context),
        "siblings": read.visible.iter().map(|v| sibling_json(&v.payload)).collect::<Vec<_>>(),
    });
    Ok(with_context((status, Json(body)).into_response(), &read.context))
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
/// this node is not in it (SPEC §4). `None`: coordinate here (this node is a
/// replica, the request was already forwarded once, or no replica answered).
async fn forward(
    node: &Node,
    key: &[u8],
    method: Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Response> {
    if headers.contains_key(FORWARDED_HEADER) {
        return None;
    }
    let targets = coordinator::forward_targets(node, key)?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let pass: Vec<(String, String)> = [header::CONTENT_TYPE, header::ACCEPT, HeaderName::from_static(X_CONTEXT)]
        .iter()
        .filter_map(|h| headers.get(h).and_then(|v| v.to_str().ok()).map(|v| (h.to_string(), v.to_string())))
        .collect();
    for target in targets {
        let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("standard method");
        match node.peers.forward(&target, m, path, pass.clone(), body.clone()).await {
            Ok(resp) => {
                node.metrics.forwarded.inc();
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut out = Response::builder().status(status);
                for h in [header::CONTENT_TYPE, header::ALLOW, HeaderName::from_static(X_CONTEXT)] {
                    if let Some(v) =
                        resp.headers().get(h.as_str()).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
                    {
                        out = out.header(h, v);
                    }
                }
                match resp.bytes().await {
                    Ok(b) => return Some(out.body(axum::body::Body::from(b)).expect("valid response")),
                    Err(e) => tracing::debug!(peer = %target, error = %e, "forwarded response cut off"),
                }
            }
            Err(e) if e.not_delivered() || method == Method::GET => {
                tracing::debug!(peer = %target, error = %e, "forwarding failed; trying the next replica")
            }
            Err(e) => {
                // The write may have been applied there: do not apply it twice.
                tracing::debug!(peer = %target, error = %e, "forwarded write got no answer");
                let err = coordinator::CoordError::QuorumNotMet { needed: 1, acked: 0, context: None };
                return Some(ApiError::from(err).into_response());
            }
        }
    }
    None
}

fn with_context(mut resp: Response, clock: &Context) -> Response {
    if let Ok(v) = HeaderValue::from_str(&token::encode(clock)) {
        resp.headers_mut().insert(X_CONTEXT, v);
    }
    resp
}
