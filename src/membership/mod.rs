//! The membership table (SPEC §4, "Gossip"): who is in the cluster, at which
//! address, with which heartbeat, and whether it is alive, suspect, dead or
//! has left.
//!
//! Pure data and rules: the caller supplies the current time, so status
//! transitions are tested without sleeping. A member's status follows from how
//! long its heartbeat has not advanced: `suspect_after` -> suspect (still on
//! the ring), `dead_after` -> dead (off the ring). The node's own entry is
//! always alive.
//!
//! Gossip merges are push-pull: each side sends its [`Digest`] and applies the
//! other's with [`Table::merge`]. Higher heartbeats win; a heartbeat never
//! goes back, so a stale digest changes nothing. `left` travels with the
//! heartbeat it was announced at and is undone only by a higher heartbeat
//! (the node started again).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A member's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Heartbeat advancing.
    Alive,
    /// No progress for `suspect_after`: on the ring, but coordinators prefer others.
    Suspect,
    /// No progress for `dead_after`: off the ring until it advances again.
    Dead,
    /// Left on purpose (`POST /cluster/leave`): off the ring at once.
    Left,
}

impl Status {
    /// Whether a member with this status holds partitions.
    pub fn on_ring(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// Base URL.
    pub address: String,
    /// Current status, as this node judges it.
    pub status: Status,
    /// Monotonic heartbeat counter (higher wins).
    pub heartbeat: u64,
    /// When this node last saw the heartbeat advance.
    pub updated_at: SystemTime,
    /// Partitions it is receiving (as it last announced).
    pub transfers_in: u32,
    /// Partitions it is handing off (as it last announced).
    pub transfers_out: u32,
}

/// A digest that claimed a member id alive at another address (or this
/// node's own id): refused, so the claimant stays off the ring (SPEC §4,
/// "Safety of membership").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The id claimed.
    pub id: String,
    /// Where that id is alive.
    pub alive_at: String,
    /// Where the claim came from.
    pub claimed_by: String,
}

/// Timing rules for status changes.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No heartbeat progress for this long: suspect.
    pub suspect_after: Duration,
    /// No heartbeat progress for this long: dead.
    pub dead_after: Duration,
    /// How often statuses are refreshed (the gossip interval): a gap of
    /// that much between refreshes is the rhythm, not a stall.
    pub interval: Duration,
}

/// What gossip carries about one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Node id.
    pub id: String,
    /// Base URL.
    pub address: String,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// Whether the node announced it left.
    #[serde(default)]
    pub left: bool,
    /// Partitions it is receiving.
    #[serde(default)]
    pub transfers_in: u32,
    /// Partitions it is handing off.
    #[serde(default)]
    pub transfers_out: u32,
    /// How long ago (ms) the sender last saw this member's heartbeat
    /// advance (0 for the sender itself): a member first heard of, or
    /// remembered across a restart, starts that old here, so one the
    /// cluster has declared dead is not taken for alive (and put back on
    /// this node's ring) for a whole dead timeout.
    #[serde(default)]
    pub idle_ms: u64,
}

impl Digest {
    /// The status a digest announces: `left`, or alive (progress was seen).
    fn status(&self) -> Status {
        if self.left {
            Status::Left
        } else {
            Status::Alive
        }
    }

    /// A table row for a member first heard of at `now` (its heartbeat last
    /// advanced `idle_ms` before; the next refresh derives its status).
    fn to_member(&self, now: SystemTime) -> Member {
        Member {
            id: self.id.clone(),
            address: self.address.clone(),
            status: self.status(),
            heartbeat: self.heartbeat,
            updated_at: now.checked_sub(Duration::from_millis(self.idle_ms)).unwrap_or(now),
            transfers_in: self.transfers_in,
            transfers_out: self.transfers_out,
        }
    }
}

/// Most members a table keeps: digests naming new members past it are
/// ignored (and counted), so a peer cannot grow the table without bound.
pub const MAX_TABLE: usize = 10_000;

