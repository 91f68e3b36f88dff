//! Quota: requests and tokens per minute, requests in flight, monthly budgets (USD and
//! tokens), per tenant (its plan) and per key (its own limits, the same five a plan has),
//! holding exactly in one process and across replicas.
//!
//! The layer sits in the inner stack above the meter. For each request whose tenant or key
//! has any limit it:
//!
//! 1. estimates what the request may use ([`tokens`]): prompt tokens plus
//!    `max_completion_tokens` / `max_tokens` (or `limits.default_max_tokens`), and their
//!    cost at the model's price (the meter's price cache). Prompt tokens are first bounded
//!    by the texts' byte length; the tokenizer runs only when a tpm limit refuses that
//!    bound;
//! 2. checks and reserves in one atomic step, both scopes at once ([`engine`]): in process
//!    ([`local`]) by default, in Redis ([`redis`], one Lua script) when `redis_url` is set;
//! 3. refuses with 429 and `retry-after`: `rate_limit_exceeded` for rpm, tpm and
//!    `max_concurrent`, `insufficient_quota` for monthly budgets and tokens (refusals never
//!    reach the meter, so are not recorded; `tollgate_limiter_rejections_total{scope,limit}`
//!    counts them);
//! 4. or forwards, adds OpenAI's `x-ratelimit-*` headers, and holds the reservation in the
//!    response body ([`Held`]): when the body ends, fails, or is dropped (client gone), the
//!    meter's [`ChargeReport`] says what the request really used and the reservation is
//!    settled to it; its concurrency slot is given back.
//!
//! A month's spend is seeded from the ledger (`Store::spend_since`) the first time an
//! engine needs it, then kept by settlements. While Redis is unreachable,
//! `limits.redis_failure` applies: `fail_open` serves with the in-process engine as a
//! per-replica guard (what those requests spend is added to Redis's month when it is back),
//! `fail_closed` answers 503 `service_unavailable` with `retry-after: 1` at once (a failed
//! Redis call makes the next second skip Redis, so an outage costs one timeout, not one
//! per request; on a Redis Cluster only for the tenants whose slot failed).
//!
//! Budgets admit while spend + reservations are below the limit, so concurrent requests
//! overshoot by at most one reservation. A stream the client did not bound (no
//! `max_tokens`) under a monthly limit is watched as it passes ([`Watch`]): past its
//! reservation it reserves more, and ends with an `insufficient_quota` error event when
//! nothing is left.

pub mod config;
pub mod engine;
pub mod local;
pub mod plans;
pub mod redis;
pub mod tokens;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::oneshot;
use tollgate_admin::store::Store;
use tower::Service;

use crate::error;
use crate::exchange::{
    Answer, Call, Charged, End, Event, Flow, Hold, Observer, RateLimits, RateLine, Reply,
};
use crate::prices::Prices;
use crate::redis::Backoff;
pub use config::{LimitsConfig, RedisFailure};
use engine::{Ask, Counts, Decision, Limit, Month, Scope, ScopeLimits, Taken, WINDOW_MS};
use local::LocalEngine;
use plans::Plans;
use redis::RedisEngine;
use tokens::Count;

/// After a Redis failure, how long requests skip Redis (and get the failure policy).
const REDIS_BACKOFF_MS: i64 = 1000;
/// After the store failed to give a month's spend, how long requests do not ask again.
const SPEND_BACKOFF_MS: i64 = 5000;
/// How long a settlement waits for the meter's report before assuming the reservation
/// was used in full.
const REPORT_WAIT: Duration = Duration::from_secs(30);
/// Settlement attempts against Redis (with doubling pauses from 250 ms) before giving up.
const SETTLE_TRIES: u32 = 6;

/// What the quota layer shares across requests.
#[derive(Clone)]
pub struct Quota {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    plans: Arc<Plans>,
    prices: Arc<Prices>,
    local: LocalEngine,
    /// With the Unix ms until which Redis is skipped after a failure, per tenant's slot on
    /// a Cluster (a dead master costs its tenants only).
    redis: Option<(RedisEngine, Backoff)>,
    policy: RedisFailure,
    default_max_tokens: u64,
    /// Unix ms until which the month's spend is not asked of the store after it failed
    /// to answer (monthly limits are not applied meanwhile).
    spend_down_until: AtomicI64,
    /// `None` only when registering failed (a second stack on one registry, in tests).
    rejections: Option<IntCounterVec>,
}

