//! Durable state of one node, in one exclusively locked sled `Db`.
//!
//! Trees:
//! - `p00000`.. one per ring partition (shard) this node replicates:
//!   `(Merkle leaf u16 BE, key)` -> encoded [`Record`]. The leaf prefix
//!   ([`merkle::leaf_of`]) makes a leaf's keys one short range scan, so
//!   anti-entropy lists a differing leaf without an index or a full scan.
//!   Opened on first use.
//! - `meta`: node id, partition count, heartbeat and dot-floor reservations,
//!   the membership table.
//! - `expiry`: `(expires_at_ms BE, partition BE, key)` -> `()`, so the reaper
//!   finds expired values without scanning the data.
//! - `tombstones`: `(purge_after_ms BE, partition BE, key)` -> `()`, likewise
//!   for tombstones past their grace period.
//! - `hints`: `(owner id len, owner id, partition BE, key)` -> encoded
//!   [`Record`]: writes kept for an unreachable owner (hinted handoff),
//!   at most [`MAX_HINTS`].
//!
//! Every change to a partition tree (a client write, a replica merge, a
//! purge, an expiry, a dropped partition) goes through one place,
//! `Storage::commit`: a `compare_and_swap` from the exact bytes read to the
//! new ones and, in the same step, the partition's change counter and its
//! in-memory Merkle tree ([`crate::merkle`]: `item(old) ^ item(new)` XORed
//! into the key's leaf and its ancestors). Writes are read-modify-write loops
//! over that, so concurrent writers of one key never lose each other's
//! versions.
//!
//! Merkle trees are built from the data once per start
//! ([`Storage::build_tree`], off the async threads) and only then kept
//! current; until it is built a partition's tree costs writers nothing. A
//! build scans a chunk of keys at a time while holding the partition's gate
//! exclusively (writers hold it shared across their swap and tree update),
//! and records how far it got: a write behind that point updates the tree,
//! a write ahead of it is left to the scan. So the tree is exact when the
//! build ends, and writers wait at most one chunk. With `sync_writes`,
//! [`Storage::durable`] waits for a flush that started after the write, and
//! writes arriving together share one flush (group commit).
//!
//! Storage knows records and bytes, nothing of membership or coordination:
//! the member table is kept as opaque bytes.

pub mod record;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

pub use record::{Content, Record, RecordError};

use crate::merkle;
use crate::version::Dot;

const META_NODE_ID: &[u8] = b"node_id";
const META_PARTITIONS: &[u8] = b"partitions";
const META_HEARTBEAT: &[u8] = b"heartbeat_reserved";
const META_MEMBERS: &[u8] = b"members";
const META_DOT_FLOOR: &[u8] = b"dot_floor_reserved";
const META_OWNERSHIP: &[u8] = b"ownership";
const META_LAYOUT: &[u8] = b"layout";
/// How partition trees are keyed: 2 = `(Merkle leaf, key)`. A data dir
/// written with the earlier layout (plain keys) is refused at start rather
/// than misread.
const LAYOUT: u8 = 2;

/// Dot counters are reserved on disk this far ahead, so the floor survives a
/// crash without a write per request.
const DOT_RESERVE: u64 = 1 << 20;
/// A new data dir's dot floor is the wall clock in milliseconds shifted by
/// this much: above every counter its node id can have issued before (that
/// would take 2^20 counters per millisecond), so a node whose data dir was
/// lost never reissues a dot (SPEC §4, "A lost data dir is not amnesia").
pub const DOT_EPOCH_SHIFT: u32 = 20;

/// Most hints one node keeps; past it, hint requests are refused, the
/// coordinator counts the stand-in as not acked, and the owner catches up by
/// read repair and anti-entropy instead.
pub const MAX_HINTS: usize = 100_000;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data dir path names a file.
    #[error("data dir {0} is a file, not a directory")]
    NotADirectory(PathBuf),
    /// The data dir cannot be created or written.
    #[error("data dir {path} is not writable: {source}")]
    Unwritable { path: PathBuf, source: std::io::Error },
    /// Another process holds the lock.
    #[error("data dir {0} is locked by another running dynakv node")]
    Locked(PathBuf),
    /// The data dir was created with another Q.
    #[error(
        "data dir {path} was created with --partitions {stored}, not {requested}; Q is fixed for the life of a cluster"
    )]
    PartitionMismatch { path: PathBuf, stored: u32, requested: u32 },
    /// The data dir belongs to another node id.
    #[error("data dir {path} belongs to node {stored:?}, not {requested:?}")]
    NodeIdMismatch { path: PathBuf, stored: String, requested: String },
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A record did not decode.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// A blocking storage task failed to complete.
    #[error("storage task failed: {0}")]
    Blocking(String),
    /// The data dir was written by an earlier release with another layout.
    #[error("data dir {path} uses an older storage layout ({found}); this release needs layout {LAYOUT}: start it on an empty data dir (the node refills from its replicas)")]
    OldLayout { path: PathBuf, found: u8 },
}

/// One page of a partition scan.
#[derive(Debug, Default)]
pub struct ScanPage {
    /// Keys in order with their records; a record that does not decode is
    /// given as its error, for the caller to log and count, never skipped.
    pub items: Vec<(Vec<u8>, Result<Record, RecordError>)>,
    /// Where the next page starts (`None`: the partition is done).
    pub next: Option<Vec<u8>>,
}

/// One node's sled database.
pub struct Storage {
    db: sled::Db,
    meta: sled::Tree,
    expiry: sled::Tree,
    tombstones: sled::Tree,
    hints: sled::Tree,
    partitions: Vec<Partition>,
    commit: Option<GroupCommit>,
    tombstone_grace_ms: u64,
    /// Highest dot counter this node issued (a lower bound after a restart:
    /// the last reservation).
    dot_floor: AtomicU64,
    /// `dot_floor` when this run opened the data dir: counters below it
    /// were issued by an earlier run (see [`crate::version::next_dot`]).
    run_floor: AtomicU64,
    dot_reserved: AtomicU64,
    /// Entries in `hints` (sled's `len` is a full scan).
    hint_count: AtomicUsize,
}

/// A partition's tree has no Merkle tree kept.
const UNTRACKED: u8 = 0;
/// Its Merkle tree is being built (current up to `Partition::built`).
const BUILDING: u8 = 1;
/// Its Merkle tree is current.
const TRACKED: u8 = 2;
/// Keys a tree build reads per turn of the partition's gate.
const BUILD_CHUNK: usize = 512;

/// One partition: its sled tree and its Merkle tree.
struct Partition {
    tree: OnceLock<sled::Tree>,
    merkle: merkle::Tree,
    /// Writers hold it shared across their swap and tree update; a tree
    /// build holds it exclusively per chunk.
    gate: RwLock<()>,
    state: AtomicU8,
    /// While building: the last internal key the build covered.
    built: Mutex<Option<Vec<u8>>>,
    /// Changes committed since start: a hand-off drops a partition only if
    /// this did not move while it streamed.
    changes: AtomicU64,
}

impl Partition {
    fn new() -> Self {
        Self {
            tree: OnceLock::new(),
            merkle: merkle::Tree::new(),
            gate: RwLock::new(()),
            state: AtomicU8::new(UNTRACKED),
            built: Mutex::new(None),
            changes: AtomicU64::new(0),
        }
    }

