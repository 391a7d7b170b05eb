//! Key hashing and the fixed partition grid (SPEC §4, "Ring and shards").
//!
//! The 64-bit ring is cut into Q equal ranges; partition `i` covers
//! `[ceil(i * 2^64 / Q), ceil((i + 1) * 2^64 / Q) - 1]`. Keys never re-hash when
//! membership changes: only the owners of whole partitions move.

/// Position of a key on the ring (xxh3-64 of its bytes).
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The partition a ring position falls into, of `partitions` (Q >= 1).
pub fn partition_of_hash(hash: u64, partitions: u32) -> u32 {
    ((u128::from(hash) * u128::from(partitions)) >> 64) as u32
}

/// The partition a key belongs to.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    partition_of_hash(key_hash(key), partitions)
}

/// First ring position of partition `p`.
pub fn partition_start(p: u32, partitions: u32) -> u64 {
    let num = (u128::from(p) << 64) + u128::from(partitions) - 1;
    (num / u128::from(partitions)) as u64
}

/// Last ring position of partition `p` (inclusive).
pub fn partition_end(p: u32, partitions: u32) -> u64 {
    if p + 1 == partitions {
        u64::MAX
    } else {
        partition_start(p + 1, partitions) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_partition_covers_the_ring() {
        assert_eq!(partition_start(0, 1), 0);
        assert_eq!(partition_end(0, 1), u64::MAX);
        assert_eq!(partition_of_hash(u64::MAX, 1), 0);
    }

    proptest! {
        #[test]
        fn a_hash_lies_inside_its_partition(h in any::<u64>(), q in 1u32..70000) {
            let p = partition_of_hash(h, q);
            prop_assert!(p < q);
            prop_assert!(partition_start(p, q) <= h && h <= partition_end(p, q));
        }

        #[test]
        fn partitions_tile_the_ring(q in 1u32..5000) {
            prop_assert_eq!(partition_start(0, q), 0);
            prop_assert_eq!(partition_end(q - 1, q), u64::MAX);
            let p = q / 2;
            if p + 1 < q {
                prop_assert_eq!(partition_end(p, q) + 1, partition_start(p + 1, q));
            }
            prop_assert_eq!(partition_of_hash(partition_start(p, q), q), p);
            prop_assert_eq!(partition_of_hash(partition_end(p, q), q), p);
        }
    }
}