/// Which engine holds a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EngineKind {
    Local,
    Redis,
}

/// Why a request is not admitted.
enum Refusal {
    Limited {
        scope: Scope,
        limit: Limit,
        counts: Counts,
    },
    /// Redis is unreachable under `fail_closed`.
    Unavailable,
}

impl Quota {
    /// `redis`: the shared handle when `redis_url` is set. Starts following plan changes
    /// when called inside a runtime.
    pub fn new(
        config: &LimitsConfig,
        store: Store,
        prices: Arc<Prices>,
        redis: Option<crate::redis::Redis>,
        registry: &Registry,
    ) -> Quota {
        let rejections = IntCounterVec::new(
            Opts::new(
                "tollgate_limiter_rejections_total",
                "Requests refused by a limit, by scope (tenant, key, redis) and limit",
            ),
            &["scope", "limit"],
        )
        .and_then(|c| registry.register(Box::new(c.clone())).map(|()| c))
        .inspect_err(|e| tracing::warn!(error = %e, "cannot register the limiter's metrics"))
        .ok();
        let plans = Plans::new(store.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(plans.clone().run_invalidations());
        }
        Quota {
            inner: Arc::new(Inner {
                store,
                plans,
                prices,
                local: LocalEngine::new(),
                redis: redis.map(|r| (RedisEngine::new(r.clone()), Backoff::new(&r))),
                policy: config.redis_failure,
                default_max_tokens: config.default_max_tokens,
                spend_down_until: AtomicI64::new(0),
                rejections,
            }),
        }
    }

    /// Both scopes' limits for this call.
    async fn limits(&self, call: &Call) -> [ScopeLimits; 2] {
        let p = &call.principal;
        let tenant = self.inner.plans.get(&p.plan).await;
        let key = ScopeLimits {
            rpm: p.rpm.map(u64::from),
            tpm: p.tpm.map(u64::from),
            concurrent: p.max_concurrent.map(u64::from),
            budget: p.monthly_budget_micro_usd,
            monthly_tokens: p.monthly_tokens,
        };
        [tenant, key]
    }

    /// Checks and reserves with the engine in charge; see the module docs.
    async fn admit(&self, ask: &mut Ask) -> Result<(EngineKind, Counts), Refusal> {
        let inner = &self.inner;
        if let Some((redis, backoff)) = &inner.redis {
            if !backoff.is_down(&ask.tenant, ask.now_ms) {
                match self.reserve_redis(redis, ask).await {
                    Ok(decision) => return decided(decision, EngineKind::Redis),
                    Err(e) => {
                        backoff.mark_down(&ask.tenant, engine::now_ms() + REDIS_BACKOFF_MS);
                        tracing::warn!(error = %e, policy = ?inner.policy, "limits: redis unavailable");
                    }
                }
            }
            if inner.policy == RedisFailure::FailClosed {
                return Err(Refusal::Unavailable);
            }
        }
        for _ in 0..3 {
            match inner.local.reserve(ask) {
                Decision::Unseeded(scope) => {
                    let (cost, tokens) = self.spend(ask, scope).await;
                    inner.local.seed(ask, scope, cost, tokens);
                }
                decision => return decided(decision, EngineKind::Local),
            }
        }
        decided(inner.local.reserve(ask), EngineKind::Local)
    }

    async fn reserve_redis(
        &self,
        redis: &RedisEngine,
        ask: &mut Ask,
    ) -> Result<Decision, crate::redis::RedisError> {
        for _ in 0..3 {
            match redis.reserve(ask).await? {
                Decision::Unseeded(scope) => {
                    let (cost, tokens) = self.spend(ask, scope).await;
                    redis.seed(ask, scope, cost, tokens).await?;
                }
                decision => return Ok(decision),
            }
        }
        redis.reserve(ask).await
    }

    /// The month's spend of `scope` from the ledger. When the store cannot say, the
    /// scope's monthly limits are not applied to this request (`ask` loses them): serving
    /// goes on, and the store is asked again after [`SPEND_BACKOFF_MS`]. Only a scope not
    /// yet seeded (first use after a start, or in Redis this month) asks at all.
    async fn spend(&self, ask: &mut Ask, scope: Scope) -> (i64, u64) {
        let key = (scope == Scope::Key).then_some(ask.key.as_str());
        let since = Month::of(ask.now_ms).start_ms();
        let down = &self.inner.spend_down_until;
        if ask.now_ms >= down.load(Ordering::Relaxed) {
            match self.inner.store.spend_since(&ask.tenant, key, since).await {
                Ok(spent) => return spent,
                Err(e) => {
                    down.store(engine::now_ms() + SPEND_BACKOFF_MS, Ordering::Relaxed);
                    tracing::warn!(error = %e, scope = scope.label(), "cannot read the month's spend; monthly limits not applied for now");
                }
            }
        }
        let limits = &mut ask.limits[scope as usize];
        limits.budget = None;
        limits.monthly_tokens = None;
        (0, 0)
    }

