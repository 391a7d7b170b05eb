//! Dotted version vectors (SPEC §4, "Versioning").
//!
//! A key's state is a [`Siblings`] set: every stored version carries its own
//! [`Dot`] (the node that wrote it and that node's counter) and its causal
//! history as a [`VersionVector`] that includes the dot. The key's causal
//! context is the join of its versions' clocks. This is the dotted version
//! vector set of Almeida et al. (and Riak 2.0), with the paper's vocabulary:
//! [`Siblings::update`] makes a new version from a context, [`Siblings::sync`]
//! merges two replicas' sets, [`reconcile`] drops dominated versions.
//!
//! Invariant kept by `update` and `sync` (and restored by `reconcile`): no
//! version's dot is covered by another version's clock, so every stored
//! version is concurrent with every other one.
//!
//! A set also remembers what was deleted and purged from it ([`Siblings::purged`]):
//! when every replica held a key's tombstones past their grace period, the
//! tombstones go and only their causal context stays, so a stale copy of a
//! deleted version arriving later (a late hint, a returning node,
//! anti-entropy from a node that missed the purge) is recognised as seen and
//! dropped by `sync`. A set with no versions and a non-empty `purged` is a
//! purge marker. Because each write gets its own
//! dot, k writers racing with one stale context leave at most k siblings, where
//! plain per-value vector clocks would create false siblings.
//!
//! Nothing here touches I/O, clocks or HTTP; the payload is generic so the
//! laws can be property-tested with small values.

pub mod token;

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// A node's counter at the moment it wrote one version: the version's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dot {
    /// The node that coordinated the write.
    pub node: String,
    /// That node's counter for the write; unique per node.
    pub counter: u64,
}

/// A vector clock: for each node, the highest counter of it that was seen.
///
/// Kept as a vector sorted by node id, so there is one canonical order for
/// encoding and comparison; zero entries are never stored. It encodes as a
/// map (what a `BTreeMap` of the same entries encodes to, byte for byte):
/// a clock names a handful of nodes, and a sorted vector clones, drops and
/// decodes with one allocation for its entries where a `BTreeMap` takes a
/// node of room for eleven.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VersionVector(Vec<(String, u64)>);

/// How two clocks relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The left clock happened before the right one.
    Before,
    /// The left clock happened after the right one.
    After,
    /// Same clock.
    Equal,
    /// Neither saw the other.
    Concurrent,
}

impl VersionVector {
    /// The empty clock (has seen nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a clock from (node, counter) pairs, keeping the maximum per node.
    pub fn from_entries<I: IntoIterator<Item = (String, u64)>>(entries: I) -> Self {
        let mut vv = Self::new();
        for (node, counter) in entries {
            vv.witness(&node, counter);
        }
        vv
    }

    fn find(&self, node: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(node))
    }

    /// The highest counter seen for `node` (0 if none).
    pub fn get(&self, node: &str) -> u64 {
        self.find(node).map_or(0, |i| self.0[i].1)
    }

    /// Whether this clock has seen `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.node) >= dot.counter
    }

    /// Records that `counter` of `node` was seen.
    pub fn witness(&mut self, node: &str, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.find(node) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(counter),
            Err(i) => self.0.insert(i, (node.to_string(), counter)),
        }
    }

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for (node, counter) in &other.0 {
            self.witness(node, *counter);
        }
    }

    /// Whether this clock has seen everything `other` has.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(node, c)| self.get(node) >= *c)
    }

    /// Compares two clocks.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The (node, counter) entries in canonical (node id) order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(n, c)| (n.as_str(), *c))
    }

    /// Whether the clock has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of nodes in the clock.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

impl Serialize for VersionVector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries())
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    /// Reads a map as a `BTreeMap` would: entries in node order, the last of
    /// a repeated node kept (what this code writes is sorted and unique
    /// already, and is taken as it comes).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = VersionVector;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of node ids to counters")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VersionVector, A::Error> {
                let mut entries: Vec<(String, u64)> = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
                    // Stable: of equal ids the last stays last; keep it.
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    entries.reverse();
                    entries.dedup_by(|later, earlier| later.0 == earlier.0);
                    entries.reverse();
                }
                Ok(VersionVector(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Equal => Some(Ordering::Equal),
            Causality::Concurrent => None,
        }
    }
}

/// A causal context: a version vector plus isolated dots (a "dot cloud").
///
/// A plain vector clock entry `a: 24` claims every dot `a:1..=24`; a writer
/// that saw only `a:24` (its own write, made with a stale context beside a
/// concurrent `a:23`) must not claim `a:23`. The cloud holds such dots
/// exactly; a dot joins the vector only when it is contiguous with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    vv: VersionVector,
    cloud: Vec<Dot>,
}

impl Context {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context of a plain vector and some dots, normalized.
    pub fn from_parts(vv: VersionVector, cloud: impl IntoIterator<Item = Dot>) -> Self {
        let mut ctx = Self { vv, cloud: Vec::new() };
        for d in cloud {
            ctx.add(d);
        }
        ctx
    }

