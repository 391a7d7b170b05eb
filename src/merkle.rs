//! Merkle trees over a partition's keys, fixed shape, kept current by XOR
//! (SPEC §4, "Anti-entropy"; Riak's Tictac AAE).
//!
//! Every partition has one tree of [`LEAVES`] leaves under three levels of
//! [`FANOUT`] children each. A key falls into the leaf given by the low 12
//! bits of its xxh3 hash (the high bits pick the partition, so the two are
//! independent), and contributes [`item_hash`]`(key, record bytes)` to it. A
//! leaf is the XOR of its keys' item hashes, an inner node the XOR of its
//! children, the root the XOR of everything. So a change from one record to
//! another is applied as `old ^ new` to the leaf and its three ancestors, in
//! any order and from any thread (XOR commutes): no rebuild, no pause, no
//! rescan. Equal record bytes give equal item hashes, so two replicas holding
//! the same versions of every key have equal trees, and a difference shows
//! up at the root and only along the paths to the leaves that differ.
//!
//! Pure: no I/O; the storage layer applies changes, the anti-entropy worker
//! compares trees.

use std::sync::atomic::{AtomicU64, Ordering};

/// Children per inner node.
pub const FANOUT: u32 = 16;
/// Levels below the root; leaves are at this level.
pub const DEPTH: u8 = 3;
/// Leaves per tree (`FANOUT ^ DEPTH`).
pub const LEAVES: u32 = 4096;

/// The leaf `key` falls into.
pub fn leaf_of(key: &[u8]) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(key) & u64::from(LEAVES - 1)) as u16
}

/// What one key with encoded record `record` contributes to its leaf. The
/// key seeds the hash, so equal records under different keys differ and
/// swapping two keys' records changes the leaf.
pub fn item_hash(key: &[u8], record: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(record, xxhash_rust::xxh3::xxh3_64(key))
}

/// Index of the first node of `level` in the flat array.
fn offset(level: u8) -> usize {
    ((FANOUT as usize).pow(u32::from(level)) - 1) / (FANOUT as usize - 1)
}

/// Nodes at `level`.
pub fn width(level: u8) -> u32 {
    FANOUT.pow(u32::from(level))
}

/// One partition's tree: `1 + 16 + 256 + 4096` hashes.
#[derive(Debug)]
pub struct Tree {
    nodes: Box<[AtomicU64]>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty tree (every hash 0: no keys).
    pub fn new() -> Self {
        Self { nodes: (0..offset(DEPTH + 1)).map(|_| AtomicU64::new(0)).collect() }
    }

    /// XORs `h` into `leaf` and its ancestors: adds an item hash, removes
    /// it, or (with `old ^ new`) replaces one.
    pub fn toggle(&self, leaf: u16, h: u64) {
        if h == 0 {
            return;
        }
        let mut index = u32::from(leaf) % LEAVES;
        for level in (0..=DEPTH).rev() {
            self.nodes[offset(level) + index as usize].fetch_xor(h, Ordering::Relaxed);
            index /= FANOUT;
        }
    }

    /// The hash of node `index` at `level` (`None` out of range).
    pub fn get(&self, level: u8, index: u32) -> Option<u64> {
        if level > DEPTH || index >= width(level) {
            return None;
        }
        Some(self.nodes[offset(level) + index as usize].load(Ordering::Relaxed))
    }

    /// The root hash: 0 for an empty partition.
    pub fn root(&self) -> u64 {
        self.nodes[0].load(Ordering::Relaxed)
    }

    /// The hashes of the children of node `index` at `level` (`None` for a
    /// leaf or out of range).
    pub fn children(&self, level: u8, index: u32) -> Option<Vec<u64>> {
        if level >= DEPTH || index >= width(level) {
            return None;
        }
        let first = offset(level + 1) + (index * FANOUT) as usize;
        Some(self.nodes[first..first + FANOUT as usize].iter().map(|n| n.load(Ordering::Relaxed)).collect())
    }

    /// Forgets everything (every hash 0).
    pub fn clear(&self) {
        for n in self.nodes.iter() {
            n.store(0, Ordering::Relaxed);
        }
    }
}

/// The indices where two children lists differ.
pub fn differing(mine: &[u64], theirs: &[u64]) -> Vec<u32> {
    (0..mine.len().max(theirs.len())).filter(|&i| mine.get(i) != theirs.get(i)).map(|i| i as u32).collect()
}

