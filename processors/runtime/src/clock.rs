//! The one source of time a processor decides with (docs/writing-a-processor.md,
//! "Time"): the runtime reads its clock once per batch and hands it to the
//! processor as [`crate::processor::Context::now`]; a record's own time is
//! [`crate::processor::Context::event_time`]. Production runs on
//! [`SystemClock`]; a test hands the runtime a [`ManualClock`] and moves it,
//! so weeks of cooling periods, follow-ups and email windows pass in
//! seconds through the real topics.

use chrono::{DateTime, Duration, Utc};
use std::sync::{Arc, Mutex};

/// What time it is, for decisions.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock a test sets and moves; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock standing at `at`.
    pub fn at(at: DateTime<Utc>) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(at)))
    }

    /// Moves it on by `by`.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().expect("the clock's lock") += by;
    }

    /// Sets it to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().expect("the clock's lock") = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("the clock's lock")
    }
}

/// The clock a runtime configuration carries: the machine's unless a test
/// sets another.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = DateTime::parse_from_rfc3339("2026-12-01T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::at(start);
        let shared = clock.clone();
        assert_eq!(clock.now(), start);
        shared.advance(Duration::days(28));
        assert_eq!(clock.now(), start + Duration::days(28));
        clock.set(start);
        assert_eq!(shared.now(), start);
    }
}
