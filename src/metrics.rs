//! Prometheus metrics: every name in one place, all prefixed `dynakv_`.
//!
//! Labels stay bounded: the HTTP route is the matched template
//! (`/kv/{key}`), never the key itself.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Handles of `dynakv_http_*` by route template, then (method, status):
/// bounded, as routes are templates and methods a fixed set.
type HttpHandles = std::collections::HashMap<
    String,
    std::collections::HashMap<(&'static str, u16), (IntCounter, prometheus::Histogram)>,
>;

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    http_handles: std::sync::RwLock<HttpHandles>,
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
    /// `dynakv_gossip_rounds_total`.
    pub gossip_rounds: IntCounter,
    /// `dynakv_members{status}`: members by status, as this node sees them.
    pub members: IntGaugeVec,
    /// `dynakv_forwarded_requests_total`: client requests sent on to a replica.
    pub forwarded: IntCounter,
    /// `dynakv_quorum_failures_total{op}`: reads and writes answered 503.
    pub quorum_failures: IntCounterVec,
    /// `dynakv_read_repairs_total`: replicas sent a merged state after a read.
    pub read_repairs: IntCounter,
    /// `dynakv_read_digest_mismatches_total`: replicas whose digest differed
    /// from a read's merge (or could not be compared), read whole after it.
    pub read_digest_mismatches: IntCounter,
    /// `dynakv_hints_stored_total`: hints accepted by this node as a stand-in.
    pub hints_stored: IntCounter,
    /// `dynakv_hints_delivered_total`: hints handed back to their owner.
    pub hints_delivered: IntCounter,
    /// `dynakv_hints_pending`: hints waiting for their owner.
    pub hints_pending: IntGauge,
    /// `dynakv_corrupt_records_total`: stored records that did not decode
    /// when read in bulk (hand-offs); logged, never silently skipped.
    pub corrupt_records: IntCounter,
    /// `dynakv_ae_rounds_total`: anti-entropy rounds run.
    pub ae_rounds: IntCounter,
    /// `dynakv_ae_partitions_compared_total`: partitions compared with a peer.
    pub ae_partitions_compared: IntCounter,
    /// `dynakv_ae_partitions_differing_total`: compared partitions whose roots differed.
    pub ae_partitions_differing: IntCounter,
    /// `dynakv_ae_keys_pulled_total`: keys fetched from a peer and merged here.
    pub ae_keys_pulled: IntCounter,
    /// `dynakv_ae_keys_pushed_total`: keys sent to a peer to merge.
    pub ae_keys_pushed: IntCounter,
    /// `dynakv_ae_bytes_sent_total`: anti-entropy bytes sent (tree
    /// comparisons and repairs, message bodies).
    pub ae_bytes_sent: IntCounter,
    /// `dynakv_ae_bytes_received_total`: anti-entropy bytes received.
    pub ae_bytes_received: IntCounter,
    /// `dynakv_ae_exchange_failures_total`: exchanges cut short by a peer
    /// that did not answer.
    pub ae_exchange_failures: IntCounter,
    /// `dynakv_ae_tree_build_seconds`: how long building every Merkle tree
    /// took at start.
    pub ae_tree_build_seconds: Gauge,
    /// `dynakv_ae_trees_ready`: partitions whose Merkle tree is built.
    pub ae_trees_ready: IntGauge,
    /// `dynakv_transfers_pending{direction}`: partitions being received
    /// (`in`) or to hand off (`out`).
    pub transfers_pending: IntGaugeVec,
    /// `dynakv_transfers_started_total{direction}`.
    pub transfers_started: IntCounterVec,
    /// `dynakv_transfers_finished_total{direction}`.
    pub transfers_finished: IntCounterVec,
    /// `dynakv_transfers_failed_total{direction}`: attempts that failed or
    /// stalled and were retried (from another holder when receiving).
    pub transfers_failed: IntCounterVec,
    /// `dynakv_transfer_keys_total{direction}`: keys moved.
    pub transfer_keys: IntCounterVec,
    /// `dynakv_transfer_bytes_total{direction}`: record bytes moved.
    pub transfer_bytes: IntCounterVec,
    /// `dynakv_partitions_owned`: partitions whose preference list holds
    /// this node.
    pub partitions_owned: IntGauge,
    /// `dynakv_partitions_stored`: partitions this node stores anything of.
    pub partitions_stored: IntGauge,
    /// `dynakv_partitions_stored_unowned`: partitions this node stores
    /// something of but does not own (0 once hand-offs are done).
    pub partitions_stored_unowned: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), &["direction"]).expect("valid metric"))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("unique metric names");
    c
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let labels = &["route", "method", "status"];
        let buckets =
            vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let metrics = Self {
            http_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "dynakv_http_requests_total",
                        "HTTP requests served, by route template, method and status",
                    ),
                    labels,
                )
                .expect("valid metric"),
            ),
            http_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("dynakv_http_request_duration_seconds", "HTTP request latency").buckets(buckets),
                    labels,
                )
                .expect("valid metric"),
            ),
            expired_purged: counter(&r, "dynakv_expired_purged_total", "Expired values purged"),
            tombstones_purged: counter(
                &r,
                "dynakv_tombstones_purged_total",
                "Tombstones purged after their grace period",
            ),
            sibling_refusals: counter(&r, "dynakv_sibling_refusals_total", "Client writes refused by --max-siblings"),
            heartbeat: gauge(&r, "dynakv_heartbeat", "This node's heartbeat counter"),
            gossip_rounds: counter(&r, "dynakv_gossip_rounds_total", "Gossip rounds run"),
            members: register(
                &r,
                IntGaugeVec::new(Opts::new("dynakv_members", "Members by status, as this node sees them"), &["status"])
                    .expect("valid metric"),
            ),
            forwarded: counter(&r, "dynakv_forwarded_requests_total", "Client requests forwarded to a replica"),
            quorum_failures: register(
                &r,
                IntCounterVec::new(
                    Opts::new("dynakv_quorum_failures_total", "Requests answered 503 quorum_not_met"),
                    &["op"],
                )
                .expect("valid metric"),
            ),
            read_repairs: counter(&r, "dynakv_read_repairs_total", "Replicas repaired after a read"),
            read_digest_mismatches: counter(
                &r,
                "dynakv_read_digest_mismatches_total",
                "Replicas read whole after their digest differed from a read's merge",
            ),
            hints_stored: counter(&r, "dynakv_hints_stored_total", "Hints stored as a stand-in"),
            hints_delivered: counter(&r, "dynakv_hints_delivered_total", "Hints delivered to their owner"),
            hints_pending: gauge(&r, "dynakv_hints_pending", "Hints waiting for their owner"),
            corrupt_records: counter(&r, "dynakv_corrupt_records_total", "Stored records that did not decode"),
            ae_rounds: counter(&r, "dynakv_ae_rounds_total", "Anti-entropy rounds run"),
            ae_partitions_compared: counter(
                &r,
                "dynakv_ae_partitions_compared_total",
                "Partitions compared with a peer by anti-entropy",
            ),
            ae_partitions_differing: counter(
                &r,
                "dynakv_ae_partitions_differing_total",
                "Compared partitions whose Merkle roots differed",
            ),
            ae_keys_pulled: counter(&r, "dynakv_ae_keys_pulled_total", "Keys fetched from a peer by anti-entropy"),
            ae_keys_pushed: counter(&r, "dynakv_ae_keys_pushed_total", "Keys sent to a peer by anti-entropy"),
            ae_bytes_sent: counter(&r, "dynakv_ae_bytes_sent_total", "Anti-entropy bytes sent"),
            ae_bytes_received: counter(&r, "dynakv_ae_bytes_received_total", "Anti-entropy bytes received"),
            ae_exchange_failures: counter(
                &r,
                "dynakv_ae_exchange_failures_total",
                "Anti-entropy exchanges cut short by a peer that did not answer",
            ),
            ae_tree_build_seconds: register(
                &r,
                Gauge::new("dynakv_ae_tree_build_seconds", "Time to build every Merkle tree at start")
                    .expect("valid metric"),
            ),
            ae_trees_ready: gauge(&r, "dynakv_ae_trees_ready", "Partitions whose Merkle tree is built"),
            transfers_pending: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("dynakv_transfers_pending", "Partitions being received (in) or to hand off (out)"),
                    &["direction"],
                )
                .expect("valid metric"),
            ),
            transfers_started: counter_vec(&r, "dynakv_transfers_started_total", "Partition transfers started"),
            transfers_finished: counter_vec(&r, "dynakv_transfers_finished_total", "Partition transfers finished"),
            transfers_failed: counter_vec(
                &r,
                "dynakv_transfers_failed_total",
                "Partition transfer attempts that failed or stalled and were retried",
            ),
            transfer_keys: counter_vec(&r, "dynakv_transfer_keys_total", "Keys moved by partition transfers"),
            transfer_bytes: counter_vec(&r, "dynakv_transfer_bytes_total", "Record bytes moved by partition transfers"),
            partitions_owned: gauge(&r, "dynakv_partitions_owned", "Partitions whose preference list holds this node"),
            partitions_stored: gauge(&r, "dynakv_partitions_stored", "Partitions this node stores anything of"),
            partitions_stored_unowned: gauge(
                &r,
                "dynakv_partitions_stored_unowned",
                "Partitions this node stores something of but does not own",
            ),
            registry: r,
            http_handles: std::sync::RwLock::default(),
        };
        // A family without a series is left out of the exposition: the
        // scrape's own series, at 0, makes the first scrape of a fresh node
        // (counted only once it is answered) show the two HTTP families too.
        let labels = ["/metrics", "GET", "200"];
        metrics.http_requests.with_label_values(&labels);
        metrics.http_duration.with_label_values(&labels);
        // Every labelled series with a fixed label set starts at 0, so a
        // dashboard or alert finds each series before its first event.
        for op in ["read", "write"] {
            metrics.quorum_failures.with_label_values(&[op]);
        }
        for direction in ["in", "out"] {
            for family in [
                &metrics.transfers_started,
                &metrics.transfers_finished,
                &metrics.transfers_failed,
                &metrics.transfer_keys,
                &metrics.transfer_bytes,
            ] {
                family.with_label_values(&[direction]);
            }
            metrics.transfers_pending.with_label_values(&[direction]);
        }
        metrics
    }

    /// Records one served HTTP request. The metric handles of each (route,
    /// method, status) are looked up once and kept, so a request costs one
    /// map lookup, not two label hashings and a string per status.
    pub fn observe_http(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        let found = self
            .http_handles
            .read()
            .expect("metric handles")
            .get(route)
            .and_then(|by| by.get(&(method, status)))
            .cloned();
        let (count, duration) = match found {
            Some(h) => h,
            None => {
                let status_text = status.to_string();
                let labels = [route, method, status_text.as_str()];
                let h = (self.http_requests.with_label_values(&labels), self.http_duration.with_label_values(&labels));
                self.http_handles
                    .write()
                    .expect("metric handles")
                    .entry(route.to_string())
                    .or_default()
                    .insert((method, status), h.clone());
                h
            }
        };
        count.inc();
        duration.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding to a Vec");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_registry_shows_both_http_families() {
        let text = Metrics::new().render();
        assert!(text.contains("dynakv_http_requests_total{"), "{text}");
        assert!(text.contains("dynakv_http_request_duration_seconds_bucket{"), "{text}");
    }
}