    /// Whether a change to internal key `ikey` must update the Merkle tree
    /// (call with the gate held).
    fn tracks(&self, ikey: &[u8]) -> bool {
        match self.state.load(Ordering::SeqCst) {
            TRACKED => true,
            BUILDING => self.built.lock().expect("build cursor").as_deref().is_some_and(|b| ikey <= b),
            _ => false,
        }
    }
}

/// The internal key of `key`: its Merkle leaf, then the key.
fn ikey(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&merkle::leaf_of(key).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The item hash an internal key and its stored bytes contribute.
fn item(ikey: &[u8], bytes: Option<&[u8]>) -> u64 {
    match (ikey.get(2..), bytes) {
        (Some(key), Some(b)) => merkle::item_hash(key, b),
        _ => 0,
    }
}

fn leaf_of_ikey(ikey: &[u8]) -> u16 {
    ikey.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])).unwrap_or(0)
}

/// How a node opens its storage.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Q, fixed for the life of the data dir.
    pub partitions: u32,
    /// Flush before acknowledging (group commit).
    pub sync_writes: bool,
    /// How long a tombstone is kept before it may be purged.
    pub tombstone_grace_ms: u64,
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, opts: &StorageOptions) -> Result<Arc<Self>, StorageError> {
        let partitions = opts.partitions;
        if dir.is_file() {
            return Err(StorageError::NotADirectory(dir.to_path_buf()));
        }
        let unwritable = |source| StorageError::Unwritable { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(unwritable)?;
        // sled reports permissions late and vaguely; probe first.
        let probe = dir.join(".dynakv-write-probe");
        std::fs::write(&probe, b"").map_err(unwritable)?;
        let _ = std::fs::remove_file(&probe);

        let db = sled::Config::new().path(dir).open().map_err(|e| match e {
            sled::Error::Io(ref io) if is_lock_error(io) => StorageError::Locked(dir.to_path_buf()),
            other => StorageError::Sled(other),
        })?;
        let meta = db.open_tree("meta")?;
        match meta.get(META_PARTITIONS)? {
            Some(v) => {
                let stored = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
                if stored != partitions {
                    return Err(StorageError::PartitionMismatch {
                        path: dir.to_path_buf(),
                        stored,
                        requested: partitions,
                    });
                }
            }
            None => {
                meta.insert(META_PARTITIONS, &partitions.to_be_bytes())?;
            }
        }
        match meta.get(META_LAYOUT)?.and_then(|v| v.first().copied()) {
            Some(LAYOUT) => {}
            Some(found) => return Err(StorageError::OldLayout { path: dir.to_path_buf(), found }),
            // No layout recorded: a new data dir, or one from before layouts
            // were recorded (plain keys) if any partition tree holds data.
            None => {
                let old = db
                    .tree_names()
                    .iter()
                    .filter_map(|n| std::str::from_utf8(n).ok().and_then(parse_partition_tree))
                    .any(|p| db.open_tree(partition_tree(p)).map(|t| !t.is_empty()).unwrap_or(false));
                if old {
                    return Err(StorageError::OldLayout { path: dir.to_path_buf(), found: 1 });
                }
                meta.insert(META_LAYOUT, &[LAYOUT])?;
            }
        }
        let storage = Self {
            expiry: db.open_tree("expiry")?,
            tombstones: db.open_tree("tombstones")?,
            hints: db.open_tree("hints")?,
            meta,
            partitions: (0..partitions).map(|_| Partition::new()).collect(),
            commit: opts.sync_writes.then(GroupCommit::default),
            tombstone_grace_ms: opts.tombstone_grace_ms,
            dot_floor: AtomicU64::new(0),
            run_floor: AtomicU64::new(0),
            dot_reserved: AtomicU64::new(0),
            hint_count: AtomicUsize::new(0),
            db,
        };
        storage.hint_count.store(storage.hints.len(), Ordering::SeqCst);
        let reserved = match storage.meta.get(META_DOT_FLOOR)? {
            Some(_) => read_u64(&storage.meta, META_DOT_FLOOR)?,
            None => {
                // A new data dir: start above anything the id issued before.
                let floor = crate::clock::now_ms() << DOT_EPOCH_SHIFT;
                storage.meta.insert(META_DOT_FLOOR, &floor.to_be_bytes())?;
                storage.db.flush()?;
                floor
            }
        };
        storage.dot_floor.store(reserved, Ordering::SeqCst);
        storage.run_floor.store(reserved, Ordering::SeqCst);
        storage.dot_reserved.store(reserved, Ordering::SeqCst);
        Ok(Arc::new(storage))
    }

    /// The node id stored in the data dir, storing `wanted` (or `generate()`)
    /// on first start. Flushed at once: an id must never change.
    pub fn node_id(
        &self,
        path: &Path,
        wanted: Option<&str>,
        generate: impl FnOnce() -> String,
    ) -> Result<String, StorageError> {
        if let Some(stored) = self.meta.get(META_NODE_ID)? {
            let stored = String::from_utf8_lossy(&stored).into_owned();
            return match wanted {
                Some(w) if w != stored => {
                    Err(StorageError::NodeIdMismatch { path: path.to_path_buf(), stored, requested: w.to_string() })
                }
                _ => Ok(stored),
            };
        }
        let id = wanted.map(str::to_string).unwrap_or_else(generate);
        self.meta.insert(META_NODE_ID, id.as_bytes())?;
        self.db.flush()?;
        Ok(id)
    }

    /// Reserves heartbeat values up to `upto` so that a restart starts above
    /// anything this node may have gossiped; returns the previous reservation.
    pub fn reserve_heartbeat(&self, upto: u64) -> Result<u64, StorageError> {
        let prev = self
            .meta
            .insert(META_HEARTBEAT, &upto.to_be_bytes())?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        self.db.flush()?;
        Ok(prev)
    }

    /// The last heartbeat reservation (0 on a new data dir).
    pub fn heartbeat_reserved(&self) -> Result<u64, StorageError> {
        Ok(self
            .meta
            .get(META_HEARTBEAT)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(0))
    }

    /// The membership table saved by [`Storage::save_members`] (opaque
    /// bytes; the caller owns the format).
    pub fn members(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.meta.get(META_MEMBERS)?.map(|v| v.to_vec()))
    }

    /// Remembers the membership table so a restart starts from the last ring.
    pub fn save_members(&self, bytes: &[u8]) -> Result<(), StorageError> {
        self.meta.insert(META_MEMBERS, bytes)?;
        Ok(())
    }

    /// Q, the number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The highest dot counter this node ever issued (at least), across
    /// restarts: where a key's first dot from this node starts.
    pub fn dot_floor(&self) -> u64 {
        self.dot_floor.load(Ordering::SeqCst)
    }

    /// The dot floor when this run opened the data dir: every counter this
    /// node issued in an earlier run (of this data dir or a lost one) is
    /// below it.
    pub fn run_floor(&self) -> u64 {
        self.run_floor.load(Ordering::SeqCst)
    }

    /// Notes that `counter` was issued; reserves (durably) ahead when needed.
    pub fn issued(&self, counter: u64) -> Result<(), StorageError> {
        self.dot_floor.fetch_max(counter, Ordering::SeqCst);
        if counter >= self.dot_reserved.load(Ordering::SeqCst) {
            let upto = counter.saturating_add(DOT_RESERVE);
            self.meta.insert(META_DOT_FLOOR, &upto.to_be_bytes())?;
            self.db.flush()?;
            self.dot_reserved.fetch_max(upto, Ordering::SeqCst);
        }
        Ok(())
    }

    fn tree(&self, partition: u32) -> Result<&sled::Tree, StorageError> {
        let slot = &self.partitions[partition as usize].tree;
        if let Some(t) = slot.get() {
            return Ok(t);
        }
        let tree = self.db.open_tree(partition_tree(partition))?;
        Ok(slot.get_or_init(|| tree))
    }

    /// The record of `key` in `partition`, if any.
    pub fn get(&self, partition: u32, key: &[u8]) -> Result<Option<Record>, StorageError> {
        match self.tree(partition)?.get(ikey(key))? {
            Some(bytes) => Ok(Some(record::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The digest of the record of `key` in `partition` as stored
    /// ([`record::digest`]), without decoding it.
    pub fn digest(&self, partition: u32, key: &[u8]) -> Result<Option<u128>, StorageError> {
        Ok(self.tree(partition)?.get(ikey(key))?.map(|bytes| record::digest(&bytes)))
    }

    /// Atomically replaces the record of `key` with `f(current)`; `None` from
    /// `f` removes the key. `f` may run more than once under contention and
    /// may refuse with `Err(E)`, which changes nothing. Returns `f`'s result
    /// and the record now stored. An unchanged record is not rewritten.
    pub fn update<T, E>(
        &self,
        partition: u32,
        key: &[u8],
        f: impl FnMut(Option<Record>) -> Result<(Option<Record>, T), E>,
    ) -> Result<Result<(T, Option<Record>), E>, StorageError> {
        self.update_with(partition, key, false, f)
    }

    /// [`Storage::update`]; with `lenient`, stored bytes that are no record
    /// (corrupt, empty) are taken as absent (logged), so what replaces them
    /// heals the key.
    fn update_with<T, E>(
        &self,
        partition: u32,
        key: &[u8],
        lenient: bool,
        mut f: impl FnMut(Option<Record>) -> Result<(Option<Record>, T), E>,
    ) -> Result<Result<(T, Option<Record>), E>, StorageError> {
        let tree = self.tree(partition)?;
        let ik = ikey(key);
        loop {
            let old = tree.get(&ik)?;
            let current = match old.as_deref().map(record::decode).transpose() {
                Ok(current) => current,
                // Only bytes that are no record at all: a record of a format
                // this release does not know (written by a newer one) is
                // kept, and the merge fails, rather than lose it.
                Err(e @ (record::RecordError::Corrupt(_) | record::RecordError::Empty)) if lenient => {
                    tracing::error!(partition, key = %String::from_utf8_lossy(key), error = %e, "a stored record does not decode; replaced by the copy merged in");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let (new, out) = match f(current) {
                Ok(x) => x,
                Err(e) => return Ok(Err(e)),
            };
            let new_bytes = new.as_ref().map(record::encode);
            if new_bytes.as_deref() == old.as_deref() {
                return Ok(Ok((out, new)));
            }
            if let Some(rec) = &new {
                self.index(partition, key, rec)?;
            }
            if self.commit(partition, tree, &ik, old, new_bytes)? {
                return Ok(Ok((out, new)));
            }
        }
    }

    /// The one place a partition tree changes: swaps internal key `ik` from
    /// exactly `old` to `new` and, if that succeeded, counts the change and
    /// applies it to the partition's Merkle tree, both under the partition's
    /// gate. Returns false (changing nothing) if `ik` no longer holds `old`.
    fn commit(
        &self,
        partition: u32,
        tree: &sled::Tree,
        ik: &[u8],
        old: Option<sled::IVec>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StorageError> {
        let part = &self.partitions[partition as usize];
        let _gate = part.gate.read().expect("partition gate");
        let swapped = tree.compare_and_swap(ik, old.as_ref(), new.as_deref())?.is_ok();
        if swapped {
            part.changes.fetch_add(1, Ordering::SeqCst);
            if part.tracks(ik) {
                part.merkle.toggle(leaf_of_ikey(ik), item(ik, old.as_deref()) ^ item(ik, new.as_deref()));
            }
        }
        Ok(swapped)
    }

    /// Merges a replica's state into this node's copy of `key` (replica
    /// writes, hints delivered, read repair, hand-offs): `Siblings::sync`,
    /// which never drops a version for the sibling cap. Returns the record
    /// now stored.
    pub fn merge(&self, partition: u32, key: &[u8], incoming: &Record) -> Result<Record, StorageError> {
        // A copy here that does not decode is replaced: read repair,
        // anti-entropy and hints heal it.
        let out = self.update_with(partition, key, true, |cur| {
            let merged = match cur {
                Some(cur) => cur.sync(incoming),
                None => incoming.clone(),
            };
            Ok::<_, std::convert::Infallible>((Some(merged), ()))
        })?;
        let Ok(((), stored)) = out;
        Ok(stored.unwrap_or_default())
    }

    /// Purges `key` down to its marker (no versions, their context kept, see
    /// `version::Siblings::purge`) if every version it holds is one of `dots`,
    /// every one of `dots` is known here, and, at `now_ms`, each version is a
    /// tombstone past `grace_ms` or an expired value. Returns whether the key
    /// now holds none of `dots` live. A replica that already purged answers
    /// true; one where something new came in answers false.
    pub fn purge_if(
        &self,
        partition: u32,
        key: &[u8],
        dots: &[Dot],
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<bool, StorageError> {
        let out = self.update(partition, key, |cur| match cur {
            Some(rec)
                if rec.values().iter().all(|v| dots.contains(&v.dot))
                    && dots.iter().all(|d| rec.context().covers(d))
                    && purgeable(&rec, now_ms, grace_ms) =>
            {
                Ok::<_, std::convert::Infallible>((Some(rec.purge()), true))
            }
            other => Ok((other, false)),
        })?;
        let Ok((gone, _)) = out;
        Ok(gone)
    }

    /// Purges `key` down to its marker if every version it holds has
    /// expired at `now_ms`; returns how many versions went. A record keeping
    /// a live version keeps its expired ones too (the next write supersedes
    /// them), so this node still holds every dot it issued (see
    /// `coordinator::new_version`).
    ///
    /// The marker remembers what the expired versions had seen, as a purged
    /// tombstone's does: an expiring value usually replaced something (an
    /// older value, a tombstone), and a replica that missed the replacement
    /// still holds that; without the marker, its copy would come back by
    /// anti-entropy or read repair once the newer value expired. It also
    /// keeps the key's next dot above the expired ones (a dot handed out
    /// again would name two values).
    pub fn expire(&self, partition: u32, key: &[u8], now_ms: u64) -> Result<u64, StorageError> {
        let out = self.update(partition, key, |cur| match cur {
            Some(rec) if !rec.is_empty() && rec.values().iter().all(|v| v.payload.expired(now_ms)) => {
                let n = rec.len() as u64;
                Ok::<_, std::convert::Infallible>((Some(rec.purge()), n))
            }
            other => Ok((other, 0)),
        })?;
        let Ok((n, _)) = out;
        Ok(n)
    }

    /// Notes a record's expiry and tombstone times in the reaper's indexes.
    /// Written before the record itself: an entry whose record changed is
    /// simply dropped when the reaper looks at it.
    fn index(&self, partition: u32, key: &[u8], rec: &Record) -> Result<(), StorageError> {
        for v in rec.values() {
            if let Some(at) = v.payload.expires_at_ms {
                self.expiry.insert(index_key(at, partition, key), &[])?;
            }
            if v.payload.deleted {
                let after = v.payload.timestamp_ms.saturating_add(self.tombstone_grace_ms);
                self.tombstones.insert(index_key(after, partition, key), &[])?;
            }
        }
        Ok(())
    }

    /// Index entries due at `now_ms`, at most `limit`: expired values when
    /// `tombstones` is false, tombstones past grace when true.
    pub fn due(&self, tombstones: bool, now_ms: u64, limit: usize) -> Result<Vec<Due>, StorageError> {
        let tree = self.index_tree(tombstones);
        let mut out = Vec::new();
        for item in tree.range(..(now_ms.saturating_add(1)).to_be_bytes().to_vec()).take(limit) {
            let (k, _) = item?;
            if k.len() < 12 {
                tree.remove(&k)?;
                continue;
            }
            let partition = u32::from_be_bytes(k[8..12].try_into().expect("4 bytes"));
            if partition as usize >= self.partitions.len() {
                tree.remove(&k)?;
                continue;
            }
            out.push(Due { index_key: k.to_vec(), partition, key: k[12..].to_vec() });
        }
        Ok(out)
    }

    /// Moves an index entry to `until_ms` (a tombstone whose replicas could
    /// not all confirm it yet).
    pub fn defer(&self, tombstones: bool, due: &Due, until_ms: u64) -> Result<(), StorageError> {
        let tree = self.index_tree(tombstones);
        tree.insert(index_key(until_ms, due.partition, &due.key), &[])?;
        tree.remove(&due.index_key)?;
        Ok(())
    }

    /// Keeps `record` for `owner`, merged with any hint already kept for the
    /// same key. Returns false (and keeps nothing) past [`MAX_HINTS`].
    pub fn store_hint(&self, owner: &str, partition: u32, key: &[u8], record: &Record) -> Result<bool, StorageError> {
        let hk = hint_key(owner, partition, key);
        loop {
            let old = self.hints.get(&hk)?;
            if old.is_none() && self.hints_pending() >= MAX_HINTS {
                return Ok(false);
            }
            let merged = match &old {
                Some(bytes) => record::decode(bytes)?.sync(record),
                None => record.clone(),
            };
            let is_new = old.is_none();
            if self.hints.compare_and_swap(&hk, old, Some(record::encode(&merged)))?.is_ok() {
                if is_new {
                    self.hint_count.fetch_add(1, Ordering::SeqCst);
                }
                return Ok(true);
            }
        }
    }

    /// Up to `limit` hints from the first: (owner, partition, key, record,
    /// raw entry). (Tests; the node pages with [`Storage::hints_after`].)
    #[cfg(test)]
    pub fn hints(&self, limit: usize) -> Result<Vec<Hint>, StorageError> {
        Ok(self.hints_after(None, limit)?.hints)
    }

    /// Up to `limit` hint entries after the entry `after` (from the first
    /// without it), in key order (by owner): the hints that decode, where
    /// the next page starts (`None` at the end), and how many entries did
    /// not decode. Those stay in place, skipped: one bad entry must not stop
    /// the delivery of every other hint, nor a leave.
    pub fn hints_after(&self, after: Option<&[u8]>, limit: usize) -> Result<HintPage, StorageError> {
        use std::ops::Bound;
        let iter = match after {
            Some(a) => self.hints.range::<&[u8], _>((Bound::Excluded(a), Bound::Unbounded)),
            None => self.hints.iter(),
        };
        let mut page = HintPage::default();
        let (mut seen, mut last) = (0, None);
        for item in iter {
            let (k, v) = item?;
            if seen == limit {
                page.next = last;
                break;
            }
            seen += 1;
            last = Some(k.to_vec());
            let Some((owner, partition, key)) = split_hint_key(&k) else {
                if self.hints.remove(&k)?.is_some() {
                    self.hint_count.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            };
            match record::decode(&v) {
                Ok(record) => {
                    page.hints.push(Hint { owner, partition, key, record, raw_key: k.to_vec(), raw: v.to_vec() })
                }
                Err(_) => page.corrupt += 1,
            }
        }
        Ok(page)
    }

    /// Deletes a delivered hint unless it changed since it was read (a newer
    /// write merged into it waits for the next delivery).
    pub fn remove_hint(&self, hint: &Hint) -> Result<bool, StorageError> {
        let removed =
            self.hints.compare_and_swap(&hint.raw_key, Some(hint.raw.as_slice()), None as Option<&[u8]>)?.is_ok();
        if removed {
            self.hint_count.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(removed)
    }

    /// Hints waiting for delivery.
    pub fn hints_pending(&self) -> usize {
        self.hint_count.load(Ordering::SeqCst)
    }

    /// Removes a handled index entry.
    pub fn done(&self, tombstones: bool, due: &Due) -> Result<(), StorageError> {
        self.index_tree(tombstones).remove(&due.index_key)?;
        Ok(())
    }

    fn index_tree(&self, tombstones: bool) -> &sled::Tree {
        if tombstones {
            &self.tombstones
        } else {
            &self.expiry
        }
    }

    /// Up to `limit` keys of `partition` after `after` (from the start when
    /// `None`), in key order: a resumable cursor for streaming a partition.
    /// Blocking; call it off the async threads ([`Storage::scan_from_async`]).
    pub fn scan_from(&self, partition: u32, after: Option<&[u8]>, limit: usize) -> Result<ScanPage, StorageError> {
        self.scan_bounded(partition, after, limit, usize::MAX)
    }

    /// [`Storage::scan_from`], also stopping once the page holds `max_bytes`
    /// of records (at least one record is always returned). Blocking.
    pub fn scan_bounded(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, StorageError> {
        let tree = self.tree(partition)?;
        let iter = match after {
            Some(a) => tree.range::<Vec<u8>, _>((std::ops::Bound::Excluded(ikey(a)), std::ops::Bound::Unbounded)),
            None => tree.iter(),
        };
        let mut page = ScanPage::default();
        let mut bytes = 0;
        for item in iter {
            let (k, v) = item?;
            if page.items.len() == limit || (bytes >= max_bytes && !page.items.is_empty()) {
                page.next = page.items.last().map(|(k, _)| k.clone());
                break;
            }
            bytes += v.len() + k.len();
            page.items.push((k.get(2..).unwrap_or_default().to_vec(), record::decode(&v)));
        }
        Ok(page)
    }

    /// [`Storage::scan_from`] on the blocking pool.
    pub async fn scan_from_async(
        self: &Arc<Self>,
        partition: u32,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ScanPage, StorageError> {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.scan_from(partition, after.as_deref(), limit)).await {
            Ok(r) => r,
            Err(e) => Err(StorageError::Blocking(e.to_string())),
        }
    }

    /// Changes committed to `partition` since this process started.
    pub fn partition_changes(&self, partition: u32) -> u64 {
        self.partitions[partition as usize].changes.load(Ordering::SeqCst)
    }

    /// Builds `partition`'s Merkle tree from its data and keeps it current
    /// from then on (see the module docs). Blocking: a full scan of the
    /// partition, one chunk per turn of its gate. A second call does nothing.
    pub fn build_tree(&self, partition: u32) -> Result<(), StorageError> {
        let part = &self.partitions[partition as usize];
        {
            let _gate = part.gate.write().expect("partition gate");
            if part.state.load(Ordering::SeqCst) != UNTRACKED {
                return Ok(());
            }
            part.merkle.clear();
            *part.built.lock().expect("build cursor") = None;
            part.state.store(BUILDING, Ordering::SeqCst);
        }
        let built = self.build_chunks(part, partition);
        if built.is_err() {
            let _gate = part.gate.write().expect("partition gate");
            part.state.store(UNTRACKED, Ordering::SeqCst);
        }
        built
    }

    fn build_chunks(&self, part: &Partition, partition: u32) -> Result<(), StorageError> {
        let tree = self.tree(partition)?;
        let mut cursor: Option<sled::IVec> = None;
        loop {
            let _gate = part.gate.write().expect("partition gate");
            let iter = match &cursor {
                Some(c) => tree.range::<&[u8], _>((std::ops::Bound::Excluded(c.as_ref()), std::ops::Bound::Unbounded)),
                None => tree.iter(),
            };
            let mut n = 0;
            let mut last = None;
            for kv in iter.take(BUILD_CHUNK) {
                let (k, v) = kv?;
                part.merkle.toggle(leaf_of_ikey(&k), item(&k, Some(&v)));
                last = Some(k);
                n += 1;
            }
            match last {
                Some(k) if n == BUILD_CHUNK => {
                    *part.built.lock().expect("build cursor") = Some(k.to_vec());
                    cursor = Some(k);
                }
                _ => {
                    part.state.store(TRACKED, Ordering::SeqCst);
                    *part.built.lock().expect("build cursor") = None;
                    return Ok(());
                }
            }
        }
    }

    /// Whether `partition`'s Merkle tree is built and current.
    pub fn tree_ready(&self, partition: u32) -> bool {
        self.partitions[partition as usize].state.load(Ordering::SeqCst) == TRACKED
    }

    /// `partition`'s Merkle tree (all zero until built).
    pub fn merkle(&self, partition: u32) -> &merkle::Tree {
        &self.partitions[partition as usize].merkle
    }

    /// The `(key, item hash)` list of one Merkle leaf of `partition`, in key
    /// order: a short range scan thanks to the leaf prefix. Blocking.
    pub fn leaf_items(&self, partition: u32, leaf: u16) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        let mut out = Vec::new();
        for kv in self.tree(partition)?.scan_prefix(leaf.to_be_bytes()) {
            let (k, v) = kv?;
            out.push((k[2..].to_vec(), item(&k, Some(&v))));
        }
        Ok(out)
    }

    /// Removes every key of `partition` if no change was committed to it
    /// since [`Storage::partition_changes`] returned `expected`: the check
    /// and the removal happen with the partition's gate held exclusively, so
    /// no write slips in between. Returns the keys removed, or `None` if the
    /// partition changed. Blocking.
    pub fn drop_partition_if_unchanged(&self, partition: u32, expected: u64) -> Result<Option<u64>, StorageError> {
        let part = &self.partitions[partition as usize];
        let tree = self.tree(partition)?;
        let _gate = part.gate.write().expect("partition gate");
        if part.changes.load(Ordering::SeqCst) != expected {
            return Ok(None);
        }
        // No writer can commit while the gate is held, so the tree empties
        // as one step and its Merkle tree goes back to all zeros with it.
        let removed = tree.len() as u64;
        tree.clear()?;
        part.merkle.clear();
        part.changes.fetch_add(removed.max(1), Ordering::SeqCst);
        Ok(Some(removed))
    }

    /// Overwrites `key`'s stored bytes with bytes that do not decode (this
    /// release's format byte, then garbage), behind the Merkle tree's back
    /// (a disk fault, for tests).
    #[cfg(test)]
    pub(crate) fn corrupt(&self, partition: u32, key: &[u8]) {
        let bad =
            record::encode(&Record::default())[..1].iter().chain(&[0xff, 0xff, 0xff]).copied().collect::<Vec<u8>>();
        assert!(matches!(record::decode(&bad), Err(record::RecordError::Corrupt(_))));
        self.tree(partition).unwrap().insert(ikey(key), bad).unwrap();
    }

    /// Whether this node stores any key of `partition`.
    pub fn has_data(&self, partition: u32) -> Result<bool, StorageError> {
        Ok(!self.tree(partition)?.is_empty())
    }

    /// The ownership state saved by [`Storage::save_ownership`] (opaque).
    pub fn ownership(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.meta.get(META_OWNERSHIP)?.map(|v| v.to_vec()))
    }

    /// Remembers which partitions this node holds and receives.
    pub fn save_ownership(&self, bytes: &[u8]) -> Result<(), StorageError> {
        self.meta.insert(META_OWNERSHIP, bytes)?;
        Ok(())
    }

    /// The partitions this node stores at least one key of, in order.
    pub fn partitions_with_data(&self) -> Result<Vec<u32>, StorageError> {
        let mut held = Vec::new();
        for name in self.db.tree_names() {
            let Some(p) = std::str::from_utf8(&name).ok().and_then(parse_partition_tree) else { continue };
            if p < self.partition_count() && !self.tree(p)?.is_empty() {
                held.push(p);
            }
        }
        held.sort_unstable();
        Ok(held)
    }

    /// Returns once this write is as durable as the configuration promises:
    /// at once by default (sled flushes within 500 ms), after a shared flush
    /// with `sync_writes`.
    pub async fn durable(&self) -> Result<(), StorageError> {
        match &self.commit {
            Some(gc) => gc.flush(&self.db).await,
            None => Ok(()),
        }
    }

    /// Flushes everything to disk (shutdown).
    pub async fn flush(&self) -> Result<(), StorageError> {
        flush_blocking(&self.db).await
    }
}

/// Flushes on a blocking thread. sled 0.34's own `flush_async` can lose its
/// wake-up when flushes overlap and then never completes (sled issues 1241
/// and 1308, fixed only on sled's unreleased main branch), so dynakv never
/// calls it.
async fn flush_blocking(db: &sled::Db) -> Result<(), StorageError> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.flush()).await {
        Ok(flushed) => {
            flushed?;
            Ok(())
        }
        Err(e) => Err(StorageError::Blocking(e.to_string())),
    }
}

/// An index entry that is due.
#[derive(Debug, Clone)]
pub struct Due {
    index_key: Vec<u8>,
    /// Partition of the key.
    pub partition: u32,
    /// The key.
    pub key: Vec<u8>,
}

/// One page of [`Storage::hints_after`].
#[derive(Debug, Default)]
pub struct HintPage {
    /// The hints that decoded.
    pub hints: Vec<Hint>,
    /// The entry to continue after; `None`: this page reached the end.
    pub next: Option<Vec<u8>>,
    /// Entries that did not decode (left in place).
    pub corrupt: u64,
}

/// A write kept for an unreachable owner.
#[derive(Debug, Clone)]
pub struct Hint {
    /// The intended owner.
    pub owner: String,
    /// Partition of the key.
    pub partition: u32,
    /// The key.
    pub key: Vec<u8>,
    /// The state to deliver.
    pub record: Record,
    raw_key: Vec<u8>,
    raw: Vec<u8>,
}

/// Whether a record holds nothing but tombstones past `grace_ms` (or expired
/// values) at `now_ms`.
pub fn purgeable(rec: &Record, now_ms: u64, grace_ms: u64) -> bool {
    rec.values().iter().all(|v| {
        v.payload.expired(now_ms) || (v.payload.deleted && v.payload.timestamp_ms.saturating_add(grace_ms) <= now_ms)
    })
}

fn partition_tree(partition: u32) -> String {
    format!("p{partition:05}")
}

fn parse_partition_tree(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('p')?;
    (digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StorageError> {
    Ok(tree.get(key)?.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))).unwrap_or(0))
}

fn hint_key(owner: &str, partition: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + owner.len() + key.len());
    k.push(owner.len() as u8);
    k.extend_from_slice(owner.as_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn split_hint_key(k: &[u8]) -> Option<(String, u32, Vec<u8>)> {
    let (&len, rest) = k.split_first()?;
    let owner = std::str::from_utf8(rest.get(..len as usize)?).ok()?.to_string();
    let rest = &rest[len as usize..];
    let partition = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    Some((owner, partition, rest[4..].to_vec()))
}

fn index_key(at_ms: u64, partition: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + key.len());
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(11) || e.to_string().contains("lock")
}

/// Group commit: every durable write takes a ticket; whoever holds the flush
/// lock flushes once for every ticket issued before its flush began, and the
/// writers queued behind it find their ticket already covered.
#[derive(Default)]
struct GroupCommit {
    issued: AtomicU64,
    flushed: tokio::sync::Mutex<u64>,
}

impl GroupCommit {
    async fn flush(&self, db: &sled::Db) -> Result<(), StorageError> {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.lock().await;
        if *flushed >= ticket {
            return Ok(());
        }
        let covers = self.issued.load(Ordering::SeqCst);
        flush_blocking(db).await?;
        *flushed = covers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Context;

    /// Opens again after a drop: sled's flusher thread lets go of the file
    /// lock a moment after the last handle is dropped, so poll for it.
    fn reopen(dir: &Path, opts: &StorageOptions) -> Result<Arc<Storage>, StorageError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Storage::open(dir, opts) {
                Err(StorageError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other,
            }
        }
    }

    fn opts(partitions: u32, sync_writes: bool) -> StorageOptions {
        StorageOptions { partitions, sync_writes, tombstone_grace_ms: 1000 }
    }

    fn content(v: &str) -> Content {
        Content {
            value: v.as_bytes().to_vec().into(),
            content_type: "text/plain".into(),
            timestamp_ms: 1,
            expires_at_ms: None,
            deleted: false,
        }
    }

    fn put(s: &Storage, key: &[u8], v: &str) {
        s.update(0, key, |cur| {
            let cur = cur.unwrap_or_default();
            let ctx = cur.context();
            let dot = cur.next_dot(&ctx, "n", s.dot_floor());
            Ok::<_, ()>((Some(cur.update(&ctx, dot, content(v))), ()))
        })
        .unwrap()
        .unwrap();
    }

    #[tokio::test]
    async fn a_second_open_of_one_dir_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Storage::open(dir.path(), &opts(4, false)).unwrap();
        let second = Storage::open(dir.path(), &opts(4, false));
        assert!(matches!(second, Err(StorageError::Locked(_))), "{:?}", second.err());
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_refuses_another_q() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), &opts(4, true)).unwrap();
            put(&s, b"k", "v1");
            put(&s, b"k", "v2");
            s.durable().await.unwrap();
        }
        let s = reopen(dir.path(), &opts(4, false)).unwrap();
        let rec = s.get(0, b"k").unwrap().unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec.values()[0].payload.value, b"v2"[..]);
        drop(s);
        assert!(matches!(
            reopen(dir.path(), &opts(8, false)),
            Err(StorageError::PartitionMismatch { stored: 4, requested: 8, .. })
        ));
    }

    #[tokio::test]
    async fn the_dot_floor_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), &opts(1, false)).unwrap();
            let start = s.dot_floor();
            assert!(
                start >= crate::clock::now_ms().saturating_sub(60_000) << DOT_EPOCH_SHIFT,
                "a new dir starts at the clock"
            );
            s.issued(start + 5).unwrap();
            s.issued(start + 3).unwrap();
            assert_eq!(s.dot_floor(), start + 5);
            // Dropped without a flush of anything but the reservation.
        }
        let s = reopen(dir.path(), &opts(1, false)).unwrap();
        let issued = s.dot_floor();
        assert!(issued >= 5, "a restart starts at or above every issued counter");
        drop(s);
        // A lost data dir: a new one starts above everything issued before
        // (a millisecond later is 2^20 counters later).
        std::thread::sleep(std::time::Duration::from_millis(2));
        std::fs::remove_dir_all(dir.path()).unwrap();
        let s = reopen(dir.path(), &opts(1, false)).unwrap();
        assert!(s.dot_floor() > issued - DOT_RESERVE, "{} vs {}", s.dot_floor(), issued);
    }

    #[tokio::test]
    async fn refused_update_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(1, false)).unwrap();
        put(&s, b"k", "v");
        let r = s.update(0, b"k", |_| Err::<(Option<Record>, ()), _>("no")).unwrap();
        assert!(matches!(r, Err("no")));
        assert_eq!(s.get(0, b"k").unwrap().unwrap().values()[0].payload.value, b"v"[..]);
    }

    /// Many writers waiting for durability at once, alongside shutdown-style
    /// flushes, all finish: flushes never hang. sled's own `flush_async`
    /// hung here in about one run in three, blocking the runtime's workers
    /// so that not even a tokio timeout fired; hence the watchdog on a plain
    /// thread and several rounds.
    #[test]
    fn overlapping_durable_writes_all_complete() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
            for round in 0..6u32 {
                let dir = tempfile::tempdir().unwrap();
                let s = Storage::open(dir.path(), &opts(4, true)).unwrap();
                rt.block_on(async {
                    let mut tasks = tokio::task::JoinSet::new();
                    for i in 0..256u32 {
                        let s = s.clone();
                        tasks.spawn(async move {
                            put(&s, format!("k{round}-{i}").as_bytes(), "v");
                            if i % 16 == 0 {
                                s.flush().await
                            } else {
                                s.durable().await
                            }
                        });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.unwrap().unwrap();
                    }
                });
            }
            let _ = done_tx.send(());
        });
        done_rx.recv_timeout(std::time::Duration::from_secs(120)).expect("every durable write and flush completes");
    }

    #[tokio::test]
    async fn node_id_is_kept_and_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(1, false)).unwrap();
        let id = s.node_id(dir.path(), None, || "gen-1".into()).unwrap();
        assert_eq!(id, "gen-1");
        assert_eq!(s.node_id(dir.path(), None, || "gen-2".into()).unwrap(), "gen-1");
        assert!(s.node_id(dir.path(), Some("other"), || unreachable!()).is_err());
    }

    #[tokio::test]
    async fn hints_merge_survive_reopen_and_are_removed_only_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), &opts(4, false)).unwrap();
            let mut a = Record::new();
            let ctx = Context::new();
            a = a.update(&ctx, a.next_dot(&ctx, "x", 0), content("one"));
            let mut b = Record::new();
            b = b.update(&ctx, b.next_dot(&ctx, "y", 0), content("two"));
            assert!(s.store_hint("owner-1", 3, b"key", &a).unwrap());
            assert!(s.store_hint("owner-1", 3, b"key", &b).unwrap());
            s.flush().await.unwrap();
        }
        let s = reopen(dir.path(), &opts(4, false)).unwrap();
        let hints = s.hints(10).unwrap();
        assert_eq!(hints.len(), 1);
        assert_eq!((hints[0].owner.as_str(), hints[0].partition, hints[0].key.as_slice()), ("owner-1", 3, &b"key"[..]));
        assert_eq!(hints[0].record.len(), 2, "both writes kept as siblings");
        // A newer write merged in meanwhile: the delivered copy is stale.
        let mut c = Record::new();
        let ctx = Context::new();
        c = c.update(&ctx, c.next_dot(&ctx, "z", 0), content("three"));
        s.store_hint("owner-1", 3, b"key", &c).unwrap();
        assert!(!s.remove_hint(&hints[0]).unwrap());
        let fresh = s.hints(10).unwrap();
        assert!(s.remove_hint(&fresh[0]).unwrap());
        assert_eq!(s.hints_pending(), 0);
    }

    #[tokio::test]
    async fn hints_page_in_order_and_skip_entries_that_do_not_decode() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(4, false)).unwrap();
        let ctx = Context::new();
        let one = Record::new().update(&ctx, Dot { node: "x".into(), counter: 1 }, content("v"));
        for owner in ["a", "b", "c"] {
            for key in [&b"k1"[..], b"k2"] {
                assert!(s.store_hint(owner, 1, key, &one).unwrap());
            }
        }
        // b's first entry goes bad on disk.
        let bad = s.hints(10).unwrap().into_iter().find(|h| h.owner == "b").unwrap();
        s.hints.insert(&bad.raw_key, &[9u8, 9, 9][..]).unwrap();

        let mut seen = Vec::new();
        let mut corrupt = 0;
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let page = s.hints_after(after.as_deref(), 2).unwrap();
            pages += 1;
            corrupt += page.corrupt;
            seen.extend(page.hints.iter().map(|h| (h.owner.clone(), h.key.clone())));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(corrupt, 1);
        let owners: Vec<&str> = seen.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(owners, ["a", "a", "b", "c", "c"], "every good hint once, in order");
        assert_eq!(s.hints(10).unwrap().len(), 5, "the bad entry does not stop the rest");
        assert_eq!(s.hints_pending(), 6, "it stays in place");
    }

    #[tokio::test]
    async fn a_merge_replaces_bytes_that_are_no_record_but_keeps_an_unknown_format() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(2, false)).unwrap();
        let good = versioned("x", "v", false, 1);
        s.merge(1, b"bad", &good).unwrap();
        s.corrupt(1, b"bad");
        assert_eq!(s.merge(1, b"bad", &good).unwrap(), good, "corrupt bytes replaced");
        // A record of a format from a newer release: never overwritten.
        s.tree(1).unwrap().insert(ikey(b"newer"), &[99u8, 1, 2][..]).unwrap();
        assert!(matches!(s.merge(1, b"newer", &good), Err(StorageError::Record(RecordError::UnknownFormat(99)))));
        assert_eq!(s.tree(1).unwrap().get(ikey(b"newer")).unwrap().unwrap().as_ref(), &[99u8, 1, 2]);
    }

    #[tokio::test]
    async fn expiry_index_finds_due_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(2, false)).unwrap();
        for (key, at) in [(&b"soon"[..], 100u64), (&b"later"[..], 1_000)] {
            s.update(1, key, |cur| {
                let cur = cur.unwrap_or_default();
                let ctx = Context::new();
                let dot = cur.next_dot(&ctx, "n", 0);
                let mut c = content("x");
                c.expires_at_ms = Some(at);
                Ok::<_, ()>((Some(cur.update(&ctx, dot, c)), ()))
            })
            .unwrap()
            .unwrap();
        }
        let due = s.due(false, 500, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].partition, due[0].key.as_slice()), (1, &b"soon"[..]));
        s.done(false, &due[0]).unwrap();
        assert!(s.due(false, 500, 10).unwrap().is_empty());
        assert_eq!(s.due(false, 2_000, 10).unwrap().len(), 1);
    }

    fn versioned(node: &str, v: &str, deleted: bool, ts: u64) -> Record {
        let ctx = Context::new();
        let rec = Record::new();
        let mut c = content(v);
        c.deleted = deleted;
        c.timestamp_ms = ts;
        rec.update(&ctx, rec.next_dot(&ctx, node, 0), c)
    }

    #[tokio::test]
    async fn merge_keeps_concurrent_versions_and_returns_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(2, false)).unwrap();
        let a = versioned("x", "one", false, 1);
        let b = versioned("y", "two", false, 1);
        assert_eq!(s.merge(1, b"k", &a).unwrap(), a);
        let both = s.merge(1, b"k", &b).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(s.get(1, b"k").unwrap().unwrap(), both);
        assert_eq!(s.merge(1, b"k", &a).unwrap(), both, "idempotent");
    }

    #[tokio::test]
    async fn purge_and_expiry_take_only_what_they_may() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(1, false)).unwrap();
        let tomb = versioned("x", "", true, 100);
        s.merge(0, b"t", &tomb).unwrap();
        let dots: Vec<Dot> = tomb.values().iter().map(|v| v.dot.clone()).collect();
        assert!(!s.purge_if(0, b"t", &dots, 150, 100).unwrap(), "grace not over");
        assert!(!s.purge_if(0, b"t", &[], 500, 100).unwrap(), "other dots");
        assert!(s.purge_if(0, b"t", &dots, 500, 100).unwrap());
        assert!(s.get(0, b"t").unwrap().unwrap().is_empty(), "a marker, no versions");
        let live = versioned("x", "v", false, 100);
        s.merge(0, b"l", &live).unwrap();
        let dots: Vec<Dot> = live.values().iter().map(|v| v.dot.clone()).collect();
        assert!(!s.purge_if(0, b"l", &dots, 10_000, 0).unwrap(), "a live value is never purged");

        // A record keeping a live version keeps its expired one too.
        let ctx = Context::new();
        let mut expiring = content("e");
        expiring.expires_at_ms = Some(200);
        let mixed = live.update(&Context::new(), Dot { node: "y".into(), counter: 1 }, expiring.clone());
        s.merge(0, b"m", &mixed).unwrap();
        assert_eq!(s.expire(0, b"m", 300).unwrap(), 0, "one version is still live");
        let only = Record::new().update(&ctx, Dot { node: "y".into(), counter: 2 }, expiring);
        s.merge(0, b"e", &only).unwrap();
        assert_eq!(s.expire(0, b"e", 100).unwrap(), 0, "not yet");
        assert_eq!(s.expire(0, b"e", 300).unwrap(), 1);
        let marker = s.get(0, b"e").unwrap().unwrap();
        assert!(marker.is_empty(), "a marker, no versions");
        assert_eq!(s.expire(0, b"e", 400).unwrap(), 0, "a marker has nothing left to expire");
    }

    #[tokio::test]
    async fn an_expired_value_leaves_a_marker_that_keeps_what_it_replaced_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(1, false)).unwrap();
        // An old value, replaced by one that expires (on this replica; a
        // replica that missed the replacement still holds the old value).
        let old = versioned("x", "old", false, 100);
        let ctx = old.context();
        let mut expiring = content("brief");
        expiring.expires_at_ms = Some(2_000);
        let dot = old.next_dot(&ctx, "x", 0);
        s.merge(0, b"k", &old.update(&ctx, dot.clone(), expiring)).unwrap();
        assert_eq!(s.expire(0, b"k", 3_000).unwrap(), 1);
        let marker = s.get(0, b"k").unwrap().unwrap();
        assert!(marker.is_empty(), "a marker, no versions");
        assert!(marker.context().covers(&dot), "the expired dot is remembered");
        // The old value arrives from that replica (anti-entropy, read
        // repair, a hint): dropped, so the key stays gone.
        assert!(s.merge(0, b"k", &old).unwrap().is_empty());
        assert!(s.get(0, b"k").unwrap().unwrap().is_empty());
    }

    #[tokio::test]
    async fn scans_page_resume_and_report_undecodable_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(2, false)).unwrap();
        for i in 0..10 {
            s.merge(1, format!("k{i}").as_bytes(), &versioned("x", "v", false, 1)).unwrap();
        }
        s.tree(1).unwrap().insert(ikey(b"k5-broken"), &[9u8, 9, 9]).unwrap();
        let mut keys = Vec::new();
        let mut broken = 0;
        let mut cursor: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let page = s.scan_from_async(1, cursor.take(), 3).await.unwrap();
            pages += 1;
            for (k, r) in page.items {
                match r {
                    Ok(_) => keys.push(String::from_utf8(k).unwrap()),
                    Err(_) => broken += 1,
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 10, "each key once: {keys:?}");
        assert_eq!((broken, pages), (1, 4));
        assert!(s.scan_from(0, None, 10).unwrap().items.is_empty());
    }

    /// A Merkle tree rebuilt from scratch over what `s` holds in `p`.
    fn rebuilt(s: &Storage, p: u32) -> merkle::Tree {
        let t = merkle::Tree::new();
        for kv in s.tree(p).unwrap().iter() {
            let (k, v) = kv.unwrap();
            t.toggle(leaf_of_ikey(&k), item(&k, Some(&v)));
        }
        t
    }

    fn same_tree(a: &merkle::Tree, b: &merkle::Tree) -> bool {
        (0..=merkle::DEPTH).all(|l| (0..merkle::width(l)).all(|i| a.get(l, i) == b.get(l, i)))
    }

    /// Writers race on a few keys of two partitions from threads, while the
    /// trees are built: every change reaches the tree exactly once.
    #[tokio::test]
    async fn merkle_trees_stay_exact_under_racing_writers_and_a_concurrent_build() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(4, false)).unwrap();
        for i in 0..2000 {
            s.merge(i % 2, format!("pre{i}").as_bytes(), &versioned("w", "v", false, 1)).unwrap();
        }
        assert!(!s.tree_ready(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let key = format!("pre{}", (i * 7 + t) % 2000);
                        let p = (((i * 7 + t) % 2000) % 2) as u32;
                        s.merge(p, key.as_bytes(), &versioned(&format!("w{t}"), &i.to_string(), false, i)).unwrap();
                        if i % 11 == 0 {
                            s.expire(p, key.as_bytes(), u64::MAX).unwrap();
                        }
                    }
                })
            })
            .collect();
        for p in 0..2 {
            s.build_tree(p).unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        for p in 0..2u32 {
            assert!(s.tree_ready(p));
            assert!(same_tree(s.merkle(p), &rebuilt(&s, p)), "partition {p}");
            assert!(s.merkle(p).root() != 0);
        }
        // Leaf listings agree with the tree.
        let leaf = merkle::leaf_of(b"pre0");
        let items = s.leaf_items(0, leaf).unwrap();
        assert!(items.iter().any(|(k, _)| k == b"pre0"));
        assert_eq!(
            items.iter().fold(0, |acc, (_, h)| acc ^ h),
            s.merkle(0).get(merkle::DEPTH, u32::from(leaf)).unwrap()
        );
    }

    #[tokio::test]
    async fn a_data_dir_of_the_older_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an earlier release left: a partition tree with a plain key.
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta").unwrap().insert(META_PARTITIONS, &1u32.to_be_bytes()).unwrap();
            db.open_tree(partition_tree(0)).unwrap().insert(b"plain", &[1u8, 0][..]).unwrap();
            db.flush().unwrap();
        }
        match reopen(dir.path(), &opts(1, false)) {
            Err(e @ StorageError::OldLayout { found: 1, .. }) => assert!(e.to_string().contains("empty data dir")),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn partitions_drop_through_the_change_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(4, false)).unwrap();
        s.build_tree(1).unwrap();
        for i in 0..50 {
            s.merge(i % 2, format!("k{i}").as_bytes(), &versioned("w", "v", false, 1)).unwrap();
        }
        assert_eq!(s.partitions_with_data().unwrap(), vec![0, 1]);
        let before = s.partition_changes(1);
        assert_eq!(s.drop_partition_if_unchanged(1, before).unwrap(), Some(25));
        assert!(s.partition_changes(1) > before);
        assert_eq!(s.partitions_with_data().unwrap(), vec![0]);
        assert_eq!(s.merkle(1).root(), 0, "dropped keys left the tree too");
        // A guarded drop refuses once anything changed since it looked.
        s.build_tree(0).unwrap();
        let seen = s.partition_changes(0);
        s.merge(0, b"k0", &versioned("late", "v", false, 2)).unwrap();
        assert_eq!(s.drop_partition_if_unchanged(0, seen).unwrap(), None);
        assert!(s.has_data(0).unwrap());
        let seen = s.partition_changes(0);
        assert_eq!(s.drop_partition_if_unchanged(0, seen).unwrap(), Some(25));
        assert!(!s.has_data(0).unwrap());
        assert_eq!(s.merkle(0).root(), 0);
    }

    #[tokio::test]
    async fn a_purge_leaves_a_marker_that_keeps_the_deleted_version_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &opts(1, false)).unwrap();
        let live = versioned("x", "old", false, 100);
        let ctx = live.context();
        let mut t = content("");
        t.deleted = true;
        t.timestamp_ms = 200;
        let tomb = live.update(&ctx, live.next_dot(&ctx, "y", 0), t);
        s.merge(0, b"k", &tomb).unwrap();
        let dots: Vec<Dot> = tomb.values().iter().map(|v| v.dot.clone()).collect();
        assert!(s.purge_if(0, b"k", &dots, 1_000, 100).unwrap());
        let marker = s.get(0, b"k").unwrap().unwrap();
        assert!(marker.is_empty());
        assert!(s.purge_if(0, b"k", &dots, 1_000, 100).unwrap(), "already purged: still true");
        // The old value arrives late (a hint, a returning node): dropped.
        assert!(s.merge(0, b"k", &live).unwrap().is_empty());

        // A value with a ttl written over the marker, then expired: the
        // marker stays and remembers the expired dot, so the key's next dot
        // is a new one.
        let mut expiring = content("brief");
        expiring.expires_at_ms = Some(2_000);
        let ctx = marker.context();
        let dot = marker.next_dot(&ctx, "y", 0);
        s.merge(0, b"k", &marker.update(&ctx, dot.clone(), expiring)).unwrap();
        assert_eq!(s.expire(0, b"k", 3_000).unwrap(), 1);
        let after = s.get(0, b"k").unwrap().unwrap();
        assert!(after.is_empty(), "a marker, no versions");
        assert!(after.context().covers(&dot), "the expired dot is remembered");
        assert!(after.next_dot(&after.context(), "y", 0).counter > dot.counter);
    }
}
