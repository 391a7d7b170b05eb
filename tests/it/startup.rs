//! Startup mistakes: one clear line on stderr and a non-zero exit.

use crate::support::{eventually, free_port, metric, ready_status, start_error, Server};

fn expect_failure(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = start_error(args, &dir.path().join("data"));
    assert_ne!(code, 0, "{args:?} started");
    assert!(stderr.contains(needle), "{args:?}: stderr {stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: not one line: {stderr}");
}

#[test]
fn bad_flags_and_values() {
    expect_failure(&["--no-such-flag"], "--no-such-flag");
    expect_failure(&["--replicas", "0"], "--replicas");
    expect_failure(&["--partitions", "0"], "--partitions");
    expect_failure(&["--vnodes", "0"], "--vnodes");
    expect_failure(&["--read-quorum", "0"], "--read-quorum");
    expect_failure(&["--write-quorum", "x"], "--write-quorum");
    expect_failure(&["--replicas", "2", "--read-quorum", "3"], "--read-quorum (3) must not exceed --replicas (2)");
    expect_failure(
        &["--replicas", "1", "--write-quorum", "2", "--read-quorum", "1"],
        "--write-quorum (2) must not exceed",
    );
    expect_failure(&["--listen", "not-an-address"], "--listen");
    expect_failure(&["--advertise", "nope"], "--advertise");
    expect_failure(&["--seeds", "http://ok:1,::bad"], "--seeds");
    expect_failure(&["--node-id", "has space"], "--node-id");
    expect_failure(&["--worker-threads", "0"], "--worker-threads");
    expect_failure(&["--sync-writes", "maybe"], "--sync-writes");
    expect_failure(&["--log-format", "xml"], "--log-format");
}

