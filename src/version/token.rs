//! The `X-Context` token: the causal context a client carries from a read to
//! the write that follows it.
//!
//! Format (before URL-safe base64 without padding):
//! `FORMAT (1 byte) | key tag (8 bytes LE) | vector | cloud | xxh3-64 of everything before (8 bytes LE)`,
//! where `vector` and `cloud` are each `count (varint) | { id_len (1 byte) | id | counter (varint) }*`
//! and the key tag is the xxh3-64 of the key the context was read from.
//!
//! The checksum has a fixed seed, not a per-node secret, so a token from any
//! node is accepted by every node (SPEC §4). It catches truncation, typos and
//! random tampering; it is not a signature. The key tag ties a token to its
//! key: a node's counters are shared by all the keys it writes, so another
//! key's context would claim to have seen versions of this key it never saw,
//! and a write carrying it would silently supersede them. Entries must be in canonical order
//! with non-zero counters, and cloud dots not already covered by the vector,
//! so every context has exactly one token and a reordered one is refused
//! rather than misread.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::{Context, Dot, VersionVector};

/// 2 since tokens carry their key's tag.
const FORMAT: u8 = 2;
const SEED: u64 = 0x6479_6e61_6b76_6378; // "dynakvcx"
const KEY_SEED: u64 = 0x6479_6e61_6b76_6b79; // "dynakvky"
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Counters above this are refused: no node issues that many dots, and the
/// headroom keeps every `+ 1` on a counter from overflowing.
pub const MAX_COUNTER: u64 = 1 << 62;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    /// Not base64, too long or too short.
    #[error("X-Context is not a dynakv context token")]
    Malformed,
    /// The checksum does not match: truncated or altered.
    #[error("X-Context failed its integrity check")]
    Checksum,
    /// Checksum fine but the contents are not a canonical clock.
    #[error("X-Context has an unknown format or invalid contents")]
    Invalid,
    /// A sound token of another key.
    #[error("X-Context was issued for another key")]
    OtherKey,
    /// More than one `X-Context` header.
    #[error("more than one X-Context header")]
    Repeated,
}

fn key_tag(key: &[u8]) -> [u8; 8] {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, KEY_SEED).to_le_bytes()
}

/// Encodes the context of `key` as a token.
pub fn encode(ctx: &Context, key: &[u8]) -> String {
    let vv = ctx.vector();
    let mut buf = Vec::with_capacity(11 + (vv.len() + ctx.cloud().len()) * 24 + 8);
    buf.push(FORMAT);
    buf.extend_from_slice(&key_tag(key));
    put_varint(&mut buf, vv.len() as u64);
    for (node, counter) in vv.entries() {
        put_entry(&mut buf, node, counter);
    }
    put_varint(&mut buf, ctx.cloud().len() as u64);
    for d in ctx.cloud() {
        put_entry(&mut buf, &d.node, d.counter);
    }
    let sum = xxhash_rust::xxh3::xxh3_64_with_seed(&buf, SEED);
    buf.extend_from_slice(&sum.to_le_bytes());
    URL_SAFE_NO_PAD.encode(buf)
}

/// Decodes a token of `key`; never panics, whatever the input.
pub fn decode(token: &str, key: &[u8]) -> Result<Context, ContextError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return Err(ContextError::Malformed);
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| ContextError::Malformed)?;
    if raw.len() < 1 + 8 + 2 + 8 {
        return Err(ContextError::Malformed);
    }
    let (body, sum) = raw.split_at(raw.len() - 8);
    let expected = xxhash_rust::xxh3::xxh3_64_with_seed(body, SEED);
    if sum != expected.to_le_bytes() {
        return Err(ContextError::Checksum);
    }
    let mut r = Reader { buf: body, pos: 0 };
    if r.byte()? != FORMAT {
        return Err(ContextError::Invalid);
    }
    if r.take(8)? != key_tag(key) {
        return Err(ContextError::OtherKey);
    }
    let n = r.varint()?;
    let mut vv = VersionVector::new();
    let mut last: Option<&str> = None;
    for _ in 0..n {
        let (id, counter) = r.entry()?;
        if last.is_some_and(|l| l >= id) {
            return Err(ContextError::Invalid);
        }
        vv.witness(id, counter);
        last = Some(id);
    }
    let n = r.varint()?;
    let mut cloud: Vec<Dot> = Vec::new();
    for _ in 0..n {
        let (id, counter) = r.entry()?;
        let dot = Dot { node: id.to_string(), counter };
        if vv.get(id) + 1 >= counter || cloud.last().is_some_and(|l| *l >= dot) {
            return Err(ContextError::Invalid);
        }
        cloud.push(dot);
    }
    if r.pos != body.len() {
        return Err(ContextError::Invalid);
    }
    let ctx = Context::from_parts(vv, cloud);
    debug_assert!(ctx.cloud().len() as u64 == n);
    Ok(ctx)
}

