//! Request parsing shared by the handlers: the key, `r`/`w`/`ttl`, the
//! `X-Context` token and `Content-Type`. Each failure is an [`ApiError`] with
//! its own code, never an axum default rejection.

use std::collections::HashMap;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;

use super::error::ApiError;
use super::X_CONTEXT;
use crate::coordinator::Level;
use crate::node::Node;
use crate::version::{token, Context};

/// Longest accepted `ttl`, in seconds (ten digits, about 317 years), as
/// `openapi.yaml` states it.
pub const MAX_TTL_SECS: u64 = 9_999_999_999;

/// The percent-decoded key, checked against `--max-key-bytes`.
pub fn key(node: &Node, path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| ApiError::InvalidKey(format!("key is not valid percent-encoded UTF-8: {e}")))?;
    if key.is_empty() {
        return Err(ApiError::InvalidKey("key must not be empty".into()));
    }
    if key.len() as u64 > node.cfg.max_key_bytes {
        return Err(ApiError::KeyTooLarge { len: key.len(), limit: node.cfg.max_key_bytes });
    }
    Ok(key)
}

/// The query parameters.
pub fn query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(m)| m).map_err(|e| ApiError::InvalidQuery(e.body_text()))
}

/// `r` (`writes = false`) or `w` (`writes = true`), or the configured default.
pub fn level(node: &Node, q: &HashMap<String, String>, writes: bool) -> Result<Level, ApiError> {
    let param = if writes { "w" } else { "r" };
    match q.get(param) {
        Some(v) => Ok(Level::parse(v, writes)?),
        None => Ok(Level::Count(u64::from(if writes { node.cfg.write_quorum } else { node.cfg.read_quorum }))),
    }
}

/// `ttl` in seconds, if given.
pub fn ttl(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("ttl") {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(s) if (1..=MAX_TTL_SECS).contains(&s) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(s)),
            _ => Err(ApiError::InvalidTtl(v.clone())),
        },
    }
}

/// The `X-Context` header; absent or blank means a blind write.
pub fn context(headers: &HeaderMap) -> Result<Option<Context>, ApiError> {
    let Some(raw) = headers.get(X_CONTEXT) else {
        return Ok(None);
    };
    let s = raw.to_str().map_err(|_| ApiError::InvalidContext(token::ContextError::Malformed))?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(token::decode(s)?))
}

/// The `Content-Type` to store (default `application/octet-stream`).
pub fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok("application/octet-stream".into()),
        Some(v) => match v.to_str() {
            Ok(s) if s.len() <= 256 && is_media_type(s) => Ok(s.trim().to_string()),
            _ => Err(ApiError::InvalidContentType),
        },
    }
}

/// Whether `s` looks like `type/subtype[; parameters]` (RFC 9110 tokens).
fn is_media_type(s: &str) -> bool {
    let token =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let essence = s.split(';').next().unwrap_or("").trim();
    essence.split_once('/').is_some_and(|(t, sub)| token(t) && token(sub))
}

/// The request body, or 413 past `--max-value-bytes`.
pub fn body(node: &Node, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let limit = node.cfg.max_value_bytes;
    match body {
        Ok(b) if b.len() as u64 > limit => Err(ApiError::ValueTooLarge { limit }),
        Ok(b) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::ValueTooLarge { limit }),
        Err(e) => Err(ApiError::InvalidQuery(format!("request body could not be read: {}", e.body_text()))),
    }
}

/// Whether the client asked for the JSON shape even for one version.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|part| part.trim().starts_with("application/json")))
}
