//! The in-process engine: every scope's counters behind one mutex, so a check-and-reserve
//! is atomic across all the threads of this replica (the same rules as the Redis script,
//! see [`super::engine`]). It is the engine of the embedded default, and the local guard
//! while Redis is unreachable under `limits.redis_failure: fail_open`.
//!
//! One short critical section per request; no allocation on the hot path but the scope's
//! map key on first use. Idle scopes are swept so memory stays bounded by active keys.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::engine::{Ask, Counts, Decision, Limit, Month, Scope, ScopeLimits, Taken};

/// A scope that neither counted nor held anything for this long is forgotten (its month's
/// spend is seeded from the ledger again when next needed).
const IDLE_MS: i64 = 10 * 60_000;
/// Sweep idle scopes every this many reservations.
const SWEEP_EVERY: u64 = 4096;

#[derive(Default)]
pub struct LocalEngine {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    scopes: HashMap<(String, Option<String>), ScopeState>,
    ops: u64,
}

#[derive(Default, Debug)]
struct ScopeState {
    window: i64,
    requests: u64,
    tokens: u64,
    concurrent: u64,
    month: Option<MonthState>,
    last_ms: i64,
}

#[derive(Debug)]
struct MonthState {
    month: Month,
    spent_cost: i64,
    spent_tokens: u64,
    reserved_cost: i64,
    reserved_tokens: u64,
}

fn scope_key(tenant: &str, key: &str, scope: Scope) -> (String, Option<String>) {
    match scope {
        Scope::Tenant => (tenant.to_owned(), None),
        Scope::Key => (tenant.to_owned(), Some(key.to_owned())),
    }
}

impl ScopeState {
    fn roll(&mut self, window: i64) {
        if self.window != window {
            self.window = window;
            self.requests = 0;
            self.tokens = 0;
        }
    }

    fn month(&mut self, month: Month) -> Option<&mut MonthState> {
        self.month.as_mut().filter(|m| m.month == month)
    }
}

impl LocalEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks both scopes and, when both admit, reserves in both.
    pub fn reserve(&self, ask: &Ask) -> Decision {
        let window = ask.window();
        let month = ask.month();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.ops += 1;
        if state.ops.is_multiple_of(SWEEP_EVERY) {
            let now = ask.now_ms;
            state.scopes.retain(|_, s| {
                s.concurrent > 0
                    || s.month
                        .as_ref()
                        .is_some_and(|m| m.reserved_cost > 0 || m.reserved_tokens > 0)
                    || now - s.last_ms < IDLE_MS
            });
        }
        let mut counts = Counts::default();
        for scope in [Scope::Tenant, Scope::Key] {
            let limits = ask.limits[scope as usize];
            if limits.is_unlimited() {
                continue;
            }
            let s = state
                .scopes
                .entry(scope_key(&ask.tenant, &ask.key, scope))
                .or_default();
            s.roll(window);
            let reject = |limit| Decision::Reject {
                scope,
                limit,
                counts: Counts {
                    requests: [s.requests; 2],
                    tokens: [s.tokens; 2],
                },
            };
            if limits.rpm.is_some_and(|rpm| s.requests + 1 > rpm) {
                return reject(Limit::Requests);
            }
            if limits
                .tpm
                .is_some_and(|tpm| s.tokens.saturating_add(ask.tokens) > tpm)
            {
                return reject(Limit::Tokens);
            }
            if limits.concurrent.is_some_and(|c| s.concurrent + 1 > c) {
                return reject(Limit::Concurrent);
            }
            if limits.has_monthly() {
                let Some(m) = s.month.as_ref().filter(|m| m.month == month) else {
                    return Decision::Unseeded(scope);
                };
                if limits
                    .budget
                    .is_some_and(|b| m.spent_cost.saturating_add(m.reserved_cost) >= b)
                {
                    return reject(Limit::Budget);
                }
                if limits
                    .monthly_tokens
                    .is_some_and(|t| m.spent_tokens.saturating_add(m.reserved_tokens) >= t)
                {
                    return reject(Limit::MonthlyTokens);
                }
            }
            counts.requests[scope as usize] = s.requests + 1;
            counts.tokens[scope as usize] = s.tokens.saturating_add(ask.tokens);
        }
        for scope in [Scope::Tenant, Scope::Key] {
            let limits = ask.limits[scope as usize];
            if limits.is_unlimited() {
                continue;
            }
            let Some(s) = state
                .scopes
                .get_mut(&scope_key(&ask.tenant, &ask.key, scope))
            else {
                continue;
            };
            s.last_ms = ask.now_ms;
            if limits.rpm.is_some() {
                s.requests += 1;
            }
            if limits.tpm.is_some() {
                s.tokens = s.tokens.saturating_add(ask.tokens);
            }
            if limits.concurrent.is_some() {
                s.concurrent += 1;
            }
            if limits.has_monthly()
                && let Some(m) = s.month(month)
            {
                m.reserved_cost = m.reserved_cost.saturating_add(ask.cost);
                m.reserved_tokens = m.reserved_tokens.saturating_add(ask.tokens);
            }
        }
        Decision::Admit(counts)
    }

    /// Sets the month's spend of `scope` (from the ledger) unless it is known already.
    pub fn seed(&self, ask: &Ask, scope: Scope, cost: i64, tokens: u64) {
        let month = ask.month();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let s = state
            .scopes
            .entry(scope_key(&ask.tenant, &ask.key, scope))
            .or_default();
        if s.month.as_ref().is_some_and(|m| m.month == month) {
            return;
        }
        s.last_ms = ask.now_ms;
        s.month = Some(MonthState {
            month,
            spent_cost: cost,
            spent_tokens: tokens,
            reserved_cost: 0,
            reserved_tokens: 0,
        });
    }

    /// Reserves `tokens` / `cost` more for a running request in the monthly counters of
    /// the scopes it holds them in, when each still has something left (the admission
    /// rule); false when one has not.
    pub fn extend(&self, taken: &Taken, limits: &[ScopeLimits; 2], tokens: u64, cost: i64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for apply in [false, true] {
            for scope in [Scope::Tenant, Scope::Key] {
                if !taken.touched[scope as usize].monthly {
                    continue;
                }
                let l = limits[scope as usize];
                let Some(m) = state
                    .scopes
                    .get_mut(&scope_key(&taken.tenant, &taken.key, scope))
                    .and_then(|s| s.month(taken.month))
                else {
                    return false;
                };
                if apply {
                    m.reserved_cost = m.reserved_cost.saturating_add(cost);
                    m.reserved_tokens = m.reserved_tokens.saturating_add(tokens);
                } else if l
                    .budget
                    .is_some_and(|b| m.spent_cost.saturating_add(m.reserved_cost) >= b)
                    || l.monthly_tokens
                        .is_some_and(|t| m.spent_tokens.saturating_add(m.reserved_tokens) >= t)
                {
                    return false;
                }
            }
        }
        true
    }

    /// Gives back what `taken` held and counts what the request really used.
    pub fn settle(&self, taken: &Taken, tokens: u64, cost: i64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for scope in [Scope::Tenant, Scope::Key] {
            let touched = taken.touched[scope as usize];
            let Some(s) = state
                .scopes
                .get_mut(&scope_key(&taken.tenant, &taken.key, scope))
            else {
                continue;
            };
            if touched.tokens && s.window == taken.window {
                s.tokens = s.tokens.saturating_sub(taken.tokens).saturating_add(tokens);
            }
            if touched.concurrent {
                s.concurrent = s.concurrent.saturating_sub(1);
            }
            if let Some(m) = s.month(taken.month) {
                if touched.monthly {
                    m.reserved_cost = m.reserved_cost.saturating_sub(taken.cost).max(0);
                    m.reserved_tokens = m.reserved_tokens.saturating_sub(taken.tokens);
                }
                m.spent_cost = m.spent_cost.saturating_add(cost);
                m.spent_tokens = m.spent_tokens.saturating_add(tokens);
            }
        }
    }
}

