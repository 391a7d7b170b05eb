//! Which partitions this node holds completely, which it is receiving and
//! which it is handing off (SPEC §4, "Ownership moves with the ring").
//! Pure state and rules; the transfer worker (`crate::transfer`) does the
//! moving, the node persists this state in its data dir.
//!
//! - **held**: partitions this node has (or had) a complete copy of: it was
//!   alone at its first start, received the partition in full, or all its
//!   first holders were new and empty (a new cluster). Kept across restarts;
//!   dropped only once a hand-off of the partition was acknowledged.
//! - **inbound**: partitions this node owns (it is in their preference list)
//!   but cannot vouch for yet. `Stream`: it holds nothing of it, and pulls
//!   the whole partition from a holder with a resumable cursor. `Sync`: it
//!   holds a copy that may be stale (it restarted, or came back after being
//!   declared dead, or a stream from one holder just ended), and catches up
//!   by a Merkle exchange with every other owner holding it. While
//!   a partition is inbound this node never answers for it alone: client
//!   requests are forwarded to a replica that holds it, and its replies to
//!   replica reads include the holder's copy.
//! - **outbound**: partitions it holds but no longer owns: handed to their
//!   owners, then dropped.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How an inbound partition catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Nothing here: pull the whole partition.
    Stream,
    /// A possibly stale copy here: Merkle exchange with every owner holding it.
    Sync,
}

/// One partition being received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    /// How it catches up.
    pub mode: Mode,
    /// The last key received from the current source (`Stream`), so a
    /// restart resumes instead of starting over.
    #[serde(default, with = "serde_bytes")]
    pub cursor: Option<Vec<u8>>,
    /// The holder being pulled from, if one was found.
    #[serde(default)]
    pub source: Option<String>,
}

/// What one partition is to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Held completely.
    Held,
    /// Being received.
    Inbound(Mode),
    /// Held, to be handed off.
    Outbound,
    /// Nothing to do with it.
    None,
}

/// The ownership state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    held: BTreeSet<u32>,
    inbound: BTreeMap<u32, Inbound>,
    outbound: BTreeSet<u32>,
    /// Set at start on a data dir that held something: every held partition
    /// is verified (`Sync`) at the first reconcile.
    #[serde(skip)]
    verify: bool,
}

impl Ownership {
    /// A node on a new data dir that joins a cluster: nothing held yet.
    pub fn joining() -> Self {
        Self::default()
    }

    /// A node alone by design on a new data dir: it holds every partition
    /// (there is nothing anywhere else).
    pub fn alone(partitions: u32) -> Self {
        Self { held: (0..partitions).collect(), ..Self::default() }
    }

    /// The state persisted by a previous run, to be verified: whatever it
    /// held may have changed elsewhere while it was down.
    pub fn restarted(mut self) -> Self {
        self.verify = true;
        self
    }

    /// Everything held is to be verified again, as after a restart: this
    /// node was cut off or paused long enough for the others to write
    /// without it.
    pub fn reverify(&mut self) {
        self.verify = true;
    }

    /// Whether the partitions held before a restart still wait for their
    /// first reconcile (which makes the owned ones `Sync`).
    pub fn verifying(&self) -> bool {
        self.verify
    }

    /// Forgets every partition held: this node's data dir is new, yet its
    /// id was a member before (gossip names it with a heartbeat of an
    /// earlier run), so what it took for the whole of a new cluster is a
    /// wiped member's empty copy. The next reconcile makes each partition
    /// it owns inbound, so it refills like a joining node.
    pub fn forget_held(&mut self) {
        self.held.clear();
        self.outbound.clear();
    }

    /// What `partition` is to this node.
    pub fn standing(&self, partition: u32) -> Standing {
        if let Some(i) = self.inbound.get(&partition) {
            Standing::Inbound(i.mode)
        } else if self.outbound.contains(&partition) {
            Standing::Outbound
        } else if self.verify && self.held.contains(&partition) {
            // Until the first reconcile takes it up: a copy from before a
            // restart is not vouched for, not even for that short while.
            Standing::Inbound(Mode::Sync)
        } else if self.held.contains(&partition) {
            Standing::Held
        } else {
            Standing::None
        }
    }

