//! Exponential backoff with jitter, as a pure function of the attempt number and a random
//! draw, so callers (and tests) control both.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Backoff {
    /// Agent reconnects: 0.5 s, 1 s, 2 s, … capped at 30 s.
    pub const RECONNECT: Backoff = Backoff {
        base: Duration::from_millis(500),
        factor: 2.0,
        max: Duration::from_secs(30),
    };

    /// Agent identity rotation retries: 2 s, 4 s, 8 s, … capped at 5 min (the
    /// attempt number is the count of failures so far, from 1).
    pub const IDENTITY_ROTATION: Backoff = Backoff {
        base: Duration::from_secs(1),
        factor: 2.0,
        max: Duration::from_secs(300),
    };

    /// Issuance retries: about 1 min, 10 min, 100 min, then every few hours.
    pub const ISSUANCE: Backoff = Backoff {
        base: Duration::from_secs(60),
        factor: 10.0,
        max: Duration::from_secs(4 * 3600),
    };

    /// The un-jittered delay before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let secs = self.base.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// The delay before retry number `attempt`, with "equal jitter": half fixed, half drawn
    /// from `unit` (a random number in [0, 1)), so a fleet restarted together spreads out
    /// but nobody retries at once.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt).as_secs_f64();
        let unit = unit.clamp(0.0, 1.0);
        Duration::from_secs_f64(ceiling / 2.0 + ceiling / 2.0 * unit)
    }

    /// [`Backoff::delay`] with a fresh random draw.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuance_backoff_follows_the_design() {
        let b = Backoff::ISSUANCE;
        assert_eq!(b.ceiling(0), Duration::from_secs(60));
        assert_eq!(b.ceiling(1), Duration::from_secs(600));
        assert_eq!(b.ceiling(2), Duration::from_secs(6000));
        assert_eq!(b.ceiling(3), Duration::from_secs(4 * 3600));
        assert_eq!(b.ceiling(1000), Duration::from_secs(4 * 3600));
    }

    #[test]
    fn identity_rotation_backoff_doubles_to_five_minutes() {
        let b = Backoff::IDENTITY_ROTATION;
        let secs: Vec<u64> = (1..=10).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let b = Backoff::RECONNECT;
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(
            b.delay(3, 7.0),
            Duration::from_secs(4),
            "out-of-range draws are clamped"
        );
    }
}