fn put_entry(buf: &mut Vec<u8>, node: &str, counter: u64) {
    // Node ids are at most 64 bytes (config::valid_node_id).
    buf.push(node.len() as u8);
    buf.extend_from_slice(node.as_bytes());
    put_varint(buf, counter);
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ContextError> {
        let b = *self.buf.get(self.pos).ok_or(ContextError::Invalid)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ContextError> {
        let end = self.pos.checked_add(len).ok_or(ContextError::Invalid)?;
        let s = self.buf.get(self.pos..end).ok_or(ContextError::Invalid)?;
        self.pos = end;
        Ok(s)
    }

    fn entry(&mut self) -> Result<(&'a str, u64), ContextError> {
        let len = self.byte()? as usize;
        let id = std::str::from_utf8(self.take(len)?).map_err(|_| ContextError::Invalid)?;
        let counter = self.varint()?;
        if id.is_empty() || counter == 0 || counter > MAX_COUNTER {
            return Err(ContextError::Invalid);
        }
        Ok((id, counter))
    }

    fn varint(&mut self) -> Result<u64, ContextError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ContextError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_context_round_trips() {
        let ctx = Context::new();
        assert_eq!(decode(&encode(&ctx, b"k"), b"k"), Ok(ctx));
    }

    /// Golden vector: the exact token of a fixed context. Clients keep
    /// tokens between requests (and across upgrades): a change here is a
    /// deliberate act with a new `FORMAT`.
    #[test]
    fn golden_token() {
        let ctx = Context::from_parts(
            VersionVector::from_entries([("node-a".to_string(), 7), ("node-b".to_string(), 300)]),
            [Dot { node: "node-a".into(), counter: 12 }],
        );
        assert_eq!(encode(&ctx, b"golden"), GOLDEN);
        assert_eq!(decode(GOLDEN, b"golden"), Ok(ctx));
        assert_eq!(encode(&Context::new(), b"golden"), GOLDEN_EMPTY);
    }

    const GOLDEN: &str = "ArnRIqdUuBgFAgZub2RlLWEHBm5vZGUtYqwCAQZub2RlLWEM9YaR4UUDTcM";
    const GOLDEN_EMPTY: &str = "ArnRIqdUuBgFAACV2rd7rwQ3pA";

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode("", b"k"), Err(ContextError::Malformed));
        assert_eq!(decode("!!!", b"k"), Err(ContextError::Malformed));
        assert_eq!(decode("aGVsbG8gd29ybGQgdGhpcyBpcyBub3Q", b"k"), Err(ContextError::Checksum));
        // The format before key tags.
        assert_eq!(decode("AQIGbm9kZS1hBwZub2RlLWKsAgEGbm9kZS1hDLgQV7jzzo4S", b"k"), Err(ContextError::Invalid));
    }

    #[test]
    fn a_flipped_character_is_caught() {
        let vv = Context::from_parts(
            VersionVector::from_entries([("node-a".to_string(), 7), ("node-b".to_string(), 300)]),
            [Dot { node: "node-a".into(), counter: 12 }],
        );
        let token = encode(&vv, b"k");
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_ne!(decode(&tampered, b"k"), Ok(vv.clone()), "flip at {i} misread");
        }
    }

    proptest! {
        #[test]
        fn round_trip(
            entries in proptest::collection::btree_map("[a-z0-9-]{1,64}", 1u64..1000, 0..10),
            dots in proptest::collection::vec(("[a-z0-9-]{1,64}", 1u64..2000), 0..10),
            key in ".{1,40}",
        ) {
            let ctx = Context::from_parts(
                VersionVector::from_entries(entries),
                dots.into_iter().map(|(node, counter)| Dot { node, counter }),
            );
            prop_assert_eq!(decode(&encode(&ctx, key.as_bytes()), key.as_bytes()), Ok(ctx.clone()));
            // Never taken for the context of another key.
            let other = format!("{key}x");
            prop_assert_eq!(decode(&encode(&ctx, key.as_bytes()), other.as_bytes()), Err(ContextError::OtherKey));
        }

        #[test]
        fn arbitrary_input_never_panics(s in ".{0,200}") {
            let _ = decode(&s, b"k");
        }

        #[test]
        fn arbitrary_base64_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert!(decode(&URL_SAFE_NO_PAD.encode(&bytes), b"k").is_err());
        }
    }
}