    /// Whether this node holds a complete (if maybe stale) copy of
    /// `partition`: what a receiving node asks of a source.
    pub fn holds(&self, partition: u32) -> bool {
        self.held.contains(&partition)
    }

    /// Whether `partition` is being received.
    pub fn is_inbound(&self, partition: u32) -> bool {
        self.inbound.contains_key(&partition)
    }

    /// The partitions being received, with their progress.
    pub fn inbound(&self) -> &BTreeMap<u32, Inbound> {
        &self.inbound
    }

    /// The partitions to hand off.
    pub fn outbound(&self) -> &BTreeSet<u32> {
        &self.outbound
    }

    /// (inbound, outbound) counts.
    pub fn counts(&self) -> (u32, u32) {
        (self.inbound.len() as u32, self.outbound.len() as u32)
    }

    /// Brings the state in line with the ring: `owned(p)` says whether this
    /// node is in partition `p`'s preference list now, `has_data(p)` whether
    /// it stores anything of it. Partitions gained become inbound (`Stream`
    /// when nothing is here, `Sync` otherwise); partitions lost are handed
    /// off (a transfer under way is cancelled); a partition given back
    /// before its hand-off finished is verified (`Sync`) like one held
    /// before a restart: while it was not owned here, writes went to its
    /// owners and not here, so the copy may be stale. Returns whether
    /// anything changed.
    pub fn reconcile(&mut self, partitions: u32, owned: impl Fn(u32) -> bool, has_data: impl Fn(u32) -> bool) -> bool {
        let before = self.clone();
        let verify = std::mem::take(&mut self.verify);
        for p in 0..partitions {
            let mode = if has_data(p) { Mode::Sync } else { Mode::Stream };
            if owned(p) {
                let given_back = self.outbound.remove(&p);
                if self.held.contains(&p) {
                    if verify || given_back {
                        self.inbound.insert(p, Inbound { mode: Mode::Sync, cursor: None, source: None });
                    }
                } else {
                    self.inbound.entry(p).or_insert(Inbound { mode, cursor: None, source: None });
                }
            } else {
                self.inbound.remove(&p);
                if self.held.contains(&p) || has_data(p) {
                    self.outbound.insert(p);
                }
            }
        }
        *self != before
    }

    /// Records where an inbound stream got to.
    pub fn progress(&mut self, partition: u32, source: &str, cursor: Option<Vec<u8>>) {
        if let Some(i) = self.inbound.get_mut(&partition) {
            if i.source.as_deref() != Some(source) {
                i.source = Some(source.to_string());
            }
            i.cursor = cursor;
        }
    }

    /// Forgets an inbound stream's source and cursor (it stalled or stopped
    /// holding the partition): the next source starts over.
    pub fn restart_inbound(&mut self, partition: u32) {
        if let Some(i) = self.inbound.get_mut(&partition) {
            i.source = None;
            i.cursor = None;
        }
    }

    /// An inbound stream reached the end of its source: what is here now is
    /// a complete copy of one holder's, to be compared with the others'.
    pub fn streamed(&mut self, partition: u32) {
        if let Some(i) = self.inbound.get_mut(&partition) {
            *i = Inbound { mode: Mode::Sync, cursor: None, source: None };
        }
    }

    /// An inbound partition is complete.
    pub fn received(&mut self, partition: u32) {
        if self.inbound.remove(&partition).is_some() {
            self.held.insert(partition);
        }
    }

