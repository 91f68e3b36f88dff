//! One client call, many upstream attempts: retries across a model's deployments, then its
//! fallback models, with backoff, `retry-after` and the breaker's verdicts.
//!
//! What is retried: a connect error, a timeout before the response headers, a broken
//! answer, an upstream 429 or 5xx, and a stream that dies before its first chunk. All of
//! these happen before anything reached the client, so trying elsewhere is invisible to
//! it. A 4xx other than 429 is the client's problem and is returned at once. When every
//! attempt fails, the last failure is returned as it is (the upstream's own status and
//! body, or our 502/504). When no attempt could be made because every deployment was at
//! its `rpm` / `tpm` cap, the answer is 429 `rate_limit_exceeded` with `retry-after`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{StatusCode, header};
use tokio::time::Instant;

use super::balance::Choice;
use super::{DEPLOYMENT_HEADER, Deployment, ModelRoute};
use crate::call::Call;
use crate::error::UpstreamError;

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
    Done(Response),
    /// Retryable: kept as the answer in case no later attempt does better.
    Failed(Response),
}

/// Serves `call`: its model's deployments first, then each fallback model's.
pub async fn serve(call: &Call) -> Response {
    let mut last: Option<Response> = None;
    let mut routes = vec![call.route.clone()];
    routes.extend(call.route.fallbacks());
    let mut attempt_no = 0u32;
    // Time spent waiting on upstreams (not on backoff): what `x-tollgate-overhead-ms` leaves out.
    let mut upstream = Duration::ZERO;
    // Only a `tpm` cap needs it, and counting a prompt's tokens is not free.
    let tokens = if routes.iter().any(|r| r.counts_tokens) {
        super::caps::estimate(&call.request)
    } else {
        0
    };
    // Set when a whole model was at its caps: how long until one reopens.
    let mut capped: Option<Duration> = None;
    for (n, route) in routes.iter().enumerate() {
        if n > 0 {
            tracing::info!(model = %call.route.name, fallback = %route.name, "falling back");
        }
        let mut tried: Vec<usize> = Vec::new();
        for attempt in 0..route.retry.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(route.retry.backoff(attempt, jitter())).await;
            }
            let now = Instant::now();
            let Some(choice) = route.choose(&tried, now, tokens) else {
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
            // The peek costs the wait for the first chunk before headers go out; only worth
            // it when a failure could still be hidden by another attempt.
            let more_to_try = attempt + 1 < route.retry.max_attempts || n + 1 < routes.len();
            let started = Instant::now();
            let outcome = attempt_once(call, route, deployment, choice, more_to_try).await;
            upstream += started.elapsed();
            match outcome {
                Outcome::Done(response) => return with_upstream_time(response, upstream),
                Outcome::Failed(response) => {
                    tracing::warn!(
                        model = %route.name,
                        deployment = %deployment.name,
                        attempt = attempt_no,
                        status = response.status().as_u16(),
                        "upstream attempt failed"
                    );
                    last = Some(response);
                }
            }
        }
    }
    if let Some(response) = last {
        return with_upstream_time(response, upstream);
    }
    // No attempt was made: every model was at its caps (config validation requires a
    // deployment per model, so there is no other way here; kept as an answer, not a panic).
    match capped {
        Some(wait) => super::caps::all_capped(&call.route.name, wait).into_response(),
        None => crate::error::model_not_found(&call.route.name).into_response(),
    }
}

fn with_upstream_time(mut response: Response, upstream: Duration) -> Response {
    response
        .extensions_mut()
        .insert(crate::observe::UpstreamElapsed(upstream));
    response
}

async fn attempt_once(
    call: &Call,
    route: &ModelRoute,
    deployment: &Deployment,
    choice: Choice,
    peek_stream: bool,
) -> Outcome {
    let breaker = &deployment.breaker;
    // Counted from now until the answer's body ends; dropped at once on a failed attempt.
    let in_flight = deployment.in_flight.start();
    // A client span per attempt when traces are exported (`crate::otlp`).
    let result = crate::otlp::upstream_attempt(
        &deployment.name,
        &deployment.upstream_model,
        call.request.endpoint,
        deployment
            .provider
            .send(&call.request, &deployment.upstream_model),
    )
    .await;
    let now = Instant::now();
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(
                deployment = %deployment.name,
                endpoint = call.request.endpoint.label(),
                tenant = %call.principal.tenant_id,
                forced = matches!(choice, Choice::Forced(_)),
                error = %e,
                source = ?std::error::Error::source(&e),
                "upstream call failed"
            );
            let response = deployment.stamp(e.to_api(&deployment.name).into_response());
            return if let UpstreamError::Internal(_) = e {
                // Our own failure says nothing about the upstream's health.
                breaker.release(now);
                Outcome::Done(response)
            } else {
                breaker.on_failure(now);
                Outcome::Failed(response)
            };
        }
    };
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        if let Some(wait) = retry_after(&response) {
            breaker.skip_until(now + wait.min(route.retry.max_retry_after));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Busy, not broken (a hosted key's rate limit, a local worker's full queue):
            // move on, but don't eject a deployment that is up; `retry-after` already
            // keeps it aside for as long as it asked.
            breaker.on_success();
        } else {
            breaker.on_failure(now);
        }
        return Outcome::Failed(deployment.stamp(response));
    }
    if peek_stream && call.request.stream && status.is_success() {
        match first_chunk(response).await {
            Ok(peeked) => response = peeked,
            Err(()) => {
                breaker.on_failure(Instant::now());
                let broke = crate::error::upstream_broke_off(&deployment.name).into_response();
                return Outcome::Failed(deployment.stamp(broke));
            }
        }
    }
    if !peek_stream && call.request.stream && status.is_success() {
        // The last attempt: a failure before the first chunk can no longer fail over.
        response = response.map(crate::providers::relay::error_event_on_failure);
    }
    // Any other answer (2xx, or a 4xx that is the request's fault) shows the upstream is up.
    breaker.on_success();
    Outcome::Done(in_flight.hold_until_body_ends(deployment.stamp(response)))
}

/// Waits for the first chunk of a streamed body: an upstream that dies before sending
/// anything is a failure we can still hide; the chunk is put back in front of the rest.
async fn first_chunk(response: Response) -> Result<Response, ()> {
    let (parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    loop {
        match stream.next().await {
            Some(Ok(chunk)) if chunk.is_empty() => {}
            Some(Ok(chunk)) => {
                let rest = futures_util::stream::once(async move { Ok(chunk) }).chain(stream);
                return Ok(Response::from_parts(parts, Body::from_stream(rest)));
            }
            Some(Err(_)) | None => return Err(()),
        }
    }
}

/// `retry-after` in seconds (integer or decimal; HTTP dates are not used by LLM APIs and
/// are ignored).
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
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
    /// Names this deployment in `x-tollgate-deployment`.
    fn stamp(&self, mut response: Response) -> Response {
        response
            .headers_mut()
            .insert(DEPLOYMENT_HEADER, self.header.clone());
        response
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

    #[test]
    fn retry_after_reads_seconds() {
        let mut r = Response::new(Body::empty());
        assert_eq!(retry_after(&r), None);
        r.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("2"));
        assert_eq!(retry_after(&r), Some(Duration::from_secs(2)));
        r.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&r), Some(Duration::from_millis(500)));
        r.headers_mut().insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&r), None);
    }
}
