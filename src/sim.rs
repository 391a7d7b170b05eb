//! A simulation of membership and placement at scale, in one process and
//! without a network: the real member table ([`crate::membership`]) and ring
//! ([`crate::ring`]) of up to thousands of nodes, driven in synchronous
//! gossip rounds as the gossip worker drives them (each node bumps its
//! heartbeat, exchanges push-pull with one random live peer, and with a seed
//! while it knows few peers), with simulated time.
//!
//! It measures what a 2-core machine cannot run for real: rounds until every
//! node knows a join, rounds until every node sees a failure, the share of
//! replica assignments a join or a leave moves against the ideal, the
//! balance of partitions per node, and the size of a gossip message. Used by
//! `dynakv-bench simulate` (figures in `bench/RESULTS.md`) and by tests.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::membership::{Digest, Status, Table, Timeouts};
use crate::ring::{Ring, RingParams};
use crate::transport::wire::GossipMessage;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Members before the join.
    pub nodes: usize,
    /// Ring parameters (Q, vnodes, N).
    pub params: RingParams,
    /// Gossip interval (one round).
    pub interval: Duration,
    /// Suspect and dead timeouts.
    pub timeouts: Timeouts,
    /// RNG seed: the same seed, the same run.
    pub seed: u64,
}

impl SimConfig {
    /// The defaults of SPEC §2 for `nodes` members.
    pub fn defaults(nodes: usize) -> Self {
        Self {
            nodes,
            params: RingParams { partitions: 64, vnodes: 16, replicas: 3 },
            interval: Duration::from_millis(1000),
            timeouts: Timeouts {
                suspect_after: Duration::from_millis(5000),
                dead_after: Duration::from_millis(15000),
                interval: Duration::from_millis(1000),
            },
            seed: 7,
        }
    }
}

/// What a simulation found.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Members before the join.
    pub nodes: usize,
    /// Rounds until every member knew a new member (on the ring: alive, or
    /// suspect for a moment).
    pub join_rounds: u64,
    /// Rounds until the new member knew every member.
    pub join_learn_rounds: u64,
    /// Rounds from a member stopping until every other one saw it dead.
    pub failure_rounds: u64,
    /// The part of `failure_rounds` beyond the dead timeout itself: how long
    /// the last heartbeat took to stop spreading.
    pub failure_spread_rounds: u64,
    /// Share of replica assignments (partition, node) that a join moved.
    pub moved_join: f64,
    /// The ideal share for a join: 1 / (n + 1).
    pub ideal_join: f64,
    /// Share of replica assignments that a leave moved.
    pub moved_leave: f64,
    /// The ideal share for a leave: 1 / n.
    pub ideal_leave: f64,
    /// Replicas per member, most over mean.
    pub max_over_mean: f64,
    /// Members holding no replica at all.
    pub idle_members: usize,
    /// Bytes of one gossip message carrying every member (JSON).
    pub gossip_bytes: usize,
    /// In steady state, the share of (observer, member) pairs where the
    /// observer wrongly holds a running member suspect: its heartbeat took
    /// longer than the suspect timeout to arrive.
    pub false_suspect_share: f64,
}

fn id(i: usize) -> String {
    format!("node-{i:05}")
}

fn at(t0: SystemTime, interval: Duration, round: u64) -> SystemTime {
    t0 + interval * round as u32
}