    /// Gives back a reservation and counts what was used.
    async fn settle(&self, engine: EngineKind, taken: &Taken, charged: Charged) {
        let cost = charged.cost.micros();
        match (engine, self.inner.redis.as_ref().map(|(r, _)| r)) {
            (EngineKind::Redis, Some(redis)) => {
                if let Err(e) = settle_redis(redis, taken, charged.tokens, cost).await {
                    tracing::error!(error = %e, tenant = %taken.tenant, "limits: could not settle a reservation in redis; it expires by itself");
                }
            }
            (EngineKind::Local, Some(redis)) => {
                self.inner.local.settle(taken, charged.tokens, cost);
                // Admitted in process while Redis was unreachable (fail_open): what it
                // spent still goes into Redis's month, so budgets are exact again once
                // Redis is back (a failover takes seconds; the retries span about 8 s).
                if taken.touched.iter().any(|t| t.monthly) {
                    let spent = Taken {
                        tokens: 0,
                        cost: 0,
                        touched: Default::default(),
                        ..taken.clone()
                    };
                    if let Err(e) = settle_redis(redis, &spent, charged.tokens, cost).await {
                        tracing::warn!(error = %e, tenant = %taken.tenant, "limits: a request served while redis was unreachable is missing from its monthly spend there");
                    }
                }
            }
            _ => self.inner.local.settle(taken, charged.tokens, cost),
        }
    }

    fn count_rejection(&self, scope: &str, limit: &str) {
        if let Some(c) = &self.inner.rejections {
            c.with_label_values(&[scope, limit]).inc();
        }
    }

    fn refuse(&self, ask: &Ask, refusal: Refusal) -> Reply {
        let (scope, limit, counts) = match refusal {
            Refusal::Unavailable => {
                self.count_rejection("redis", "unavailable");
                return Reply::error(error::limits_unavailable());
            }
            Refusal::Limited {
                scope,
                limit,
                counts,
            } => (scope, limit, counts),
        };
        self.count_rejection(scope.label(), limit.label());
        let whose = match scope {
            Scope::Tenant => "your organization",
            Scope::Key => "this API key",
        };
        let window_left = window_left_ms(ask.now_ms);
        let limits = ask.limits[scope as usize];
        let (message, retry_after_ms) = match limit {
            Limit::Requests => (
                format!(
                    "Rate limit reached for requests per minute (rpm) of {whose}: limit {}. Please retry after {}.",
                    limits.rpm.unwrap_or(0),
                    reset(window_left)
                ),
                window_left,
            ),
            Limit::Tokens => (
                format!(
                    "Rate limit reached for tokens per minute (tpm) of {whose}: limit {}, this request reserves {} (prompt + max_tokens). Please retry after {} or lower max_tokens.",
                    limits.tpm.unwrap_or(0),
                    ask.tokens,
                    reset(window_left)
                ),
                window_left,
            ),
            Limit::Concurrent => (
                format!(
                    "Too many concurrent requests for {whose}: limit {}. Please retry when one finishes.",
                    limits.concurrent.unwrap_or(0)
                ),
                1000,
            ),
            Limit::Budget | Limit::MonthlyTokens => (
                format!(
                    "You exceeded the monthly {} of {whose}. It renews at the start of next month (UTC).",
                    if limit == Limit::Budget {
                        "budget"
                    } else {
                        "token quota"
                    }
                ),
                Month::of(ask.now_ms).end_ms() - ask.now_ms,
            ),
        };
        let retry_after = u64::try_from((retry_after_ms.max(1) + 999) / 1000).unwrap_or(1);
        let error = if limit.is_quota() {
            error::insufficient_quota(message, retry_after)
        } else {
            error::rate_limited(message, retry_after)
        };
        let mut reply = Reply::error(error);
        reply.facts.rate = Some(rate_limits(ask, &counts, Some((scope, limit))));
        reply
    }
}

