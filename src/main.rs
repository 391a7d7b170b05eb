//! The `dynakv` binary: parse flags, set up logging, serve until SIGTERM or
//! Ctrl-C (or a leave).

use tracing_subscriber::EnvFilter;

use dynakv::config::{Config, LogFormat};
use dynakv::server;

// Request handling allocates many small, short-lived buffers; glibc malloc
// spent a fifth of the CPU in a profile (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cfg = Config::load();
    init_logging(cfg.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = cfg.worker_threads {
        runtime.worker_threads(n as usize);
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dynakv: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(async { server::start(cfg, server::shutdown_signal()).await }) {
        eprintln!("dynakv: error: {e}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: containers and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
