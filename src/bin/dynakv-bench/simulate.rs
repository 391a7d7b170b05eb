//! `dynakv-bench simulate`: membership and placement at scale, simulated in
//! one process (`dynakv::sim`), printed as a Markdown table.

use std::time::Instant;

use clap::Args;

use dynakv::ring::RingParams;
use dynakv::sim::{run, SimConfig};

/// Arguments of `simulate`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Cluster sizes to simulate.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    nodes: Vec<usize>,
    /// Q, the number of partitions.
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Tokens per node.
    #[arg(long, default_value_t = 16)]
    vnodes: u32,
    /// RNG seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Runs the simulation for every size and prints the table.
pub fn simulate(args: SimArgs) -> Result<(), String> {
    println!(
        "Q = {}, vnodes = {}, N = 3, gossip every 1 s, suspect after 5 s, dead after 15 s, seed {}.\n",
        args.partitions, args.vnodes, args.seed
    );
    println!("| nodes | rounds until all know a join | 2·log2(n) | rounds until the newcomer knows all | rounds until all see a failure (beyond the 15-round timeout) | replicas moved by a join (ideal 1/(n+1)) | moved by a leave (ideal 1/n) | replicas per node, max / mean | nodes with no replica | gossip message | members wrongly held suspect | simulated in |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.nodes {
        let mut cfg = SimConfig::defaults(n);
        cfg.params = RingParams { partitions: args.partitions, vnodes: args.vnodes, replicas: 3 };
        cfg.seed = args.seed;
        let started = Instant::now();
        let r = run(cfg);
        println!(
            "| {} | {} | {:.1} | {} | {} ({:+}) | {:.2} % ({:.2} %) | {:.2} % ({:.2} %) | {:.2} | {} | {:.1} KiB | {:.3} % | {:.1} s |",
            n,
            r.join_rounds,
            2.0 * (n as f64).log2(),
            r.join_learn_rounds,
            r.failure_rounds,
            r.failure_spread_rounds as i64,
            100.0 * r.moved_join,
            100.0 * r.ideal_join,
            100.0 * r.moved_leave,
            100.0 * r.ideal_leave,
            r.max_over_mean,
            r.idle_members,
            r.gossip_bytes as f64 / 1024.0,
            100.0 * r.false_suspect_share,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
