//! The membership table (SPEC §4, "Gossip"): who is in the cluster, at which
//! address, with which heartbeat, and whether it is alive, suspect, dead or
//! has left.
//!
//! Pure data and rules: the caller supplies the current time, so status
//! transitions are tested without sleeping. A member's status follows from how
//! long its heartbeat has not advanced: `suspect_after` -> suspect (still on
//! the ring), `dead_after` -> dead (off the ring). The node's own entry is
//! always alive.

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
}

/// Timing rules for status changes.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No heartbeat progress for this long: suspect.
    pub suspect_after: Duration,
    /// No heartbeat progress for this long: dead.
    pub dead_after: Duration,
}

/// The membership table of one node.
#[derive(Debug, Clone)]
pub struct Table {
    me: String,
    members: BTreeMap<String, Member>,
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
            },
        );
        Self {
            me: me.to_string(),
            members,
        }
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Advances this node's own heartbeat; returns the new value.
    pub fn bump(&mut self, now: SystemTime) -> u64 {
        let me = self
            .members
            .get_mut(&self.me)
            .expect("the table always holds this node");
        me.heartbeat += 1;
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
    pub fn refresh(&mut self, now: SystemTime, t: Timeouts) -> bool {
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
        self.members
            .values()
            .filter(|m| m.status.on_ring())
            .map(|m| m.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        suspect_after: Duration::from_millis(50),
        dead_after: Duration::from_millis(150),
    };

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