/// What two leaves' `(key, item hash)` lists disagree on: the keys whose
/// item hashes differ or that only one side holds. Both lists must be
/// sorted by key.
pub fn differing_keys(mine: &[(Vec<u8>, u64)], theirs: &[(Vec<u8>, u64)]) -> Vec<Vec<u8>> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < mine.len() || j < theirs.len() {
        match (mine.get(i), theirs.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    out.push(a.0.clone());
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push(a.0.clone());
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                out.push(b.0.clone());
                j += 1;
            }
            (Some(a), None) => {
                out.push(a.0.clone());
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn build(items: &BTreeMap<Vec<u8>, Vec<u8>>) -> Tree {
        let t = Tree::new();
        for (k, v) in items {
            t.toggle(leaf_of(k), item_hash(k, v));
        }
        t
    }

    fn same(a: &Tree, b: &Tree) -> bool {
        (0..=DEPTH).all(|l| (0..width(l)).all(|i| a.get(l, i) == b.get(l, i)))
    }

    fn items() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
        proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..12),
            proptest::collection::vec(any::<u8>(), 0..12),
            0..60,
        )
    }

    proptest! {
        /// Equal data, equal trees, whatever the order changes came in;
        /// different data, different roots.
        #[test]
        fn equal_roots_iff_equal_data(a in items(), b in items()) {
            let (ta, tb) = (build(&a), build(&b));
            prop_assert_eq!(ta.root() == tb.root(), a == b);
            prop_assert_eq!(same(&ta, &tb), a == b);
        }

        /// Replacing records through `old ^ new` toggles ends where a tree
        /// built from the final data starts, in any order.
        #[test]
        fn incremental_changes_match_a_rebuild(
            start in items(),
            changes in proptest::collection::vec((0usize..80, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 0..60),
        ) {
            let mut data = start.clone();
            let t = build(&start);
            let keys: Vec<Vec<u8>> = start.keys().cloned().chain((0..20u8).map(|i| vec![b'n', i])).collect();
            let mut deltas = Vec::new();
            for (pick, new) in changes {
                let key = keys[pick % keys.len()].clone();
                let old = data.get(&key).cloned();
                let h = |v: &Option<Vec<u8>>| v.as_ref().map(|v| item_hash(&key, v)).unwrap_or(0);
                deltas.push((leaf_of(&key), h(&old) ^ h(&new)));
                match new {
                    Some(v) => { data.insert(key, v); }
                    None => { data.remove(&key); }
                }
            }
            deltas.reverse();
            for (leaf, d) in deltas {
                t.toggle(leaf, d);
            }
            prop_assert!(same(&t, &build(&data)));
        }

        /// A single differing key shows up in exactly one leaf and along
        /// its path only.
        #[test]
        fn one_difference_one_path(a in items(), key in proptest::collection::vec(any::<u8>(), 1..12), v in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut b = a.clone();
            b.insert(key.clone(), v);
            prop_assume!(a != b);
            let (ta, tb) = (build(&a), build(&b));
            let mut index = u32::from(leaf_of(&key));
            for level in (0..=DEPTH).rev() {
                let diff: Vec<u32> = (0..width(level)).filter(|&i| ta.get(level, i) != tb.get(level, i)).collect();
                prop_assert_eq!(diff, vec![index]);
                index /= FANOUT;
            }
        }
    }

    #[test]
    fn shape_and_bounds() {
        let t = Tree::new();
        assert_eq!(offset(DEPTH + 1), 1 + 16 + 256 + 4096);
        assert_eq!(width(DEPTH), LEAVES);
        assert_eq!(t.get(DEPTH, LEAVES), None);
        assert_eq!(t.children(DEPTH, 0), None);
        assert_eq!(t.children(0, 0).unwrap().len(), 16);
        t.toggle(4095, 7);
        assert_eq!(t.children(2, 255).unwrap()[15], 7);
        assert_eq!(t.root(), 7);
        t.clear();
        assert_eq!(t.root(), 0);
    }

    #[test]
    fn differing_keys_walks_both_lists() {
        let a = vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2), (b"d".to_vec(), 4)];
        let b = vec![(b"b".to_vec(), 2), (b"c".to_vec(), 3), (b"d".to_vec(), 5)];
        assert_eq!(differing_keys(&a, &b), vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(differing(&[1, 2, 3], &[1, 0, 3]), vec![1]);
    }
}
