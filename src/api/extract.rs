//! Request parsing: [`KvRequest`], the one extractor of everything a
//! `/kv/{key}` request says besides its body (the key, `r`/`w`, `ttl`,
//! `X-Context`, `Content-Type`, `Accept`), and the helpers it and the other
//! handlers use. Each failure is an [`ApiError`] with its own code, never an
//! axum default rejection.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, OriginalUri, Path, Query};
use axum::http::request::Parts;
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::Bytes;

use super::error::ApiError;
use super::X_CONTEXT;
use crate::coordinator::Level;
use crate::node::Node;
use crate::version::{token, Context};

/// Longest accepted `ttl`, in seconds (ten digits, about 317 years), as
/// `openapi.yaml` states it.
pub const MAX_TTL_SECS: u64 = 9_999_999_999;

/// A validated `/kv/{key}` request, checked in this order: the key, the
/// query, `r` (GET) or `w` (PUT, DELETE), the other of the two and `ttl`
/// (a bad value is refused whatever the method, a good one ignored where it
/// means nothing), for writes `X-Context` (one, issued for this key), then
/// for PUT `Content-Type`. A GET's `X-Context` is ignored.
#[derive(Debug, Clone)]
pub struct KvRequest {
    /// The percent-decoded key.
    pub key: String,
    /// `r` for a GET, `w` for a write, or the configured default.
    pub level: Level,
    /// `ttl` in seconds (writes).
    pub ttl: Option<u64>,
    /// The causal context (writes; `None` for a blind write).
    pub context: Option<Context>,
    /// The `Content-Type` to store (PUT).
    pub content_type: String,
    /// Whether the client asked for the JSON shape even for one version.
    pub wants_json: bool,
    /// The method.
    pub method: Method,
    /// Path and query as the client sent them (for forwarding).
    pub path_and_query: Option<PathAndQuery>,
    /// The headers a forwarded request carries on (`Content-Type`,
    /// `Accept`, `X-Context`), and whether it was forwarded already.
    pub forward_headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether another node forwarded this request.
    pub forwarded: bool,
}

impl FromRequestParts<Arc<Node>> for KvRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let path = Path::<String>::from_request_parts(parts, node).await;
        let key = key(node, path, parts.uri.path())?;
        // Most requests carry no query string: skip the parser then.
        let q = if parts.uri.query().is_none() {
            HashMap::new()
        } else {
            query(Query::<HashMap<String, String>>::from_request_parts(parts, node).await)?
        };
        let writes = !matches!(parts.method, Method::GET | Method::HEAD);
        let chosen = level(node, &q, writes)?;
        // Every known parameter is checked whatever the method; the ones
        // that mean nothing to it (a read's `w` and `ttl`, a write's `r`)
        // are then ignored, as is a read's `X-Context`.
        level(node, &q, !writes)?;
        let ttl = ttl(&q)?.filter(|_| writes);
        let context = if writes { context(&parts.headers, key.as_bytes())? } else { None };
        let content_type = if parts.method == Method::PUT { content_type(&parts.headers)? } else { String::new() };
        if parts.method == Method::PUT {
            declared_size(node, &parts.headers)?;
        }
        let forwarded = forwarded_by_a_peer(node, &parts.headers);
        // Relayed for a member this node is not (another process took over
        // its address): refused before anything is done, so the relaying
        // node tries the key's next replica.
        if forwarded {
            super::internal::check_recipient(&parts.headers, node.id())?;
        }
        let uri = parts.extensions.get::<OriginalUri>().map(|o| &o.0).unwrap_or(&parts.uri);
        let forward_headers = [header::CONTENT_TYPE, header::ACCEPT, X_CONTEXT]
            .into_iter()
            .filter_map(|h| parts.headers.get(&h).cloned().map(|v| (h, v)))
            .collect();
        Ok(Self {
            key,
            level: chosen,
            ttl,
            context,
            content_type,
            wants_json: wants_json(&parts.headers),
            method: parts.method.clone(),
            path_and_query: uri.path_and_query().cloned(),
            forward_headers,
            forwarded,
        })
    }
}

/// Whether another node forwarded this request: the mark, and the cluster
/// secret when one is set (a client cannot claim it).
fn forwarded_by_a_peer(node: &Node, headers: &HeaderMap) -> bool {
    use crate::transport::http::{FORWARDED_HEADER, SECRET_HEADER};
    headers.contains_key(FORWARDED_HEADER)
        && node.cfg().cluster_secret.as_ref().map_or(true, |secret| {
            headers
                .get(SECRET_HEADER)
                .is_some_and(|given| super::internal::constant_time_eq(given.as_bytes(), secret.as_bytes()))
        })
}

