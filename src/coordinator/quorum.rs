//! Read and write quorums: what a client may ask for (`r`, `w`) and how many
//! replies that means for a preference list of N nodes. Pure arithmetic.

/// A requested consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Writes only: ack after the coordinator's own durable write.
    Async,
    /// Exactly this many replies.
    Count(u32),
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
    /// A count outside 1..=N.
    #[error("{param}={value} is outside 1..={n} (N for this cluster)")]
    OutOfRange { param: &'static str, value: u64, n: usize },
}

impl Level {
    /// Parses `r` (`writes = false`) or `w` (`writes = true`) for a
    /// preference list of `n` nodes.
    pub fn parse(value: &str, writes: bool, n: usize) -> Result<Self, LevelError> {
        let param = if writes { "w" } else { "r" };
        match value {
            "quorum" => Ok(Level::Quorum),
            "all" => Ok(Level::All),
            "async" if writes => Ok(Level::Async),
            _ => {
                let allowed = if writes { "async, quorum, all or 1..N" } else { "quorum, all or 1..N" };
                let count: u64 =
                    value.parse().map_err(|_| LevelError::Unknown { param, value: value.to_string(), allowed })?;
                if count == 0 || count > n as u64 {
                    return Err(LevelError::OutOfRange { param, value: count, n });
                }
                Ok(Level::Count(count as u32))
            }
        }
    }

    /// Replies needed from a preference list of `n` nodes (at least 1: the
    /// coordinator's own write for `Async`).
    pub fn required(self, n: usize) -> usize {
        match self {
            Level::Async => 1,
            Level::Count(c) => (c as usize).min(n).max(1),
            Level::Quorum => n / 2 + 1,
            Level::All => n.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(Level::parse("quorum", false, 3), Ok(Level::Quorum));
        assert_eq!(Level::parse("all", true, 3), Ok(Level::All));
        assert_eq!(Level::parse("async", true, 3), Ok(Level::Async));
        assert!(Level::parse("async", false, 3).is_err());
        assert_eq!(Level::parse("2", true, 3), Ok(Level::Count(2)));
        assert!(matches!(Level::parse("0", true, 3), Err(LevelError::OutOfRange { .. })));
        assert!(matches!(Level::parse("4", true, 3), Err(LevelError::OutOfRange { .. })));
        assert!(matches!(Level::parse("-1", true, 3), Err(LevelError::Unknown { .. })));
        assert!(matches!(Level::parse("QUORUM", true, 3), Err(LevelError::Unknown { .. })));
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
