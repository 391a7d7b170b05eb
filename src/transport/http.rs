//! The real [`Transport`]: node-to-node calls over `/internal/*` on one
//! pooled reqwest client (keep-alive; never a client per request), each
//! bounded by its timeout, and [`HttpLink`]s, one HTTP/1.1 connection per
//! peer on hyper directly, for the batcher's steady stream of calls. With
//! `--cluster-secret` every call carries it in [`SECRET_HEADER`].

use std::pin::{pin, Pin};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{
    BoxFuture, ForwardRequest, ForwardResponse, PeerLink, Route, Target, Transport, TransportError, MEMBERSHIP_REFUSED,
};

/// Header carrying the cluster secret.
pub const SECRET_HEADER: &str = "x-dynakv-secret";
/// Header marking a client request forwarded by another node (never
/// forwarded again).
pub const FORWARDED_HEADER: &str = "x-dynakv-forwarded";
/// Header naming the member a node-to-node request is meant for: another
/// process at that address (a wiped node restarted under a new id, say)
/// refuses it rather than answer for a member it is not.
pub const RECIPIENT_HEADER: &str = "x-dynakv-to";

/// Response headers a forwarded request passes back to the client.
const PASSED_BACK: [&str; 3] = ["content-type", "allow", "x-context"];

/// Internal calls over HTTP.
pub struct HttpTransport {
    http: reqwest::Client,
    secret: Option<String>,
    connect_timeout: Duration,
    link_idle: Duration,
}

impl HttpTransport {
    /// A client that gives up connecting after `connect_timeout`. Its links
    /// open a new connection rather than use one idle for `link_idle` or
    /// longer: set it below the peers' idle-connection timeout
    /// (`--header-timeout-ms`), so a link never sends on a connection the
    /// peer is closing.
    pub fn new(connect_timeout: Duration, secret: Option<String>, link_idle: Duration) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .build()
            .expect("reqwest client builds");
        Self { http, secret, connect_timeout, link_idle }
    }
}

/// Keeps the kind of a reqwest failure: whether the request surely never
/// left this node matters to whoever retries it.
fn classify(e: reqwest::Error, timeout: Duration) -> TransportError {
    if e.is_connect() {
        TransportError::Connect(e.to_string())
    } else if e.is_timeout() {
        TransportError::Timeout(timeout)
    } else {
        TransportError::Io(e.to_string())
    }
}

impl Transport for HttpTransport {
    fn link(&self, to: Target<'_>) -> Option<Box<dyn PeerLink>> {
        HttpLink::new(to.address, self.secret.as_deref(), self.connect_timeout, self.link_idle)
            .map(|l| Box::new(l.to_member(to.id)) as Box<dyn PeerLink>)
    }

    fn call<'a>(
        &'a self,
        to: Target<'a>,
        route: Route,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let mut req = self
                .http
                .post(format!("{}{}", to.address, route.path()))
                .timeout(timeout)
                .header("content-type", route.content_type())
                .body(body);
            if let Some(s) = &self.secret {
                req = req.header(SECRET_HEADER, s);
            }
            // Gossip goes to whoever is at an address (a seed, or a new
            // process there that the cluster is yet to learn of).
            if route != Route::Gossip {
                req = req.header(RECIPIENT_HEADER, to.id);
            }
            let resp = req.send().await.map_err(|e| classify(e, timeout))?;
            let status = resp.status();
            if status == reqwest::StatusCode::CONFLICT {
                // A refusal says why; any other 409 is just a status.
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                if body["code"] == MEMBERSHIP_REFUSED {
                    let why = body["error"].as_str().unwrap_or("no reason given");
                    return Err(TransportError::Refused(why.to_string()));
                }
                return Err(TransportError::Status(status.as_u16()));
            }
            if !status.is_success() {
                return Err(TransportError::Status(status.as_u16()));
            }
            resp.bytes().await.map_err(|e| classify(e, timeout))
        })
    }

    fn forward<'a>(
        &'a self,
        to: Target<'a>,
        req: ForwardRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ForwardResponse, TransportError>> {
        Box::pin(async move {
            if has_dot_segment(&req.path_and_query) {
                return self.forward_verbatim(to.address, req, timeout).await;
            }
            let method =
                reqwest::Method::from_bytes(req.method.as_str().as_bytes()).map_err(|_| TransportError::Closed)?;
            let mut r = self
                .http
                .request(method, format!("{}{}", to.address, req.path_and_query))
                .timeout(timeout)
                .header(FORWARDED_HEADER, "1");
            // The mark is honoured only with the secret, when there is one:
            // a client cannot skip a node's forwarding rules by sending it.
            if let Some(s) = &self.secret {
                r = r.header(SECRET_HEADER, s);
            }
            for (k, v) in req.headers {
                r = r.header(k, v);
            }
            let resp = r.body(req.body).send().await.map_err(|e| classify(e, timeout))?;
            let status = resp.status().as_u16();
            let headers = PASSED_BACK
                .iter()
                .filter_map(|h| resp.headers().get(*h).map(|v| (h.to_string(), v.as_bytes().to_vec())))
                .collect();
            let body = resp.bytes().await.map_err(|e| classify(e, timeout))?;
            Ok(ForwardResponse { status, headers, body })
        })
    }
}

