//! The load generator: YCSB core workloads over `/kv/{key}`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, Zipf};
use serde_json::{json, Value};
use tokio::time::Instant;

/// YCSB-style operation mixes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Workload {
    /// 50% read, 50% update.
    A,
    /// 95% read, 5% update.
    B,
    /// 100% read.
    C,
    /// 100% update.
    Write,
    /// 50% delete, 30% update, 20% read.
    Delete,
}

impl Workload {
    /// (read, update, delete) fractions.
    fn mix(self) -> (f64, f64, f64) {
        match self {
            Workload::A => (0.5, 0.5, 0.0),
            Workload::B => (0.95, 0.05, 0.0),
            Workload::C => (1.0, 0.0, 0.0),
            Workload::Write => (0.0, 1.0, 0.0),
            Workload::Delete => (0.2, 0.3, 0.5),
        }
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyChoice {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few hot keys, spread over the ring.
    Zipfian,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Comma-separated node base URLs; requests go round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    /// Operation mix.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    workload: Workload,
    /// Key choice.
    #[arg(long, value_enum, default_value_t = KeyChoice::Uniform)]
    distribution: KeyChoice,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured duration (after warm-up), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before measuring, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Write every key once before the run.
    #[arg(long)]
    preload: bool,
    /// Only preload, then exit.
    #[arg(long)]
    preload_only: bool,
    /// `r` for reads (default: the node's).
    #[arg(long)]
    r: Option<String>,
    /// `w` for writes and deletes (default: the node's).
    #[arg(long)]
    w: Option<String>,
    /// Open loop: total requests per second, each measured from its intended
    /// start (corrects coordinated omission). Without it the run is closed-loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A label for the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Prefix of every key.
    #[arg(long, default_value = "bench-")]
    key_prefix: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Update,
    Delete,
}

const OPS: [(Op, &str); 3] = [(Op::Read, "read"), (Op::Update, "update"), (Op::Delete, "delete")];

struct Stats {
    hist: [Histogram<u64>; 3],
    errors: [u64; 3],
}

impl Stats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        Self { hist: [h(), h(), h()], errors: [0; 3] }
    }

    fn merge(&mut self, other: &Stats) {
        for i in 0..3 {
            self.hist[i].add(&other.hist[i]).expect("same bounds");
            self.errors[i] += other.errors[i];
        }
    }
}

struct Shared {
    args: RunArgs,
    /// (host:port, authority) of every target, in `--urls` order.
    targets: Vec<(String, String)>,
    value: Vec<u8>,
    zipf: Option<Zipf<f64>>,
    done: AtomicU64,
}

/// One keep-alive HTTP/1.1 connection to one node, on hyper directly: one
/// request in flight at a time, no pool in the hot path. Reconnects after
/// an error.
struct Conn {
    target: usize,
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
}

impl Conn {
    fn new(target: usize) -> Self {
        Self { target, sender: None }
    }

    async fn sender(
        &mut self,
        shared: &Shared,
    ) -> Option<&mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> {
        if self.sender.as_ref().map_or(true, |s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&shared.targets[self.target].0).await.ok()?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let s = self.sender.as_mut()?;
        s.ready().await.ok()?;
        Some(s)
    }
}

/// `host:port` and authority of a base URL like `http://127.0.0.1:8080`.
fn target(url: &str) -> Result<(String, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri.authority().ok_or_else(|| format!("{url}: no host"))?.to_string();
    let addr = if authority.contains(':') { authority.clone() } else { format!("{authority}:80") };
    Ok((addr, authority))
}

pub async fn run(args: RunArgs) -> Result<(), String> {
    if args.urls.is_empty() || args.keys == 0 || args.concurrency == 0 {
        return Err("need --urls, --keys > 0 and --concurrency > 0".into());
    }
    let targets = args.urls.iter().map(|u| target(u)).collect::<Result<Vec<_>, _>>()?;
    let zipf = match args.distribution {
        KeyChoice::Zipfian => Some(Zipf::new(args.keys as f64, 0.99).map_err(|e| e.to_string())?),
        KeyChoice::Uniform => None,
    };
    let value = vec![b'x'; args.value_size];
    let shared = Arc::new(Shared { args: args.clone(), targets, value, zipf, done: AtomicU64::new(0) });
    if args.preload || args.preload_only {
        preload(&shared).await?;
        if args.preload_only {
            return Ok(());
        }
    }

    let total = args.warmup + args.duration;
    let bar = ProgressBar::new(total.as_millis() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}").expect("valid template"));
    let start = Instant::now();
    let mut workers = Vec::new();
    let mut ticks = Vec::new();
    for w in 0..args.concurrency {
        let shared = shared.clone();
        let (tx, rx) = match args.rate {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        ticks.extend(tx);
        workers.push(tokio::spawn(async move { worker(shared, w, start, rx).await }));
    }
    if let Some(rate) = args.rate {
        let step = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let end = (start + args.warmup + args.duration).into_std();
        let start = start.into_std();
        std::thread::spawn(move || pace(start, end, step, ticks));
    }
    let ticker = {
        let (bar, shared) = (bar.clone(), shared.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let el = start.elapsed();
                bar.set_position(el.as_millis() as u64);
                let ops = shared.done.load(Ordering::Relaxed);
                bar.set_message(format!("{:.0} ops/s", ops as f64 / el.as_secs_f64().max(0.001)));
            }
        })
    };
    let mut stats = Stats::new();
    for w in workers {
        stats.merge(&w.await.map_err(|e| e.to_string())?);
    }
    ticker.abort();
    bar.finish_and_clear();

    let report = report(&args, &stats);
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("json")).map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn preload(shared: &Arc<Shared>) -> Result<(), String> {
    let keys = shared.args.keys;
    let next = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(keys);
    bar.set_style(ProgressStyle::with_template("preload {bar:40} {pos}/{len} {per_sec}").expect("valid template"));
    let mut tasks = Vec::new();
    for w in 0..shared.args.concurrency {
        let (shared, next, bar) = (shared.clone(), next.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u64;
            let mut conn = Conn::new(w % shared.targets.len());
            let mut values = Values::new(&shared.value, w);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return failures;
                }
                if !request(&shared, &mut conn, Op::Update, i, values.next()).await {
                    failures += 1;
                }
                bar.inc(1);
            }
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await.map_err(|e| e.to_string())?;
    }
    bar.finish_and_clear();
    if failures > 0 {
        return Err(format!("{failures} preload writes failed"));
    }
    Ok(())
}

