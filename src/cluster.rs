//! One cluster view: the membership table, the placement ring and the ring
//! over members that have not left, published together as one immutable
//! [`ClusterView`] with an epoch through a `watch` channel.
//!
//! A request takes one snapshot ([`Membership::view`]) and reads everything
//! from it: placement, addresses, statuses and N for quorum arithmetic all
//! agree, and no request path locks the member table. [`Membership`] owns
//! the table; its only mutator, [`Membership::update`], publishes a new view
//! after every change, so "publish after every change" is kept by the type,
//! not by callers. Rings are rebuilt only when their member sets change.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::membership::{Member, Status, Table};
use crate::ring::{Ring, RingParams};

/// An immutable snapshot of what this node knows about the cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    epoch: u64,
    ring_epoch: u64,
    table: Table,
    ring: Arc<Ring>,
    ring_not_left: Arc<Ring>,
    params: RingParams,
}

impl ClusterView {
    /// Increases with every published change (heartbeats included).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Increases only when the placement ring changes.
    pub fn ring_epoch(&self) -> u64 {
        self.ring_epoch
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        self.table.me()
    }

    /// The placement ring: alive and suspect members.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The ring over every member that has not left, dead ones included:
    /// whose replicas must all hold a tombstone before it is purged (SPEC §3).
    pub fn ring_not_left(&self) -> &Ring {
        &self.ring_not_left
    }

    /// The ring as it will be once `id` is gone (a leaving node hands its
    /// data to this one).
    pub fn ring_without(&self, id: &str) -> Ring {
        let rest: Vec<&String> = self.ring.nodes().iter().filter(|n| *n != id).collect();
        Ring::build(&rest, self.params)
    }

    /// N for quorum arithmetic: `--replicas` capped by the members that have
    /// not left. Dead members still count (SPEC §2: N, R and W are never
    /// lowered because members are down); the placement ring holds only
    /// alive and suspect ones, and stand-ins make up the difference.
    pub fn quorum_n(&self) -> usize {
        (self.params.replicas as usize).min(self.ring_not_left.nodes().len()).max(1)
    }

    /// The membership table as of this view.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Every member, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.table.members()
    }

    /// One member.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.table.get(id)
    }

    /// Base URL of member `id`.
    pub fn address(&self, id: &str) -> Option<&str> {
        self.table.get(id).map(|m| m.address.as_str())
    }

    /// Status of member `id`.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.table.get(id).map(|m| m.status)
    }

    /// Whether every other member has left, so that what this node holds is
    /// all the cluster holds (a dead member still holds its copies).
    pub fn sole_member(&self) -> bool {
        self.members().all(|m| m.id == self.me() || m.status == Status::Left)
    }

    /// Whether member `id` is alive (this node always is).
    pub fn is_alive(&self, id: &str) -> bool {
        self.status(id) == Some(Status::Alive)
    }
}

/// The owner of the membership table and publisher of [`ClusterView`]s.
pub struct Membership {
    params: RingParams,
    table: Mutex<Table>,
    tx: watch::Sender<Arc<ClusterView>>,
}

impl Membership {
    /// Starts from `table` and publishes its first view.
    pub fn new(table: Table, params: RingParams) -> Self {
        let ring = Arc::new(Ring::build(&table.ring_members(), params));
        let ring_not_left = Arc::new(Ring::build(&table.not_left(), params));
        let view = ClusterView { epoch: 0, ring_epoch: 0, table: table.clone(), ring, ring_not_left, params };
        let (tx, _) = watch::channel(Arc::new(view));
        Self { params, table: Mutex::new(table), tx }
    }

    /// The current view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every view published from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.tx.subscribe()
    }

    /// Changes the table with `f` and publishes the resulting view; returns
    /// `f`'s result and that view. The only way to change the table.
    pub fn update<R>(&self, f: impl FnOnce(&mut Table) -> R) -> (R, Arc<ClusterView>) {
        // Under the table lock, so two concurrent updates cannot publish an
        // older table after a newer one.
        let mut table = self.table.lock().expect("members lock");
        let out = f(&mut table);
        let prev = self.tx.borrow().clone();
        let ring_members = table.ring_members();
        let (ring, ring_epoch) = if prev.ring.nodes() == ring_members.as_slice() {
            (prev.ring.clone(), prev.ring_epoch)
        } else {
            tracing::info!(members = ?ring_members, "ring changed");
            (Arc::new(Ring::build(&ring_members, self.params)), prev.ring_epoch + 1)
        };
        let not_left = table.not_left();
        let ring_not_left = if prev.ring_not_left.nodes() == not_left.as_slice() {
            prev.ring_not_left.clone()
        } else {
            Arc::new(Ring::build(&not_left, self.params))
        };
        let view = Arc::new(ClusterView {
            epoch: prev.epoch + 1,
            ring_epoch,
            table: table.clone(),
            ring,
            ring_not_left,
            params: self.params,
        });
        self.tx.send_replace(view.clone());
        (out, view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Digest;
    use std::time::{Duration, SystemTime};

    const PARAMS: RingParams = RingParams { partitions: 16, vnodes: 8, replicas: 3 };

    fn d(id: &str, hb: u64, left: bool) -> Digest {
        Digest { id: id.into(), address: format!("http://{id}"), heartbeat: hb, left, ..Default::default() }
    }

    #[test]
    fn every_update_publishes_and_rings_follow_the_members() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let m = Membership::new(Table::new("a", "http://a", 1, now), PARAMS);
        let mut rx = m.subscribe();
        let v0 = m.view();
        assert_eq!((v0.ring().nodes().len(), v0.quorum_n()), (1, 1));

        let (_, v1) = m.update(|t| t.merge(&[d("b", 1, false), d("c", 1, false)], now));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().epoch(), v1.epoch());
        assert_eq!(v1.ring().nodes(), ["a", "b", "c"]);
        assert_eq!(v1.ring_epoch(), v0.ring_epoch() + 1);
        assert_eq!(v1.quorum_n(), 3);

        // A heartbeat changes the view, not the ring.
        let (_, v2) = m.update(|t| t.bump(now));
        assert!(v2.epoch() > v1.epoch());
        assert_eq!(v2.ring_epoch(), v1.ring_epoch());
        assert!(Arc::ptr_eq(&v1.ring, &v2.ring), "an unchanged ring is shared, not rebuilt");

        // Leaving changes both rings and N; the leave path publishes too.
        let (_, v3) = m.update(|t| t.merge(&[d("c", 2, true)], now));
        assert_eq!(v3.ring().nodes(), ["a", "b"]);
        assert_eq!(v3.ring_not_left().nodes(), ["a", "b"]);
        assert_eq!(v3.quorum_n(), 2);
        assert_eq!(m.view().epoch(), v3.epoch());
        assert_eq!(v3.ring_without("b").nodes(), ["a"]);
    }
}
