//! `PUT/GET/DELETE /kv/{key}` (SPEC §3).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
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
use crate::storage::Content;
use crate::version::{token, Context, Version};

/// `PUT /kv/{key}`: store a value.
pub async fn put(
    State(node): State<Arc<Node>>,
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
    let clock = coordinator::write(
        &node,
        Write {
            key: key.into_bytes(),
            context: ctx,
            content,
            level,
        },
    )
    .await?;
    Ok(with_context(StatusCode::NO_CONTENT.into_response(), &clock))
}

/// `DELETE /kv/{key}`: write a tombstone.
pub async fn delete(
    State(node): State<Arc<Node>>,
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
    let clock = coordinator::write(
        &node,
        Write {
            key: key.into_bytes(),
            context: ctx,
            content,
            level,
        },
    )
    .await?;
    Ok(with_context(StatusCode::NO_CONTENT.into_response(), &clock))
}

/// `GET /kv/{key}`: one value (200), siblings (300), or 404.
pub async fn get(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = extract::key(&node, path)?;
    let q = extract::query(q)?;
    let level = extract::level(&node, &q, false)?;
    let read = coordinator::read(&node, key.as_bytes(), level).await?;
    let live: Vec<&Version<Content>> = read.visible.iter().filter(|v| !v.payload.deleted).collect();
    if live.is_empty() {
        let resp = ApiError::NotFound.into_response();
        // A known tombstone: hand out its context so a later write supersedes it.
        return Ok(if read.visible.is_empty() {
            resp
        } else {
            with_context(resp, &read.context)
        });
    }
    if read.visible.len() == 1 && !extract::wants_json(&headers) {
        let v = &live[0].payload;
        let mut resp = (StatusCode::OK, v.value.clone()).into_response();
        if let Ok(ct) = HeaderValue::from_str(&v.content_type) {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(with_context(resp, &read.context));
    }
    let status = if read.visible.len() == 1 {
        StatusCode::OK
    } else {
        StatusCode::MULTIPLE_CHOICES
    };
    let body = json!({
        "key": key,
        "context": token::encode(&read.context),
        "siblings": read.visible.iter().map(|v| sibling_json(&v.payload)).collect::<Vec<_>>(),
    });
    Ok(with_context(
        (status, Json(body)).into_response(),
        &read.context,
    ))
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

fn with_context(mut resp: Response, clock: &Context) -> Response {
    if let Ok(v) = HeaderValue::from_str(&token::encode(clock)) {
        resp.headers_mut().insert(X_CONTEXT, v);
    }
    resp
}
