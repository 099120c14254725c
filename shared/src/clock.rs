//! Every decision about time takes `now` from a [`Clock`], so tests can run on simulated
//! time instead of sleeping.
//!
//! [`SystemClock`] is the only place in the workspace that reads the wall clock: the
//! workspace's `.clippy.toml` disallows `SystemTime::now`, `OffsetDateTime::now_utc` and
//! their kin everywhere else.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Source of wall-clock time, in unix seconds.
pub trait Clock: Send + Sync + 'static {
    fn now_unix(&self) -> i64;

    /// Unix time with sub-second precision, for measurements (tests timing real
    /// processes); decisions use [`Clock::now_unix`].
    fn now_unix_f64(&self) -> f64 {
        self.now_unix() as f64
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one allowed wall-clock read (see the module docs).
    #[allow(clippy::disallowed_methods)]
    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    #[allow(clippy::disallowed_methods)]
    fn now_unix_f64(&self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_unix: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now_unix)))
    }
    pub fn set(&self, now_unix: i64) {
        self.0.store(now_unix, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// A timestamp read from elsewhere (a file's mtime) in unix seconds, to compare with a
/// [`Clock`]'s `now_unix` without reading the wall clock again. `None` before 1970.
pub fn unix_secs(t: SystemTime) -> Option<i64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}