/// The membership table of one node.
#[derive(Debug, Clone)]
pub struct Table {
    me: String,
    members: BTreeMap<String, Member>,
    /// When statuses were last derived: a long gap means this node itself was
    /// stalled (paused, swapped out), not that everyone else went quiet.
    last_refresh: SystemTime,
    /// Claims refused by merges since the last [`Table::take_conflicts`].
    conflicts: Vec<Conflict>,
    /// New members ignored because the table was full, since the last
    /// [`Table::take_overflow`].
    overflow: u64,
    /// More than half of the other members are dead here: this node may be
    /// the one cut off.
    cut_off: bool,
    /// This node was cut off (or stalled for the dead timeout) and is back,
    /// since the last [`Table::take_back_from_isolation`].
    back: bool,
}

impl Table {
    /// A table holding only this node.
    pub fn new(me: &str, address: &str, heartbeat: u64, now: SystemTime) -> Self {
        let mut members = BTreeMap::new();
        members.insert(
            me.to_string(),
            Member {
                id: me.to_string(),
                address: address.to_string(),
                status: Status::Alive,
                heartbeat,
                updated_at: now,
                transfers_in: 0,
                transfers_out: 0,
            },
        );
        Self {
            me: me.to_string(),
            members,
            last_refresh: now,
            conflicts: Vec::new(),
            overflow: 0,
            cut_off: false,
            back: false,
        }
    }

    /// Announces this node's transfer counts with its next digests.
    pub fn set_transfers(&mut self, inbound: u32, outbound: u32) {
        let me = self.members.get_mut(&self.me).expect("the table always holds this node");
        me.transfers_in = inbound;
        me.transfers_out = outbound;
    }

