//! Peak-EWMA latency per deployment, for `strategy: least_latency`.
//!
//! The estimate follows Finagle's and tower's `PeakEwma` (`tower::load::peak_ewma`): a
//! sample above the estimate replaces it at once (the peak: a deployment that turns slow
//! is avoided from its first slow answer), a sample below it is blended in with a weight
//! that grows with the time since the last sample (an exponentially weighted moving
//! average with time constant [`DECAY`]). While a deployment gets no traffic its estimate
//! decays towards zero, so a deployment that was avoided because it was slow is tried
//! again after a while; if it has healed, its samples keep it low and it takes its share
//! back, and if not, the first slow answer puts it aside again.
//!
//! The balancer's cost of a deployment is `estimate × (requests in flight + 1)`: latency
//! alone would send everything to the fastest deployment until it slows down under the
//! load; multiplying by the outstanding requests spreads the load before that happens.
//!
//! Samples are the time from sending a request to its answer being ready (a whole answer
//! read, or a stream's first event), measured per replica. Failures (errors, 429, 5xx)
//! count as at least [`FAILURE_PENALTY`], so a deployment that fails fast never looks fast.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Time constant of the moving average, and of the decay of an idle deployment's
/// estimate (tower and linkerd use 10 s too).
pub const DECAY: Duration = Duration::from_secs(10);
/// The estimate of a deployment with no sample yet: low, so a new deployment is tried.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The least a failed attempt counts as.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// One deployment's latency estimate.
#[derive(Debug)]
pub struct PeakEwma {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// Seconds.
    estimate: f64,
    /// When `estimate` was last updated (or the estimator made).
    at: Instant,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                estimate: DEFAULT_RTT.as_secs_f64(),
                at: Instant::now(),
            }),
        }
    }
}

/// `e^(-elapsed / DECAY)`: how much of an estimate made `elapsed` ago still counts.
fn weight(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

impl PeakEwma {
    /// The estimate at `now`, in seconds, decayed for the time without samples.
    pub fn estimate(&self, now: Instant) -> f64 {
        let s = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.estimate * weight(now.saturating_duration_since(s.at))
    }

    /// Adds one answer's latency, observed at `now`.
    pub fn observe(&self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if sample > s.estimate {
            s.estimate = sample;
        } else {
            let w = weight(now.saturating_duration_since(s.at));
            s.estimate = s.estimate * w + sample * (1.0 - w);
        }
        s.at = now;
    }

    /// Adds a failed attempt that took `elapsed`.
    pub fn observe_failure(&self, elapsed: Duration, now: Instant) {
        self.observe(elapsed.max(FAILURE_PENALTY), now);
    }

    /// The balancer's cost: the estimate times the requests in flight plus one.
    pub fn cost(&self, in_flight: u64, now: Instant) -> f64 {
        self.estimate(now) * (in_flight as f64 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sample_is_taken_at_once_and_a_fast_one_blended_in() {
        let e = PeakEwma::default();
        let t0 = Instant::now();
        e.observe(Duration::from_millis(500), t0);
        assert!((e.estimate(t0) - 0.5).abs() < 1e-9);
        // A fast answer 1 s later moves it only part of the way down.
        let t1 = t0 + Duration::from_secs(1);
        e.observe(Duration::from_millis(10), t1);
        let after = e.estimate(t1);
        assert!(after < 0.5 && after > 0.4, "{after}");
        // Many fast answers bring it down to them.
        let mut t = t1;
        for _ in 0..200 {
            t += Duration::from_millis(500);
            e.observe(Duration::from_millis(10), t);
        }
        assert!(e.estimate(t) < 0.02, "{}", e.estimate(t));
    }

    #[test]
    fn an_idle_estimate_decays_and_failures_count_as_slow() {
        let e = PeakEwma::default();
        let t0 = Instant::now();
        e.observe(Duration::from_secs(2), t0);
        let later = e.estimate(t0 + DECAY * 3);
        assert!(later < 2.0 * 0.06, "{later}");
        e.observe_failure(Duration::from_millis(1), t0 + DECAY * 3);
        assert!(e.estimate(t0 + DECAY * 3) >= FAILURE_PENALTY.as_secs_f64());
        assert!(e.cost(3, t0 + DECAY * 3) >= 4.0 * FAILURE_PENALTY.as_secs_f64());
    }
}
