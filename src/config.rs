//! Node configuration: every flag of SPEC §2, each with its `DYNAKV_*`
//! environment variable, parsed by clap and checked by [`Config::validate`].
//!
//! Parsing rejects malformed values (clap prints a usage error); `validate`
//! rejects combinations that parse but cannot work (R or W greater than N,
//! suspect not before dead, a malformed URL). Both happen before anything
//! touches the data dir, so a startup mistake costs one clear line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one event a line.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Flags of the `dynakv` binary (SPEC §2).
#[derive(Debug, Clone, Parser)]
#[command(name = "dynakv", version, about = "A Dynamo-style key-value store over HTTP/JSON")]
pub struct Config {
    /// Unique, stable id of this node (default: generated on first start and
    /// persisted in the data dir).
    #[arg(long, env = "DYNAKV_NODE_ID")]
    pub node_id: Option<String>,

    /// Address to bind: ip:port, or host:port (resolved once at start).
    #[arg(long, env = "DYNAKV_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Base URL other nodes use to reach this one (default: http://<listen>).
    #[arg(long, env = "DYNAKV_ADVERTISE")]
    pub advertise: Option<String>,

    /// sled database directory (exclusively locked).
    #[arg(long, env = "DYNAKV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Comma-separated base URLs of nodes to join through.
    #[arg(long, env = "DYNAKV_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,

    /// N: copies of every key.
    #[arg(long, env = "DYNAKV_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub replicas: u32,

    /// R: default replies a read waits for.
    #[arg(long, env = "DYNAKV_READ_QUORUM", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub read_quorum: u32,

    /// W: default acks a write waits for.
    #[arg(long, env = "DYNAKV_WRITE_QUORUM", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub write_quorum: u32,

    /// Q: fixed number of ring partitions (shards); must match cluster-wide.
    #[arg(long, env = "DYNAKV_PARTITIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub partitions: u32,

    /// Tokens each node places on the ring.
    #[arg(long, env = "DYNAKV_VNODES", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub vnodes: u32,

    /// Gossip round period, in milliseconds.
    #[arg(long, env = "DYNAKV_GOSSIP_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub gossip_interval_ms: u64,

    /// No heartbeat progress for this long: suspect.
    #[arg(long, env = "DYNAKV_SUSPECT_AFTER_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub suspect_after_ms: u64,

    /// No heartbeat progress for this long: dead, removed from the ring.
    #[arg(long, env = "DYNAKV_DEAD_AFTER_MS", default_value_t = 15000, value_parser = clap::value_parser!(u64).range(1..))]
    pub dead_after_ms: u64,

    /// Merkle root exchange period, in milliseconds (0 turns anti-entropy
    /// off, Merkle tree upkeep included).
    #[arg(long, env = "DYNAKV_ANTI_ENTROPY_INTERVAL_MS", default_value_t = 10000)]
    pub anti_entropy_interval_ms: u64,

    /// Timeout of one node-to-node request, in milliseconds.
    #[arg(long, env = "DYNAKV_REQUEST_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Larger keys are rejected.
    #[arg(long, env = "DYNAKV_MAX_KEY_BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_key_bytes: u64,

    /// Larger values are rejected.
    #[arg(long, env = "DYNAKV_MAX_VALUE_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    pub max_value_bytes: u64,

    /// Client writes that would keep more siblings are refused.
    #[arg(long, env = "DYNAKV_MAX_SIBLINGS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_siblings: u32,

    /// A tombstone held by every replica is purged after this long.
    #[arg(long, env = "DYNAKV_TOMBSTONE_GRACE_MS", default_value_t = 86_400_000)]
    pub tombstone_grace_ms: u64,

    /// Flush to disk before acknowledging a write (true or false; 1, 0,
    /// yes, no, on and off too, as compose files write them).
    #[arg(long, env = "DYNAKV_SYNC_WRITES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub sync_writes: bool,

    /// When set, every internal request must carry it.
    #[arg(long, env = "DYNAKV_CLUSTER_SECRET")]
    pub cluster_secret: Option<String>,

    /// Partitions received at once when the ring changes.
    #[arg(long, env = "DYNAKV_TRANSFER_MAX_PARTITIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub transfer_max_partitions: u32,

    /// Bandwidth of partition transfers, MiB per second, each way.
    #[arg(long, env = "DYNAKV_TRANSFER_MAX_MIB_PER_SEC", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub transfer_max_mib_per_sec: u64,

