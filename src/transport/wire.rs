//! The messages nodes exchange, and their encodings.
//!
//! Gossip is JSON (small, and readable in a capture). Everything carrying
//! sibling sets with binary values is `FORMAT (1 byte) | postcard(message)`:
//! hints, and batches of replica operations, whose body is
//! `FORMAT | postcard(Vec<BatchOp>)` answered by
//! `FORMAT | postcard(Vec<BatchReply>)`, one reply per operation, in order.
//! Operations are encoded once by the caller ([`read_op`], [`digest_op`], [`write_op`],
//! [`purge_op`]) and a batch body is the count as a varint followed by the
//! encoded operations, which is exactly postcard's encoding of the `Vec`.
//! Golden vectors in the tests pin these bytes: a format change is a
//! deliberate act.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::membership::Digest;
use crate::storage::Record;
use crate::version::Dot;

/// The leading byte of every binary message. 2 since records carry their
/// purge context: a node of another format refuses the message rather than
/// misreading it.
pub const FORMAT: u8 = 2;

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

/// [`HintRequest`] by reference: identical bytes without cloning.
#[derive(Serialize)]
struct HintRequestRef<'a> {
    owner: &'a str,
    #[serde(with = "serde_bytes")]
    key: &'a [u8],
    record: &'a Record,
}

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
    /// This node's own record of a key, never completed from elsewhere
    /// (a receiving node completing its answer asks this of a holder);
    /// refused by a node that does not hold the partition yet.
    ReadLocal {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Whatever this node stores for a key right now (`/cluster/replicas`).
    Inspect {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// A digest of this node's record of a key instead of the record (a
    /// read's other replicas, after Cassandra's digest reads); answered with
    /// the whole record by a node still receiving the partition.
    Digest {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
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
    ReadLocal {
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
    },
    Inspect {
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
    },
    Digest {
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
    },
}

/// The answer to one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchReply {
    /// The record read (`None`: the key is unknown here).
    Read(Option<Record>),
    /// Merged (or purged) and as durable as this node promises.
    Written,
    /// The operation failed on the peer.
    Failed(String),
    /// The digest of the record (`storage::record::digest` of its stored
    /// bytes; `None`: the key is unknown here).
    Digest(Option<u128>),
}

/// One Merkle tree node as the asking side holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHash {
    /// The partition.
    pub partition: u32,
    /// 0 (root) to `merkle::DEPTH` (leaves).
    pub level: u8,
    /// The node's index within its level.
    pub index: u32,
    /// The asker's hash of it (fixed 8 bytes: varints would take up to 10).
    pub hash: [u8; 8],
}

/// Anti-entropy: compare these nodes with the answering side's trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeCompare {
    /// The nodes, any mix of partitions and levels.
    pub nodes: Vec<NodeHash>,
}

/// The answer for one asked node that differs (equal ones are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AeDiff {
    /// An inner node differs: the answering side's hashes of its children.
    Children {
        /// The partition.
        partition: u32,
        /// The differing node's level.
        level: u8,
        /// The differing node's index.
        index: u32,
        /// Its children's hashes, in order.
        hashes: Vec<[u8; 8]>,
    },
    /// A leaf differs: the answering side's `(key, item hash)` list of it.
    Leaf {
        /// The partition.
        partition: u32,
        /// The leaf.
        index: u32,
        /// Keys in order with their item hashes.
        items: Vec<(serde_bytes::ByteBuf, [u8; 8])>,
    },
    /// The answering side does not replicate the partition or has not built
    /// its tree yet: nothing to compare now.
    NotReady {
        /// The partition.
        partition: u32,
    },
}

/// The answer to an [`AeCompare`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeReply {
    /// One entry per asked node that differs or cannot be compared.
    pub diffs: Vec<AeDiff>,
}

/// Ownership transfer: a page of a partition from a holder. With `limit`
/// 0 it only asks whether the answering node holds the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The partition.
    pub partition: u32,
    /// Resume after this key (`None`: from the start).
    pub after: Option<serde_bytes::ByteBuf>,
    /// Most keys in the page.
    pub limit: u32,
}