    /// The claims refused since the last call.
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        std::mem::take(&mut self.conflicts)
    }

    /// New members ignored because the table was full, since the last call.
    pub fn take_overflow(&mut self) -> u64 {
        std::mem::take(&mut self.overflow)
    }

    /// Whether, since the last call, this node came back from a spell in
    /// which the others may have declared it dead and written without it:
    /// it saw more than half of the other members dead and they returned
    /// (it was on the small side of a network partition), or its own loop
    /// stalled for the dead timeout (it was paused). What it held may have
    /// missed writes.
    pub fn take_back_from_isolation(&mut self) -> bool {
        std::mem::take(&mut self.back)
    }

    /// Tracks `cut_off` and `back` from the current statuses.
    fn note_isolation(&mut self) {
        let others = self.members.values().filter(|m| m.id != self.me && m.status != Status::Left);
        let (n, dead) = others.fold((0, 0), |(n, dead), m| (n + 1, dead + usize::from(m.status == Status::Dead)));
        // With one other member, its death is no sign of who was cut off.
        let cut_off = n > 1 && dead * 2 > n;
        if self.cut_off && !cut_off {
            self.back = true;
        }
        self.cut_off = cut_off;
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Advances this node's own heartbeat; returns the new value.
    pub fn bump(&mut self, now: SystemTime) -> u64 {
        let me = self.members.get_mut(&self.me).expect("the table always holds this node");
        me.heartbeat = me.heartbeat.saturating_add(1);
        me.updated_at = now;
        me.status = Status::Alive;
        me.heartbeat
    }

    /// This node's current heartbeat.
    pub fn heartbeat(&self) -> u64 {
        self.members[&self.me].heartbeat
    }

    /// Re-derives every other member's status from the time since its
    /// heartbeat last advanced. Returns whether any status changed.
    ///
    /// When this node itself was stalled for half the suspect timeout or more
    /// since the last refresh (beyond the regular interval), that stall is
    /// credited to every other member:
    /// a node resuming from a pause must not declare the healthy cluster dead
    /// and act alone.
    pub fn refresh(&mut self, now: SystemTime, t: Timeouts) -> bool {
        let gap = now.duration_since(self.last_refresh).unwrap_or_default();
        self.last_refresh = now;
        // Only what goes beyond the regular interval is a stall of this
        // node's own: with an interval of half the suspect timeout or more,
        // crediting whole gaps would credit every round, and no member
        // would ever be suspected.
        let stall = gap.saturating_sub(t.interval);
        if gap >= t.dead_after * 3 / 4 && stall >= t.dead_after / 2 {
            // Long enough for the others to have declared this node dead
            // (and a stall, not an interval as long as the dead timeout).
            // Three quarters of it: what a peer last heard of this node may
            // be a few gossip rounds older than this node's last round, so
            // the peer's dead timeout can run out before this node's own
            // gap reaches it. Verifying once too often costs a Merkle root
            // exchange per partition; once too few, a stale copy answering.
            self.back = true;
        }
        if stall >= t.suspect_after / 2 {
            for m in self.members.values_mut() {
                m.updated_at += stall;
            }
        }
        let mut changed = false;
        for m in self.members.values_mut() {
            if m.id == self.me || m.status == Status::Left {
                continue;
            }
            let idle = now.duration_since(m.updated_at).unwrap_or_default();
            let status = if idle >= t.dead_after {
                Status::Dead
            } else if idle >= t.suspect_after {
                Status::Suspect
            } else {
                Status::Alive
            };
            changed |= status != m.status;
            m.status = status;
        }
        self.note_isolation();
        changed
    }

    /// Every member, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member.
    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// Ids of the members that hold partitions (alive or suspect).
    pub fn ring_members(&self) -> Vec<String> {
        self.members.values().filter(|m| m.status.on_ring()).map(|m| m.id.clone()).collect()
    }

    /// Ids of every member that has not left, dead ones included: the set a
    /// tombstone's replicas are computed over (SPEC §3).
    pub fn not_left(&self) -> Vec<String> {
        self.members.values().filter(|m| m.status != Status::Left).map(|m| m.id.clone()).collect()
    }

    /// How many members have not left.
    pub fn not_left_count(&self) -> usize {
        self.members.values().filter(|m| m.status != Status::Left).count()
    }

    /// What this node gossips: every member it knows.
    pub fn digests(&self) -> Vec<Digest> {
        self.members
            .values()
            .map(|m| Digest {
                id: m.id.clone(),
                address: m.address.clone(),
                heartbeat: m.heartbeat,
                left: m.status == Status::Left,
                transfers_in: m.transfers_in,
                transfers_out: m.transfers_out,
                idle_ms: 0,
            })
            .collect()
    }

    /// [`Table::digests`] with each member's idle time at `now` (what gossip
    /// sends and a restart restores).
    pub fn digests_at(&self, now: SystemTime) -> Vec<Digest> {
        let mut out = self.digests();
        for d in &mut out {
            if d.id != self.me {
                let since = self.members[&d.id].updated_at;
                d.idle_ms = now.duration_since(since).unwrap_or_default().as_millis() as u64;
            }
        }
        out
    }

    /// Whether `d` claims an id that another process holds: this node's own
    /// id at another address, or a member alive here at another address (a
    /// member that is suspect, dead or left may move, and a digest saying
    /// it left is news of that member, not a claim).
    pub fn conflict(&self, d: &Digest) -> Option<Conflict> {
        let held = self.members.get(&d.id)?;
        let taken = if d.id == self.me { true } else { held.status == Status::Alive && !d.left };
        (taken && d.address != held.address).then(|| Conflict {
            id: d.id.clone(),
            alive_at: held.address.clone(),
            claimed_by: d.address.clone(),
        })
    }

    /// Applies digests heard from a peer at `now`. Returns whether the
    /// members, the ring members, the members not left or an address changed.
    ///
    /// A digest naming a member that is alive here at another address, or
    /// naming this node at another address, is refused and recorded as a
    /// [`Conflict`]: two processes must not share an id. A member that is
    /// suspect, dead or left may move (a restart elsewhere).
    pub fn merge(&mut self, digests: &[Digest], now: SystemTime) -> bool {
        let before = self.ring_members();
        let not_left_before = self.not_left_count();
        let mut changed = false;
        for d in digests {
            let conflict = self.conflict(d);
            if d.id == self.me {
                // Someone saw a heartbeat of ours we no longer know: a
                // restart whose reservation was lost, or, at another address
                // (refused below), our old address after a move that lost
                // the data dir. Jump past it, or the others would never take
                // the new address (they move a member only for a higher one).
                let me = self.members.get_mut(&self.me).expect("self entry");
                if d.heartbeat > me.heartbeat {
                    me.heartbeat = d.heartbeat.saturating_add(1);
                }
            }
            if let Some(c) = conflict {
                self.conflicts.push(c);
                continue;
            }
            if d.id == self.me {
                continue;
            }
            let full = self.members.len() >= MAX_TABLE;
            match self.members.get_mut(&d.id) {
                None if full => self.overflow += 1,
                None => {
                    self.members.insert(d.id.clone(), d.to_member(now));
                    changed = true;
                }
                Some(m) => {
                    if d.heartbeat > m.heartbeat {
                        changed |= m.address != d.address;
                        m.heartbeat = d.heartbeat;
                        m.address = d.address.clone();
                        m.updated_at = now;
                        m.status = d.status();
                        m.transfers_in = d.transfers_in;
                        m.transfers_out = d.transfers_out;
                    } else if d.heartbeat == m.heartbeat && d.left && m.status != Status::Left {
                        m.status = Status::Left;
                    }
                }
            }
        }
        self.note_isolation();
        changed || before != self.ring_members() || not_left_before != self.not_left_count()
    }

    /// Marks this node as leaving: one last heartbeat, status `left`.
    pub fn leave(&mut self, now: SystemTime) -> u64 {
        let hb = self.bump(now);
        self.members.get_mut(&self.me).expect("self entry").status = Status::Left;
        hb
    }

    /// Restores members remembered from a previous run as alive at `now`, so
    /// a restarted node starts from the ring it last knew; gossip then
    /// corrects whoever is really gone.
    pub fn restore(&mut self, remembered: &[Digest], now: SystemTime) {
        for d in remembered {
            if d.id != self.me && !self.members.contains_key(&d.id) {
                self.members.insert(d.id.clone(), d.to_member(now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        suspect_after: Duration::from_millis(50),
        dead_after: Duration::from_millis(150),
        interval: Duration::from_millis(10),
    };

    fn d(id: &str, hb: u64) -> Digest {
        Digest {
            id: id.into(),
            address: format!("http://{id}"),
            heartbeat: hb,
            left: false,
            transfers_in: 0,
            transfers_out: 0,
            idle_ms: 0,
        }
    }

    #[test]
    fn the_table_does_not_grow_past_its_bound() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        let many: Vec<Digest> = (0..MAX_TABLE + 50).map(|i| d(&format!("m{i}"), 1)).collect();
        t.merge(&many, at(0));
        assert_eq!(t.members().count(), MAX_TABLE);
        assert_eq!(t.take_overflow(), 51);
        // Known members still update.
        t.merge(&[d("m0", 9)], at(1));
        assert_eq!(t.get("m0").unwrap().heartbeat, 9);
        assert_eq!(t.take_overflow(), 0);
    }

    #[test]
    fn an_id_alive_elsewhere_is_refused_but_a_dead_one_may_move() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        t.merge(&[d("b", 5)], at(0));
        let mut impostor = d("b", 900);
        impostor.address = "http://elsewhere".into();
        assert!(!t.merge(&[impostor.clone()], at(10)));
        assert_eq!(t.get("b").unwrap().address, "http://b");
        assert_eq!(t.get("b").unwrap().heartbeat, 5);
        let c = t.take_conflicts();
        assert_eq!(
            c,
            vec![Conflict { id: "b".into(), alive_at: "http://b".into(), claimed_by: "http://elsewhere".into() }]
        );
        assert!(t.take_conflicts().is_empty());
        // This node's own id at another address (its old one, after a move
        // that lost the data dir): refused, but its heartbeat there is
        // jumped past, so that the others take the new address.
        let mut me = d("a", 50);
        me.address = "http://elsewhere".into();
        t.merge(&[me], at(20));
        assert_eq!(t.take_conflicts().len(), 1);
        assert_eq!(t.get("a").unwrap().address, "http://a");
        assert!(t.heartbeat() > 50);
        // Once b is dead here, a restart at a new address is accepted.
        for now in (30..=400).step_by(10) {
            t.refresh(at(now), T);
        }
        assert_eq!(t.get("b").unwrap().status, Status::Dead);
        assert!(t.merge(&[impostor], at(410)));
        assert_eq!(t.get("b").unwrap().address, "http://elsewhere");
        assert!(t.take_conflicts().is_empty());
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    #[test]
    fn higher_heartbeats_win_and_stale_ones_change_nothing() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        assert!(t.merge(&[d("b", 5)], at(0)));
        assert_eq!(t.get("b").unwrap().heartbeat, 5);
        assert!(!t.merge(&[d("b", 3)], at(10)));
        assert_eq!(t.get("b").unwrap().heartbeat, 5);
        assert_eq!(t.get("b").unwrap().updated_at, at(0), "a stale digest is not progress");
        t.merge(&[d("b", 6)], at(20));
        assert_eq!(t.get("b").unwrap().updated_at, at(20));
    }

    #[test]
    fn silence_makes_suspect_then_dead_and_progress_revives() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        t.merge(&[d("b", 1)], at(0));
        // Refresh every 10 ms, as a running gossip loop does.
        let mut changed_at = Vec::new();
        for now in (10..=160).step_by(10) {
            if t.refresh(at(now), T) {
                changed_at.push((now, t.get("b").unwrap().status));
            }
            if now == 100 {
                assert_eq!(t.ring_members(), vec!["a", "b"], "suspect stays on the ring");
            }
        }
        assert_eq!(changed_at, vec![(50, Status::Suspect), (150, Status::Dead)]);
        assert_eq!(t.ring_members(), vec!["a"]);
        assert_eq!(t.not_left(), vec!["a", "b"]);
        assert!(t.merge(&[d("b", 2)], at(170)));
        assert_eq!(t.get("b").unwrap().status, Status::Alive);
    }

    #[test]
    fn a_stall_of_this_node_is_not_blamed_on_the_others() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        t.merge(&[d("b", 1)], at(0));
        t.refresh(at(20), T);
        // Our own loop was frozen for a long time: nobody becomes suspect.
        assert!(!t.refresh(at(10_000), T));
        assert_eq!(t.get("b").unwrap().status, Status::Alive);
        // Regular refreshes from then on age b normally.
        let mut now = 10_000;
        while now < 10_100 {
            now += 20;
            t.refresh(at(now), T);
        }
        assert_eq!(t.get("b").unwrap().status, Status::Suspect);
    }

    #[test]
    fn a_node_cut_off_from_most_members_notes_when_they_return() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        t.merge(&[d("b", 1), d("c", 1)], at(0));
        // b goes quiet alone: a is on the big side, nothing to note.
        let mut now = 0;
        while now < 200 {
            now += 10;
            t.merge(&[d("c", 1 + now)], at(now));
            t.refresh(at(now), T);
        }
        assert_eq!(t.get("b").unwrap().status, Status::Dead);
        t.merge(&[d("b", 2)], at(now));
        assert!(!t.take_back_from_isolation(), "one of two dead is no isolation");
        // Now both go quiet (a is cut off), then come back.
        while now < 500 {
            now += 10;
            t.refresh(at(now), T);
        }
        assert!(!t.take_back_from_isolation(), "still cut off");
        t.merge(&[d("b", 3), d("c", 1000)], at(now));
        assert!(t.take_back_from_isolation());
        assert!(!t.take_back_from_isolation(), "taken");
    }

    #[test]
    fn a_member_first_heard_or_restored_is_as_old_as_its_news() {
        // b's table: c went quiet 1 s ago, d is alive.
        let mut b = Table::new("b", "http://b", 1, at(0));
        b.merge(&[d("c", 3), d("d", 1)], at(0));
        for now in (10..=1000).step_by(10) {
            b.merge(&[d("d", now)], at(now));
            b.refresh(at(now), T);
        }
        assert_eq!(b.get("c").unwrap().status, Status::Dead);
        let news = b.digests_at(at(1000));
        let idle = |id: &str| news.iter().find(|x| x.id == id).unwrap().idle_ms;
        assert_eq!((idle("b"), idle("c"), idle("d")), (0, 1000, 0));
        // a hears of them for the first time: c is dead at once, not after
        // a dead timeout of its own.
        let mut a = Table::new("a", "http://a", 1, at(5000));
        a.merge(&news, at(5000));
        a.refresh(at(5000), T);
        assert_eq!(a.get("c").unwrap().status, Status::Dead);
        assert_eq!(a.get("d").unwrap().status, Status::Alive);
        assert_eq!(a.ring_members(), vec!["a", "b", "d"]);
        // The same when remembered across a restart.
        let mut restarted = Table::new("a", "http://a", 1, at(9000));
        restarted.restore(&a.digests_at(at(5000)), at(9000));
        restarted.refresh(at(9000), T);
        assert_eq!(restarted.get("c").unwrap().status, Status::Dead);
        assert_eq!(restarted.get("b").unwrap().status, Status::Alive);
    }

    #[test]
    fn a_stall_as_long_as_the_dead_timeout_is_noted() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        t.merge(&[d("b", 1)], at(0));
        t.refresh(at(10), T);
        t.refresh(at(100), T);
        assert!(!t.take_back_from_isolation(), "a stall well short of the dead timeout");
        // 120 ms: short of the 150 ms dead timeout, yet a peer that last
        // heard of `a` a few rounds before its stall may call it dead.
        t.refresh(at(220), T);
        assert!(t.take_back_from_isolation());
        t.refresh(at(1000), T);
        assert!(t.take_back_from_isolation());
        assert_eq!(t.get("b").unwrap().status, Status::Alive, "the stall is credited");
    }

    #[test]
    fn a_coarse_interval_still_ages_a_silent_member() {
        // Refreshes every 60 ms against a 100 ms suspect timeout: the
        // rhythm itself is no stall, or nobody would ever be suspected.
        let t = Timeouts {
            suspect_after: Duration::from_millis(100),
            dead_after: Duration::from_millis(300),
            interval: Duration::from_millis(60),
        };
        let mut table = Table::new("a", "http://a", 1, at(0));
        table.merge(&[d("b", 1)], at(0));
        let mut now = 0;
        while now < 360 {
            now += 60;
            table.refresh(at(now), t);
        }
        assert_eq!(table.get("b").unwrap().status, Status::Dead);
    }

    #[test]
    fn left_leaves_at_once_and_a_restart_rejoins() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        t.merge(&[d("b", 4)], at(0));
        let mut gone = d("b", 5);
        gone.left = true;
        assert!(t.merge(&[gone], at(1)));
        assert_eq!(t.get("b").unwrap().status, Status::Left);
        assert_eq!(t.ring_members(), vec!["a"]);
        for now in (10..=1000).step_by(10) {
            t.refresh(at(now), T);
        }
        assert_eq!(t.get("b").unwrap().status, Status::Left, "left is not aged into dead");
        assert!(t.merge(&[d("b", 6)], at(20_000)));
        assert_eq!(t.get("b").unwrap().status, Status::Alive);
    }

    #[test]
    fn a_dead_member_announced_left_is_a_change() {
        let mut t = Table::new("a", "http://a", 1, at(0));
        t.merge(&[d("b", 3)], at(0));
        for now in (10..=200).step_by(10) {
            t.refresh(at(now), T);
        }
        assert_eq!(t.get("b").unwrap().status, Status::Dead);
        let mut gone = d("b", 3);
        gone.left = true;
        assert!(t.merge(&[gone], at(210)), "members not left went from 2 to 1");
        assert_eq!(t.not_left_count(), 1);
    }

    #[test]
    fn own_entry_is_never_overwritten_but_jumps_past_a_lost_heartbeat() {
        let mut t = Table::new("a", "http://a", 10, at(0));
        let mut other = d("a", 50);
        other.address = "http://elsewhere".into();
        t.merge(&[other], at(0));
        assert_eq!(t.get("a").unwrap().address, "http://a");
        t.merge(&[d("a", 50)], at(0));
        assert!(t.heartbeat() > 50);
    }

    #[test]
    fn own_heartbeat_is_monotonic_and_alive() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut table = Table::new("a", "http://a", 41, t0);
        assert_eq!(table.bump(t0), 42);
        assert!(!table.refresh(t0 + Duration::from_secs(3600), T));
        assert_eq!(table.get("a").unwrap().status, Status::Alive);
        assert_eq!(table.ring_members(), vec!["a".to_string()]);
    }
}
