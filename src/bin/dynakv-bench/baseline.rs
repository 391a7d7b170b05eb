//! Baseline servers with dynakv's `/kv/{key}` routes and nothing else: no
//! versions, no replication. `memory` is a sharded in-memory map (what plain
//! axum allows); `sled` stores the value bytes in one sled tree with sled's
//! default flushing (what plain sled allows); `sled-sync` flushes before
//! every acknowledgement on a blocking thread, like dynakv's
//! `--sync-writes` (sled makes its log stable once for all the writers
//! waiting; its own `flush_async` can hang, see `storage::flush_blocking`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum Backend {
    Memory,
    Sled,
    SledSync,
}

#[derive(Args)]
pub struct BaselineArgs {
    /// Which store to serve.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// sled directory (sled backend).
    #[arg(long, default_value = "./baseline-data")]
    data_dir: PathBuf,
}

const SHARDS: usize = 64;

enum Store {
    Memory(Vec<RwLock<HashMap<String, Bytes>>>),
    Sled(sled::Db, bool),
}

impl Store {
    fn shard(&self, key: &str) -> usize {
        (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize) % SHARDS
    }
}

pub async fn serve(args: BaselineArgs) -> Result<(), String> {
    let store = match args.backend {
        Backend::Memory => Store::Memory((0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect()),
        Backend::Sled => Store::Sled(sled::open(&args.data_dir).map_err(|e| e.to_string())?, false),
        Backend::SledSync => Store::Sled(sled::open(&args.data_dir).map_err(|e| e.to_string())?, true),
    };
    let app = Router::new()
        .route("/kv/{key}", get(read).put(write).delete(remove))
        .route("/health", get(|| async { "ok" }))
        .with_state(Arc::new(store));
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| e.to_string())?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

async fn read(State(s): State<Arc<Store>>, Path(key): Path<String>) -> Response {
    let value = match &*s {
        Store::Memory(shards) => shards[s.shard(&key)].read().expect("lock").get(&key).cloned(),
        Store::Sled(db, _) => db.get(key.as_bytes()).ok().flatten().map(|v| Bytes::copy_from_slice(&v)),
    };
    match value {
        Some(v) => (StatusCode::OK, v).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn write(State(s): State<Arc<Store>>, Path(key): Path<String>, body: Bytes) -> StatusCode {
    match &*s {
        Store::Memory(shards) => {
            shards[s.shard(&key)].write().expect("lock").insert(key, body);
        }
        Store::Sled(db, sync) => {
            if db.insert(key.as_bytes(), body.as_ref()).is_err() {
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            if *sync {
                let db = db.clone();
                if !matches!(tokio::task::spawn_blocking(move || db.flush()).await, Ok(Ok(_))) {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
            }
        }
    }
    StatusCode::NO_CONTENT
}

async fn remove(State(s): State<Arc<Store>>, Path(key): Path<String>) -> StatusCode {
    match &*s {
        Store::Memory(shards) => {
            shards[s.shard(&key)].write().expect("lock").remove(&key);
        }
        Store::Sled(db, _) => {
            let _ = db.remove(key.as_bytes());
        }
    }
    StatusCode::NO_CONTENT
}