/// [`RedisEngine::settle`], tried [`SETTLE_TRIES`] times with doubling pauses from 250 ms.
async fn settle_redis(
    redis: &RedisEngine,
    taken: &Taken,
    tokens: u64,
    cost: i64,
) -> Result<(), crate::redis::RedisError> {
    let mut pause = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match redis.settle(taken, tokens, cost).await {
            Err(_) if attempt < SETTLE_TRIES => {
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn decided(decision: Decision, engine: EngineKind) -> Result<(EngineKind, Counts), Refusal> {
    match decision {
        Decision::Admit(counts) => Ok((engine, counts)),
        Decision::Reject {
            scope,
            limit,
            counts,
        } => Err(Refusal::Limited {
            scope,
            limit,
            counts,
        }),
        // Seeding did not stick (the month hash expired meanwhile): let it through.
        Decision::Unseeded(_) => Ok((engine, Counts::default())),
    }
}

fn window_left_ms(now_ms: i64) -> i64 {
    (now_ms.div_euclid(WINDOW_MS) + 1) * WINDOW_MS - now_ms
}

/// OpenAI's reset format: `20ms`, `1s`, `6m0s`.
pub fn reset(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = (ms + 999) / 1000;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// `x-ratelimit-*` for requests and tokens: of the scope with the least left. `refused`
/// marks the limit that refused (its remaining is 0).
fn rate_limits(ask: &Ask, counts: &Counts, refused: Option<(Scope, Limit)>) -> RateLimits {
    let window_left = reset(window_left_ms(ask.now_ms));
    let line = |limits: [Option<u64>; 2], used: [u64; 2], limit: Limit| {
        [Scope::Tenant, Scope::Key]
            .into_iter()
            .filter_map(|s| {
                let l = limits[s as usize]?;
                let left = if refused == Some((s, limit)) {
                    0
                } else {
                    l.saturating_sub(used[s as usize])
                };
                Some((l, left))
            })
            .min_by_key(|&(_, left)| left)
            .map(|(limit, remaining)| RateLine {
                limit,
                remaining,
                reset: window_left.clone(),
            })
    };
    RateLimits {
        requests: line(ask.limits.map(|l| l.rpm), counts.requests, Limit::Requests),
        tokens: line(ask.limits.map(|l| l.tpm), counts.tokens, Limit::Tokens),
    }
}

// === the reservation a response holds ===

/// An admitted request's reservation, carried in its response body: settled when the body
/// ends, fails or is dropped, or when the request is dropped before its answer.
pub struct Held {
    quota: Quota,
    engine: EngineKind,
    taken: Option<Taken>,
    report: Option<oneshot::Receiver<Charged>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(taken) = self.taken.take() else {
            return;
        };
        let mut report = self.report.take();
        let engine = self.engine;
        // The usual case: the meter has made its record by now (a whole answer is metered
        // before it goes up; a stream's record is durable before its end). Settled here, in
        // process, the next request already sees it; no task to spawn.
        let known = match report.as_mut().map(oneshot::Receiver::try_recv) {
            None | Some(Err(oneshot::error::TryRecvError::Closed)) => Some(Charged::default()),
            Some(Ok(charged)) => Some(charged),
            Some(Err(oneshot::error::TryRecvError::Empty)) => None,
        };
        // With Redis configured, a request admitted in process (fail_open) also owes its
        // spend to Redis's month: that takes the async path below.
        let owes_redis =
            self.quota.inner.redis.is_some() && taken.touched.iter().any(|t| t.monthly);
        if engine == EngineKind::Local
            && !owes_redis
            && let Some(charged) = known
        {
            self.quota
                .inner
                .local
                .settle(&taken, charged.tokens, charged.cost.micros());
            return;
        }
        let quota = self.quota.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if engine == EngineKind::Local {
                quota.inner.local.settle(&taken, 0, 0);
            }
            return;
        };
        runtime.spawn(async move {
            let charged = match (known, report) {
                (Some(charged), _) => charged,
                // Not metered (no record): nothing was used.
                (None, None) => Charged::default(),
                (None, Some(report)) => match tokio::time::timeout(REPORT_WAIT, report).await {
                    Ok(Ok(charged)) => charged,
                    Ok(Err(_)) => Charged::default(),
                    Err(_) => Charged {
                        tokens: taken.tokens,
                        cost: tollgate_admin::store::MicroUsd::from_micros(taken.cost)
                            .unwrap_or_default(),
                    },
                },
            };
            quota.settle(engine, &taken, charged).await;
        });
    }
}

/// Output tokens reserved at a time when a watched stream needs more.
const STEP: u64 = 256;

/// The error event that ends a stream the budget cannot pay for.
const QUOTA_EVENT: &str = "{\"error\":{\"message\":\"You exceeded the monthly quota of your organization or API key while this answer was streaming; it was stopped.\",\"type\":\"insufficient_quota\",\"param\":null,\"code\":\"insufficient_quota\"}}";

/// A stream's reservation, held until it ends (its observer).
///
/// A stream whose length the client did not bound (no `max_tokens` /
/// `max_completion_tokens`) under a monthly budget or token quota is also watched: its
/// reservation covers `limits.default_max_tokens`. Delivered output is estimated as it
/// passes (a token per chunk, or a token per 4 bytes of a larger chunk; no tokenizer, so
/// no BPE tables for streams whose usage the upstream reports); past what is reserved,
/// [`STEP`] more is reserved under the same rule as an admission (something left), else
/// the stream ends with an `insufficient_quota` error event instead of running on unpaid.
/// What was delivered is metered as usual, and the reservation settles to it.
struct QuotaStream {
    state: Arc<Mutex<Watched>>,
    watch: Option<WatchParams>,
}

struct Watched {
    held: Option<Held>,
    /// Output tokens reserved so far.
    covered: u64,
    /// Output tokens delivered so far (estimated).
    delivered: u64,
}

#[derive(Clone)]
struct WatchParams {
    quota: Quota,
    engine: EngineKind,
    limits: [ScopeLimits; 2],
    /// What [`STEP`] output tokens cost.
    step_cost: i64,
}

/// Output tokens in one chunk, estimated without a tokenizer: a token per chunk (what
/// OpenAI-compatible servers stream), or a token per 4 bytes (rounded) of a larger one.
fn estimate_tokens(text_len: usize) -> u64 {
    if text_len == 0 {
        0
    } else {
        ((text_len as u64 + 2) / 4).max(1)
    }
}

impl Observer for QuotaStream {
    fn event(&mut self, event: &mut Event) -> Flow {
        let Some(watch) = &self.watch else {
            return Flow::Pass;
        };
        let tokens = event.view().map_or(0, |v| estimate_tokens(v.text_len()));
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.delivered += tokens;
        if state.delivered <= state.covered {
            return Flow::Pass;
        }
        let Some(taken) = state.held.as_ref().and_then(|h| h.taken.clone()) else {
            return Flow::Pass;
        };
        drop(state);
        let watch = watch.clone();
        let shared = self.state.clone();
        Flow::Wait(Box::pin(async move {
            let mut taken = taken;
            loop {
                let granted = watch
                    .quota
                    .extend(watch.engine, &taken, &watch.limits, watch.step_cost)
                    .await;
                let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if !granted {
                    // The meter records what was delivered; the client sees why it ends.
                    return Flow::Stop(Some(Event::data(QUOTA_EVENT)));
                }
                state.covered += STEP;
                if let Some(t) = state.held.as_mut().and_then(|h| h.taken.as_mut()) {
                    t.tokens += STEP;
                    t.cost += watch.step_cost;
                    taken = t.clone();
                }
                if state.delivered <= state.covered {
                    return Flow::Pass;
                }
            }
        }))
    }

    fn end(&mut self, _end: End) -> Option<Hold> {
        // Settles the reservation to what the meter reports.
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held = None;
        None
    }
}

// === the stage ===

impl<S> crate::service::Stage<S> for Quota
where
    S: tower::Service<Call, Response = Reply, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Request = Call;
    type Response = Reply;

    fn serve(&self, call: Call, next: S) -> impl Future<Output = Reply> + Send + 'static {
        serve(self.clone(), call, next)
    }
}

