//! A circuit breaker: after `threshold` failures in a row it opens and
//! refuses calls for `open_for`; then it lets one probe through
//! (half-open), which closes it on success and opens it again on failure.
//!
//! Time is passed in, so tests drive it without waiting.

use std::time::{Duration, Instant};

/// The breaker's state, as the `breaker_state` metric reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is on its way.
    HalfOpen,
}

impl State {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// A circuit breaker for one upstream service.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    state: State,
    /// When the breaker opened, or when the probe was let through.
    since: Instant,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration, now: Instant) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            state: State::Closed,
            since: now,
        }
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call may go out now. Letting the probe through moves an
    /// open breaker to half-open; a probe that never reports back (its task
    /// was cancelled) is replaced by another after `open_for`.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open | State::HalfOpen if now.duration_since(self.since) >= self.open_for => {
                self.state = State::HalfOpen;
                self.since = now;
                true
            }
            State::Open | State::HalfOpen => false,
        }
    }

    /// A call succeeded: the breaker closes.
    pub fn success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    /// A call failed: counts towards opening; a failed probe reopens.
    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.state == State::HalfOpen || self.failures >= self.threshold {
            self.state = State::Open;
            self.since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_half_opens_after_the_cool_down() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut breaker = Breaker::new(3, cool, t0);
        for _ in 0..2 {
            assert!(breaker.allow(t0));
            breaker.failure(t0);
        }
        assert_eq!(breaker.state(), State::Closed);
        breaker.failure(t0);
        assert_eq!(breaker.state(), State::Open);
        assert!(!breaker.allow(t0 + Duration::from_secs(29)));
        // The probe goes through, a second caller waits for its outcome.
        assert!(breaker.allow(t0 + cool));
        assert_eq!(breaker.state(), State::HalfOpen);
        assert!(!breaker.allow(t0 + cool));
        breaker.success();
        assert_eq!(breaker.state(), State::Closed);
        assert!(breaker.allow(t0 + cool));
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cool_down() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let mut breaker = Breaker::new(1, cool, t0);
        breaker.failure(t0);
        let t1 = t0 + cool;
        assert!(breaker.allow(t1));
        breaker.failure(t1);
        assert_eq!(breaker.state(), State::Open);
        assert!(!breaker.allow(t1 + Duration::from_secs(9)));
        assert!(breaker.allow(t1 + cool));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(2, Duration::from_secs(1), t0);
        breaker.failure(t0);
        breaker.success();
        breaker.failure(t0);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_the_cool_down() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(5);
        let mut breaker = Breaker::new(1, cool, t0);
        breaker.failure(t0);
        assert!(breaker.allow(t0 + cool));
        assert!(!breaker.allow(t0 + cool + Duration::from_secs(1)));
        assert!(breaker.allow(t0 + cool * 2));
    }
}
