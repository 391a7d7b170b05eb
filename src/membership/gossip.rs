//! The gossip loop: every `--gossip-interval-ms` this node bumps its own
//! heartbeat, re-derives statuses, and starts a push-pull exchange with one
//! random live peer, plus a seed while it knows few peers, plus now and then
//! a dead member so its return is noticed.
//!
//! Exchanges run as their own tasks bounded by the request timeout, so a slow
//! or paused peer never delays the next round: a stalled loop would make
//! healthy nodes look suspect.

use std::sync::Arc;
use std::time::Duration;

use rand::seq::IndexedRandom;
use tokio_util::sync::CancellationToken;

use super::Status;
use crate::node::Node;
use crate::peer::GossipMessage;

/// While a node knows fewer live peers than this, it also gossips with a seed.
const FEW_PEERS: usize = 2;
/// One round in this many also contacts a random dead member.
const DEAD_PROBE_EVERY: u64 = 5;

/// Runs rounds until cancelled.
pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(node.cfg.gossip_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round_no: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                round_no += 1;
                round(&node, round_no);
            }
        }
    }
}

/// One round: heartbeat, then spawn this round's exchanges.
fn round(node: &Arc<Node>, round_no: u64) {
    if let Err(e) = node.heartbeat() {
        tracing::warn!(error = %e, "heartbeat not persisted");
    }
    node.metrics.gossip_rounds.inc();
    let (live, dead): (Vec<String>, Vec<String>) = {
        let table = node.members.lock().expect("members lock");
        let others = || table.members().filter(|m| m.id != node.id);
        (
            others().filter(|m| m.status.on_ring()).map(|m| m.address.clone()).collect(),
            others().filter(|m| m.status == Status::Dead).map(|m| m.address.clone()).collect(),
        )
    };
    let mut targets = Vec::new();
    let mut rng = rand::rng();
    if let Some(peer) = live.choose(&mut rng) {
        targets.push(peer.clone());
    }
    if live.len() < FEW_PEERS {
        let seeds: Vec<String> = node.cfg.seed_urls().into_iter().filter(|s| *s != node.address).collect();
        if let Some(seed) = seeds.choose(&mut rng) {
            targets.push(seed.clone());
        }
    }
    if round_no % DEAD_PROBE_EVERY == 0 {
        if let Some(d) = dead.choose(&mut rng) {
            targets.push(d.clone());
        }
    }
    targets.dedup();
    for url in targets {
        let node = node.clone();
        tokio::spawn(async move { exchange(&node, &url).await });
    }
}

/// One push-pull exchange with the node at `url`.
pub async fn exchange(node: &Node, url: &str) {
    let msg = node.gossip_message();
    let limit = node.peers.timeout();
    match node.peers.gossip(url, &msg, limit).await {
        Ok(reply) if reply.partitions != node.cfg.partitions => {
            tracing::error!(peer = %url, theirs = reply.partitions, ours = node.cfg.partitions, "peer has another --partitions; ignoring it");
        }
        Ok(reply) => node.apply_gossip(&reply.members),
        Err(e) => tracing::debug!(peer = %url, error = %e, "gossip exchange failed"),
    }
}

impl Node {
    /// What this node sends in an exchange.
    pub fn gossip_message(&self) -> GossipMessage {
        let members = self.members.lock().expect("members lock").digests();
        GossipMessage { from: self.id.clone(), partitions: self.cfg.partitions, members }
    }
}