    /// Whether this context has seen `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.vv.covers(dot) || self.cloud.binary_search(dot).is_ok()
    }

    /// Whether this context has seen every dot `other` has.
    pub fn covers_all(&self, other: &Context) -> bool {
        let vector_ok = other.vv.entries().all(|(node, c)| {
            let mine = self.vv.get(node);
            mine >= c
                || (c - mine <= self.cloud.len() as u64
                    && (mine + 1..=c)
                        .all(|k| self.cloud.binary_search(&Dot { node: node.to_string(), counter: k }).is_ok()))
        });
        vector_ok && other.cloud.iter().all(|d| self.covers(d))
    }

    /// The highest counter of `node` seen, in the vector or the cloud.
    pub fn max_of(&self, node: &str) -> u64 {
        let cloud = self.cloud.iter().filter(|d| d.node == node).map(|d| d.counter).max().unwrap_or(0);
        self.vv.get(node).max(cloud)
    }

    /// The counter of `node` the vector part claims (every dot up to it).
    pub fn vector_of(&self, node: &str) -> u64 {
        self.vv.get(node)
    }

    /// Records every counter of `node` up to `counter` as seen.
    pub fn witness(&mut self, node: &str, counter: u64) {
        self.vv.witness(node, counter);
        self.compact();
    }

    /// Adds one seen dot.
    pub fn add(&mut self, dot: Dot) {
        if self.covers(&dot) {
            return;
        }
        if self.vv.get(&dot.node) + 1 == dot.counter {
            // The common case (a new version's dot, next to what its
            // context saw): straight into the vector, which may make cloud
            // dots contiguous in turn.
            self.vv.witness(&dot.node, dot.counter);
            if !self.cloud.is_empty() {
                self.compact();
            }
            return;
        }
        let at = self.cloud.binary_search(&dot).unwrap_err();
        self.cloud.insert(at, dot);
        self.compact();
    }

    /// Adds everything `other` has seen.
    pub fn join(&mut self, other: &Context) {
        self.vv.join(&other.vv);
        for d in &other.cloud {
            if !self.covers(d) {
                let at = self.cloud.binary_search(d).unwrap_err();
                self.cloud.insert(at, d.clone());
            }
        }
        self.compact();
    }

    /// Moves cloud dots contiguous with the vector into it; drops covered ones.
    fn compact(&mut self) {
        loop {
            let before = self.cloud.len();
            let vv = &mut self.vv;
            self.cloud.retain(|d| {
                if vv.covers(d) {
                    false
                } else if vv.get(&d.node) + 1 == d.counter {
                    vv.witness(&d.node, d.counter);
                    false
                } else {
                    true
                }
            });
            if self.cloud.len() == before {
                break;
            }
        }
    }

    /// The vector part.
    pub fn vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The isolated dots, sorted.
    pub fn cloud(&self) -> &[Dot] {
        &self.cloud
    }

    /// The per-node maximum, as a plain clock for display (it may claim
    /// more than was seen; never use it for causality).
    pub fn summary(&self) -> VersionVector {
        let mut vv = self.vv.clone();
        for d in &self.cloud {
            vv.witness(&d.node, d.counter);
        }
        vv
    }

    /// Whether nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }
}

/// One stored version of a key: its dot, what its writer had seen, and its
/// payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version<T> {
    /// Identity of the version.
    pub dot: Dot,
    /// Everything the writer had seen (not including `dot`).
    pub context: Context,
    /// The value and its metadata.
    pub payload: T,
}

impl<T> Version<T> {
    /// Whether `self` is strictly dominated by `other` (`other` saw `self`).
    pub fn dominated_by(&self, other: &Version<T>) -> bool {
        self.dot != other.dot && other.context.covers(&self.dot)
    }

    /// The version's whole causal history: its context plus its own dot.
    pub fn history(&self) -> Context {
        let mut h = self.context.clone();
        h.add(self.dot.clone());
        h
    }
}

/// The concurrent versions of one key (a dotted version vector set), and
/// the context of what was purged from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Siblings<T> {
    versions: Vec<Version<T>>,
    purged: Context,
}

impl<T> Default for Siblings<T> {
    fn default() -> Self {
        Self { versions: Vec::new(), purged: Context::new() }
    }
}

impl<T: Clone> Siblings<T> {
    /// No versions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from arbitrary versions, dropping dominated ones.
    pub fn from_versions(versions: Vec<Version<T>>) -> Self {
        Self { versions: reconcile(versions), purged: Context::new() }
    }

    /// Builds a set from versions and the context of what was purged,
    /// dropping dominated versions and any version the purge covers.
    pub fn from_parts(versions: Vec<Version<T>>, purged: Context) -> Self {
        let mut versions = reconcile(versions);
        versions.retain(|v| !purged.covers(&v.dot));
        Self { versions, purged }
    }

    /// The context of every version deleted and purged from this key: such
    /// versions, arriving again, are dropped.
    pub fn purged(&self) -> &Context {
        &self.purged
    }

