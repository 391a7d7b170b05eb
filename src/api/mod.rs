//! The HTTP edge: the router, its layers, and the JSON fallbacks.
//!
//! Handlers live in [`kv`] (client data) and [`cluster`] (operators); request
//! parsing in [`extract`]; the mapping of every failure to a status and a
//! stable `code` in [`error`]; the layers every request passes (metrics,
//! load shedding, deadlines) in [`edge`].

pub mod cluster;
pub mod edge;
pub mod error;
pub mod extract;
pub mod internal;
pub mod kv;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use tower::ServiceBuilder;

use crate::node::Node;
use crate::transport::Route;
use error::ApiError;

/// The causal context header (a `HeaderName`, so setting it parses nothing).
pub const X_CONTEXT: HeaderName = HeaderName::from_static("x-context");

/// Every public route template with its methods, as served (and as
/// `openapi.yaml` must describe them).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/kv/{key}", &["get", "put", "delete"]),
    ("/health", &["get"]),
    ("/health/ready", &["get"]),
    ("/metrics", &["get"]),
    ("/cluster/members", &["get"]),
    ("/cluster/ring", &["get"]),
    ("/cluster/replicas/{key}", &["get"]),
    ("/cluster/leave", &["post"]),
];

/// The budgets of client data and replica traffic, which a leaving node
/// closes before it hands its data off (SPEC §3, `POST /cluster/leave`).
#[derive(Clone)]
pub struct Intake {
    client: edge::Budget,
    internal: edge::Budget,
    deadline: Duration,
}

impl Intake {
    /// Refuses every new client and internal data request with 503
    /// `not_ready` from now on (the leave handler, before its 202).
    pub fn refuse(&self) {
        self.client.refuse();
        self.internal.refuse();
    }

    /// Refuses every new client and internal data request with 503
    /// `not_ready` (gossip, health, metrics, `/cluster/members`,
    /// `/cluster/ring` and the admin route keep answering), and waits for
    /// those in progress: at most their deadline and a second, since a
    /// request past its deadline is dropped and gives its permit back.
    /// Returns whether they all ended.
    pub async fn close(&self) -> bool {
        let both = async { tokio::join!(self.client.close(), self.internal.close()) };
        tokio::time::timeout(self.deadline + Duration::from_secs(1), both).await.is_ok()
    }
}

