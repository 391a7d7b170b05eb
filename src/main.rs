//! The `dynakv` binary: parse flags, set up logging, open the node, serve
//! until SIGTERM or Ctrl-C.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use dynakv::config::{Config, LogFormat};
use dynakv::node::{self, Node, StartError};

// Request handling allocates many small, short-lived buffers; glibc malloc
// spent a fifth of the CPU in a profile (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cfg = Config::parse();
    init_logging(cfg.log_format);
    if let Err(e) = start(cfg).await {
        eprintln!("dynakv: error: {e}");
        std::process::exit(1);
    }
}

async fn start(cfg: Config) -> Result<(), StartError> {
    let listen = cfg.listen;
    let node = Node::open(cfg)?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| StartError::Bind { addr: listen, source })?;
    node::run(node, listener, node::shutdown_signal()).await
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
