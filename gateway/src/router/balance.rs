//! Choosing a deployment for one attempt: weighted round robin over the deployments that
//! can take a request now.
//!
//! The round robin stays deterministic (no randomness) so tests can predict it; the
//! breaker and `retry-after` only shrink the set it walks over.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::ModelRoute;

/// How a deployment was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A deployment that may take a request now (breaker closed, or this is its probe).
    Healthy(usize),
    /// Every deployment is ejected or asked us to wait: the one usable soonest, tried
    /// anyway so that a request never fails without reaching any upstream.
    Forced(usize),
}

impl Choice {
    pub fn index(self) -> usize {
        match self {
            Self::Healthy(i) | Self::Forced(i) => i,
        }
    }
}

impl ModelRoute {
    /// The deployment for the next attempt. Prefers those not in `tried`, then healthy
    /// ones already tried (a model with one deployment retries it); with none healthy,
    /// forces the soonest-ready one only if nothing was tried yet (`None` then means: give
    /// up on this model, move to its fallbacks).
    pub(super) fn choose(&self, tried: &[usize], now: Instant) -> Option<Choice> {
        let fresh = |i: &usize| !tried.contains(i);
        if let Some(i) = self.round_robin(now, fresh) {
            return Some(Choice::Healthy(i));
        }
        if let Some(i) = self.round_robin(now, |_| true) {
            return Some(Choice::Healthy(i));
        }
        if !tried.is_empty() {
            return None;
        }
        let i = (0..self.deployments.len())
            .min_by_key(|&i| self.deployments[i].breaker.ready_at(now))?;
        self.deployments[i].breaker.force(now);
        Some(Choice::Forced(i))
    }

    /// Weighted round robin among the deployments that pass `allowed` and are available;
    /// claims the chosen one's breaker (which makes it the probe of a half-open one).
    fn round_robin(&self, now: Instant, allowed: impl Fn(&usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.deployments.len())
            .filter(|i| allowed(i) && self.deployments[*i].breaker.available(now))
            .collect();
        let total: u64 = candidates.iter().map(|&i| self.deployments[i].weight).sum();
        if total == 0 {
            return None;
        }
        let mut slot = self.next.fetch_add(1, Ordering::Relaxed) % total;
        let mut start = 0;
        for (k, &i) in candidates.iter().enumerate() {
            if slot < self.deployments[i].weight {
                start = k;
                break;
            }
            slot -= self.deployments[i].weight;
        }
        // Another request may have claimed a half-open probe since `available`; walk on.
        (0..candidates.len())
            .map(|k| candidates[(start + k) % candidates.len()])
            .find(|&i| self.deployments[i].breaker.try_acquire(now))
    }
}
