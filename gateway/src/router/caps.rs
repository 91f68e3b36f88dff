//! Per-deployment `rpm` / `tpm` caps: how much one deployment is sent per minute.
//!
//! Counted in process, so each replica enforces the cap on its own (N replicas may send up
//! to N times the cap): it exists to keep one gateway from overrunning an upstream's quota
//! and to spill traffic to the next deployment early, not to bill anyone (tenant limits
//! are the quota layer's job, shared through Redis). Fixed one-minute windows: cheap and
//! predictable, which is what a spill-over threshold needs.
//!
//! A capped deployment is skipped like an open circuit, but never forced: when every
//! deployment of a model (and its fallbacks) is capped, the client gets 429
//! `rate_limit_exceeded` with `retry-after` = when the soonest window reopens.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::exchange::Call;
use crate::meter::usage::Prompt;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Caps {
    rpm: Option<u64>,
    tpm: Option<u64>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u64,
    tokens: u64,
}

impl Caps {
    pub fn new(rpm: Option<u32>, tpm: Option<u64>) -> Self {
        Self {
            rpm: rpm.map(u64::from),
            tpm,
            window: Mutex::new(Window {
                start: Instant::now(),
                requests: 0,
                tokens: 0,
            }),
        }
    }

    /// Whether a `tpm` cap needs the request's token estimate.
    pub fn counts_tokens(&self) -> bool {
        self.tpm.is_some()
    }

    fn uncapped(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }

    /// The current window, restarted when a minute has passed.
    fn window(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= w.start + WINDOW {
            *w = Window {
                start: now,
                requests: 0,
                tokens: 0,
            };
        }
        w
    }

    fn fits_in(&self, w: &Window, tokens: u64) -> bool {
        let requests_ok = self.rpm.is_none_or(|cap| w.requests < cap);
        // A request larger than the whole cap goes alone into a fresh window, so it is
        // not refused for ever.
        let tokens_ok = self
            .tpm
            .is_none_or(|cap| w.tokens == 0 || w.tokens.saturating_add(tokens) <= cap);
        requests_ok && tokens_ok
    }

    /// Whether a request of `tokens` would be let through now (nothing taken).
    pub fn fits(&self, tokens: u64, now: Instant) -> bool {
        self.uncapped() || self.fits_in(&self.window(now), tokens)
    }

    /// Takes one request of `tokens` from this minute, or says no.
    pub fn try_take(&self, tokens: u64, now: Instant) -> bool {
        if self.uncapped() {
            return true;
        }
        let mut w = self.window(now);
        if !self.fits_in(&w, tokens) {
            return false;
        }
        w.requests += 1;
        w.tokens = w.tokens.saturating_add(tokens);
        true
    }

    /// When the current window ends (when a capped deployment takes requests again).
    pub fn reopens_in(&self, now: Instant) -> Duration {
        (self.window(now).start + WINDOW).saturating_duration_since(now)
    }
}

/// The tokens a request counts against `tpm`: its prompt (the meter's tokenizer) plus the
/// most it may generate as it asked (`max_completion_tokens` / `max_tokens`, times `n`; 0
/// when it set neither: the cap then only sees prompts).
pub fn estimate(call: &Call) -> u64 {
    let prompt = Prompt::of(call.endpoint, &call.payload).count(&call.model);
    let n = call.params.n.unwrap_or(1).clamp(1, 128);
    let max = call.params.max_output.unwrap_or(0);
    prompt.saturating_add(max.saturating_mul(n))
}

pub use crate::error::all_capped;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_caps_requests_per_window() {
        let caps = Caps::new(Some(2), None);
        let t = Instant::now();
        assert!(caps.try_take(0, t));
        assert!(caps.try_take(0, t));
        assert!(!caps.fits(0, t));
        assert!(!caps.try_take(0, t));
        assert!(caps.reopens_in(t) <= WINDOW);
        assert!(caps.try_take(0, t + WINDOW), "a new minute");
    }

    #[test]
    fn tpm_caps_tokens_but_lets_one_oversized_request_through_alone() {
        let caps = Caps::new(None, Some(100));
        let t = Instant::now();
        assert!(caps.try_take(60, t));
        assert!(!caps.try_take(60, t));
        assert!(caps.try_take(40, t));
        let caps = Caps::new(None, Some(100));
        assert!(caps.try_take(500, t), "alone in a fresh window");
        assert!(!caps.try_take(1, t));
    }

    #[test]
    fn uncapped_always_fits() {
        let caps = Caps::new(None, None);
        let t = Instant::now();
        for _ in 0..1000 {
            assert!(caps.try_take(1_000_000, t));
        }
        assert!(!caps.counts_tokens());
    }

    #[test]
    fn the_429_names_the_model_and_rounds_retry_after_up() {
        let e = all_capped("m", Duration::from_millis(1500));
        assert_eq!(e.status, http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(2));
        assert_eq!(e.code, Some("rate_limit_exceeded"));
    }
}
