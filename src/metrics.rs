//! Prometheus metrics: every name in one place, all prefixed `dynakv_`.
//!
//! Labels stay bounded: the HTTP route is the matched template
//! (`/kv/{key}`), never the key itself.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// `dynakv_http_requests_total{route,method,status}`.
    pub http_requests: IntCounterVec,
    /// `dynakv_http_request_duration_seconds{route,method,status}`.
    pub http_duration: HistogramVec,
    /// `dynakv_expired_purged_total`: expired values removed by the reaper.
    pub expired_purged: IntCounter,
    /// `dynakv_tombstones_purged_total`: tombstones removed after their grace.
    pub tombstones_purged: IntCounter,
    /// `dynakv_sibling_refusals_total`: client writes refused by the sibling cap.
    pub sibling_refusals: IntCounter,
    /// `dynakv_heartbeat`: this node's own heartbeat counter.
    pub heartbeat: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "dynakv_http_requests_total",
                "HTTP requests served, by route template, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "dynakv_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let expired_purged =
            IntCounter::new("dynakv_expired_purged_total", "Expired values purged")
                .expect("valid metric");
        let tombstones_purged = IntCounter::new(
            "dynakv_tombstones_purged_total",
            "Tombstones purged after their grace period",
        )
        .expect("valid metric");
        let sibling_refusals = IntCounter::new(
            "dynakv_sibling_refusals_total",
            "Client writes refused by --max-siblings",
        )
        .expect("valid metric");
        let heartbeat = IntGauge::new("dynakv_heartbeat", "This node's heartbeat counter")
            .expect("valid metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(expired_purged.clone()),
            Box::new(tombstones_purged.clone()),
            Box::new(sibling_refusals.clone()),
            Box::new(heartbeat.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            http_requests,
            http_duration,
            expired_purged,
            tombstones_purged,
            sibling_refusals,
            heartbeat,
        }
    }

    /// Records one served HTTP request.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
