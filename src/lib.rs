//! dynakv: a Dynamo-style key-value store over HTTP/JSON.
//!
//! # Layout
//!
//! Leaves (import nothing of the crate; pure unless noted):
//! - [`clock`]: the wall clock in milliseconds.
//! - [`config`]: flags and `DYNAKV_*` variables (SPEC §2), validated at start.
//! - [`metrics`]: every Prometheus metric.
//! - [`ring`]: xxh3 key hashing, Q fixed partitions, vnode tokens, preference
//!   lists.
//! - [`version`]: dotted version vectors (update, sync, reconcile) and the
//!   `X-Context` token.
//! - [`membership`]: the member table and its status rules.
//! - [`merkle`]: fixed-shape Merkle trees kept current by XOR.
//!
//! State and seams:
//! - [`storage`]: sled, one tree per partition, the record codec, group
//!   commit, the one change path partition trees go through.
//! - [`transport`]: the seam to peers (a trait, typed errors, wire messages,
//!   per-peer batching, the HTTP implementation).
//! - [`cluster`]: the membership table, the rings and N published together
//!   as one immutable view.
//! - [`worker`]: the background worker abstraction and its runner.
//! - [`node`]: a node's shared state; starts nothing.
//!
//! Behaviour:
//! - [`replica`]: read, write and purge sets of a partition; a replica's copy
//!   of a key, local or remote.
//! - [`coordinator`]: client reads and writes (quorum tally in
//!   [`coordinator::quorum`]), sloppy quorum, read repair.
//! - [`rpc`]: what a node answers its peers, independent of HTTP.
//! - [`ownership`]: which partitions this node holds, receives and hands
//!   off (pure).
//! - [`gossip`], [`handoff`], [`reaper`], [`antientropy`], [`transfer`]:
//!   background workers (membership, hinted handoff and leave, expiry and
//!   tombstone purge, Merkle tree exchange, ownership transfers).
//! - [`harness`]: an in-memory network of real nodes for tests.
//! - [`sim`]: membership and placement simulated at scale (no network).
//!
//! Edge and wiring:
//! - [`api`]: axum router, handlers, JSON errors.
//! - [`server`]: wiring: router, workers, serving, shutdown.
//!
//! Dependencies point one way, from the edge down to the leaves; a test
//! (`tests/it/architecture.rs`) fails on any cycle between these modules.

pub mod antientropy;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod gossip;
pub mod handoff;
pub mod harness;
pub mod membership;
pub mod merkle;
pub mod metrics;
pub mod node;
pub mod ownership;
pub mod reaper;
pub mod replica;
pub mod ring;
pub mod rpc;
pub mod server;
pub mod sim;
pub mod storage;
pub mod transfer;
pub mod transport;
pub mod version;
pub mod worker;