#[test]
fn a_data_dir_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let (code, stderr) = start_error(&[], &file);
    assert_ne!(code, 0);
    assert!(stderr.contains("is a file"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn an_unwritable_data_dir_is_refused() {
    if unsafe { libc::geteuid() } == 0 {
        // root writes anywhere; use a path under a file instead.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let (code, stderr) = start_error(&[], &dir.path().join("f").join("sub"));
        assert_ne!(code, 0);
        assert!(stderr.contains("not writable"), "{stderr}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
    let (code, stderr) = start_error(&[], &ro.join("data"));
    assert_ne!(code, 0);
    assert!(stderr.contains("not writable"), "{stderr}");
}

#[tokio::test]
async fn a_data_dir_in_use_is_refused_and_the_first_node_keeps_serving() {
    let s = Server::start(&[]).await;
    let (code, stderr) = start_error(&[], &s.data_dir());
    assert_ne!(code, 0);
    assert!(stderr.contains("locked by another running dynakv node"), "{stderr}");
    assert_eq!(s.http.get(s.at("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_data_dir_of_another_node_id_or_q_is_refused() {
    let mut s = Server::start(&["--node-id", "first"]).await;
    assert!(s.terminate().success());
    let (code, stderr) = start_error(&["--node-id", "second"], &s.data_dir());
    assert_ne!(code, 0);
    assert!(stderr.contains("belongs to node \"first\""), "{stderr}");
    let (code, stderr) = start_error(&["--partitions", "32"], &s.data_dir());
    assert_ne!(code, 0);
    assert!(stderr.contains("--partitions 64"), "{stderr}");
}

#[tokio::test]
async fn environment_variables_configure_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let mut child = std::process::Command::new(crate::support::binary())
        .env("DYNAKV_LISTEN", format!("127.0.0.1:{port}"))
        .env("DYNAKV_DATA_DIR", dir.path().join("d"))
        .env("DYNAKV_NODE_ID", "from-env")
        .env("DYNAKV_PARTITIONS", "4")
        .env("RUST_LOG", "off")
        .spawn()
        .unwrap();
    let http = crate::support::client();
    let ring = crate::support::eventually_opt(|| async {
        let r = http.get(format!("http://127.0.0.1:{port}/cluster/ring")).send().await.ok()?;
        r.json::<serde_json::Value>().await.ok()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let ring = ring.expect("node started from environment");
    assert_eq!(ring["partition_count"], 4);
    assert_eq!(ring["partitions"][0]["preference_list"][0], "from-env");
}

/// Compose files pass `DYNAKV_CLUSTER_SECRET: ${DYNAKV_CLUSTER_SECRET:-}`:
/// an empty variable means no secret (on the command line it is an error).
#[tokio::test]
async fn an_empty_secret_in_the_environment_means_none() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let mut child = std::process::Command::new(crate::support::binary())
        .env("DYNAKV_LISTEN", format!("127.0.0.1:{port}"))
        .env("DYNAKV_DATA_DIR", dir.path().join("d"))
        .env("DYNAKV_CLUSTER_SECRET", "")
        .env("DYNAKV_ADVERTISE", "")
        .env("RUST_LOG", "off")
        .spawn()
        .unwrap();
    let http = crate::support::client();
    let status = crate::support::eventually_opt(|| async {
        let r = http.post(format!("http://127.0.0.1:{port}/internal/gossip")).body("{}").send().await.ok()?;
        Some(r.status().as_u16())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, Some(400), "served, and internal routes need no secret");
    let (code, stderr) = crate::support::start_error(&["--cluster-secret", ""], &dir.path().join("e"));
    assert_ne!(code, 0);
    assert!(stderr.contains("--cluster-secret must not be empty"), "{stderr}");
}

/// One seed list given to every node of a cluster names each node itself
/// too. A node whose only seed is itself is alone by design: ready, and
/// writable, instead of waiting forever to hear from somebody.
#[tokio::test]
async fn a_node_whose_only_seed_is_itself_starts_alone() {
    let port = free_port();
    let own = format!("http://127.0.0.1:{port}");
    let s = Server::start_at(port, &["--seeds", &format!("{own}/")]).await;
    assert_eq!(s.url, own, "port {port} was taken before the node could bind it");
    eventually("the node is ready", || async { ready_status(&s).await == 200 }).await;
    assert_eq!(s.put("k", "v", None).await.0, 204);
    let (status, _, body) = s.get("k").await;
    assert_eq!((status, body.as_str()), (200, "v"));
}

/// A seed naming this node under another name (`localhost` for
/// `127.0.0.1`) shows itself when it answers gossip as this very node: it is
/// dropped, so with no other seed the node is alone by design; with another
/// seed that does not answer, talking to itself never makes the node act as
/// if it knew the cluster.
#[tokio::test]
async fn a_seed_that_is_this_node_under_another_name_is_recognised() {
    let port = free_port();
    let alone =
        Server::start_at(port, &["--gossip-interval-ms", "50", "--seeds", &format!("http://localhost:{port}")]).await;
    assert_eq!(alone.url, format!("http://127.0.0.1:{port}"), "port {port} was taken before the node could bind it");
    eventually("the node is ready, alone", || async { ready_status(&alone).await == 200 }).await;
    assert_eq!(alone.put("k", "v", None).await.0, 204);

    let port = free_port();
    let nobody = free_port();
    let seeds = format!("http://localhost:{port},http://127.0.0.1:{nobody}");
    let waiting = Server::start_at(port, &["--gossip-interval-ms", "50", "--seeds", &seeds]).await;
    assert_eq!(waiting.url, format!("http://127.0.0.1:{port}"), "port {port} was taken before the node could bind it");
    // 40 rounds, each asking one of the two seeds at random: it has asked
    // itself (and learnt that seed is itself) all but surely.
    eventually("40 gossip rounds", || async { metric(&waiting, "dynakv_gossip_rounds_total").await >= 40.0 }).await;
    assert_eq!(ready_status(&waiting).await, 503, "it must not take itself for the cluster");
    assert_eq!(waiting.put("k", "v", None).await.0, 503);
}

/// What `cargo run --release` does: no flags, 127.0.0.1:8080, data in ./data.
#[tokio::test]
async fn no_flags_serve_on_8080_from_dot_data() {
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        panic!("127.0.0.1:8080 is taken by another program; this test needs it free");
    }
    let cwd = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(crate::support::binary())
        .current_dir(cwd.path())
        .env_remove("DYNAKV_LISTEN")
        .env_remove("DYNAKV_DATA_DIR")
        .env("RUST_LOG", "off")
        .spawn()
        .unwrap();
    let http = crate::support::client();
    let health = crate::support::eventually_opt(|| async {
        let r = http.get("http://127.0.0.1:8080/health").send().await.ok()?;
        r.json::<serde_json::Value>().await.ok()
    })
    .await;
    // SAFETY: our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(health.expect("serves on 127.0.0.1:8080")["status"], "ok");
    assert!(cwd.path().join("data").join("db").exists(), "data lives in ./data");
    assert!(status.success());
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let child = std::process::Command::new(crate::support::binary())
        .args(["--log-format", "json", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = crate::support::client();
    crate::support::eventually("node answers", || async {
        http.get(format!("http://127.0.0.1:{port}/health")).send().await.is_ok()
    })
    .await;
    // SAFETY: our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
}

#[tokio::test]
async fn listen_on_port_zero_advertises_the_port_it_got() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(crate::support::binary())
            .args(["--log-format", "json", "--listen", "127.0.0.1:0", "--node-id", "z"])
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The "serving" line names the address; stderr is read to its end, so
    // the node never writes into a closed pipe.
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.unwrap_or_default()) else { continue };
            if let Some(a) = v["fields"]["address"].as_str().or(v["address"].as_str()) {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let address = rx.recv_timeout(crate::support::DEADLINE).expect("a log line names the address");
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{address}");
    let http = crate::support::client();
    let members: serde_json::Value = crate::support::eventually_opt(|| async {
        http.get(format!("{address}/cluster/members")).send().await.ok()?.json().await.ok()
    })
    .await
    .expect("it serves on the port it advertises");
    assert_eq!(members["members"][0]["address"], address.as_str());
    // SAFETY: our own child.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    assert!(child.0.wait().unwrap().success());
}

/// A child process killed when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_node_started_alone_serves_at_once_and_reports_ready_after_its_settle() {
    // No seeds, an empty data dir, a configured id: a new cluster, or a
    // former member whose disk was lost. It serves at once, and reports
    // ready once the others' gossip (if any) had three rounds to reach it.
    let s = Server::start(&["--node-id", "solo", "--gossip-interval-ms", "2000"]).await;
    let r = s.http.get(s.at("/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("started alone"), "{body}");
    assert_eq!(s.put("k", "v", None).await.0, 204);
    assert_eq!(s.get("k").await.2, "v");
    // A key it does not have is answered 404 (after a wait for gossip that
    // never comes, at most a request timeout).
    assert_eq!(s.get("missing").await.0, 404);
    eventually("ready after the settle", || async { ready_status(&s).await == 200 }).await;
    // A generated id is new by construction: such a node is ready at once.
    let fresh = Server::start(&[]).await;
    assert_eq!(ready_status(&fresh).await, 200);
}