    /// Client requests served at once; past it a client request gets 503
    /// `overloaded` at once instead of waiting (/health, /health/ready,
    /// /metrics, /cluster/members and /cluster/ring are exempt).
    #[arg(long, env = "DYNAKV_MAX_REQUESTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_requests: u32,

    /// Node-to-node requests served at once (budgeted apart from clients,
    /// so a client flood cannot starve replication; gossip is exempt).
    #[arg(long, env = "DYNAKV_MAX_INTERNAL_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_internal_requests: u32,

    /// Open connections at most; past it new connections wait in the
    /// listen backlog.
    #[arg(long, env = "DYNAKV_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// A connection that takes longer than this to send a request's headers,
    /// or sits idle between requests for this long, is closed.
    #[arg(long, env = "DYNAKV_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,

    /// Threads that run request handling and background work (the async
    /// runtime's workers). Default: one per CPU this process may use. When
    /// several nodes share a machine, or a container has a CPU limit, give
    /// each about its share of the CPUs.
    #[arg(long, env = "DYNAKV_WORKER_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_threads: Option<u32>,

    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "DYNAKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A configuration that parses but cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// R greater than N.
    #[error("--read-quorum ({r}) must not exceed --replicas ({n})")]
    ReadQuorumTooLarge { r: u32, n: u32 },
    /// W greater than N.
    #[error("--write-quorum ({w}) must not exceed --replicas ({n})")]
    WriteQuorumTooLarge { w: u32, n: u32 },
    /// A node id with characters that do not survive URLs, JSON and logs.
    #[error("--node-id {0:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadNodeId(String),
    /// A URL that is not `http(s)://host[:port]`.
    #[error("{flag} {url:?} is not a base URL like http://host:port")]
    BadUrl { flag: &'static str, url: String },
    /// An empty cluster secret would silently disable the check.
    #[error("--cluster-secret must not be empty")]
    EmptySecret,
}

impl Config {
    /// Parses the process's flags and environment. A parse error prints one
    /// line naming the problem (see `usage_error_line`) and exits 2;
    /// `--help` and `--version` print as clap does. An optional text setting
    /// given as an empty environment variable counts as unset, so a compose
    /// file or a manifest can pass `DYNAKV_CLUSTER_SECRET:
    /// ${DYNAKV_CLUSTER_SECRET:-}`; an empty value on the command line is
    /// still refused by [`Config::validate`].
    pub fn load() -> Self {
        Self::load_from(std::env::args_os()).unwrap_or_else(|e| {
            if !e.use_stderr() {
                e.exit();
            }
            eprintln!("{}", usage_error_line(&e));
            std::process::exit(2);
        })
    }

    /// [`Config::load`] from given arguments (and the process environment).
    pub fn load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cfg = Self::from_arg_matches(&matches)?;
        let from_env = |id: &str| matches.value_source(id) == Some(ValueSource::EnvVariable);
        for (id, value) in [
            ("node_id", &mut cfg.node_id),
            ("advertise", &mut cfg.advertise),
            ("cluster_secret", &mut cfg.cluster_secret),
        ] {
            if from_env(id) && value.as_deref() == Some("") {
                *value = None;
            }
        }
        Ok(cfg)
    }

    /// Checks what clap cannot: relations between flags and URL shapes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.read_quorum > self.replicas {
            return Err(ConfigError::ReadQuorumTooLarge { r: self.read_quorum, n: self.replicas });
        }
        if self.write_quorum > self.replicas {
            return Err(ConfigError::WriteQuorumTooLarge { w: self.write_quorum, n: self.replicas });
        }
        if let Some(id) = &self.node_id {
            if !valid_node_id(id) {
                return Err(ConfigError::BadNodeId(id.clone()));
            }
        }
        if let Some(url) = &self.advertise {
            check_url("--advertise", url)?;
        }
        for seed in &self.seeds {
            check_url("--seeds", seed)?;
        }
        if self.cluster_secret.as_deref() == Some("") {
            return Err(ConfigError::EmptySecret);
        }
        Ok(())
    }

    /// The suspect timeout in effect: `--suspect-after-ms`, but never past
    /// `--dead-after-ms` (SPEC §2 does not make that a startup error, so a
    /// lone `--dead-after-ms 3000` works: suspect and dead coincide).
    pub fn suspect_after(&self) -> u64 {
        self.suspect_after_ms.min(self.dead_after_ms)
    }

    /// The base URL peers use for this node, without a trailing slash.
    pub fn advertise_url(&self) -> String {
        match &self.advertise {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Seeds with trailing slashes removed and empty entries dropped.
    pub fn seed_urls(&self) -> Vec<String> {
        self.seeds.iter().map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect()
    }

    /// The seeds that are other nodes: a seed naming this node itself (its
    /// advertised URL or its listen address; one seed list given to every
    /// node of a cluster names each of them) is left out, so a node whose
    /// only seed is itself starts alone, by design, as one with no seeds.
    pub fn other_seed_urls(&self) -> Vec<String> {
        let own = [self.advertise_url(), format!("http://{}", self.listen)];
        self.seed_urls().into_iter().filter(|s| !own.contains(s)).collect()
    }
}

/// A clap parse error as one line, like the binary's other startup errors:
/// clap's first line (what is wrong: the flag, the value and why) without
/// its tips and usage block, which would make it five.
fn usage_error_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
    let what = first.trim().trim_start_matches("error:").trim();
    format!("dynakv: error: {what} (see --help)")
}