#[allow(clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn ask(limits: [ScopeLimits; 2], tokens: u64, cost: i64) -> Ask {
        Ask {
            tenant: "t".into(),
            key: "k".into(),
            limits,
            tokens,
            cost,
            now_ms: 1_795_636_200_000,
        }
    }

    #[test]
    fn rpm_per_scope_all_or_nothing() {
        let e = LocalEngine::new();
        let tenant = ScopeLimits {
            rpm: Some(3),
            ..Default::default()
        };
        let key = ScopeLimits {
            rpm: Some(2),
            ..Default::default()
        };
        let a = ask([tenant, key], 1, 0);
        assert!(matches!(e.reserve(&a), Decision::Admit(_)));
        assert!(matches!(e.reserve(&a), Decision::Admit(c) if c.requests == [2, 2]));
        // The key refuses; the tenant keeps its third request.
        assert!(matches!(
            e.reserve(&a),
            Decision::Reject {
                scope: Scope::Key,
                limit: Limit::Requests,
                ..
            }
        ));
        let other = Ask {
            key: "k2".into(),
            ..a.clone()
        };
        assert!(matches!(e.reserve(&other), Decision::Admit(c) if c.requests[0] == 3));
        assert!(matches!(
            e.reserve(&other),
            Decision::Reject {
                scope: Scope::Tenant,
                ..
            }
        ));
        // The next window starts afresh.
        let later = Ask {
            now_ms: a.now_ms + 60_000,
            ..a
        };
        assert!(matches!(e.reserve(&later), Decision::Admit(_)));
    }

    #[test]
    fn budget_needs_seed_and_settles() {
        let e = LocalEngine::new();
        let limits = ScopeLimits {
            budget: Some(100),
            concurrent: Some(5),
            ..Default::default()
        };
        let a = ask([limits, ScopeLimits::default()], 10, 40);
        assert_eq!(e.reserve(&a), Decision::Unseeded(Scope::Tenant));
        e.seed(&a, Scope::Tenant, 30, 0);
        // 30 spent: 30, 70 reserved → the third (110 ≥ 100) is refused.
        let Decision::Admit(_) = e.reserve(&a) else {
            panic!()
        };
        let Decision::Admit(_) = e.reserve(&a) else {
            panic!()
        };
        assert!(matches!(
            e.reserve(&a),
            Decision::Reject {
                limit: Limit::Budget,
                ..
            }
        ));
        // Settled cheaper than reserved: room again.
        let taken = Taken::of(&a);
        e.settle(&taken, 5, 5);
        e.settle(&taken, 5, 5);
        assert!(matches!(e.reserve(&a), Decision::Admit(_)));
    }
}