/// The open-loop schedule: request `j` is due at `start + j * step` and
/// goes to worker `j mod workers` (each worker's requests one interval of
/// `workers * step` apart, the workers staggered evenly). Paced by an OS
/// thread that sleeps to each due time: tokio's timers fire on whole
/// milliseconds and, on an idle runtime, up to a millisecond or two late,
/// which an open-loop run (timed from the due time) would count as latency
/// (1.3 ms p50 at 1,000 req/s against the in-memory baseline, whose service
/// time is 0.08 ms). A worker still busy when its next request is due gets
/// it late, and that wait counts (coordinated omission corrected).
fn pace(
    start: std::time::Instant,
    end: std::time::Instant,
    step: Duration,
    ticks: Vec<tokio::sync::mpsc::UnboundedSender<Instant>>,
) {
    let mut j: u32 = 0;
    loop {
        let due = start + step * j;
        if due >= end || ticks.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let _ = ticks[j as usize % ticks.len()].send(Instant::from_std(due));
        j = j.saturating_add(1);
    }
}

async fn worker(
    shared: Arc<Shared>,
    w: usize,
    start: Instant,
    mut ticks: Option<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
) -> Stats {
    let args = &shared.args;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed ^ w as u64);
    let mut stats = Stats::new();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let (read, update, _) = args.workload.mix();
    // Each worker keeps one connection to one node; workers spread over the
    // nodes round-robin.
    let mut conn = Conn::new(w % shared.targets.len());
    let mut values = Values::new(&shared.value, w);
    loop {
        let now = Instant::now();
        let t0 = match ticks.as_mut() {
            // Open loop: the request is timed from when it was due.
            Some(ticks) => match ticks.recv().await {
                Some(due) => due,
                None => break,
            },
            None => {
                if now >= end {
                    break;
                }
                now
            }
        };
        let x: f64 = rng.random();
        let op = if x < read {
            Op::Read
        } else if x < read + update {
            Op::Update
        } else {
            Op::Delete
        };
        let key = pick_key(&shared, &mut rng);
        let body = if op == Op::Update { values.next() } else { bytes::Bytes::new() };
        let ok = request(&shared, &mut conn, op, key, body).await;
        let latency_us = t0.elapsed().as_micros() as u64;
        shared.done.fetch_add(1, Ordering::Relaxed);
        if t0 >= measure_from {
            let i = op as usize;
            stats.hist[i].saturating_record(latency_us.max(1));
            if !ok {
                stats.errors[i] += 1;
            }
        }
    }
    stats
}

fn pick_key(shared: &Shared, rng: &mut impl Rng) -> u64 {
    match &shared.zipf {
        None => rng.random_range(0..shared.args.keys),
        Some(z) => {
            // Scrambled: hot ranks land on unrelated keys, so on all partitions.
            let rank = z.sample(rng) as u64;
            xxhash_rust::xxh3::xxh3_64(&rank.to_le_bytes()) % shared.args.keys
        }
    }
}

/// The values one worker writes: the template with a stamp (worker and
/// sequence number, in hex) over its first bytes, so that no two writes
/// carry the same bytes. A store may skip a write of the bytes a key
/// already holds (sled does), which would measure a lookup, not a write.
struct Values {
    template: Vec<u8>,
    worker: usize,
    seq: u64,
}

impl Values {
    fn new(template: &[u8], worker: usize) -> Self {
        Values { template: template.to_vec(), worker, seq: 0 }
    }

