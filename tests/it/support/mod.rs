//! Test support: real `dynakv` processes on 127.0.0.1 with their own data
//! dirs, a blocking-free reqwest client, and `eventually` for polling with a
//! generous deadline instead of sleeping.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Deadline for anything polled: generous, CI shares 2 cores with the build.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Path of the release-or-debug binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dynakv")
}

/// A free port on 127.0.0.1 (bound and released; a race is possible but rare,
/// and `Server::start` retries on a bind failure).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running node process.
pub struct Server {
    child: Option<Child>,
    /// Base URL.
    pub url: String,
    port: u16,
    dir: TempDir,
    args: Vec<String>,
    /// Client for this node.
    pub http: reqwest::Client,
}

impl Server {
    /// Starts a node with a fresh data dir and `args`; waits for `/health`.
    pub async fn start(args: &[&str]) -> Server {
        Self::start_at(0, args).await
    }

    /// Like [`Server::start`] on `port` (0: any free one; a port taken
    /// meanwhile is replaced by another, so compare `url` when it matters).
    pub async fn start_at(port: u16, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server {
            child: None,
            url: String::new(),
            port,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            http: client(),
        };
        s.boot().await;
        s
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn boot(&mut self) {
        for _ in 0..5 {
            if self.port == 0 {
                self.port = free_port();
            }
            self.url = format!("http://127.0.0.1:{}", self.port);
            let mut cmd = Command::new(binary());
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--data-dir")
                .arg(self.data_dir())
                .args(&self.args)
                .stdout(Stdio::null());
            // DYNAKV_TEST_LOG=debug shows the nodes' logs while debugging a test.
            match std::env::var("DYNAKV_TEST_LOG") {
                Ok(level) => cmd.env("RUST_LOG", level).stderr(Stdio::inherit()),
                Err(_) => cmd.env("RUST_LOG", "warn").stderr(Stdio::null()),
            };
            let mut child = cmd.spawn().unwrap();
            let start = Instant::now();
            let mut up = None;
            while up.is_none() && start.elapsed() < DEADLINE {
                if let Ok(Some(_)) = child.try_wait() {
                    up = Some(false);
                    break;
                }
                match self.http.get(format!("{}/health", self.url)).send().await {
                    Ok(r) if r.status() == 200 => up = Some(true),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            if up == Some(true) {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            // Port taken meanwhile: try another.
            self.port = 0;
        }
        panic!("dynakv did not start with {:?}", self.args);
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// SIGSTOP: the process stops answering but keeps its sockets. Returns
    /// once the kernel reports it stopped (the signal is asynchronous).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.pid());
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // Field 3, after the parenthesised command name.
            let state = text.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
            if matches!(state, Some("T") | Some("t")) {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "process did not stop");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// SIGKILL: a crash, nothing flushed on the way out.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait();
    }

    /// Waits for the process to exit (with the deadline).
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "dynakv did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again on the same port and data dir.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.boot().await;
    }

    /// Starts the process again on the same data dir at another port (a
    /// node moved to a new address).
    pub async fn restart_elsewhere(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let old = self.port;
        while self.port == old {
            self.port = free_port();
        }
        self.boot().await;
    }

    /// PUT a value; returns (status, X-Context).
    pub async fn put(&self, key: &str, value: &str, ctx: Option<&str>) -> (u16, Option<String>) {
        let mut req = self.http.put(self.at(&format!("/kv/{key}"))).body(value.to_string());
        if let Some(c) = ctx {
            req = req.header("X-Context", c);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), context_of(&r))
    }

    /// GET a key; returns (status, X-Context, body).
    pub async fn get(&self, key: &str) -> (u16, Option<String>, String) {
        let r = self.http.get(self.at(&format!("/kv/{key}"))).send().await.unwrap();
        let ctx = context_of(&r);
        (r.status().as_u16(), ctx, r.text().await.unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: our own child; a stopped process must be continued to die promptly.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client that never goes through a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

/// The `X-Context` header of a response.
pub fn context_of(r: &reqwest::Response) -> Option<String> {
    r.headers().get("x-context").map(|v| v.to_str().unwrap().to_string())
}

/// Polls `f` until it returns `Some`, or `None` at the deadline.
pub async fn eventually_opt<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > DEADLINE {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls until `f` is true; panics with `what` at the deadline.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if eventually_opt(|| {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
    .is_none()
    {
        panic!("not within {DEADLINE:?}: {what}");
    }
}

/// Runs the binary with `args` expecting it to fail at startup; returns
/// (exit code, stderr).
pub fn start_error(args: &[&str], data_dir: &Path) -> (i32, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("--data-dir").arg(data_dir).arg("--listen").arg(format!("127.0.0.1:{}", free_port()));
    cmd.args(args).env("RUST_LOG", "off");
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Fast timers for multi-node tests: generous enough that a busy 2-core CI
/// machine does not make healthy nodes look suspect.
pub const FAST: &[&str] = &[
    "--gossip-interval-ms",
    "50",
    "--suspect-after-ms",
    "2000",
    "--dead-after-ms",
    "6000",
    "--request-timeout-ms",
    "500",
];

/// Several nodes on 127.0.0.1, each seeded with only the first.
pub struct Cluster {
    /// The nodes, `n1`, `n2`, ...
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Starts `n` nodes with ids `n1..`, [`FAST`] timers and `extra` flags,
    /// and waits until every node sees every other alive.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_with(n, FAST, extra).await
    }

    /// Like [`Cluster::start`] with other timers.
    pub async fn start_with(n: usize, timers: &[&str], extra: &[&str]) -> Cluster {
        let mut nodes: Vec<Server> = Vec::new();
        for i in 1..=n {
            let id = format!("n{i}");
            let mut args: Vec<&str> = vec!["--node-id", &id];
            args.extend_from_slice(timers);
            args.extend_from_slice(extra);
            let seed;
            if let Some(first) = nodes.first() {
                seed = first.url.clone();
                args.extend_from_slice(&["--seeds", &seed]);
            }
            nodes.push(Server::start(&args).await);
        }
        let c = Cluster { nodes };
        c.wait_all_alive().await;
        c.wait_all_ready().await;
        c
    }

    /// Polls until every node answers `GET /health/ready` with 200 (it
    /// knows the cluster and holds every partition it owns).
    pub async fn wait_all_ready(&self) {
        eventually("every node ready", || async {
            for s in &self.nodes {
                if ready_status(s).await != 200 {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Starts one more node, `n<len + 1>`, seeded with the first, with
    /// `timers` and `extra` flags (does not wait for anything but /health).
    pub async fn join(&mut self, timers: &[&str], extra: &[&str]) -> usize {
        let id = format!("n{}", self.nodes.len() + 1);
        let seed = self.nodes[0].url.clone();
        let mut args: Vec<&str> = vec!["--node-id", &id, "--seeds", &seed];
        args.extend_from_slice(timers);
        args.extend_from_slice(extra);
        self.nodes.push(Server::start(&args).await);
        self.nodes.len() - 1
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    /// Index of the node with id `id`.
    pub fn index_of(&self, id: &str) -> usize {
        id.trim_start_matches('n').parse::<usize>().unwrap() - 1
    }

    /// Polls until every running node lists every node alive.
    pub async fn wait_all_alive(&self) {
        let n = self.nodes.len();
        eventually("every node sees every node alive", || async {
            for s in &self.nodes {
                let statuses = member_statuses(s).await;
                if statuses.len() != n || statuses.values().any(|st| st != "alive") {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// The preference list of `key` as node 0 reports it.
    pub async fn preference_list(&self, key: &str) -> Vec<String> {
        let r: serde_json::Value = self.nodes[0]
            .http
            .get(self.nodes[0].at(&format!("/cluster/replicas/{key}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["preference_list"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }
}

/// `id -> status` as node `s` sees it (empty if `s` does not answer).
pub async fn member_statuses(s: &Server) -> std::collections::BTreeMap<String, String> {
    let Ok(r) = s.http.get(s.at("/cluster/members")).send().await else { return Default::default() };
    let Ok(m) = r.json::<serde_json::Value>().await else { return Default::default() };
    m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m["status"].as_str().unwrap().to_string()))
        .collect()
}

/// `(node, [(clock, deleted)])` for each replica of `key`, asked through `s`.
pub async fn replica_versions(s: &Server, key: &str) -> Vec<(String, bool, Vec<serde_json::Value>)> {
    let r: serde_json::Value =
        s.http.get(s.at(&format!("/cluster/replicas/{key}"))).send().await.unwrap().json().await.unwrap();
    r["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rep| {
            (
                rep["node"].as_str().unwrap().to_string(),
                rep["reachable"].as_bool().unwrap(),
                rep["versions"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

/// An unlabelled metric of `s` (0 when absent or unreachable).
pub async fn metric(s: &Server, name: &str) -> f64 {
    let Ok(r) = s.http.get(s.at("/metrics")).send().await else { return 0.0 };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Reads `{prefix}0..{prefix}{n}` at r=1 through `s`: each must answer 200
/// with `v{i}` (`when` names the moment in a failure).
pub async fn reads_back_at_r1(s: &Server, prefix: &str, n: usize, when: &str) {
    for i in 0..n {
        let r = s.http.get(s.at(&format!("/kv/{prefix}{i}?r=1"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{prefix}{i} {when}");
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
}

/// The status `GET /health/ready` answers (0 when unreachable).
pub async fn ready_status(s: &Server) -> u16 {
    match s.http.get(s.at("/health/ready")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The sibling values of a JSON read body, sorted (`<deleted>` for a
/// tombstone).
pub fn sorted_values(body: &serde_json::Value) -> Vec<String> {
    let mut values: Vec<String> = body["siblings"]
        .as_array()
        .map(|a| a.iter().map(|s| s["value"].as_str().unwrap_or("<deleted>").to_string()).collect())
        .unwrap_or_default();
    values.sort();
    values
}

/// The id node `s` reports on `GET /health`.
pub async fn node_id(s: &Server) -> String {
    let v: serde_json::Value = s.http.get(s.at("/health")).send().await.unwrap().json().await.unwrap();
    v["node_id"].as_str().unwrap().to_string()
}