/// The simulated cluster: one table per member, `None` once stopped.
struct Sim {
    tables: Vec<Option<Table>>,
    rng: StdRng,
    cfg: SimConfig,
    t0: SystemTime,
    round: u64,
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut tables: Vec<Option<Table>> =
            (0..cfg.nodes).map(|i| Some(Table::new(&id(i), &format!("http://{}", id(i)), 1, t0))).collect();
        // A converged cluster to start from.
        let all: Vec<Digest> = tables.iter().flatten().flat_map(|t| t.digests()).collect();
        for t in tables.iter_mut().flatten() {
            t.merge(&all, t0);
        }
        Self { tables, rng: StdRng::seed_from_u64(cfg.seed), cfg, t0, round: 0 }
    }

    /// One synchronous round: every running member bumps its heartbeat, then
    /// exchanges with one random live peer it knows (and a seed, node 0,
    /// while it knows fewer than two live peers), both sides merging what
    /// the other held at the start of the round; then statuses are derived.
    fn round(&mut self) {
        self.round += 1;
        let now = at(self.t0, self.cfg.interval, self.round);
        let index = |s: &str| s.strip_prefix("node-").and_then(|n| n.parse::<usize>().ok());
        for t in self.tables.iter_mut().flatten() {
            t.bump(now);
        }
        let snapshot: Vec<Option<Vec<Digest>>> = self.tables.iter().map(|t| t.as_ref().map(Table::digests)).collect();
        let mut pairs = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            let Some(t) = t else { continue };
            let live: Vec<usize> =
                t.members().filter(|m| m.id != t.me() && m.status.on_ring()).filter_map(|m| index(&m.id)).collect();
            if !live.is_empty() {
                pairs.push((i, live[self.rng.random_range(0..live.len())]));
            }
            if live.len() < 2 && i != 0 {
                pairs.push((i, 0));
            }
        }
        for (i, j) in pairs {
            // A stopped peer does not answer.
            let (Some(mine), Some(theirs)) = (&snapshot[i], &snapshot[j]) else { continue };
            if let Some(t) = &mut self.tables[j] {
                t.merge(mine, now);
            }
            if let Some(t) = &mut self.tables[i] {
                t.merge(theirs, now);
            }
        }
        for t in self.tables.iter_mut().flatten() {
            t.refresh(now, self.cfg.timeouts);
        }
    }

    fn all_see(&self, member: &str, ok: impl Fn(Status) -> bool) -> bool {
        self.tables.iter().flatten().filter(|t| t.me() != member).all(|t| t.get(member).is_some_and(|m| ok(m.status)))
    }

    /// Share of (observer, other member) pairs not seen alive, among
    /// running members.
    fn not_alive_share(&self) -> f64 {
        let (mut bad, mut all) = (0usize, 0usize);
        for t in self.tables.iter().flatten() {
            for m in t.members().filter(|m| m.id != t.me()) {
                all += 1;
                bad += usize::from(m.status != Status::Alive);
            }
        }
        bad as f64 / all.max(1) as f64
    }
}

/// Share of (partition, replica) assignments of `after` that `before` did
/// not have.
pub fn moved(before: &Ring, after: &Ring) -> f64 {
    let q = before.partition_count();
    let mut changed = 0usize;
    let mut total = 0usize;
    for p in 0..q {
        let old = before.preference_list(p);
        for n in after.preference_list(p) {
            total += 1;
            changed += usize::from(!old.contains(&n));
        }
    }
    changed as f64 / total.max(1) as f64
}

