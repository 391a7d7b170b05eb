//! The on-disk record of one key: its sibling set, versioned.
//!
//! `FORMAT (1 byte) | postcard(Siblings<Content>)`. The leading byte lets a
//! later release read older records; an unknown one is a clear error rather
//! than a misread. Format 2 added the purged context (purge markers);
//! format 1 records (versions only) still decode, with nothing purged.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::version::{Context, Siblings, Version};

const FORMAT: u8 = 2;
/// Versions only, before purge markers.
const FORMAT_1: u8 = 1;

#[derive(Deserialize)]
struct RecordV1 {
    versions: Vec<Version<Content>>,
}

/// A value (or tombstone) with the metadata SPEC §4 asks every version to carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// The value bytes (empty for a tombstone): shared, so a client's body
    /// becomes a version, and a version is cloned, without copying them.
    #[serde(with = "value_bytes")]
    pub value: Bytes,
    /// `Content-Type` given on write (empty for a tombstone).
    pub content_type: String,
    /// Wall-clock time of the write, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// When the value expires (ms since the epoch), if written with `ttl`.
    pub expires_at_ms: Option<u64>,
    /// Whether this version is a tombstone.
    pub deleted: bool,
}

impl Content {
    /// Whether the version has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }
}

/// `Content::value` as postcard bytes (a length, then the bytes: what
/// `serde_bytes` writes for a `Vec<u8>`, so the format is unchanged).
mod value_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Ok(Bytes::from(serde_bytes::ByteBuf::deserialize(d)?.into_vec()))
    }
}

/// A key's stored state.
pub type Record = Siblings<Content>;

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Written by an unknown format.
    #[error("record format {0} is unknown to this release")]
    UnknownFormat(u8),
    /// Bytes that do not decode.
    #[error("corrupt record: {0}")]
    Corrupt(#[from] postcard::Error),
    /// No bytes at all.
    #[error("empty record")]
    Empty,
}

/// Encodes a record for storage or the wire.
pub fn encode(record: &Record) -> Vec<u8> {
    // One buffer, sized for the values and a little metadata each.
    let room = record.values().iter().map(|v| v.payload.value.len() + 64).sum::<usize>() + 64;
    let mut out = Vec::with_capacity(room);
    out.push(FORMAT);
    // Serializing plain data into a Vec cannot fail.
    postcard::to_extend(record, out).expect("record serializes")
}

/// A digest of a record's bytes as [`encode`] writes them: equal records
/// have equal digests, so a read can compare a replica's digest with a copy
/// it has instead of moving the record (a record stored in an older format
/// only digests differently, which costs a full read, never a wrong one).
pub fn digest(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// Decodes a record written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&FORMAT_1, rest)) => {
            let v1: RecordV1 = postcard::from_bytes(rest)?;
            Ok(Siblings::from_parts(v1.versions, Context::new()))
        }
        Some((&other, _)) => Err(RecordError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Context;
    use proptest::prelude::*;

    fn content() -> impl Strategy<Value = Content> {
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            "[a-z/+-]{0,30}",
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
        )
            .prop_map(|(value, content_type, timestamp_ms, expires_at_ms, deleted)| Content {
                value: value.into(),
                content_type,
                timestamp_ms,
                expires_at_ms,
                deleted,
            })
    }

    proptest! {
        #[test]
        fn round_trip(contents in proptest::collection::vec(content(), 0..5), nodes in proptest::collection::vec("[a-z]{1,8}", 5)) {
            let mut rec = Record::new();
            for (i, c) in contents.into_iter().enumerate() {
                // Writers that saw nothing: every version is a sibling.
                let ctx = Context::new();
                let dot = rec.next_dot(&ctx, &nodes[i], 0);
                rec = rec.update(&ctx, dot, c);
            }
            prop_assert_eq!(decode(&encode(&rec)).unwrap(), rec);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    /// Golden vector: the exact bytes of a stored record (a value from `a`
    /// with an expiry, a concurrent tombstone from `b`). A change here means
    /// existing data dirs no longer read: bump `FORMAT` and keep a decoder.
    #[test]
    fn golden_record_bytes() {
        let rec = Record::new();
        let ctx = Context::new();
        let value = Content {
            value: Bytes::from_static(b"hi"),
            content_type: "text/plain".into(),
            timestamp_ms: 1_700_000_000_000,
            expires_at_ms: Some(1_700_000_060_000),
            deleted: false,
        };
        let rec = rec.update(&ctx, rec.next_dot(&ctx, "a", 0), value);
        let tomb = Content {
            value: Bytes::new(),
            content_type: String::new(),
            timestamp_ms: 1_700_000_000_001,
            expires_at_ms: None,
            deleted: true,
        };
        let rec = rec.update(&ctx, rec.next_dot(&ctx, "b", 6), tomb);
        let hex: String = encode(&rec).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "02020161010000026869\
             0a746578742f706c61696e80d095ffbc3101e0a499ffbc3100016207000000\
             0081d095ffbc3100010000"
        );
        assert_eq!(decode(&encode(&rec)).unwrap(), rec);
        // Its purge marker: no versions, the context of both (a:1, b:7 in
        // the vector; the gap b:1..6 is not claimed, so b:7 sits in the cloud).
        let marker: String = encode(&rec.purge()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(marker, "02000101610101016207");
    }

    #[test]
    fn format_1_records_still_decode() {
        // A format 1 record: one version (dot a:1, empty context, "hi").
        let v1 = [1u8, 1, 1, b'a', 1, 0, 0, 2, b'h', b'i', 0, 5, 0, 0];
        let rec = decode(&v1).unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec.values()[0].payload.value, b"hi"[..]);
        assert!(rec.purged().is_empty());
    }

    #[test]
    fn unknown_format_is_named() {
        assert!(matches!(decode(&[9, 0]), Err(RecordError::UnknownFormat(9))));
    }
}
