//! The two layers every request passes: [`Observe`] (metrics, a debug log
//! line, JSON 405s) around every route, and [`Budget`] (load shedding and a
//! deadline) around the client, admin and internal routes (SPEC §3,
//! "Overload"); a leave closes the client and internal budgets.
//!
//! Both are plain tower services whose clones cost a reference count: axum
//! clones a route's whole layer stack for every request, and the stack they
//! replace (`from_fn`, `HandleError`, `LoadShed`, `GlobalConcurrencyLimit`,
//! `Timeout`) allocated a semaphore future and a boxed service per request,
//! about a tenth of a single-node GET's CPU (`bench/NOTES.md`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::error::ApiError;
use crate::node::Node;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// A budget of requests in progress shared by a group of routes: past it a
/// request is refused with 503 `overloaded` at once instead of queueing; one
/// that runs past `deadline` is answered 503 `overloaded` too (and its work
/// dropped). A budget [closed](Budget::close) refuses every new request
/// with 503 `not_ready` (nothing done, so a relay may try another node)
/// while those in progress finish.
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    max: u32,
    deadline: Duration,
    closed: Arc<AtomicBool>,
}

impl Budget {
    /// At most `max` requests in progress, each for at most `deadline`.
    pub fn new(max: usize, deadline: Duration) -> Self {
        let max = u32::try_from(max).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        Budget {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            deadline,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Refuses every request from now on (a leaving node: SPEC §3,
    /// `POST /cluster/leave`).
    pub fn refuse(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// [Refuses](Budget::refuse) every request from now on and resolves once
    /// every request admitted before has ended.
    pub async fn close(&self) {
        self.refuse();
        // Takes every permit as it comes back (the semaphore is fair: a
        // request admitted between the flag and here holds one, and is
        // waited for), then gives them back.
        let _all = self.permits.acquire_many(self.max).await;
    }
}

impl<S> Layer<S> for Budget {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted { inner, budget: self.clone() }
    }
}

/// A service under a [`Budget`].
#[derive(Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: Budget,
}

impl<S> Service<Request> for Budgeted<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> BoxFuture {
        let refuse = |e: ApiError| -> BoxFuture { Box::pin(std::future::ready(Ok(e.into_response()))) };
        let leaving = || ApiError::NotReady("this node is leaving the cluster; ask another node".into());
        if self.budget.closed.load(Ordering::Acquire) {
            return refuse(leaving());
        }
        let Ok(permit) = self.budget.permits.clone().try_acquire_owned() else {
            // Closed meanwhile (the close takes every free permit): still
            // "not ready", which a relaying node may pass on.
            return refuse(if self.budget.closed.load(Ordering::Acquire) { leaving() } else { ApiError::Overloaded });
        };
        let deadline = self.budget.deadline;
        let work = self.inner.call(req);
        Box::pin(async move {
            let resp = match tokio::time::timeout(deadline, work).await {
                Ok(resp) => resp?,
                Err(_) => ApiError::DeadlineExceeded.into_response(),
            };
            drop(permit);
            Ok(resp)
        })
    }
}

/// Records every request in `dynakv_http_requests_total` and
/// `dynakv_http_request_duration_seconds` by route template, method and
/// status, logs it at debug, and gives axum's bodyless 405s the JSON error
/// shape of everything else.
#[derive(Clone)]
pub struct Observe {
    node: Arc<Node>,
}

impl Observe {
    /// Observes requests to `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Observe { node }
    }
}

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner, node: self.node.clone() }
    }
}

/// A service under [`Observe`].
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S> Service<Request> for Observed<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> BoxFuture {
        let start = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        let node = self.node.clone();
        let work = self.inner.call(req);
        Box::pin(async move {
            let mut resp = work.await?;
            let label = method_label(method.as_str());
            if resp.status() == StatusCode::METHOD_NOT_ALLOWED && !resp.headers().contains_key(header::CONTENT_TYPE) {
                let allow = resp.headers().get(header::ALLOW).cloned();
                resp = ApiError::MethodNotAllowed(method.to_string()).into_response();
                if let Some(allow) = allow {
                    resp.headers_mut().insert(header::ALLOW, allow);
                }
            }
            let route = route.as_ref().map(MatchedPath::as_str).unwrap_or("unmatched");
            let took = start.elapsed();
            let status = resp.status().as_u16();
            node.metrics().observe_http(route, label, status, took.as_secs_f64());
            // One line per request at debug, fields by name (a span per
            // request, as tower-http's TraceLayer makes, cost a tenth of a
            // GET's time).
            tracing::debug!(method = label, route, status, took_us = took.as_micros() as u64, "request");
            Ok(resp)
        })
    }
}

