//! The wall clock, in one leaf module: version timestamps, expiry and grace
//! periods are milliseconds since the Unix epoch.
//!
//! Nothing else in the crate reads `SystemTime` for those, so a test or a
//! simulation knows where time comes from.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// `t` as milliseconds since the Unix epoch (0 before it).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn epoch_and_before_are_zero() {
        assert_eq!(to_ms(UNIX_EPOCH), 0);
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert_eq!(to_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert!(now_ms() > 1_600_000_000_000);
    }
}
