//! Choosing a deployment for one attempt: weighted round robin over the deployments that
//! can take a request now, or least outstanding requests when their weights are equal.
//!
//! The round robin stays deterministic (no randomness) so tests can predict it; the
//! breaker and `retry-after` only shrink the set it walks over. With equal weights the
//! operator asked for no particular split, so the deployment with the fewest requests in
//! flight gets the next one: a slow or overloaded deployment then gets fewer requests
//! instead of a fixed share. Ties go round robin, so idle deployments still alternate.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{ModelRoute, Strategy};

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
    ///
    /// A deployment at its `rpm` / `tpm` cap (`tokens` is this request's estimate) is never
    /// chosen, not even forced: the cap is the operator's hard limit.
    pub(super) fn choose(&self, tried: &[usize], now: Instant, tokens: u64) -> Option<Choice> {
        let fresh = |i: &usize| !tried.contains(i);
        if let Some(i) = self.round_robin(now, tokens, fresh) {
            return Some(Choice::Healthy(i));
        }
        if let Some(i) = self.round_robin(now, tokens, |_| true) {
            return Some(Choice::Healthy(i));
        }
        if !tried.is_empty() {
            return None;
        }
        let i = (0..self.deployments.len())
            .filter(|&i| self.deployments[i].caps.fits(tokens, now))
            .min_by_key(|&i| self.deployments[i].breaker.ready_at(now))?;
        if !self.deployments[i].caps.try_take(tokens, now) {
            return None;
        }
        self.deployments[i].breaker.force(now);
        Some(Choice::Forced(i))
    }

    /// The deployment a new request would be sent to now, claimed as a request claims it
    /// (for benchmarks and diagnostics; requests go through `retry::serve`).
    pub fn pick(&self) -> Option<usize> {
        self.choose(&[], Instant::now(), 0).map(Choice::index)
    }

    /// When every deployment is at its cap: how long until the first one reopens.
    pub(super) fn all_capped(&self, tokens: u64, now: Instant) -> Option<std::time::Duration> {
        let mut soonest = None;
        for d in &self.deployments {
            if d.caps.fits(tokens, now) {
                return None;
            }
            let wait = d.caps.reopens_in(now);
            soonest = Some(soonest.map_or(wait, |s: std::time::Duration| s.min(wait)));
        }
        soonest
    }

    /// Claims deployment `i` for one request: its breaker (which makes this request the
    /// probe of a half-open one), then its caps (a lost race on the caps gives the
    /// breaker's claim back).
    fn claim(&self, i: usize, now: Instant, tokens: u64) -> bool {
        let d = &self.deployments[i];
        if !d.breaker.try_acquire(now) {
            return false;
        }
        if d.caps.try_take(tokens, now) {
            return true;
        }
        d.breaker.release(now);
        false
    }

    /// Weighted round robin among the deployments that pass `allowed`, are available and
    /// under their caps; claims the chosen one ([`Self::claim`]).
    fn round_robin(
        &self,
        now: Instant,
        tokens: u64,
        allowed: impl Fn(&usize) -> bool,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.deployments.len())
            .filter(|i| {
                allowed(i)
                    && self.deployments[*i].breaker.available(now)
                    && self.deployments[*i].caps.fits(tokens, now)
            })
            .collect();
        let total: u64 = candidates.iter().map(|&i| self.deployments[i].weight).sum();
        if total == 0 {
            return None;
        }
        let weight = |i: usize| self.deployments[i].weight;
        if self.strategy == Strategy::LeastLatency && candidates.len() > 1 {
            return self.two_choices(&candidates, total, now, tokens);
        }
        if candidates.len() > 1
            && candidates
                .iter()
                .all(|&i| weight(i) == weight(candidates[0]))
        {
            return self.least_outstanding(&candidates, now, tokens);
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
            .find(|&i| self.claim(i, now, tokens))
    }

    /// `strategy: least_latency`: two distinct candidates drawn at random (in proportion
    /// to their weights), and the one with the lower peak-EWMA cost (latency × requests in
    /// flight, [`super::latency`]) gets the request. Two random choices instead of the
    /// overall best keep replicas that share one picture from all piling onto the same
    /// deployment, and still almost always avoid the slowest ones. If the winner cannot be
    /// claimed (a half-open probe taken meanwhile), the others follow by cost.
    fn two_choices(
        &self,
        candidates: &[usize],
        total: u64,
        now: Instant,
        tokens: u64,
    ) -> Option<usize> {
        let draw = |skip: Option<usize>| -> usize {
            let total = total - skip.map_or(0, |k| self.deployments[candidates[k]].weight);
            let mut slot = rand::random_range(0..total.max(1));
            for (k, &i) in candidates.iter().enumerate() {
                if Some(k) == skip {
                    continue;
                }
                let w = self.deployments[i].weight;
                if slot < w {
                    return k;
                }
                slot -= w;
            }
            0
        };
        let first = draw(None);
        let second = draw(Some(first));
        let cost = |k: usize| {
            let d = &self.deployments[candidates[k]];
            d.latency.cost(d.in_flight.get(), now)
        };
        let (a, b) = (cost(first), cost(second));
        let winner = if b < a { second } else { first };
        if self.claim(candidates[winner], now, tokens) {
            return Some(candidates[winner]);
        }
        let mut rest: Vec<(f64, usize)> = (0..candidates.len())
            .filter(|&k| k != winner)
            .map(|k| (cost(k), candidates[k]))
            .collect();
        rest.sort_by(|x, y| x.0.total_cmp(&y.0));
        rest.into_iter()
            .map(|(_, i)| i)
            .find(|&i| self.claim(i, now, tokens))
    }

    /// The candidate with the fewest requests in flight; ties in round-robin order.
    fn least_outstanding(&self, candidates: &[usize], now: Instant, tokens: u64) -> Option<usize> {
        let n = candidates.len() as u64;
        let start = (self.next.fetch_add(1, Ordering::Relaxed) % n) as usize;
        let mut order: Vec<usize> = (0..candidates.len())
            .map(|k| candidates[(start + k) % candidates.len()])
            .collect();
        // Stable: among equals the round-robin order stays.
        order.sort_by_key(|&i| self.deployments[i].in_flight.get());
        order.into_iter().find(|&i| self.claim(i, now, tokens))
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::providers::ProviderSet;
    use crate::router::Models;

    fn providers() -> ProviderSet {
        let _ = rustls::crypto::ring::default_provider().install_default();
        ProviderSet::new().unwrap()
    }

    fn model(weights: &[u32]) -> std::sync::Arc<ModelRoute> {
        let mut yaml = String::from("models:\n  - name: m\n    deployments:\n");
        for (i, w) in weights.iter().enumerate() {
            yaml.push_str(&format!(
                "      - {{ provider: openai, base_url: 'http://127.0.0.1:9/v1', name: d{i}, weight: {w} }}\n"
            ));
        }
        let config = Config::parse(&yaml, &|_| None).unwrap();
        let models = Models::from_config(&config.models, &config.breaker, &providers()).unwrap();
        models.get("m").unwrap().clone()
    }

    fn pick(route: &ModelRoute) -> usize {
        route.choose(&[], Instant::now(), 0).unwrap().index()
    }

    #[test]
    fn equal_weights_prefer_the_fewest_in_flight() {
        let route = model(&[1, 1, 1]);
        // Idle: plain rotation.
        assert_eq!(
            (0..6).map(|_| pick(&route)).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1, 2]
        );
        let _busy0 = route.deployments[0].in_flight.start();
        let _busy0b = route.deployments[0].in_flight.start();
        let _busy1 = route.deployments[1].in_flight.start();
        for _ in 0..5 {
            assert_eq!(
                pick(&route),
                2,
                "the idle one wins while the others are busy"
            );
        }
        let _busy2 = route.deployments[2].in_flight.start();
        let _busy2b = route.deployments[2].in_flight.start();
        for _ in 0..5 {
            assert_eq!(pick(&route), 1);
        }
    }

    #[test]
    fn the_in_flight_count_returns_when_requests_end() {
        let route = model(&[1, 1]);
        let guard = route.deployments[0].in_flight.start();
        assert_eq!(pick(&route), 1);
        assert_eq!(pick(&route), 1);
        drop(guard);
        let picks: Vec<usize> = (0..4).map(|_| pick(&route)).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn a_capped_deployment_is_skipped_and_all_capped_is_none() {
        let mut yaml = String::from("models:\n  - name: m\n    deployments:\n");
        yaml.push_str(
            "      - { provider: openai, base_url: 'http://127.0.0.1:9/v1', name: a, rpm: 1 }\n",
        );
        yaml.push_str(
            "      - { provider: openai, base_url: 'http://127.0.0.1:9/v1', name: b, rpm: 2 }\n",
        );
        let config = Config::parse(&yaml, &|_| None).unwrap();
        let models = Models::from_config(&config.models, &config.breaker, &providers()).unwrap();
        let route = models.get("m").unwrap();
        let now = Instant::now();
        let picks: Vec<usize> = (0..3)
            .map(|_| route.choose(&[], now, 0).unwrap().index())
            .collect();
        assert_eq!(picks, vec![0, 1, 1]);
        assert_eq!(route.choose(&[], now, 0), None, "never forced past a cap");
        let wait = route.all_capped(0, now).unwrap();
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(60));
    }

    fn latency_model(n: usize) -> std::sync::Arc<ModelRoute> {
        let mut yaml =
            String::from("models:\n  - name: m\n    strategy: least_latency\n    deployments:\n");
        for i in 0..n {
            yaml.push_str(&format!(
                "      - {{ provider: openai, base_url: 'http://127.0.0.1:9/v1', name: d{i} }}\n"
            ));
        }
        let config = Config::parse(&yaml, &|_| None).unwrap();
        let models = Models::from_config(&config.models, &config.breaker, &providers()).unwrap();
        models.get("m").unwrap().clone()
    }

    #[test]
    fn least_latency_prefers_the_fast_deployment_and_returns_to_a_healed_one() {
        let route = latency_model(2);
        let t0 = Instant::now();
        route.deployments[0]
            .latency
            .observe(std::time::Duration::from_millis(800), t0);
        route.deployments[1]
            .latency
            .observe(std::time::Duration::from_millis(20), t0);
        let picks: Vec<usize> = (0..50)
            .map(|_| route.choose(&[], t0, 0).unwrap().index())
            .collect();
        assert!(picks.iter().all(|&i| i == 1), "{picks:?}");
        // Unused for a minute, the slow one's estimate has decayed below the fast one's
        // (kept fresh by its answers): it gets a request again.
        let later = t0 + std::time::Duration::from_secs(60);
        route.deployments[1]
            .latency
            .observe(std::time::Duration::from_millis(20), later);
        assert_eq!(route.choose(&[], later, 0).unwrap().index(), 0);
    }

    #[test]
    fn least_latency_spreads_by_requests_in_flight() {
        let route = latency_model(3);
        let now = Instant::now();
        let _busy: Vec<_> = (0..4)
            .map(|_| route.deployments[0].in_flight.start())
            .chain((0..4).map(|_| route.deployments[1].in_flight.start()))
            .collect();
        // Equal latency: the idle one wins whenever it is one of the two drawn (2 in 3).
        let picks: Vec<usize> = (0..300)
            .map(|_| route.choose(&[], now, 0).unwrap().index())
            .collect();
        let idle = picks.iter().filter(|&&i| i == 2).count();
        assert!((150..=250).contains(&idle), "{idle}");
    }

    #[test]
    fn unequal_weights_keep_the_weighted_split_whatever_is_in_flight() {
        let route = model(&[3, 1]);
        let _busy = (0..10)
            .map(|_| route.deployments[0].in_flight.start())
            .collect::<Vec<_>>();
        let picks: Vec<usize> = (0..8).map(|_| pick(&route)).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6, "{picks:?}");
    }
}
