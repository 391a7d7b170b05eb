//! Node-to-node calls over `/internal/*`, on one pooled reqwest client
//! (keep-alive; never a client per request), each bounded by
//! `--request-timeout-ms`.
//!
//! Bodies: gossip is JSON (small, and readable in a capture); replica reads
//! and writes (batched, see [`batch`]) and hints are
//! `FORMAT (1 byte) | postcard(message)`, since they carry whole sibling sets
//! with binary values. With `--cluster-secret` every call
//! carries it in `x-dynakv-secret`.

pub mod batch;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Digest;
use crate::storage::Record;

/// Header carrying the cluster secret.
pub const SECRET_HEADER: &str = "x-dynakv-secret";
/// Header marking a client request forwarded by another node (never forwarded again).
pub const FORWARDED_HEADER: &str = "x-dynakv-forwarded";
/// Gossip route.
pub const GOSSIP_PATH: &str = "/internal/gossip";
/// Hint route.
pub const HINT_PATH: &str = "/internal/hint";
/// Batched replica reads and writes.
pub const BATCH_PATH: &str = "/internal/batch";

const FORMAT: u8 = 1;

/// One gossip exchange, either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMessage {
    /// Sender's node id.
    pub from: String,
    /// Sender's Q: nodes with different Q must not form a cluster.
    pub partitions: u32,
    /// Everything the sender knows.
    pub members: Vec<Digest>,
}

/// [`HintRequest`] by reference.
#[derive(Serialize)]
struct HintRequestRef<'a> {
    owner: &'a str,
    #[serde(with = "serde_bytes")]
    key: &'a [u8],
    record: &'a Record,
}

/// Ask a stand-in to keep a write for an unreachable owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintRequest {
    /// The intended owner's node id.
    pub owner: String,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The state to deliver.
    pub record: Record,
}

/// Encodes an internal binary message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend(postcard::to_allocvec(msg).expect("plain data serializes"));
    out
}

/// Decodes an internal binary message; `None` for anything malformed.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Connection refused, reset, or timed out.
    #[error("unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The peer answered with an error status.
    #[error("peer answered {0}")]
    Status(u16),
    /// The peer's answer did not decode.
    #[error("peer sent a malformed body")]
    Malformed,
    /// A batched operation failed (on the way, or on the peer).
    #[error("batched call failed: {0}")]
    Batch(String),
}

impl PeerError {
    /// Whether the request surely never reached the peer (so retrying it
    /// elsewhere cannot apply it twice).
    pub fn not_delivered(&self) -> bool {
        matches!(self, PeerError::Unreachable(e) if e.is_connect())
    }
}

/// The pooled client for every peer.
#[derive(Clone)]
pub struct Peers {
    http: reqwest::Client,
    secret: Option<String>,
    timeout: Duration,
    queues: Arc<batch::Queues>,
}

impl Peers {
    /// A client with `timeout` per call.
    pub fn new(timeout: Duration, secret: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .expect("reqwest client builds");
        Self { http, secret, timeout, queues: Arc::default() }
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn post(&self, url: String) -> reqwest::RequestBuilder {
        let req = self.http.post(url);
        match &self.secret {
            Some(s) => req.header(SECRET_HEADER, s),
            None => req,
        }
    }

    async fn call(&self, base: &str, path: &str, body: impl Into<reqwest::Body>) -> Result<Bytes, PeerError> {
        let resp = self
            .post(format!("{base}{path}"))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(PeerError::Status(resp.status().as_u16()));
        }
        Ok(resp.bytes().await?)
    }

    /// One push-pull gossip exchange, bounded by `limit`.
    pub async fn gossip(&self, base: &str, msg: &GossipMessage, limit: Duration) -> Result<GossipMessage, PeerError> {
        let resp = self.post(format!("{base}{GOSSIP_PATH}")).timeout(limit).json(msg).send().await?;
        if !resp.status().is_success() {
            return Err(PeerError::Status(resp.status().as_u16()));
        }
        resp.json().await.map_err(|_| PeerError::Malformed)
    }