/// Whether a path has a `.` or `..` segment (also spelled `%2E`): a URL
/// parser removes those, so a request for the key `.` or `..` would reach
/// the peer as another path.
fn has_dot_segment(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or_default();
    path.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

impl HttpTransport {
    /// A forward on a connection of its own, its request target sent
    /// exactly as the client sent it (see [`has_dot_segment`]).
    async fn forward_verbatim(
        &self,
        address: &str,
        req: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, TransportError> {
        let base: hyper::Uri =
            address.parse().map_err(|_| TransportError::Connect(format!("bad address {address}")))?;
        let authority = base.authority().ok_or_else(|| TransportError::Connect(format!("bad address {address}")))?;
        let host = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        let (mut sender, conn) = match tokio::time::timeout(self.connect_timeout, open_connection(&host)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(TransportError::Connect(e)),
            Err(_) => return Err(TransportError::Connect("connect timed out".into())),
        };
        let mut r = hyper::Request::builder()
            .method(req.method)
            .uri(req.path_and_query.as_str())
            .header(hyper::header::HOST, authority.as_str())
            .header(FORWARDED_HEADER, "1");
        if let Some(s) = &self.secret {
            r = r.header(SECRET_HEADER, s.as_str());
        }
        for (k, v) in &req.headers {
            r = r.header(k.as_str(), v.as_str());
        }
        let request = r.body(Full::new(req.body)).map_err(|e| TransportError::Connect(e.to_string()))?;
        let exchange = async {
            let resp = sender.send_request(request).await.map_err(|e| TransportError::Io(e.to_string()))?;
            let status = resp.status().as_u16();
            let headers = PASSED_BACK
                .iter()
                .filter_map(|h| resp.headers().get(*h).map(|v| (h.to_string(), v.as_bytes().to_vec())))
                .collect();
            let body = resp.into_body().collect().await.map_err(|e| TransportError::Io(e.to_string()))?;
            Ok(ForwardResponse { status, headers, body: body.to_bytes() })
        };
        // The connection is driven beside the exchange and dropped with it;
        // once it ended, the exchange has what it will get (the whole
        // answer, or an error).
        let driven = async {
            let (mut exchange, mut conn) = (pin!(exchange), pin!(conn));
            tokio::select! {
                biased;
                r = &mut exchange => return r,
                _ = &mut conn => {}
            }
            exchange.await
        };
        tokio::time::timeout(timeout, driven).await.unwrap_or(Err(TransportError::Timeout(timeout)))
    }
}

type LinkConnection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// A new HTTP/1.1 connection to `authority` (`host:port`), without Nagle's
/// delay: its sender, and the connection for the caller to drive.
async fn open_connection(authority: &str) -> Result<(http1::SendRequest<Full<Bytes>>, LinkConnection), String> {
    let stream = TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())
}

/// A [`PeerLink`] over one HTTP/1.1 connection on hyper directly: no pool,
/// no URL to parse per call, and no connection task. The caller's task
/// drives the connection while a call is under way (a request goes out and
/// its answer comes back without a hop through another task); between
/// calls nothing polls it, which HTTP/1.1 allows, as a server speaks only
/// when asked.
///
/// A connection is opened on first use and again after any failure (an
/// error status aside: its answer was read whole), a timeout, a call
/// dropped midway, or an idle spell of `idle`; one the peer closed
/// meanwhile is noticed before sending, and a request the connection gave
/// back unsent is sent once more on a new one.
pub struct HttpLink {
    authority: String,
    secret: Option<hyper::header::HeaderValue>,
    /// The member's id, sent with every request ([`RECIPIENT_HEADER`]).
    recipient: Option<hyper::header::HeaderValue>,
    connect_timeout: Duration,
    idle: Duration,
    open: Option<Open>,
}

struct Open {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once the connection ended: dropped at once, which hands a
    /// request it never sent back to its sender and fails the rest.
    conn: Option<Pin<Box<LinkConnection>>>,
    used: Instant,
}

/// How one exchange on an open connection ended, short of an answer.
enum Failed {
    /// The connection gave the request back unsent: another may send it.
    Unsent(Box<hyper::Request<Full<Bytes>>>),
    /// Anything else.
    Error(TransportError),
}

impl HttpLink {
    /// A link to the node at `address` (a base URL such as
    /// `http://127.0.0.1:7000`); `None` for one that is not plain HTTP with
    /// a host (the transport's `call` still handles those).
    pub fn new(address: &str, secret: Option<&str>, connect_timeout: Duration, idle: Duration) -> Option<Self> {
        let uri: hyper::Uri = address.parse().ok()?;
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let authority = uri.authority()?.as_str().to_string();
        let authority = if uri.port().is_some() { authority } else { format!("{authority}:80") };
        let secret = match secret {
            Some(s) => Some(hyper::header::HeaderValue::from_str(s).ok()?),
            None => None,
        };
        Some(Self { authority, secret, recipient: None, connect_timeout, idle, open: None })
    }

    /// Names the member this link is to in every request, so that another
    /// process at its address refuses them.
    pub fn to_member(mut self, id: &str) -> Self {
        self.recipient = hyper::header::HeaderValue::from_str(id).ok();
        self
    }

    fn request(&self, route: Route, body: Bytes) -> hyper::Request<Full<Bytes>> {
        let mut req = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(route.path())
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, route.content_type());
        if let Some(s) = &self.secret {
            req = req.header(SECRET_HEADER, s.clone());
        }
        if let Some(id) = &self.recipient {
            req = req.header(RECIPIENT_HEADER, id.clone());
        }
        req.body(Full::new(body)).expect("a POST to a fixed path is a valid request")
    }

    /// The open connection, taken out of the link (a call dropped midway
    /// drops it with its request in the air), after opening a new one when
    /// there is none, it was idle too long, or the peer closed it.
    async fn connection(&mut self, deadline: Instant) -> Result<Open, TransportError> {
        if let Some(mut open) = self.open.take() {
            let usable = open.used.elapsed() < self.idle
                && !open.sender.is_closed()
                // Polled once: a connection the peer closed ends here (it
                // reads the end of the stream) instead of taking a request.
                && open.conn.as_mut().is_some_and(|c| c.as_mut().now_or_never().is_none());
            if usable {
                return Ok(open);
            }
        }
        let limit = deadline.min(Instant::now() + self.connect_timeout);
        match tokio::time::timeout_at(limit, open_connection(&self.authority)).await {
            Ok(Ok((sender, conn))) => Ok(Open { sender, conn: Some(Box::pin(conn)), used: Instant::now() }),
            Ok(Err(e)) => Err(TransportError::Connect(format!("{}: {e}", self.authority))),
            Err(_) => Err(TransportError::Connect(format!("{}: no connection in time", self.authority))),
        }
    }

    async fn exchange(&mut self, route: Route, body: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        let deadline = Instant::now() + timeout;
        let mut req = self.request(route, body);
        // The second try only for a request a stale connection gave back.
        for _ in 0..2 {
            let mut open = self.connection(deadline).await?;
            let result = tokio::time::timeout_at(deadline, drive(&mut open, req)).await;
            // Kept for the next call only after a whole answer (an error
            // status included) on a connection still open; after anything
            // else its state is unknown and it is dropped here.
            let keep = |open: Open, link: &mut Self| {
                if open.conn.is_some() {
                    link.open = Some(Open { used: Instant::now(), ..open });
                }
            };
            return match result {
                Ok(Ok(answer)) => {
                    keep(open, self);
                    Ok(answer)
                }
                Ok(Err(Failed::Unsent(back))) => {
                    req = *back;
                    continue;
                }
                Ok(Err(Failed::Error(e @ TransportError::Status(_)))) => {
                    keep(open, self);
                    Err(e)
                }
                Ok(Err(Failed::Error(e))) => Err(e),
                Err(_) => Err(TransportError::Timeout(timeout)),
            };
        }
        // Two connections closed before taking it: it surely never arrived.
        Err(TransportError::Connect(format!("{}: connection closed before the request was sent", self.authority)))
    }
}