/// The percent-decoded key, checked against `--max-key-bytes`. `raw_path`
/// is the path as sent: a `%` not followed by two hex digits is refused
/// rather than taken as itself (so `a%2` and `a%252` are not one key).
pub fn key(node: &Node, path: Result<Path<String>, PathRejection>, raw_path: &str) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| ApiError::InvalidKey(format!("key is not valid percent-encoded UTF-8: {e}")))?;
    let mut escapes = raw_path.split('%').skip(1);
    if !escapes.all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit)) {
        return Err(ApiError::InvalidKey(
            "a % in the key must start an escape of two hex digits (send % as %25)".into(),
        ));
    }
    if key.is_empty() {
        return Err(ApiError::InvalidKey("key must not be empty".into()));
    }
    if key.len() as u64 > node.cfg().max_key_bytes {
        return Err(ApiError::KeyTooLarge { len: key.len(), limit: node.cfg().max_key_bytes });
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
        None => Ok(Level::Count(u64::from(if writes { node.cfg().write_quorum } else { node.cfg().read_quorum }))),
    }
}

/// `ttl` in seconds, if given.
pub fn ttl(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("ttl") {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            // Digits only, no leading zero (openapi.yaml's pattern).
            Ok(s)
                if (1..=MAX_TTL_SECS).contains(&s) && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0') =>
            {
                Ok(Some(s))
            }
            _ => Err(ApiError::InvalidTtl(v.clone())),
        },
    }
}

/// The `X-Context` header of a request on `key`; absent or blank means a
/// blind write.
pub fn context(headers: &HeaderMap, key: &[u8]) -> Result<Option<Context>, ApiError> {
    let mut all = headers.get_all(&X_CONTEXT).iter();
    let Some(raw) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::InvalidContext(token::ContextError::Repeated));
    }
    let s = raw.to_str().map_err(|_| ApiError::InvalidContext(token::ContextError::Malformed))?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    let ctx = token::decode(s, key)?;
    // A node's counters start at most at the wall clock in milliseconds
    // times 2^20 (a new data dir) and grow by one per write; a context
    // naming a counter a year beyond that was made up. Taken in, it would
    // carry the node's counters towards the token format's limit, after
    // which no context that node hands out would be accepted any more.
    let bound = crate::clock::now_ms().saturating_add(YEAR_MS) << crate::storage::DOT_EPOCH_SHIFT;
    let summary = ctx.summary();
    if summary.entries().any(|(_, c)| c > bound) {
        return Err(ApiError::InvalidContext(token::ContextError::Invalid));
    }
    Ok(Some(ctx))
}

const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

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

/// 413 at once for a value whose declared `Content-Length` is past
/// `--max-value-bytes`: nothing of it is read, and the client does not wait
/// for a deadline while it sends (or never sends) the rest.
fn declared_size(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let limit = node.cfg().max_value_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(ApiError::ValueTooLarge { limit }),
        _ => Ok(()),
    }
}

/// The request body, or 413 past `--max-value-bytes`.
pub fn body(node: &Node, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let limit = node.cfg().max_value_bytes;
    match body {
        Ok(b) if b.len() as u64 > limit => Err(ApiError::ValueTooLarge { limit }),
        Ok(b) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::ValueTooLarge { limit }),
        Err(e) => Err(ApiError::InvalidBody(format!("request body could not be read: {}", e.body_text()))),
    }
}

/// Whether the client asked for the JSON shape even for one version: an
/// `Accept` naming `application/json` (media types are case-insensitive)
/// without `q=0`.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, q)| {
                    k.trim().eq_ignore_ascii_case("q") && q.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
                })
            });
            media.eq_ignore_ascii_case("application/json") && !refused
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Dot;

    #[test]
    fn accept_asks_for_json_case_insensitively_and_not_with_q_zero() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            wants_json(&h)
        };
        for yes in
            ["application/json", "Application/JSON", "text/plain, application/json;q=0.5", "application/json ; q=1"]
        {
            assert!(accept(yes), "{yes}");
        }
        for no in ["text/plain", "application/json;q=0", "application/json; q=0.0", "application/jsonx", "*/*"] {
            assert!(!accept(no), "{no}");
        }
        assert!(!wants_json(&HeaderMap::new()));
    }

    fn with(ctx: &Context) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_CONTEXT, token::encode(ctx, b"k").parse().unwrap());
        h
    }

    #[test]
    fn a_context_naming_a_counter_no_node_could_have_issued_is_refused() {
        let now = crate::clock::now_ms() << crate::storage::DOT_EPOCH_SHIFT;
        let mut fine = Context::new();
        fine.witness("a", now + 1_000_000);
        fine.add(Dot { node: "b".into(), counter: 7 });
        assert_eq!(context(&with(&fine), b"k").unwrap(), Some(fine));
        for forged in [1u64 << 61, token::MAX_COUNTER] {
            let mut ctx = Context::new();
            ctx.witness("a", forged);
            assert!(matches!(context(&with(&ctx), b"k"), Err(ApiError::InvalidContext(_))), "{forged}");
            let mut ctx = Context::new();
            ctx.add(Dot { node: "b".into(), counter: forged });
            assert!(matches!(context(&with(&ctx), b"k"), Err(ApiError::InvalidContext(_))), "{forged} in the cloud");
        }
    }
}