    /// A replica's record of `key` (batched with other replica traffic).
    pub async fn read(&self, base: &str, key: &[u8]) -> Result<Option<Record>, PeerError> {
        match self.batch(base, batch::read_op(key)).await? {
            batch::BatchReply::Read(r) => Ok(r),
            batch::BatchReply::Failed(e) => Err(PeerError::Batch(e)),
            batch::BatchReply::Written => Err(PeerError::Malformed),
        }
    }

    /// Merges `record` into a replica's state for `key`.
    pub async fn write(&self, base: &str, key: &[u8], record: &Record) -> Result<(), PeerError> {
        self.write_encoded(base, batch::write_op(key, record)).await
    }

    /// Sends a replica write encoded by [`batch::write_op`] (batched).
    pub async fn write_encoded(&self, base: &str, op: Bytes) -> Result<(), PeerError> {
        match self.batch(base, op).await? {
            batch::BatchReply::Written => Ok(()),
            batch::BatchReply::Failed(e) => Err(PeerError::Batch(e)),
            batch::BatchReply::Read(_) => Err(PeerError::Malformed),
        }
    }

    /// Asks a replica to drop `key` if it holds exactly `dots`.
    pub async fn purge(&self, base: &str, key: &[u8], dots: &[crate::version::Dot]) -> Result<(), PeerError> {
        match self.batch(base, batch::purge_op(key, dots)).await? {
            batch::BatchReply::Written => Ok(()),
            batch::BatchReply::Failed(e) => Err(PeerError::Batch(e)),
            batch::BatchReply::Read(_) => Err(PeerError::Malformed),
        }
    }

    /// One `/internal/batch` call.
    async fn send_batch(&self, base: &str, body: Bytes) -> Result<Vec<batch::BatchReply>, PeerError> {
        let bytes = self.call(base, BATCH_PATH, body).await?;
        decode(&bytes).ok_or(PeerError::Malformed)
    }

    /// Leaves `record` with a stand-in for `owner`.
    pub async fn hint(&self, base: &str, owner: &str, key: &[u8], record: &Record) -> Result<(), PeerError> {
        self.call(base, HINT_PATH, encode(&HintRequestRef { owner, key, record })).await?;
        Ok(())
    }

    /// Relays a client request to another node unchanged (plus the
    /// forwarded marker).
    pub async fn forward(
        &self,
        base: &str,
        method: reqwest::Method,
        path_and_query: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<reqwest::Response, PeerError> {
        // The receiving coordinator may itself wait for a direct attempt and a
        // stand-in; give it that long and a little more.
        let mut req = self
            .http
            .request(method, format!("{base}{path_and_query}"))
            .timeout(self.timeout * 3 + Duration::from_millis(500))
            .header(FORWARDED_HEADER, "1");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        Ok(req.body(body).send().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none_and_hints_encode_by_reference() {
        use crate::storage::Content;
        use crate::version::Context;
        assert_eq!(decode::<HintRequest>(b""), None);
        assert_eq!(decode::<HintRequest>(b"\x02abc"), None);
        assert_eq!(decode::<HintRequest>(b"\x01\xff\xff\xff\xff\xff"), None);
        let ctx = Context::new();
        let rec = Record::new();
        let content = Content {
            value: vec![1, 2, 3],
            content_type: "x/y".into(),
            timestamp_ms: 5,
            expires_at_ms: Some(9),
            deleted: false,
        };
        let rec = rec.update(&ctx, rec.next_dot(&ctx, "n", 0), content);
        let hint = HintRequest { owner: "o".into(), key: b"k".to_vec(), record: rec.clone() };
        let by_ref = encode(&HintRequestRef { owner: "o", key: b"k", record: &rec });
        assert_eq!(decode::<HintRequest>(&by_ref), Some(hint));
    }
}