    /// The highest counter of `node` this set has seen ([`Self::context`]'s
    /// `max_of`, without building the context).
    pub fn max_of(&self, node: &str) -> u64 {
        let versions = self.versions.iter().map(|v| {
            let dot = if v.dot.node == node { v.dot.counter } else { 0 };
            dot.max(v.context.max_of(node))
        });
        versions.fold(self.purged.max_of(node), u64::max)
    }

    /// The purge marker of this set: no versions, and everything they and
    /// this set had seen remembered as purged.
    pub fn purge(&self) -> Self {
        Self { versions: Vec::new(), purged: self.context() }
    }

    /// The stored versions, in dot order.
    pub fn values(&self) -> &[Version<T>] {
        &self.versions
    }

    /// The stored versions, by value.
    pub fn into_versions(self) -> Vec<Version<T>> {
        self.versions
    }

    /// Number of versions (live or deleted).
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no version is stored.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The causal context of the whole set: the join of every version's
    /// history and of what was purged. A write carrying this context
    /// supersedes every version here.
    pub fn context(&self) -> Context {
        let mut ctx = self.purged.clone();
        for v in &self.versions {
            ctx.join(&v.context);
            ctx.add(v.dot.clone());
        }
        ctx
    }

    /// The next dot `node` may use for a write with context `ctx` here; see
    /// [`next_dot`] (every dot held counts as this run's).
    pub fn next_dot(&self, ctx: &Context, node: &str, floor: u64) -> Dot {
        next_dot(&self.context(), ctx, node, floor, 0)
    }

    /// A new state where a version with `dot` and `payload` written with
    /// context `ctx` replaces exactly the versions `ctx` has seen; versions it
    /// has not seen stay as siblings. Does not modify `self`.
    ///
    /// `dot` must be fresh (see [`Siblings::next_dot`]).
    pub fn update(&self, ctx: &Context, dot: Dot, payload: T) -> Self {
        let mut versions: Vec<Version<T>> = self.versions.iter().filter(|v| !ctx.covers(&v.dot)).cloned().collect();
        versions.push(Version { dot, context: ctx.clone(), payload });
        versions.sort_by(|a, b| a.dot.cmp(&b.dot));
        Self { versions, purged: self.purged.clone() }
    }

    /// Merges two replicas' sets: a version survives if both hold it, or if
    /// the other side has never seen its dot, and never if either side
    /// purged it. Commutative, associative and idempotent (up to payloads of
    /// equal dots, which are equal by construction).
    pub fn sync(&self, other: &Self) -> Self {
        let mine = self.context();
        let theirs = other.context();
        let has = |set: &Self, dot: &Dot| set.versions.iter().any(|v| &v.dot == dot);
        let mut versions: Vec<Version<T>> =
            self.versions.iter().filter(|v| has(other, &v.dot) || !theirs.covers(&v.dot)).cloned().collect();
        versions.extend(other.versions.iter().filter(|v| !has(self, &v.dot) && !mine.covers(&v.dot)).cloned());
        let mut purged = self.purged.clone();
        purged.join(&other.purged);
        Self::from_parts(versions, purged)
    }

    /// Keeps only the versions for which `keep` is true (used to purge expired
    /// values and old tombstones).
    pub fn retain(&mut self, keep: impl FnMut(&Version<T>) -> bool) {
        self.versions.retain(keep);
    }
}

/// The next dot `node` may use, given what it holds for the key (`held`) and
/// the writer's context.
///
/// While `node` holds a dot it issued for the key in this run (at or above
/// `run_floor`, the floor its data dir had when this run started), one above
/// the highest counter of `node` in either: a node keeps every dot it issued
/// for a key until the whole record is purged, so that counter is unused,
/// and consecutive writes stay contiguous for the vector to absorb.
/// Otherwise (a new key; one purged; or one whose dots of `node` all come
/// from an earlier run, whose last dots may never have reached this copy: a
/// crash before the flush, a wiped data dir refilled from a replica that
/// missed them) the counter goes above `floor`, the highest counter `node`
/// ever issued for any key, and above anything the context names, so no dot
/// is ever issued twice.
pub fn next_dot(held: &Context, ctx: &Context, node: &str, floor: u64, run_floor: u64) -> Dot {
    let mine = held.max_of(node);
    let base = if mine == 0 || mine < run_floor { floor } else { mine };
    // Saturating: counters come from peers too, and must never wrap back.
    let counter = base.max(ctx.max_of(node)).saturating_add(1);
    Dot { node: node.to_string(), counter }
}

/// Drops every version that another version dominates and duplicates of one
/// dot; keeps every concurrent one. Result is in dot order.
pub fn reconcile<T: Clone>(mut versions: Vec<Version<T>>) -> Vec<Version<T>> {
    versions.sort_by(|a, b| a.dot.cmp(&b.dot));
    versions.dedup_by(|a, b| a.dot == b.dot);
    let keep: Vec<bool> = versions.iter().map(|v| !versions.iter().any(|o| v.dominated_by(o))).collect();
    versions.into_iter().zip(keep).filter_map(|(v, k)| k.then_some(v)).collect()
}

#[cfg(test)]
mod tests;
