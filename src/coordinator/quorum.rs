//! Read and write quorums: what a client may ask for (`r`, `w`), how many
//! replies that means for a preference list of N nodes, and the [`Tally`]
//! that reads and writes both use to know when a quorum is reached or can
//! no longer be. Pure arithmetic.
//!
//! A count is any whole number from 1 up to [`MAX_COUNT`] (ten digits, as
//! `openapi.yaml` says); above N it means every replica, the same cap that
//! SPEC §2 applies to the `--read-quorum` and `--write-quorum` defaults. So
//! what the API accepts does not depend on how many members the cluster has
//! right now, and 0, negatives and words are the only refusals.

/// A requested consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Writes only: ack after the coordinator's own durable write.
    Async,
    /// This many replies (at most N).
    Count(u64),
    /// floor(N/2) + 1.
    Quorum,
    /// Every node of the preference list.
    All,
}

/// Why a level was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LevelError {
    /// Not one of the accepted spellings.
    #[error("{param}={value:?} is not one of {allowed}")]
    Unknown { param: &'static str, value: String, allowed: &'static str },
    /// A count of 0 or more than ten digits.
    #[error("{param}={value} must be a whole number from 1 to 9999999999 (counts above N mean all replicas)")]
    OutOfRange { param: &'static str, value: String },
}

/// Largest count accepted for `r` or `w`.
pub const MAX_COUNT: u64 = 9_999_999_999;

impl Level {
    /// Parses `r` (`writes = false`) or `w` (`writes = true`).
    pub fn parse(value: &str, writes: bool) -> Result<Self, LevelError> {
        let param = if writes { "w" } else { "r" };
        match value {
            "quorum" => Ok(Level::Quorum),
            "all" => Ok(Level::All),
            "async" if writes => Ok(Level::Async),
            _ => {
                let allowed = if writes { "async, quorum, all or 1..N" } else { "quorum, all or 1..N" };
                // Digits without a leading zero (openapi.yaml's pattern); a
                // lone "0" is out of range.
                if value.is_empty()
                    || !value.bytes().all(|b| b.is_ascii_digit())
                    || value.len() > 1 && value.starts_with('0')
                {
                    return Err(LevelError::Unknown { param, value: value.to_string(), allowed });
                }
                match value.parse::<u64>() {
                    Ok(count) if (1..=MAX_COUNT).contains(&count) => Ok(Level::Count(count)),
                    _ => Err(LevelError::OutOfRange { param, value: value.to_string() }),
                }
            }
        }
    }

    /// Replies needed from a preference list of `n` nodes (at least 1: the
    /// coordinator's own write for `Async`).
    pub fn required(self, n: usize) -> usize {
        match self {
            Level::Async => 1,
            Level::Count(c) => (c.min(n as u64) as usize).max(1),
            Level::Quorum => n / 2 + 1,
            Level::All => n.max(1),
        }
    }
}

/// Where a quorum stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided: more replies may still come.
    Pending,
    /// At least `needed` replicas answered.
    Reached,
    /// Even if every outstanding reply were good, `needed` cannot be reached.
    Failed,
}

/// Counts replies from `total` replicas toward `needed`. Once decided, the
/// outcome never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    needed: usize,
    total: usize,
    ok: usize,
    failed: usize,
}

impl Tally {
    /// Nothing heard yet from `total` replicas, `needed` of which must answer.
    pub fn new(needed: usize, total: usize) -> Self {
        Self { needed, total, ok: 0, failed: 0 }
    }

    /// One good reply (ignored past `total`).
    pub fn ok(&mut self) -> Outcome {
        if self.answered() < self.total {
            self.ok += 1;
        }
        self.outcome()
    }

    /// One failed reply (ignored past `total`).
    pub fn fail(&mut self) -> Outcome {
        if self.answered() < self.total {
            self.failed += 1;
        }
        self.outcome()
    }

    /// The current outcome.
    pub fn outcome(&self) -> Outcome {
        if self.ok >= self.needed {
            Outcome::Reached
        } else if self.total - self.failed < self.needed {
            Outcome::Failed
        } else {
            Outcome::Pending
        }
    }

    /// Good replies so far.
    pub fn acked(&self) -> usize {
        self.ok
    }

    /// Replies so far, good or not.
    pub fn answered(&self) -> usize {
        self.ok + self.failed
    }

    /// Whether every replica answered.
    pub fn complete(&self) -> bool {
        self.answered() == self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Reached exactly when enough good replies came; failed exactly when
        /// the outstanding ones could not make up the difference; and a
        /// decided outcome never changes.
        #[test]
        fn tally_laws(needed in 1usize..6, total in 0usize..6, replies in proptest::collection::vec(any::<bool>(), 0..8)) {
            let mut t = Tally::new(needed, total);
            let mut decided: Option<Outcome> = None;
            let (mut ok, mut failed) = (0usize, 0usize);
            for good in replies {
                let o = if good { t.ok() } else { t.fail() };
                if ok + failed < total {
                    if good { ok += 1 } else { failed += 1 }
                }
                prop_assert_eq!(o == Outcome::Reached, ok >= needed);
                prop_assert_eq!(o == Outcome::Failed, ok < needed && total - failed < needed);
                if let Some(d) = decided {
                    prop_assert_eq!(o, d);
                } else if o != Outcome::Pending {
                    decided = Some(o);
                }
                prop_assert_eq!(t.acked(), ok);
                prop_assert!(t.answered() <= total);
            }
        }
    }

    #[test]
    fn a_quorum_of_two_out_of_three() {
        let mut t = Tally::new(2, 3);
        assert_eq!(t.outcome(), Outcome::Pending);
        assert_eq!(t.fail(), Outcome::Pending);
        assert_eq!(t.ok(), Outcome::Pending);
        assert_eq!(t.ok(), Outcome::Reached);
        let mut t = Tally::new(2, 3);
        t.fail();
        assert_eq!(t.fail(), Outcome::Failed);
        assert_eq!(Tally::new(1, 0).outcome(), Outcome::Failed, "nobody to ask");
    }

    #[test]
    fn spellings() {
        assert_eq!(Level::parse("quorum", false), Ok(Level::Quorum));
        assert_eq!(Level::parse("all", true), Ok(Level::All));
        assert_eq!(Level::parse("async", true), Ok(Level::Async));
        assert!(Level::parse("async", false).is_err());
        assert_eq!(Level::parse("2", true), Ok(Level::Count(2)));
        assert_eq!(Level::parse("9999999999", true), Ok(Level::Count(9_999_999_999)));
        assert!(matches!(Level::parse("0", true), Err(LevelError::OutOfRange { .. })));
        assert!(matches!(Level::parse("10000000000", true), Err(LevelError::OutOfRange { .. })));
        assert!(matches!(Level::parse("99999999999999999999999", true), Err(LevelError::OutOfRange { .. })));
        for bad in ["-1", "+1", "1.0", "", " 1", "QUORUM", "01", "002"] {
            assert!(matches!(Level::parse(bad, true), Err(LevelError::Unknown { .. })), "{bad:?}");
        }
    }

    #[test]
    fn counts_above_n_mean_every_replica() {
        assert_eq!(Level::Count(5).required(3), 3);
        assert_eq!(Level::Count(9_999_999_999).required(1), 1);
    }

    #[test]
    fn required_replies() {
        for (n, q) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            assert_eq!(Level::Quorum.required(n), q, "N={n}");
            assert_eq!(Level::All.required(n), n);
            assert_eq!(Level::Async.required(n), 1);
        }
        assert_eq!(Level::Count(2).required(3), 2);
    }
}
