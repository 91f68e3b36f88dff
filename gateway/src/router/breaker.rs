//! Circuit breaker per deployment: a run of retryable failures ejects the deployment for a
//! cool-down, then one probe request decides whether it comes back (half-open).
//!
//! The state sits behind a `std::sync::Mutex`: every critical section is a few field
//! reads and writes with no await inside, so a lock is simpler than a lock-free encoding
//! and costs nothing measurable next to an upstream call. Time is passed in (`now`) so
//! the state machine can be tested without sleeping.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Serving; `failures` retryable failures in a row so far.
    Closed { failures: u32 },
    /// Ejected until `until`.
    Open { until: Instant },
    /// Cool-down over; one probe is in flight since `since` (another is let through if
    /// it has not reported back within a cool-down, e.g. because its client went away).
    HalfOpen { since: Instant },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// An upstream `retry-after` asked us to leave the deployment alone until then. Kept
    /// apart from `state`: it is the upstream's explicit wish, not our inference, and it
    /// neither opens nor closes the breaker.
    skip_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                skip_until: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere mid-update; the state is still a valid
        // value of `State`, so keep using it rather than failing every request.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Whether a request could be sent now, without claiming anything (for choosing).
    pub fn available(&self, now: Instant) -> bool {
        let inner = self.lock();
        if inner.skip_until.is_some_and(|t| now < t) {
            return false;
        }
        match inner.state {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { since } => now >= since + self.cooldown,
        }
    }

    /// Claims the right to send one request now: always in `Closed`; in `Open` once the
    /// cool-down is over, which makes this request the half-open probe.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        if inner.skip_until.is_some_and(|t| now < t) {
            return false;
        }
        match inner.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                inner.state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { since } if now >= since + self.cooldown => {
                inner.state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    /// Sends one request regardless of the state (the "every deployment is open, try one
    /// anyway" case); it counts as the probe.
    pub fn force(&self, now: Instant) {
        let mut inner = self.lock();
        if !matches!(inner.state, State::Closed { .. }) {
            inner.state = State::HalfOpen { since: now };
        }
    }

    /// When this deployment is next usable (for picking the least-bad one when all are
    /// ejected); `now` when it already is.
    pub fn ready_at(&self, now: Instant) -> Instant {
        let inner = self.lock();
        let state_at = match inner.state {
            State::Closed { .. } => now,
            State::Open { until } => until,
            State::HalfOpen { since } => since + self.cooldown,
        };
        inner.skip_until.map_or(state_at, |t| t.max(state_at))
    }

    /// The deployment answered (any answer that is not a retryable failure): closes.
    pub fn on_success(&self) {
        self.lock().state = State::Closed { failures: 0 };
    }

    /// A retryable failure: counts towards ejection; a failed probe re-opens at once.
    pub fn on_failure(&self, now: Instant) {
        let mut inner = self.lock();
        inner.state = match inner.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            State::Closed { .. } | State::HalfOpen { .. } | State::Open { .. } => State::Open {
                until: now + self.cooldown,
            },
        };
    }

    /// The call ended without a verdict (the gateway itself failed): a probe slot it held
    /// is given back so the next request can probe.
    pub fn release(&self, now: Instant) {
        let mut inner = self.lock();
        if let State::HalfOpen { .. } = inner.state {
            inner.state = State::Open { until: now };
        }
    }

    /// Honours an upstream `retry-after`: skip this deployment until `until`.
    pub fn skip_until(&self, until: Instant) {
        let mut inner = self.lock();
        inner.skip_until = Some(inner.skip_until.map_or(until, |t| t.max(until)));
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = Breaker::new(3, COOL);
        let t = Instant::now();
        b.on_failure(t);
        b.on_failure(t);
        assert_eq!(b.state(), State::Closed { failures: 2 });
        assert!(b.try_acquire(t));
        b.on_failure(t);
        assert_eq!(b.state(), State::Open { until: t + COOL });
        assert!(!b.available(t));
        assert!(!b.try_acquire(t + COOL / 2));
    }

    #[test]
    fn success_resets_the_run() {
        let b = Breaker::new(2, COOL);
        let t = Instant::now();
        b.on_failure(t);
        b.on_success();
        b.on_failure(t);
        assert_eq!(b.state(), State::Closed { failures: 1 });
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        let later = t + COOL;
        assert!(b.available(later));
        assert!(b.try_acquire(later));
        assert_eq!(b.state(), State::HalfOpen { since: later });
        // A second request while the probe is out is refused.
        assert!(!b.try_acquire(later));
        assert!(!b.available(later + Duration::from_secs(1)));
    }

    #[test]
    fn probe_success_closes_and_failure_reopens() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        assert!(b.try_acquire(t + COOL));
        b.on_success();
        assert_eq!(b.state(), State::Closed { failures: 0 });

        b.on_failure(t);
        let probe = t + COOL;
        assert!(b.try_acquire(probe));
        b.on_failure(probe);
        assert_eq!(
            b.state(),
            State::Open {
                until: probe + COOL
            }
        );
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cooldown() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        assert!(b.try_acquire(t + COOL));
        assert!(!b.try_acquire(t + COOL + COOL / 2));
        assert!(b.try_acquire(t + COOL * 2));
    }

    #[test]
    fn release_gives_the_probe_back() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        assert!(b.try_acquire(t + COOL));
        b.release(t + COOL);
        assert!(b.try_acquire(t + COOL));
    }

    #[test]
    fn retry_after_skips_without_opening() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.skip_until(t + Duration::from_secs(2));
        assert!(!b.available(t));
        assert!(!b.try_acquire(t + Duration::from_secs(1)));
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert!(b.try_acquire(t + Duration::from_secs(2)));
        assert_eq!(b.ready_at(t), t + Duration::from_secs(2));
    }

    #[test]
    fn force_makes_a_probe_of_an_open_deployment() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.on_failure(t);
        b.force(t);
        assert_eq!(b.state(), State::HalfOpen { since: t });
        b.on_success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }
}