/// Admits (or refuses) one call, holds its reservation until its answer ends.
async fn serve<S>(quota: Quota, call: Call, next: S) -> Reply
where
    S: Service<Call, Response = Reply, Error = Infallible>,
{
    let limits = quota.limits(&call).await;
    if limits.iter().all(ScopeLimits::is_unlimited) {
        return crate::service::call(next, call).await;
    }
    let (mut ask, covered, step_cost) = quota.ask(&call, limits, Count::Bound).await;
    let watched = call.params.stream
        && !tokens::bounded(&call)
        && ask.limits.iter().any(ScopeLimits::has_monthly);
    let mut admitted = quota.admit(&mut ask).await;
    // Only a tpm check weighs this request's tokens (monthly budgets and tokens admit
    // while spent + reserved is below the limit), so only a tpm refusal can change with
    // the tokenizer's count, never larger than the byte bound.
    if let Err(Refusal::Limited {
        limit: Limit::Tokens,
        ..
    }) = admitted
    {
        (ask, _, _) = quota.ask(&call, limits, Count::Exact).await;
        admitted = quota.admit(&mut ask).await;
    }
    let (engine, counts) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return quota.refuse(&ask, refusal),
    };
    // From here the reservation is held: dropped with this future (client gone before
    // the answer) it is given back.
    let mut held = Held {
        quota: quota.clone(),
        engine,
        taken: Some(Taken::of(&ask)),
        report: None,
    };
    let mut reply = crate::service::call(next, call).await;
    held.report = reply.facts.charged.take();
    reply.facts.rate = Some(rate_limits(&ask, &counts, None));
    if reply.is_success()
        && let Answer::Events(events) = &mut reply.answer
    {
        let watch = watched.then(|| WatchParams {
            quota: quota.clone(),
            engine,
            limits: ask.limits,
            step_cost,
        });
        events.observe(QuotaStream {
            state: Arc::new(Mutex::new(Watched {
                held: Some(held),
                covered,
                delivered: 0,
            })),
            watch,
        });
    }
    // A whole answer is metered by now: dropping `held` settles it to the meter's report.
    reply
}