/// Whether `id` is a usable node id: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_url(flag: &'static str, url: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadUrl { flag, url: url.to_string() };
    let trimmed = url.trim();
    if trimmed.is_empty() {
        // `--seeds ""` is how an environment says "no seeds".
        return Ok(());
    }
    let uri: axum::http::Uri = trimmed.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(auth)) if !auth.host().is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

/// `--listen`: a socket address, or a host name and port resolved once
/// (`localhost:8080`); an IPv4 address is preferred when a name has both.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> =
        s.to_socket_addrs().map_err(|e| format!("expected ip:port or host:port ({e})"))?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| format!("{s} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec!["dynakv"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
    }

    #[test]
    fn defaults_match_spec() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!((c.replicas, c.read_quorum, c.write_quorum), (3, 2, 2));
        assert_eq!((c.partitions, c.vnodes), (64, 16));
        assert_eq!(c.advertise_url(), "http://127.0.0.1:8080");
        assert!(!c.sync_writes);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn zero_counts_are_usage_errors() {
        for flag in ["--replicas", "--read-quorum", "--write-quorum", "--partitions", "--vnodes"] {
            assert!(parse(&[flag, "0"]).is_err(), "{flag} 0 accepted");
        }
    }

    #[test]
    fn quorum_above_n_is_refused() {
        let c = parse(&["--replicas", "2", "--read-quorum", "3", "--write-quorum", "1"]).unwrap();
        assert_eq!(c.validate(), Err(ConfigError::ReadQuorumTooLarge { r: 3, n: 2 }));
        let c = parse(&["--replicas", "2", "--read-quorum", "1", "--write-quorum", "3"]).unwrap();
        assert_eq!(c.validate(), Err(ConfigError::WriteQuorumTooLarge { w: 3, n: 2 }));
    }

    #[test]
    fn urls_and_ids_are_checked() {
        assert!(parse(&["--seeds", "http://a:1,http://b:2"]).unwrap().validate().is_ok());
        assert!(parse(&["--seeds", "a:1"]).unwrap().validate().is_err());
        assert!(parse(&["--advertise", "not a url"]).unwrap().validate().is_err());
        assert!(parse(&["--node-id", "a b"]).unwrap().validate().is_err());
        assert!(parse(&["--node-id", "node-1.a_b"]).unwrap().validate().is_ok());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        // A host name with a port is resolved (as an operator would type it).
        let c = parse(&["--listen", "localhost:9000"]).unwrap();
        assert!(c.listen.ip().is_loopback() && c.listen.port() == 9000, "{}", c.listen);
        assert_eq!(c.advertise_url(), format!("http://{}", c.listen));
    }

    #[test]
    fn an_empty_secret_is_refused_on_the_command_line() {
        let c = Config::load_from(["dynakv", "--cluster-secret", ""]).unwrap();
        assert_eq!(c.validate(), Err(ConfigError::EmptySecret));
        let c = Config::load_from(["dynakv", "--cluster-secret", "s"]).unwrap();
        assert_eq!(c.cluster_secret.as_deref(), Some("s"));
    }

    #[test]
    fn sync_writes_takes_a_bool_or_nothing() {
        assert!(parse(&["--sync-writes"]).unwrap().sync_writes);
        assert!(parse(&["--sync-writes", "true"]).unwrap().sync_writes);
        assert!(!parse(&["--sync-writes", "false"]).unwrap().sync_writes);
        assert!(parse(&["--sync-writes", "maybe"]).is_err());
        assert!(parse(&["--sync-writes", "1"]).unwrap().sync_writes);
        assert!(!parse(&["--sync-writes", "off"]).unwrap().sync_writes);
    }
}
