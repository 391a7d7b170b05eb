//! The real [`Transport`]: node-to-node calls over `/internal/*` on one
//! pooled reqwest client (keep-alive; never a client per request), each
//! bounded by its timeout. With `--cluster-secret` every call carries it in
//! [`SECRET_HEADER`].

use std::time::Duration;

use bytes::Bytes;

use super::{BoxFuture, ForwardRequest, ForwardResponse, Route, Target, Transport, TransportError};

/// Header carrying the cluster secret.
pub const SECRET_HEADER: &str = "x-dynakv-secret";
/// Header marking a client request forwarded by another node (never
/// forwarded again).
pub const FORWARDED_HEADER: &str = "x-dynakv-forwarded";

/// Response headers a forwarded request passes back to the client.
const PASSED_BACK: [&str; 3] = ["content-type", "allow", "x-context"];

/// Internal calls over HTTP.
pub struct HttpTransport {
    http: reqwest::Client,
    secret: Option<String>,
}

impl HttpTransport {
    /// A client that gives up connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration, secret: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .build()
            .expect("reqwest client builds");
        Self { http, secret }
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
    fn call<'a>(
        &'a self,
        to: Target<'a>,
        route: Route,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let content_type = if route == Route::Gossip { "application/json" } else { "application/octet-stream" };
            let mut req = self
                .http
                .post(format!("{}{}", to.address, route.path()))
                .timeout(timeout)
                .header("content-type", content_type)
                .body(body);
            if let Some(s) = &self.secret {
                req = req.header(SECRET_HEADER, s);
            }
            let resp = req.send().await.map_err(|e| classify(e, timeout))?;
            if !resp.status().is_success() {
                return Err(TransportError::Status(resp.status().as_u16()));
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