    fn next(&mut self) -> bytes::Bytes {
        self.seq += 1;
        let stamp = format!("{:04x}{:012x}", self.worker & 0xffff, self.seq);
        let n = stamp.len().min(self.template.len());
        self.template[..n].copy_from_slice(&stamp.as_bytes()[..n]);
        bytes::Bytes::copy_from_slice(&self.template)
    }
}

/// One request on `conn`; true when it succeeded (reads: 200, 300 or 404).
async fn request(shared: &Shared, conn: &mut Conn, op: Op, key: u64, body: bytes::Bytes) -> bool {
    use http_body_util::BodyExt;
    let args = &shared.args;
    let mut path = format!("/kv/{}{key}", args.key_prefix);
    let q = match op {
        Op::Read => args.r.as_deref().map(|r| ("r", r)),
        Op::Update | Op::Delete => args.w.as_deref().map(|w| ("w", w)),
    };
    if let Some((name, value)) = q {
        path.push('?');
        path.push_str(name);
        path.push('=');
        path.push_str(value);
    }
    let method = match op {
        Op::Read => hyper::Method::GET,
        Op::Update => hyper::Method::PUT,
        Op::Delete => hyper::Method::DELETE,
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &shared.targets[conn.target].1)
        .body(http_body_util::Full::new(body))
        .expect("valid request");
    let Some(sender) = conn.sender(shared).await else {
        return false;
    };
    let resp = match tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await {
        Ok(Ok(r)) => r,
        _ => {
            conn.sender = None;
            return false;
        }
    };
    let s = resp.status().as_u16();
    // Read the whole body so the connection is ready for the next request.
    if resp.into_body().collect().await.is_err() {
        conn.sender = None;
        return false;
    }
    match op {
        Op::Read => matches!(s, 200 | 300 | 404),
        _ => (200..300).contains(&s),
    }
}

fn summary(h: &Histogram<u64>, errors: u64, secs: f64) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "errors": errors,
        "throughput": h.len() as f64 / secs,
        "mean_ms": h.mean() / 1000.0,
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p95_ms": ms(h.value_at_quantile(0.95)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn report(args: &RunArgs, stats: &Stats) -> Value {
    let secs = args.duration.as_secs_f64();
    let mut total = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut per_op = serde_json::Map::new();
    for (op, name) in OPS {
        let i = op as usize;
        total.add(&stats.hist[i]).expect("same bounds");
        if !stats.hist[i].is_empty() {
            per_op.insert(name.to_string(), summary(&stats.hist[i], stats.errors[i], secs));
        }
    }
    json!({
        "label": args.label,
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "distribution": format!("{:?}", args.distribution).to_lowercase(),
        "urls": args.urls,
        "keys": args.keys,
        "value_size": args.value_size,
        "concurrency": args.concurrency,
        "duration_s": secs,
        "r": args.r,
        "w": args.w,
        "rate": args.rate,
        "total": summary(&total, stats.errors.iter().sum(), secs),
        "ops": per_op,
    })
}

fn print_table(report: &Value) {
    println!(
        "{} workload={} dist={} conc={} r={} w={}",
        report["label"].as_str().unwrap_or(""),
        report["workload"].as_str().unwrap_or(""),
        report["distribution"].as_str().unwrap_or(""),
        report["concurrency"],
        report["r"].as_str().unwrap_or("-"),
        report["w"].as_str().unwrap_or("-"),
    );
    println!(
        "{:<8} {:>10} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "op", "count", "ops/s", "errors", "p50 ms", "p95 ms", "p99 ms", "p99.9", "max ms"
    );
    let mut rows: Vec<(String, &Value)> =
        report["ops"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v)).collect()).unwrap_or_default();
    rows.push(("total".into(), &report["total"]));
    for (name, v) in rows {
        println!(
            "{:<8} {:>10} {:>10.0} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            v["count"],
            v["throughput"].as_f64().unwrap_or(0.0),
            v["errors"],
            v["p50_ms"].as_f64().unwrap_or(0.0),
            v["p95_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
            v["p999_ms"].as_f64().unwrap_or(0.0),
            v["max_ms"].as_f64().unwrap_or(0.0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_hands_out_every_due_time_in_turn_never_early_and_then_stops() {
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
        let start = std::time::Instant::now();
        let step = Duration::from_millis(2);
        let end = start + step * 20;
        let pacer = std::thread::spawn(move || pace(start, end, step, txs));
        let mut got = Vec::new();
        for (w, rx) in rxs.iter_mut().enumerate() {
            // Blocking receives: the pacer thread sends on its own clock.
            while let Some(due) = rx.blocking_recv() {
                assert!(Instant::now() >= due, "a request handed out before it was due");
                got.push((w, due.into_std()));
            }
        }
        pacer.join().expect("pacer");
        // Request j is due at start + j * step and goes to worker j mod 3.
        assert_eq!(got.len(), 20);
        let mut by_due = got.clone();
        by_due.sort_by_key(|(_, due)| *due);
        for (j, (w, due)) in by_due.iter().enumerate() {
            assert_eq!(*due, start + step * j as u32);
            assert_eq!(*w, j % 3);
        }
    }
}
