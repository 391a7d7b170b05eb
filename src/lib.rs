//! dynakv: a Dynamo-style key-value store over HTTP/JSON.
//!
//! # Layout
//!
//! - [`config`]: flags and `DYNAKV_*` variables (SPEC §2), validated at start.
//! - [`ring`]: xxh3 key hashing, Q fixed partitions, vnode tokens, preference
//!   lists. Pure.
//! - [`version`]: dotted version vectors (update, sync, reconcile) and the
//!   `X-Context` token. Pure.
//! - [`membership`]: the member table and status rules. Pure.
//! - [`storage`]: sled, one tree per partition, the record codec, group commit.
//! - [`coordinator`]: turns client requests into replica operations; quorum
//!   arithmetic in [`coordinator::quorum`].
//! - [`reaper`]: background purge of expired values and old tombstones.
//! - [`api`]: axum router, handlers, JSON errors.
//! - [`metrics`]: every Prometheus metric.
//! - [`node`]: wiring, background loops, graceful shutdown.
//!
//! Dependencies point one way: `api -> coordinator -> {ring, storage,
//! version}`; the pure modules import no axum, sled or tokio.

pub mod api;
pub mod config;
pub mod coordinator;
pub mod handoff;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod reaper;
pub mod ring;
pub mod storage;
pub mod version;