impl Quota {
    /// The reservation for `call`: tokens only when a token limit or budget needs them.
    /// Also: the output tokens it covers and what [`STEP`] more output costs (for
    /// [`Watch`]).
    async fn ask(&self, call: &Call, limits: [ScopeLimits; 2], count: Count) -> (Ask, u64, i64) {
        let needs_tokens = limits.iter().any(|l| l.tpm.is_some() || l.has_monthly());
        let needs_cost = limits.iter().any(|l| l.budget.is_some());
        let (tokens, cost, output, step_cost) = if needs_tokens {
            let usage = tokens::estimate(call, self.inner.default_max_tokens, count);
            // A name a pattern matched is the client's own: not looked up (the meter
            // prices the answer; the reservation is settled to it).
            let price = if needs_cost && !call.by_pattern {
                self.inner.prices.get(&call.model).await
            } else {
                None
            };
            let cost = price.as_ref().map_or(0, |p| p.cost(&usage).micros());
            let step = tollgate_admin::store::Usage {
                output_tokens: STEP,
                ..Default::default()
            };
            let step_cost = price.as_ref().map_or(0, |p| p.cost(&step).micros());
            (
                usage.input_tokens.saturating_add(usage.output_tokens),
                cost,
                usage.output_tokens,
                step_cost,
            )
        } else {
            (0, 0, 0, 0)
        };
        let ask = Ask {
            tenant: call.principal.tenant_id.clone(),
            key: call.principal.key_id.clone(),
            limits,
            tokens,
            cost,
            now_ms: engine::now_ms(),
        };
        (ask, output, step_cost)
    }

    /// Reserves [`STEP`] more output for a watched stream; see [`Watch`]. While Redis is
    /// unreachable the failure policy decides (open: granted, closed: refused).
    async fn extend(
        &self,
        engine: EngineKind,
        taken: &Taken,
        limits: &[ScopeLimits; 2],
        cost: i64,
    ) -> bool {
        match (engine, self.inner.redis.as_ref().map(|(r, _)| r)) {
            (EngineKind::Redis, Some(redis)) => {
                match redis.extend(taken, limits, STEP, cost).await {
                    Ok(granted) => granted,
                    Err(e) => {
                        tracing::warn!(error = %e, "limits: cannot extend a stream's reservation in redis");
                        self.inner.policy == RedisFailure::FailOpen
                    }
                }
            }
            _ => self.inner.local.extend(taken, limits, STEP, cost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_token_is_one_chunk() {
        // " word" is one token in every BPE: 5 bytes must not count as 2.
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(4), 1);
        assert_eq!(estimate_tokens(5), 1);
        assert_eq!(estimate_tokens(40), 10);
    }

    #[test]
    fn reset_format() {
        assert_eq!(reset(20), "20ms");
        assert_eq!(reset(1000), "1s");
        assert_eq!(reset(1001), "2s");
        assert_eq!(reset(360_000), "6m0s");
        assert_eq!(reset(61_500), "1m2s");
    }
}