impl PeerLink for HttpLink {
    fn call(&mut self, route: Route, body: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(self.exchange(route, body, timeout))
    }
}

/// One request and its whole answer on `open`, polling the connection in
/// this task while they travel.
async fn drive(open: &mut Open, req: hyper::Request<Full<Bytes>>) -> Result<Bytes, Failed> {
    let Open { sender, conn, .. } = open;
    let Some(connection) = conn.as_mut() else {
        return Err(Failed::Unsent(Box::new(req)));
    };
    let exchange = async {
        // Ready once the connection took in the last answer (polled below).
        if sender.ready().await.is_err() {
            return Err(Failed::Unsent(Box::new(req)));
        }
        let resp = sender.try_send_request(req).await.map_err(|mut e| match e.take_message() {
            Some(back) => Failed::Unsent(Box::new(back)),
            None => Failed::Error(TransportError::Io(e.into_error().to_string())),
        })?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| Failed::Error(TransportError::Io(e.to_string())))?;
        if !status.is_success() {
            return Err(Failed::Error(TransportError::Status(status.as_u16())));
        }
        Ok(body.to_bytes())
    };
    let mut exchange = pin!(exchange);
    tokio::select! {
        biased;
        r = &mut exchange => r,
        // The connection ended (the peer closed it, or it failed). A clean
        // end leaves a request it never took queued; dropping the
        // connection hands that back (`Unsent`), fails one in the air and
        // ends an unfinished answer, so the exchange ends at once.
        _ = connection.as_mut() => {
            *conn = None;
            exchange.await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// What the test peer does with a request.
    #[test]
    fn dot_segments_are_found_in_every_spelling_and_only_whole() {
        for yes in ["/kv/.", "/kv/..", "/kv/%2E", "/kv/%2e%2E?r=1", "/kv/.%2e"] {
            assert!(has_dot_segment(yes), "{yes}");
        }
        for no in ["/kv/a.b", "/kv/...", "/kv/%2E%2E%2E", "/kv/k?x=..", "/kv/%252E"] {
            assert!(!has_dot_segment(no), "{no}");
        }
    }

    #[derive(Clone, Copy)]
    enum Peer {
        /// Answers `path|secret|body`, keeping the connection open.
        Echo,
        /// Answers like `Echo`, then closes the connection.
        EchoThenClose,
        /// Answers like `Echo`, and closes a connection idle for 50 ms
        /// without a word (a node's `--header-timeout-ms`).
        EchoIdleTimeout,
        /// Answers 503.
        Busy,
        /// Reads the request and never answers.
        Silent,
        /// Reads the request and closes the connection without answering.
        ReadThenClose,
    }

    /// A peer on 127.0.0.1 that counts the connections it accepted.
    async fn peer(kind: Peer) -> (String, Arc<AtomicUsize>) {
        let (address, accepted, _) = peer_counting_closes(kind).await;
        (address, accepted)
    }

    /// A peer that also counts the connections it has closed.
    async fn peer_counting_closes(kind: Peer) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, gone) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(move |req: hyper::Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let secret =
                        req.headers().get(SECRET_HEADER).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    if matches!(kind, Peer::Silent) {
                        std::future::pending::<()>().await;
                    }
                    if matches!(kind, Peer::ReadThenClose) {
                        return Err("hang up".to_string());
                    }
                    let status = if matches!(kind, Peer::Busy) { 503 } else { 200 };
                    let text = format!("{path}|{secret}|{}", String::from_utf8_lossy(&body));
                    let resp = hyper::Response::builder().status(status).body(Full::new(Bytes::from(text))).unwrap();
                    Ok::<_, String>(resp)
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.keep_alive(!matches!(kind, Peer::EchoThenClose));
                if matches!(kind, Peer::EchoIdleTimeout) {
                    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_millis(50));
                }
                let gone = gone.clone();
                tokio::spawn(async move {
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    gone.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (address, accepted, closed)
    }

    const SECOND: Duration = Duration::from_secs(1);
    const LONG: Duration = Duration::from_secs(10);

    fn link(address: &str, idle: Duration) -> HttpLink {
        HttpLink::new(address, Some("s3cret"), LONG, idle).expect("an http address")
    }

    #[tokio::test]
    async fn calls_travel_on_one_connection_with_route_secret_and_body() {
        let (address, accepted) = peer(Peer::Echo).await;
        let mut l = link(&address, LONG);
        for i in 0..3 {
            let answer = l.call(Route::Batch, Bytes::from(format!("op{i}")), LONG).await.unwrap();
            assert_eq!(answer, Bytes::from(format!("/internal/batch|s3cret|op{i}")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_is_replaced_without_failing_a_call() {
        let (address, accepted) = peer(Peer::EchoThenClose).await;
        let mut l = link(&address, LONG);
        for i in 0..5 {
            let answer = l.call(Route::Batch, Bytes::from(format!("op{i}")), LONG).await;
            assert_eq!(answer.unwrap(), Bytes::from(format!("/internal/batch|s3cret|op{i}")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_while_idle_is_replaced_without_failing_a_call() {
        let (address, accepted, closed) = peer_counting_closes(Peer::EchoIdleTimeout).await;
        let mut l = link(&address, LONG);
        l.call(Route::Batch, Bytes::from_static(b"a"), LONG).await.unwrap();
        let deadline = Instant::now() + LONG;
        while closed.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the peer never closed the idle connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let answer = l.call(Route::Batch, Bytes::from_static(b"b"), LONG).await;
        assert_eq!(answer.unwrap(), Bytes::from_static(b"/internal/batch|s3cret|b"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_error_status_keeps_the_connection() {
        let (busy, accepted) = peer(Peer::Busy).await;
        let mut l = link(&busy, LONG);
        for _ in 0..2 {
            assert_eq!(l.call(Route::Batch, Bytes::new(), LONG).await, Err(TransportError::Status(503)));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_reused() {
        let (address, accepted) = peer(Peer::Echo).await;
        let mut l = link(&address, Duration::ZERO);
        l.call(Route::Batch, Bytes::from_static(b"a"), LONG).await.unwrap();
        l.call(Route::Batch, Bytes::from_static(b"b"), LONG).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_keep_their_kind() {
        let (busy, _) = peer(Peer::Busy).await;
        assert_eq!(link(&busy, LONG).call(Route::Batch, Bytes::new(), LONG).await, Err(TransportError::Status(503)));

        let (silent, _) = peer(Peer::Silent).await;
        assert_eq!(
            link(&silent, LONG).call(Route::Batch, Bytes::new(), SECOND).await,
            Err(TransportError::Timeout(SECOND))
        );

        // A port nobody listens on (bound, then released).
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let err = link(&closed, LONG).call(Route::Batch, Bytes::new(), LONG).await.unwrap_err();
        assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
        assert!(err.not_delivered());

        // The peer read the request and hung up: it may have acted on it.
        let (hangup, _) = peer(Peer::ReadThenClose).await;
        let err = link(&hangup, LONG).call(Route::Batch, Bytes::from_static(b"op"), LONG).await.unwrap_err();
        assert!(matches!(err, TransportError::Io(_)), "{err:?}");
        assert!(!err.not_delivered());
    }

    #[tokio::test]
    async fn after_a_failure_the_next_call_opens_a_new_connection() {
        let (address, accepted) = peer(Peer::Silent).await;
        let mut l = link(&address, LONG);
        assert!(l.call(Route::Batch, Bytes::new(), Duration::from_millis(100)).await.is_err());
        assert!(l.call(Route::Batch, Bytes::new(), Duration::from_millis(100)).await.is_err());
        // The timed-out connection still had a request in the air: not reused.
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_plain_http_addresses_get_a_link() {
        assert!(HttpLink::new("http://127.0.0.1:7000", None, LONG, LONG).is_some());
        assert_eq!(HttpLink::new("http://localhost", None, LONG, LONG).unwrap().authority, "localhost:80");
        assert!(HttpLink::new("https://127.0.0.1:7000", None, LONG, LONG).is_none());
        assert!(HttpLink::new("not a url", None, LONG, LONG).is_none());
    }
}
