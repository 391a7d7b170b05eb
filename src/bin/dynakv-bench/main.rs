//! `dynakv-bench`: a YCSB-style load generator for dynakv (or anything with
//! its `/kv/{key}` routes), and the baseline servers it is compared against.
//!
//! - `dynakv-bench run --urls ...`: drive nodes with a workload, print a table
//!   and (with `--json`) a JSON report.
//! - `dynakv-bench baseline --backend memory|sled`: a minimal key-value server
//!   with the same routes, so a report can state dynakv's rate as a fraction
//!   of what plain HTTP and plain sled allow on the same machine.
//! - `dynakv-bench simulate`: membership and placement at 10, 100 and 1,000
//!   nodes, simulated in one process.
//!
//! Latency is recorded in HDR histograms (microseconds). Closed-loop runs
//! (no `--rate`) measure saturation throughput and service time. Open-loop
//! runs (`--rate`) schedule every request at a fixed time and measure from
//! that intended start, so a stall is charged to every request it delayed:
//! coordinated omission is corrected by construction.

mod baseline;
mod load;
mod simulate;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dynakv-bench", about = "Load generator and baselines for dynakv")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a workload against one or more node URLs.
    Run(load::RunArgs),
    /// Serve a baseline key-value store with dynakv's routes.
    Baseline(baseline::BaselineArgs),
    /// Simulate membership and placement at 10, 100 and 1,000 nodes.
    Simulate(simulate::SimArgs),
}

// The same allocator as dynakv, so baselines compare like with like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => load::run(args).await,
        Cmd::Baseline(args) => baseline::serve(args).await,
        Cmd::Simulate(args) => simulate::simulate(args),
    };
    if let Err(e) = result {
        eprintln!("dynakv-bench: error: {e}");
        std::process::exit(1);
    }
}