/// The answer to a [`TransferRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferReply {
    /// Whether the answering node holds a complete copy of the partition
    /// (no page is sent otherwise).
    pub holds: bool,
    /// Whether it stores anything of the partition at all.
    pub has_data: bool,
    /// Keys in order with their records.
    pub items: Vec<(serde_bytes::ByteBuf, Record)>,
    /// Where the next page starts (`None`: the partition is done).
    pub next: Option<serde_bytes::ByteBuf>,
}

/// Encodes a binary message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serializing plain data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(msg).expect("plain data serializes"));
    out
}

/// Decodes a binary message; `None` for anything malformed.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// Encodes a hint for a stand-in.
pub fn hint_request(owner: &str, key: &[u8], record: &Record) -> Bytes {
    Bytes::from(encode(&HintRequestRef { owner, key, record }))
}

/// Encodes a replica read for a batch.
pub fn read_op(key: &[u8]) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::Read { key }).expect("plain data serializes"))
}

/// Encodes a replica write for a batch; encode once, send to many.
pub fn write_op(key: &[u8], record: &Record) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::Write { key, record }).expect("plain data serializes"))
}

/// Encodes a local-only replica read for a batch.
pub fn read_local_op(key: &[u8]) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::ReadLocal { key }).expect("plain data serializes"))
}

/// Encodes an inspection of what a replica stores, for a batch.
pub fn inspect_op(key: &[u8]) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::Inspect { key }).expect("plain data serializes"))
}

/// Encodes a digest read for a batch.
pub fn digest_op(key: &[u8]) -> Bytes {
    Bytes::from(postcard::to_allocvec(&BatchOpRef::Digest { key }).expect("plain data serializes"))
}

