//! One client call, many upstream attempts: retries across a model's deployments, then its
//! fallback models, with backoff, `retry-after` and the breaker's verdicts.
//!
//! What is retried: a connect error, a timeout before the response headers, a broken
//! answer, an upstream 429 or 5xx, and a stream that dies before its first chunk. All of
//! these happen before anything reached the client, so trying elsewhere is invisible to
//! it. A 4xx other than 429 is the client's problem and is returned at once. When every
//! attempt fails, the last failure is returned: a 429 as the upstream sent it, a 5xx as
//! the gateway's own 502 / 503 / 504 (the upstream's body is logged, not relayed), a
//! failure to reach it as 502 / 504. When no attempt could be made because every
//! deployment was at its `rpm` / `tpm` cap, the answer is 429 `rate_limit_exceeded` with
//! `retry-after`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tokio::time::Instant;

use super::balance::Choice;
use super::{Deployment, ModelRoute};
use crate::error::{self, UpstreamError};
use crate::exchange::{Answer, Call, Reply};

/// Retry policy of one model, resolved from its config.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (1 = the first retry): full jitter over an
    /// exponentially growing, capped window. `unit` is a random number in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        let window = self.backoff.saturating_mul(factor).min(self.max_backoff);
        window.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// What one attempt came to.
enum Outcome {
    /// Return this to the client (a success, or an error retrying cannot fix).
    Done(Reply),
    /// Retryable: kept as the answer in case no later attempt does better.
    Failed(Reply),
}

/// Serves `call` on `route`: its deployments first, then each fallback model's.
pub async fn serve(route: &std::sync::Arc<ModelRoute>, call: &Call) -> Reply {
    let mut last: Option<Reply> = None;
    let mut routes = vec![route.clone()];
    if call.params.deployment.is_none() {
        routes.extend(route.fallbacks());
    }
    let mut attempt_no = 0u32;
    // Time spent waiting on upstreams (not on backoff): what `x-tollgate-overhead-ms` leaves out.
    let mut upstream = Duration::ZERO;
    // Only a `tpm` cap needs it.
    let tokens = if routes.iter().any(|r| r.counts_tokens) {
        super::caps::estimate(call)
    } else {
        0
    };
    // Set when a whole model was at its caps: how long until one reopens.
    let mut capped: Option<Duration> = None;
    for (n, route) in routes.iter().enumerate() {
        // What `*` matched, for a pattern route; a pattern fallback that does not match
        // the call's name has nothing to send upstream and is skipped.
        let capture = route.capture(&call.model);
        if route.pattern && capture.is_none() {
            continue;
        }
        if n > 0 {
            tracing::info!(model = %call.model, fallback = %route.name, "falling back");
        }
        let mut tried: Vec<usize> = Vec::new();
        for attempt in 0..route.retry.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(route.retry.backoff(attempt, jitter())).await;
            }
            let now = Instant::now();
            let choice = match &call.params.deployment {
                // Pinned (a follow-up of a response that lives there): that one or none.
                Some(name) => route
                    .deployments
                    .iter()
                    .position(|d| *d.name == **name)
                    .map(Choice::Healthy),
                None => route.choose(&tried, now, tokens),
            };
            let Some(choice) = choice else {
                if tried.is_empty()
                    && let Some(wait) = route.all_capped(tokens, now)
                {
                    capped = Some(capped.map_or(wait, |c| c.min(wait)));
                }
                break;
            };
            let index = choice.index();
            let Some(deployment) = route.deployments.get(index) else {
                break;
            };
            tried.push(index);
            attempt_no += 1;
            // Waiting for a stream's first event costs nothing extra but is only worth it
            // when a failure could still be hidden by another attempt.
            let more_to_try = attempt + 1 < route.retry.max_attempts || n + 1 < routes.len();
            let started = Instant::now();
            let upstream_model = deployment.upstream_for(capture);
            let outcome = attempt_once(
                call,
                route,
                deployment,
                &upstream_model,
                choice,
                more_to_try,
            )
            .await;
            upstream += started.elapsed();
            match outcome {
                Outcome::Done(mut reply) => {
                    if route.pattern {
                        // Priced by the model that answered (`meter`), not by the name.
                        reply.facts.price_model = Some(std::sync::Arc::from(&*upstream_model));
                    }
                    return finish(reply, upstream);
                }
                Outcome::Failed(reply) => {
                    tracing::warn!(
                        model = %route.name,
                        deployment = %deployment.name,
                        attempt = attempt_no,
                        status = reply.status.as_u16(),
                        "upstream attempt failed"
                    );
                    last = Some(reply);
                }
            }
        }
    }
    if let Some(reply) = last {
        return finish(reply, upstream);
    }
    // No attempt was made: every model was at its caps (config validation requires a
    // deployment per model, so there is no other way here; kept as an answer, not a panic).
    match capped {
        Some(wait) => Reply::error(error::all_capped(&call.model, wait)),
        None => Reply::error(error::model_not_found(&call.model)),
    }
}

