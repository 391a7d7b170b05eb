//! Overload and slow clients (issue 12), against a real node: a flood of
//! connections with requests in flight plus half-sent requests. `/health`
//! keeps answering within a second, every 5xx is 503 `overloaded`, the node
//! stays up, closes the half-sent connections, and serves normally after.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{eventually, Server};

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Sends a request head announcing a body it never finishes: a request in
/// flight for as long as the node lets it be. Returns the status and body
/// of the answer, if one comes.
async fn stuck_put(addr: String, i: usize) -> Option<(u16, Value)> {
    let mut c = tokio::net::TcpStream::connect(&addr).await.ok()?;
    let head = format!("PUT /kv/flood{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n");
    // No body byte is sent: nothing unread is left in the node's buffer
    // when it answers and closes, so the answer is not lost to a reset.
    c.write_all(head.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), c.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(at) = text.find("\r\n\r\n") {
            let status = text.get(9..12)?.parse().ok()?;
            let body: Value = serde_json::from_str(text[at + 4..].trim()).unwrap_or(Value::Null);
            if body != Value::Null {
                return Some((status, body));
            }
        }
    }
    None
}

#[tokio::test]
async fn a_flood_of_clients_gets_503_overloaded_while_health_answers() {
    // A small budget and a short deadline, so the test sees both.
    let s =
        Server::start(&["--max-requests", "32", "--header-timeout-ms", "2000", "--request-timeout-ms", "500"]).await;
    let addr = s.url.trim_start_matches("http://").to_string();

    // A few hundred connections that send half a request head and stall.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Len").await.unwrap();
        stalled.push(c);
    }
    // About a thousand connections with a request in flight each.
    let flood: Vec<_> = (0..1000).map(|i| tokio::spawn(stuck_put(addr.clone(), i))).collect();

    // /health answers within a second throughout, and memory stays bounded.
    let probe = crate::support::client();
    let mut worst = Duration::ZERO;
    let mut peak_rss: f64 = 0.0;
    for _ in 0..40 {
        let t = Instant::now();
        let r = probe.get(s.at("/health")).timeout(Duration::from_secs(5)).send().await;
        assert!(r.is_ok_and(|r| r.status() == 200), "/health failed under load");
        worst = worst.max(t.elapsed());
        peak_rss = peak_rss.max(rss_mib(s.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for f in flood {
        answers.push(f.await.unwrap());
    }
    let shed = answers.iter().flatten().filter(|(st, b)| *st == 503 && b["code"] == "overloaded").count();
    let other: Vec<_> = answers.iter().flatten().filter(|(st, b)| !(*st == 503 && b["code"] == "overloaded")).collect();
    println!(
        "flood: {} answered, {shed} with 503 overloaded, {} otherwise, worst /health {worst:?}, peak RSS {peak_rss:.0} MiB",
        answers.iter().flatten().count(),
        other.len()
    );
    assert!(worst < Duration::from_secs(1), "/health took {worst:?}");
    assert!(other.iter().all(|(st, _)| *st < 500), "a 5xx other than 503 overloaded: {other:?}");
    let unanswered = answers.iter().filter(|a| a.is_none()).count();
    assert!(shed >= 900, "the flood was shed: {shed} overloaded, {unanswered} unanswered, other {other:?}");
    assert!(peak_rss < 1024.0, "memory stayed bounded: {peak_rss} MiB");

    // The half-sent heads were cut off by the header timeout.
    for mut c in stalled {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await;
        assert!(read.is_ok(), "a stalled connection was left open");
    }
    // Back to normal.
    eventually("serves normally again", || async {
        s.put("after", "calm", None).await.0 == 204 && s.get("after").await.2 == "calm"
    })
    .await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let s = Server::start(&["--header-timeout-ms", "500"]).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Nothing more is sent: the server closes the connection (EOF) soon
    // after the timeout, not never.
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() >= Duration::from_millis(300), "closed too early: {:?}", t.elapsed());
}

#[tokio::test]
async fn a_connection_that_never_sends_anything_is_closed() {
    let s = Server::start(&["--header-timeout-ms", "500"]).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
        .await
        .expect("the node closed the silent connection")
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains(" 408 "), "failures are never 408");
    assert!(t.elapsed() >= Duration::from_millis(300), "closed too early: {:?}", t.elapsed());
    // On a new connection: the server's own client may hold a pooled one
    // that the header timeout closed meanwhile.
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let r = fresh.get(s.at("/kv/anything")).send().await.unwrap();
    assert_eq!(r.status(), 404, "still serving");
}