/// Builds the router for `node`, and the [`Intake`] a leave closes.
pub fn router(node: Arc<Node>) -> (Router, Intake) {
    // Leave room above the value limit so an over-limit body is read far
    // enough to be answered with our own 413, and never buffered unbounded.
    let cfg = node.cfg();
    let body_limit = usize::try_from(cfg.max_value_bytes).unwrap_or(usize::MAX).saturating_add(1);
    // Replica bodies carry whole sibling sets: allow every sibling at full size.
    let internal_limit =
        usize::try_from(cfg.max_value_bytes.saturating_mul(u64::from(cfg.max_siblings) + 1).saturating_add(1 << 20))
            .unwrap_or(usize::MAX)
            .min(1 << 30);
    // Overload (SPEC §3): client and internal requests each have a budget
    // of requests in progress; past it a request is refused with 503
    // `overloaded` at once (load shedding) instead of queueing, and one that
    // runs past its deadline gets 503 too. Gossip, health, metrics and the
    // membership views are exempt: they are cheap and must keep answering.
    // A client request may take up to 5 request timeouts of its own: a
    // node outside the key's preference list tries to relay it (a connect
    // timeout per replica it cannot reach, up to 3), then coordinates it
    // itself (a direct attempt, then a stand-in's). Its own 503 (with the
    // counts and the context) must come before this one.
    let deadline = node.timeout() * 5 + Duration::from_secs(2);
    let client_budget = edge::Budget::new(cfg.max_requests as usize, deadline);
    let internal_budget = edge::Budget::new(cfg.max_internal_requests as usize, deadline);
    // The admin route has a budget of its own: a leave closes the other two
    // and a second `POST /cluster/leave` still gets its 202.
    let admin_budget = edge::Budget::new(cfg.max_requests as usize, deadline);
    let intake = Intake { client: client_budget.clone(), internal: internal_budget.clone(), deadline };
    let observe = edge::Observe::new(node.clone());
    let secret = internal::require_secret(cfg.cluster_secret.clone());
    // Each group's layers are applied in one `Router::layer` call: axum
    // boxes every route once per call (a clone of the boxed service and a
    // boxed future per request and level), so one composite layer costs a
    // request one level instead of one per layer. Outermost first: every
    // request is observed (metrics, JSON 405s) and its body limited; the
    // secret and the budget of internal routes, and the bearer of the admin
    // route (inside its budget, as before), are layers of the method's own
    // handler: they run only once path and method matched, so a wrong
    // method is a 405 whether or not the caller knows the secret.
    // The secret before the budget: a request without it never takes a
    // permit from replication.
    let guarded = ServiceBuilder::new()
        .layer(secret.clone())
        .layer(internal::require_recipient(node.id().to_string()))
        .layer(internal_budget);
    let internal = Router::new()
        .route(Route::Batch.path(), post(internal::batch).route_layer(guarded.clone()))
        .route(Route::Hint.path(), post(internal::hint).route_layer(guarded.clone()))
        .route(Route::AntiEntropy.path(), post(internal::anti_entropy).route_layer(guarded.clone()))
        .route(Route::Transfer.path(), post(internal::transfer).route_layer(guarded))
        .layer(ServiceBuilder::new().layer(observe.clone()).layer(DefaultBodyLimit::max(internal_limit)));
    let gossip = Router::new()
        .route(Route::Gossip.path(), post(internal::gossip).route_layer(secret))
        .layer(ServiceBuilder::new().layer(observe.clone()).layer(DefaultBodyLimit::max(internal::MAX_GOSSIP_BYTES)));
    // Routes that change the cluster: with --cluster-secret they need
    // `Authorization: Bearer <secret>` (SPEC §3, "Admin routes").
    let admin = Router::new()
        .route("/cluster/leave", post(cluster::leave).route_layer(cluster::require_admin(cfg.cluster_secret.clone())))
        .layer(
            ServiceBuilder::new()
                .layer(observe.clone())
                .layer(admin_budget)
                .layer(DefaultBodyLimit::max(body_limit))
                .layer(Extension(intake.clone())),
        );
    let client = Router::new()
        .route("/kv/{key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/cluster/replicas/{key}", get(cluster::replicas))
        .layer(
            ServiceBuilder::new().layer(observe.clone()).layer(client_budget).layer(DefaultBodyLimit::max(body_limit)),
        );
    let exempt = Router::new()
        .route("/health", get(cluster::health))
        .route("/health/ready", get(cluster::ready))
        .route("/metrics", get(cluster::metrics))
        .route("/cluster/members", get(cluster::members))
        .route("/cluster/ring", get(cluster::ring))
        .layer(observe.clone());
    let unmatched = Router::new().fallback(not_found).layer(observe);
    let app = client.merge(admin).merge(exempt).merge(internal).merge(gossip).merge(unmatched).with_state(node);
    (app, intake)
}

/// Unmatched paths: a key route with an empty key is a 400 `invalid_key`
/// for the methods that route serves (a wrong method is a 405, as with a
/// key), anything else a 404.
async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let allow = match path {
        "/kv" | "/kv/" => "GET,HEAD,PUT,DELETE",
        "/cluster/replicas/" => "GET,HEAD",
        _ => return ApiError::RouteNotFound(path.to_string()).into_response(),
    };
    if allow.split(',').any(|m| m == method.as_str()) {
        return ApiError::InvalidKey("key must not be empty".into()).into_response();
    }
    let mut resp = ApiError::MethodNotAllowed(method.to_string()).into_response();
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