/// Encodes a purge for a batch.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Content;
    use crate::version::Context;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A fixed two-sibling record: one value from `a`, one tombstone from `b`.
    pub(crate) fn golden_record() -> Record {
        let rec = Record::new();
        let ctx = Context::new();
        let value = Content {
            value: bytes::Bytes::from_static(b"hi"),
            content_type: "text/plain".into(),
            timestamp_ms: 1_700_000_000_000,
            expires_at_ms: Some(1_700_000_060_000),
            deleted: false,
        };
        let rec = rec.update(&ctx, rec.next_dot(&ctx, "a", 0), value);
        let tomb = Content {
            value: bytes::Bytes::new(),
            content_type: String::new(),
            timestamp_ms: 1_700_000_000_001,
            expires_at_ms: None,
            deleted: true,
        };
        rec.update(&ctx, rec.next_dot(&ctx, "b", 6), tomb)
    }

    #[test]
    fn a_body_of_encoded_ops_is_the_postcard_vec() {
        let rec = golden_record();
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

    #[test]
    fn garbage_is_none_and_hints_encode_by_reference() {
        assert_eq!(decode::<HintRequest>(b""), None);
        assert_eq!(decode::<HintRequest>(b"\x02abc"), None);
        assert_eq!(decode::<HintRequest>(b"\x01\xff\xff\xff\xff\xff"), None);
        let rec = golden_record();
        let hint = HintRequest { owner: "o".into(), key: b"k".to_vec(), record: rec.clone() };
        assert_eq!(decode::<HintRequest>(&hint_request("o", b"k", &rec)), Some(hint));
    }

    /// Golden vectors: the exact bytes of a batch (a read, a write, a purge)
    /// and of its replies. A change here breaks mixed-version clusters.
    #[test]
    fn golden_batch_bytes() {
        let rec = golden_record();
        let dots = [Dot { node: "a".into(), counter: 1 }];
        let body = batch_body(&[read_op(b"k"), write_op(b"k", &rec), purge_op(b"k", &dots)]);
        assert_eq!(hex(&body), GOLDEN_BATCH);
        let replies = encode(&vec![BatchReply::Read(None), BatchReply::Written, BatchReply::Failed("no".into())]);
        assert_eq!(hex(&replies), "020300000102026e6f");
        assert_eq!(hex(&hint_request("o", b"k", &Record::new())), "02016f016b000000");
        // Digest reads: the op and its two answers.
        assert_eq!(hex(&batch_body(&[digest_op(b"k")])), "020105016b");
        assert_eq!(hex(&encode(&vec![BatchReply::Digest(Some(0x0102)), BatchReply::Digest(None)])), "0202030182020300");
    }

    /// Golden vector: an anti-entropy exchange (a root, then a leaf).
    #[test]
    fn golden_anti_entropy_bytes() {
        let ask = AeCompare { nodes: vec![NodeHash { partition: 3, level: 0, index: 0, hash: 7u64.to_le_bytes() }] };
        assert_eq!(hex(&encode(&ask)), "02010300000700000000000000");
        let reply = AeReply {
            diffs: vec![
                AeDiff::Leaf { partition: 3, index: 4095, items: vec![(b"k".to_vec().into(), 9u64.to_le_bytes())] },
                AeDiff::NotReady { partition: 5 },
            ],
        };
        assert_eq!(hex(&encode(&reply)), "02020103ff1f01016b09000000000000000205");
        assert_eq!(decode::<AeReply>(&encode(&reply)), Some(reply));
    }

    use proptest::prelude::*;

    /// Every decoder of internal messages, on the same bytes.
    fn decode_all(bytes: &[u8]) {
        let _ = decode::<Vec<BatchOp>>(bytes);
        let _ = decode::<Vec<BatchReply>>(bytes);
        let _ = decode::<HintRequest>(bytes);
        let _ = decode::<AeCompare>(bytes);
        let _ = decode::<AeReply>(bytes);
        let _ = decode::<TransferRequest>(bytes);
        let _ = decode::<TransferReply>(bytes);
        let _ = serde_json::from_slice::<GossipMessage>(bytes);
    }

    /// Valid encodings of every message kind.
    fn samples() -> Vec<Vec<u8>> {
        let rec = golden_record();
        vec![
            batch_body(&[
                read_op(b"k"),
                write_op(b"key", &rec),
                purge_op(b"k", &[Dot { node: "a".into(), counter: 1 }]),
            ])
            .to_vec(),
            encode(&vec![BatchReply::Read(Some(rec.clone())), BatchReply::Written]),
            hint_request("owner", b"key", &rec).to_vec(),
            encode(&AeCompare { nodes: vec![NodeHash { partition: 1, level: 3, index: 9, hash: [7; 8] }] }),
            encode(&AeReply {
                diffs: vec![AeDiff::Children { partition: 1, level: 0, index: 0, hashes: vec![[1; 8]; 16] }],
            }),
            encode(&TransferRequest { partition: 2, after: Some(b"k".to_vec().into()), limit: 10 }),
            encode(&TransferReply {
                holds: true,
                has_data: true,
                items: vec![(b"k".to_vec().into(), rec)],
                next: None,
            }),
        ]
    }

    proptest! {
        /// No decoder panics on arbitrary bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            decode_all(&bytes);
            let mut framed = vec![FORMAT];
            framed.extend_from_slice(&bytes);
            decode_all(&framed);
        }

        /// A message cut short or with a byte changed decodes to an error or
        /// to some message, never a panic; cut short it is an error.
        #[test]
        fn damaged_messages_are_refused(pick in 0usize..7, cut in 0usize..4096, flip in 0usize..4096, bit in 0u8..8) {
            let sample = &samples()[pick];
            let cut = cut % sample.len();
            decode_all(&sample[..cut]);
            if pick == 0 {
                prop_assert!(decode::<Vec<BatchOp>>(&sample[..cut]).is_none(), "a batch cut at {} decoded", cut);
            }
            let mut flipped = sample.clone();
            let at = flip % flipped.len();
            flipped[at] ^= 1 << bit;
            decode_all(&flipped);
        }
    }

    #[test]
    fn every_sample_decodes() {
        let s = samples();
        assert!(decode::<Vec<BatchOp>>(&s[0]).is_some());
        assert!(decode::<Vec<BatchReply>>(&s[1]).is_some());
        assert!(decode::<HintRequest>(&s[2]).is_some());
        assert!(decode::<AeCompare>(&s[3]).is_some());
        assert!(decode::<AeReply>(&s[4]).is_some());
        assert!(decode::<TransferRequest>(&s[5]).is_some());
        assert!(decode::<TransferReply>(&s[6]).is_some());
    }

    const GOLDEN_BATCH: &str = "020300016b01016b0201610100000268690a746578742f706c61696e80d095ffbc3101e0a499ffbc31000162070000000081d095ffbc310001000002016b01016101";
}