/// The reply the client gets: an upstream's 5xx becomes the gateway's own error (its body
/// was logged by the provider), with the time spent upstream.
fn finish(mut reply: Reply, upstream: Duration) -> Reply {
    if reply.facts.relayed && error::is_upstream_failure(reply.status) {
        let deployment = reply
            .facts
            .deployment
            .as_ref()
            .and_then(|d| d.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let mut e = error::upstream_status(&deployment, reply.status);
        e.retry_after = reply.facts.retry_after;
        reply.status = e.status;
        reply.answer = Answer::Error(e);
    }
    reply.facts.upstream = upstream;
    reply
}

async fn attempt_once(
    call: &Call,
    route: &ModelRoute,
    deployment: &Deployment,
    upstream_model: &str,
    choice: Choice,
    wait_first: bool,
) -> Outcome {
    let breaker = &deployment.breaker;
    // Counted from now until the answer ends; dropped at once on a failed attempt.
    let in_flight = deployment.in_flight.start();
    let sent = Instant::now();
    // A client span per attempt when traces are exported (`crate::otlp`).
    let result = crate::otlp::upstream_attempt(
        &deployment.name,
        upstream_model,
        call.endpoint,
        deployment.provider.send(call, upstream_model),
    )
    .await;
    let now = Instant::now();
    let latency = &deployment.latency;
    let mut reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(
                deployment = %deployment.name,
                endpoint = call.endpoint.label(),
                tenant = %call.principal.tenant_id,
                forced = matches!(choice, Choice::Forced(_)),
                error = %e,
                source = ?std::error::Error::source(&e),
                "upstream call failed"
            );
            let reply = deployment.stamp(Reply::error(e.to_api(&deployment.name)));
            return if let UpstreamError::Internal(_) = e {
                // Our own failure says nothing about the upstream's health.
                breaker.release(now);
                Outcome::Done(reply)
            } else {
                breaker.on_failure(now);
                latency.observe_failure(now - sent, now);
                Outcome::Failed(reply)
            };
        }
    };
    let status = reply.status;
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        if let Some(wait) = reply.facts.retry_after {
            breaker.skip_until(now + Duration::from_secs(wait).min(route.retry.max_retry_after));
        }
        latency.observe_failure(now - sent, now);
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Busy, not broken (a hosted key's rate limit, a local worker's full queue):
            // move on, but don't eject a deployment that is up; `retry-after` already
            // keeps it aside for as long as it asked.
            breaker.on_success();
        } else {
            breaker.on_failure(now);
        }
        return Outcome::Failed(deployment.stamp(reply));
    }
    if let Answer::Events(events) = &mut reply.answer {
        if wait_first && let Err(e) = events.first().await {
            tracing::warn!(deployment = %deployment.name, error = %e, "upstream stream failed before its first event");
            let now = Instant::now();
            breaker.on_failure(now);
            latency.observe_failure(now - sent, now);
            let broke = Reply::error(error::upstream_broke_off(&deployment.name));
            return Outcome::Failed(deployment.stamp(broke));
        }
        events.keep(in_flight);
    }
    // Any other answer (2xx, or a 4xx that is the request's fault) shows the upstream is up.
    // Its latency: to the whole answer, or to the stream's first event when it was waited
    // for (else to the response headers).
    let answered = Instant::now();
    latency.observe(answered - sent, answered);
    breaker.on_success();
    Outcome::Done(deployment.stamp(reply))
}

/// A number in `[0, 1)` for jitter. Not cryptographic: it only has to differ between
/// requests and gateways, so a hash of the clock and a counter is enough (no `rand`).
fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into());
    let mut x = nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl Deployment {
    /// Names this deployment on the reply.
    fn stamp(&self, mut reply: Reply) -> Reply {
        reply.facts.deployment = Some(self.header.clone());
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let p = policy();
        assert_eq!(
            p.backoff(1, 0.999_999),
            Duration::from_millis(50).mul_f64(0.999_999)
        );
        assert!(p.backoff(2, 0.999_999) <= Duration::from_millis(100));
        assert!(p.backoff(2, 0.999_999) > Duration::from_millis(99));
        assert!(p.backoff(3, 0.999_999) <= Duration::from_millis(200));
        // 50 * 2^3 = 400 > cap 300.
        assert!(p.backoff(4, 0.999_999) <= Duration::from_millis(300));
        assert!(p.backoff(40, 0.999_999) <= Duration::from_millis(300));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        for _ in 0..10_000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
        let p = policy();
        for attempt in 1..10 {
            assert!(p.backoff(attempt, jitter()) <= Duration::from_millis(300));
        }
    }
}