    /// An outbound partition was handed off and dropped.
    pub fn dropped(&mut self, partition: u32) {
        self.outbound.remove(&partition);
        self.held.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_joining_node_streams_what_it_owns_and_holds_it_once_received() {
        let mut o = Ownership::joining();
        assert!(o.reconcile(4, |p| p < 2, |_| false));
        assert_eq!(o.standing(0), Standing::Inbound(Mode::Stream));
        assert_eq!(o.standing(3), Standing::None);
        assert!(!o.reconcile(4, |p| p < 2, |_| false), "nothing new");
        o.progress(0, "a", Some(b"k".to_vec()));
        assert_eq!(o.inbound()[&0].cursor.as_deref(), Some(&b"k"[..]));
        o.received(0);
        assert_eq!(o.standing(0), Standing::Held);
        assert!(o.holds(0) && !o.holds(1));
        assert_eq!(o.counts(), (1, 0));
    }

    #[test]
    fn a_restart_verifies_what_it_held_and_a_lost_partition_is_handed_off() {
        let mut o = Ownership::alone(3).restarted();
        // Before the first reconcile nothing held is vouched for either.
        assert!(o.verifying());
        assert_eq!(o.standing(2), Standing::Inbound(Mode::Sync));
        o.reconcile(3, |p| p != 2, |_| true);
        assert!(!o.verifying());
        assert_eq!(o.standing(0), Standing::Inbound(Mode::Sync));
        assert_eq!(o.standing(2), Standing::Outbound);
        assert!(o.holds(0), "a stale copy is still a holder's copy");
        o.received(0);
        o.received(1);
        // Given back before the hand-off finished: writes went elsewhere
        // meanwhile, so it is verified before it is vouched for again.
        o.reconcile(3, |_| true, |_| true);
        assert_eq!(o.standing(2), Standing::Inbound(Mode::Sync));
        assert!(o.holds(2), "still a holder's copy for others");
        o.received(2);
        assert_eq!(o.standing(2), Standing::Held);
        o.reconcile(3, |p| p == 0, |_| true);
        o.dropped(1);
        assert_eq!(o.standing(1), Standing::None);
        assert_eq!(o.counts(), (0, 1));
    }

    #[test]
    fn a_wiped_member_that_started_alone_refills_what_it_owns() {
        let mut o = Ownership::alone(4);
        assert_eq!(o.standing(0), Standing::Held);
        o.forget_held();
        // Partition 1 took writes while it thought itself alone: it syncs;
        // the others stream; 3 is no longer its and holds nothing.
        assert!(o.reconcile(4, |p| p < 3, |p| p == 1));
        assert_eq!(o.standing(0), Standing::Inbound(Mode::Stream));
        assert_eq!(o.standing(1), Standing::Inbound(Mode::Sync));
        assert_eq!(o.standing(3), Standing::None);
        assert!(!o.holds(0), "not a source for others");
    }

    #[test]
    fn data_in_a_partition_never_held_is_handed_off_too() {
        // A write coordinated from outside the preference list, a late hint.
        let mut o = Ownership::joining();
        o.reconcile(2, |_| false, |p| p == 1);
        assert_eq!(o.standing(1), Standing::Outbound);
        assert_eq!(o.standing(0), Standing::None);
    }

    proptest! {
        /// Whatever sequence of rings: an owned partition is held or
        /// inbound, never outbound; an unowned one is never inbound; and
        /// nothing is held that was not received (or held from the start).
        #[test]
        fn reconcile_follows_the_ring(rings in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 6), 1..12), data in proptest::collection::vec(any::<bool>(), 6)) {
            let mut o = Ownership::joining();
            for owned in &rings {
                o.reconcile(6, |p| owned[p as usize], |p| data[p as usize]);
                for p in 0..6u32 {
                    match o.standing(p) {
                        Standing::Inbound(_) | Standing::Held => prop_assert!(owned[p as usize]),
                        Standing::Outbound => prop_assert!(!owned[p as usize]),
                        Standing::None => prop_assert!(!owned[p as usize]),
                    }
                    prop_assert!(!o.holds(p), "nothing was received");
                }
            }
        }
    }
}