/// The method as a metric label: client-chosen method names must not grow
/// the label set.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    async fn code(resp: Response) -> (StatusCode, String) {
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json error body");
        (status, json["code"].as_str().unwrap_or_default().to_string())
    }

    fn req(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).expect("request")
    }

    /// `/slow` (answers once the returned `Notify` is notified) and `/fast`,
    /// under `budget`.
    fn slow_and_fast(budget: Budget) -> (Router, Arc<Notify>) {
        let release = Arc::new(Notify::new());
        let held = release.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(move || {
                    let held = held.clone();
                    async move {
                        held.notified().await;
                        "done"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast" }))
            .layer(budget);
        (app, release)
    }

    #[tokio::test]
    async fn past_the_budget_a_request_is_refused_at_once_and_a_freed_permit_admits_the_next() {
        let (app, release) = slow_and_fast(Budget::new(1, Duration::from_secs(60)));
        let slow = tokio::spawn(app.clone().oneshot(req("/slow")));
        // The slow request holds the only permit once it is being served.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let resp = app.clone().oneshot(req("/fast")).await.expect("infallible");
            if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(code(resp).await, (StatusCode::SERVICE_UNAVAILABLE, "overloaded".into()));
                break;
            }
            assert!(Instant::now() < deadline, "the budget of 1 never filled");
            tokio::task::yield_now().await;
        }
        release.notify_one();
        assert_eq!(slow.await.expect("task").expect("infallible").status(), StatusCode::OK);
        let resp = app.oneshot(req("/fast")).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK, "the permit went back when the slow request ended");
    }

    #[tokio::test]
    async fn a_closed_budget_refuses_new_requests_as_not_ready_and_waits_for_those_in_progress() {
        let budget = Budget::new(8, Duration::from_secs(60));
        let (app, release) = slow_and_fast(budget.clone());
        let slow = tokio::spawn(app.clone().oneshot(req("/slow")));
        let deadline = Instant::now() + Duration::from_secs(30);
        while budget.permits.available_permits() == 8 {
            assert!(Instant::now() < deadline, "the slow request never started");
            tokio::task::yield_now().await;
        }
        budget.refuse();
        let closing = budget.clone();
        let mut closed = tokio::spawn(async move { closing.close().await });
        let resp = app.clone().oneshot(req("/fast")).await.expect("infallible");
        assert_eq!(code(resp).await, (StatusCode::SERVICE_UNAVAILABLE, "not_ready".into()));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut closed).await.is_err(),
            "close() waits for the request in progress"
        );
        release.notify_one();
        assert_eq!(slow.await.expect("task").expect("infallible").status(), StatusCode::OK);
        tokio::time::timeout(Duration::from_secs(30), closed).await.expect("closed once it ended").expect("task");
        let resp = app.oneshot(req("/fast")).await.expect("infallible");
        assert_eq!(code(resp).await, (StatusCode::SERVICE_UNAVAILABLE, "not_ready".into()), "closed for good");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_gets_503_and_gives_its_permit_back() {
        let app = Router::new()
            .route("/stuck", get(std::future::pending::<&'static str>))
            .route("/fast", get(|| async { "fast" }))
            .layer(Budget::new(1, Duration::from_secs(5)));
        let resp = tokio::time::timeout(Duration::from_secs(60), app.clone().oneshot(req("/stuck")))
            .await
            .expect("answered at the 5 s deadline, not left waiting")
            .expect("infallible");
        assert_eq!(code(resp).await, (StatusCode::SERVICE_UNAVAILABLE, "overloaded".into()));
        let resp = app.oneshot(req("/fast")).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