/// Runs the simulation: a join into a converged cluster, then a member
/// stopping, plus placement figures.
pub fn run(cfg: SimConfig) -> SimReport {
    const LIMIT: u64 = 10_000;
    let n = cfg.nodes;
    let mut sim = Sim::new(cfg);
    // Steady state first: every member starts with the same heartbeat at the
    // same time, which says nothing about a running cluster.
    let dead_rounds = (cfg.timeouts.dead_after.as_millis() / cfg.interval.as_millis().max(1)) as u64;
    let mut suspect = Vec::new();
    for r in 0..2 * dead_rounds {
        sim.round();
        if r >= dead_rounds {
            suspect.push(sim.not_alive_share());
        }
    }
    let false_suspect_share = suspect.iter().sum::<f64>() / suspect.len().max(1) as f64;
    // A join: a new member seeded with node 0.
    let newcomer = id(n);
    sim.tables.push(Some(Table::new(&newcomer, &format!("http://{newcomer}"), 1, at(sim.t0, cfg.interval, sim.round))));
    let start = sim.round;
    let mut join_rounds = None;
    let mut learn_rounds = None;
    while (join_rounds.is_none() || learn_rounds.is_none()) && sim.round - start < LIMIT {
        sim.round();
        if join_rounds.is_none() && sim.all_see(&newcomer, Status::on_ring) {
            join_rounds = Some(sim.round - start);
        }
        if learn_rounds.is_none() {
            let t = sim.tables[n].as_ref().expect("running");
            if t.members().filter(|m| m.status.on_ring()).count() == n + 1 {
                learn_rounds = Some(sim.round - start);
            }
        }
    }
    // A failure: member 1 stops.
    let failed = id(1);
    sim.tables[1] = None;
    let start = sim.round;
    let mut failure_rounds = None;
    while failure_rounds.is_none() && sim.round - start < LIMIT {
        sim.round();
        if sim.all_see(&failed, |s| s == Status::Dead) {
            failure_rounds = Some(sim.round - start);
        }
    }
    let failure_rounds = failure_rounds.unwrap_or(LIMIT);

    let ids: Vec<String> = (0..n).map(id).collect();
    let before = Ring::build(&ids, cfg.params);
    let mut with_new = ids.clone();
    with_new.push(newcomer.clone());
    let joined = Ring::build(&with_new, cfg.params);
    let left = Ring::build(&ids[1..], cfg.params);
    let mut counts = vec![0usize; n];
    for p in 0..cfg.params.partitions {
        for node in before.preference_list(p) {
            if let Some(i) = node.strip_prefix("node-").and_then(|s| s.parse::<usize>().ok()) {
                counts[i] += 1;
            }
        }
    }
    let mean = counts.iter().sum::<usize>() as f64 / n as f64;
    let max = *counts.iter().max().unwrap_or(&0) as f64;
    let members: Vec<Digest> = sim.tables[0].as_ref().expect("node 0 runs").digests();
    let msg = GossipMessage { from: id(0), partitions: cfg.params.partitions, members };
    SimReport {
        nodes: n,
        join_rounds: join_rounds.unwrap_or(LIMIT),
        join_learn_rounds: learn_rounds.unwrap_or(LIMIT),
        failure_rounds,
        failure_spread_rounds: failure_rounds.saturating_sub(dead_rounds),
        moved_join: moved(&before, &joined),
        ideal_join: 1.0 / (n + 1) as f64,
        moved_leave: moved(&before, &left),
        ideal_leave: 1.0 / n as f64,
        max_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
        idle_members: counts.iter().filter(|c| **c == 0).count(),
        gossip_bytes: serde_json::to_vec(&msg).expect("gossip serializes").len(),
        false_suspect_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gossip converges in at most 2·log2(n) rounds; a failure is seen by
    /// everyone soon after the dead timeout; a join moves about its share.
    #[test]
    fn small_clusters_converge_within_two_log2_n_rounds() {
        for n in [10, 100] {
            let r = run(SimConfig::defaults(n));
            let bound = (2.0 * (n as f64).log2()).ceil() as u64;
            assert!(r.join_rounds <= bound, "{n} nodes: join known by all in {} rounds > {bound}", r.join_rounds);
            assert!(r.join_learn_rounds <= bound, "{n} nodes: {} rounds to learn the cluster", r.join_learn_rounds);
            assert!(r.failure_spread_rounds <= bound, "{n} nodes: failure {:?}", r);
            assert!(r.false_suspect_share < 0.05, "{r:?}");
            assert!(r.moved_join > 0.0 && r.moved_join <= 3.0 * r.ideal_join, "{r:?}");
            assert!(r.moved_leave > 0.0 && r.moved_leave <= 3.0 * r.ideal_leave, "{r:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        assert_eq!(run(SimConfig::defaults(20)), run(SimConfig::defaults(20)));
    }

    #[test]
    fn a_join_moves_only_assignments_to_the_newcomer() {
        let p = RingParams { partitions: 256, vnodes: 16, replicas: 3 };
        let ids: Vec<String> = (0..8).map(id).collect();
        let before = Ring::build(&ids, p);
        let mut more = ids.clone();
        more.push(id(8));
        let after = Ring::build(&more, p);
        for q in 0..256 {
            let old = before.preference_list(q);
            for n in after.preference_list(q) {
                assert!(old.contains(&n) || n == id(8));
            }
        }
        assert!(moved(&before, &after) > 0.0);
    }
}
