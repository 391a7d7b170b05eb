//! Replica traffic batching: per peer, replica reads and writes queue up and
//! travel together in one `POST /internal/batch`.
//!
//! Each peer gets a sender task. It takes whatever is queued (at most
//! [`MAX_BATCH`] operations) and sends it; while [`IN_FLIGHT`] batches to that
//! peer are in the air, new operations wait and form the next batch (group
//! commit for the network: the batch grows with load and with the peer's
//! latency, flush time included).
//! An idle cluster therefore sends every operation at once, alone, and a busy
//! one sends fewer, larger requests: on loopback, per-request overhead
//! (syscalls, HTTP framing, task switches) was most of a replica write's cost.
//!
//! Wire format: the body is `FORMAT | postcard(Vec<BatchOp>)` and the answer
//! `FORMAT | postcard(Vec<BatchReply>)`, one reply per operation, in order.
//! Operations are encoded once by the caller ([`read_op`], [`write_op`]); a
//! batch body is the count as a varint followed by the encoded operations,
//! which is exactly postcard's encoding of the `Vec`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{PeerError, Peers, FORMAT};
use crate::storage::Record;
use crate::version::Dot;

/// Most operations in one batch.
pub const MAX_BATCH: usize = 256;
/// A batch stops growing past this many bytes (one larger operation still
/// travels, alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Batches in the air to one peer at once. One measured 5-10 % faster than
/// two on the benchmark machine (bench/NOTES.md); the batch grows instead.
pub const IN_FLIGHT: usize = 1;
/// Operations that may wait for one peer before callers wait to enqueue.
const QUEUE: usize = 4096;

/// One replica operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    /// This node's record of a key.
    Read {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Merge a sibling set into this node's copy.
    Write {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The state to merge.
        record: Record,
    },
    /// Drop the key if this node holds exactly these versions (tombstones
    /// every replica holds; sent by the key's first replica).
    Purge {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The versions purged.
        dots: Vec<Dot>,
    },
}

/// [`BatchOp`] by reference: identical bytes without cloning.
#[derive(Serialize)]
enum BatchOpRef<'a> {
    Read {
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
    },
    Write {
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
        record: &'a Record,
    },
    Purge {
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
        dots: &'a [Dot],
    },
}

/// The answer to one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchReply {
    /// The record read (`None`: the key is unknown here).
    Read(Option<Record>),
    /// Merged and as durable as this node promises.
    Written,
    /// The operation failed on the peer.
    Failed(String),
}

/// Encodes a replica read for [`Peers::batch`].
pub fn read_op(key: &[u8]) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::Read { key }).expect("plain data serializes"))
}

/// Encodes a replica write for [`Peers::batch`]; encode once, send to many.
pub fn write_op(key: &[u8], record: &Record) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::Write { key, record }).expect("plain data serializes"))
}

/// Encodes a purge for [`Peers::batch`].
pub fn purge_op(key: &[u8], dots: &[Dot]) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::Purge { key, dots }).expect("plain data serializes"))
}

/// Builds a batch body from encoded operations.
pub fn batch_body(ops: &[Bytes]) -> Bytes {
    let mut buf = BytesMut::with_capacity(11 + ops.iter().map(Bytes::len).sum::<usize>());
    buf.put_u8(FORMAT);
    let mut n = ops.len() as u64;
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
    for op in ops {
        buf.put_slice(op);
    }
    buf.freeze()
}

struct Job {
    op: Bytes,
    reply: oneshot::Sender<Result<BatchReply, PeerError>>,
}

/// The per-peer queues.
#[derive(Default)]
pub(super) struct Queues {
    peers: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

impl Peers {
    /// Queues one encoded operation for the peer at `base` and waits for its
    /// reply.
    pub async fn batch(&self, base: &str, op: Bytes) -> Result<BatchReply, PeerError> {
        let tx = {
            let mut peers = self.queues.peers.lock().expect("queues lock");
            match peers.get(base) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(run_queue(self.clone(), base.to_string(), rx));
                    peers.insert(base.to_string(), tx.clone());
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        tx.send(Job { op, reply }).await.map_err(|_| PeerError::Batch("peer queue closed".into()))?;
        answer.await.map_err(|_| PeerError::Batch("batch dropped".into()))?
    }
}

/// The sender task of one peer.
async fn run_queue(peers: Peers, base: String, mut rx: mpsc::Receiver<Job>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
        // Everything that queued while we waited for a free slot goes along.
        let mut bytes = first.op.len();
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) if bytes + j.op.len() > MAX_BATCH_BYTES => {
                    carry = Some(j);
                    break;
                }
                Ok(j) => {
                    bytes += j.op.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let (peers, base) = (peers.clone(), base.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let ops: Vec<Bytes> = jobs.iter().map(|j| j.op.clone()).collect();
            let result = peers.send_batch(&base, batch_body(&ops)).await;
            match result {
                Ok(replies) if replies.len() == jobs.len() => {
                    for (job, reply) in jobs.into_iter().zip(replies) {
                        let _ = job.reply.send(Ok(reply));
                    }
                }
                Ok(_) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(PeerError::Malformed));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for job in jobs {
                        let _ = job.reply.send(Err(PeerError::Batch(msg.clone())));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{decode, encode};
    use crate::storage::Content;
    use crate::version::Context;

    #[test]
    fn a_body_of_encoded_ops_is_the_postcard_vec() {
        let ctx = Context::new();
        let rec = Record::new();
        let content = Content {
            value: vec![7; 300],
            content_type: "a/b".into(),
            timestamp_ms: 1,
            expires_at_ms: None,
            deleted: true,
        };
        let rec = rec.update(&ctx, rec.next_dot(&ctx, "n", 0), content);
        let owned = [BatchOp::Read { key: b"r".to_vec() }, BatchOp::Write { key: b"w".to_vec(), record: rec.clone() }];
        // 200 ops: the count needs a two-byte varint.
        let mut many = Vec::new();
        let mut encoded = Vec::new();
        for i in 0..200 {
            many.push(owned[i % 2].clone());
            encoded.push(if i % 2 == 0 { read_op(b"r") } else { write_op(b"w", &rec) });
        }
        assert_eq!(batch_body(&encoded).as_ref(), encode(&many).as_slice());
        assert_eq!(decode::<Vec<BatchOp>>(&batch_body(&encoded)), Some(many));
    }
}
