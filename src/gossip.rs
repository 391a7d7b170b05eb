//! The gossip worker (SPEC §4, "Gossip"): every `--gossip-interval-ms` this
//! node bumps its own heartbeat, re-derives statuses, and starts a push-pull
//! exchange with one random live peer, plus a seed (every round while it
//! knows few peers, else now and then), plus a dead member so its return is
//! noticed.
//!
//! Exchanges run as their own tracked tasks bounded by the request timeout,
//! so a slow or paused peer never delays the next round: a stalled loop
//! would make healthy nodes look suspect.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::membership::Status;
use crate::node::Node;
use crate::transport::wire::GossipMessage;
use crate::transport::{Route, Target, TransportError};
use crate::worker::{self, State, WorkError, Worker};

/// While a node knows fewer live peers than this, it also gossips with a seed
/// every round; otherwise with probability seeds / other members (as
/// Cassandra does), so that each seed hears from about one node per round
/// whatever the cluster's size. A seed that lost its disk and came back
/// without seeds of its own almost always learns it was a member within a
/// round or two (`Node::apply_gossip`), before its settle ends
/// (`Node::alone_settle`).
const FEW_PEERS: usize = 2;

/// The gossip worker.
pub struct Gossip {
    node: Arc<Node>,
    tick: tokio::time::Interval,
}

impl Gossip {
    /// Rounds every `--gossip-interval-ms`.
    pub fn new(node: Arc<Node>) -> Self {
        let tick = worker::ticker(Duration::from_millis(node.cfg().gossip_interval_ms));
        Self { node, tick }
    }
}

impl Worker for Gossip {
    fn name(&self) -> &'static str {
        "gossip"
    }

    async fn work(&mut self) -> Result<State, WorkError> {
        round(&self.node);
        Ok(State::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.tick.tick().await;
    }
}

/// One round: heartbeat, then spawn this round's exchanges.
///
/// A heartbeat that cannot be reserved on disk is logged, not an error of the
/// worker: backing off would silence this node and make it look dead.
fn round(node: &Arc<Node>) {
    if let Err(e) = node.heartbeat() {
        tracing::warn!(error = %e, "heartbeat not persisted");
    }
    node.metrics().gossip_rounds.inc();
    let view = node.view();
    let others = || view.members().filter(|m| m.id != node.id());
    let live: Vec<(String, String)> =
        others().filter(|m| m.status.on_ring()).map(|m| (m.id.clone(), m.address.clone())).collect();
    let dead: Vec<(String, String)> =
        others().filter(|m| m.status == Status::Dead).map(|m| (m.id.clone(), m.address.clone())).collect();
    let mut targets = Vec::new();
    let mut rng = rand::rng();
    if let Some(peer) = live.choose(&mut rng) {
        targets.push(peer.clone());
    }
    let seeds = node.seeds();
    let others_known = live.len() + dead.len();
    let seed_share = (seeds.len() as f64 / others_known.max(1) as f64).min(1.0);
    if live.len() < FEW_PEERS || rng.random_bool(seed_share) {
        if let Some(seed) = seeds.choose(&mut rng) {
            targets.push(("seed".to_string(), seed.clone()));
        }
    }
    // A random dead member every round: one back from the dead (a wiped
    // one above all) hears the cluster within its first round or two; a
    // dead address costs one failed connect.
    if let Some(d) = dead.choose(&mut rng) {
        targets.push(d.clone());
    }
    targets.dedup_by(|a, b| a.1 == b.1);
    for (id, address) in targets {
        let n = node.clone();
        node.spawn(async move {
            if let Err(e) = exchange(&n, &id, &address).await {
                tracing::debug!(peer = %address, error = %e, "gossip exchange failed");
            }
        });
    }
}

/// One push-pull exchange with the node at `address`.
pub async fn exchange(node: &Node, id: &str, address: &str) -> Result<(), TransportError> {
    let msg = serde_json::to_vec(&node.gossip_message()).expect("gossip serializes");
    let reply = match node.call(Target { id, address }, Route::Gossip, Bytes::from(msg)).await {
        Err(TransportError::Refused(why)) => {
            node.refused_by(address, &why);
            return Err(TransportError::Refused(why));
        }
        other => other?,
    };
    let reply: GossipMessage = serde_json::from_slice(&reply).map_err(|_| TransportError::Malformed)?;
    if node.is_own_echo(&reply) {
        node.seed_echoed(address);
        return Ok(());
    }
    if id == "seed" {
        node.seed_answered(address);
    }
    // The same checks as an incoming exchange (another Q is logged there).
    if let Err(e) = node.accept_gossip(&reply) {
        tracing::debug!(peer = %address, error = %e, "gossip reply refused");
    }
    Ok(())
}
