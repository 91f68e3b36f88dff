//! Observe: what each data-plane request cost the gateway, for the client, Prometheus and
//! the access log.
//!
//! The layer sits at the edge, just inside the request id and the trace span, so it sees
//! every answer (auth and validation errors, limits, cache hits, upstream answers) and the
//! whole time a request spent in the process. The reply's [`Outcome`] says how long it
//! waited on upstreams; the difference is the gateway's own overhead:
//!
//! - `x-tollgate-overhead-ms` on every response: time to the response headers minus the
//!   upstream's share (a whole answer's body for plain requests, the headers for streams);
//! - `tollgate_requests_total{model,endpoint,status,cache}`,
//!   `tollgate_request_duration_seconds` (to the last byte, streams included) and
//!   `tollgate_overhead_seconds`;
//! - one `access` log line per request at `info` (method, path, status, model, deployment,
//!   cache, durations; never headers or prompt text).
//!
//! The outcome names the model the handler resolved; requests that never got that far are
//! labelled `-`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Request};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::base::headers::OVERHEAD;
use crate::exchange::Outcome;

/// The series this layer feeds.
#[derive(Clone)]
pub struct RequestMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    overhead: HistogramVec,
}

/// Gateway overhead is expected in the tens of microseconds to a few milliseconds.
const OVERHEAD_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
/// Model calls take from milliseconds (cache hits, embeddings) to minutes (long streams).
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

impl RequestMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Data-plane requests by model, endpoint, status and cache result",
            ),
            &["model", "endpoint", "status", "cache"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request to last response byte (streams included)",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "endpoint"],
        )?;
        let overhead = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_overhead_seconds",
                "Time spent in the gateway itself, upstream time excluded",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        Ok(Self {
            requests,
            duration,
            overhead,
        })
    }
}

/// The `/v1` path's last segments as a metric label: a fixed set, so a client cannot
/// create series by requesting made-up paths.
fn endpoint_label(path: &str) -> &'static str {
    match path.strip_prefix("/v1").unwrap_or(path) {
        "/chat/completions" => "chat_completions",
        "/completions" => "completions",
        "/embeddings" => "embeddings",
        "/images/generations" => "images_generations",
        "/moderations" => "moderations",
        "/models" => "models",
        p if p.starts_with("/models/") => "models",
        p if p.starts_with("/files") => "files",
        p if p.starts_with("/fine_tuning") => "fine_tuning",
        p if p.starts_with("/batches") => "batches",
        _ => "other",
    }
}

impl<S> crate::service::Stage<S> for RequestMetrics
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Request = Request<Body>;
    type Response = Response;

    fn serve(
        &self,
        request: Request<Body>,
        next: S,
    ) -> impl Future<Output = Response> + Send + 'static {
        let start = Instant::now();
        let endpoint = endpoint_label(request.uri().path());
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let metrics = self.clone();
        async move {
            let mut response = crate::service::call(next, request).await;
            let to_headers = start.elapsed();
            let outcome = response.extensions_mut().get_mut::<Outcome>();
            let upstream = outcome.as_ref().map_or(Duration::ZERO, |o| o.upstream);
            let overhead = to_headers.saturating_sub(upstream);
            let (model, cache, deployment) = match outcome {
                Some(o) => {
                    // For the trace layer around this one.
                    o.overhead = Some(overhead);
                    (
                        o.model.clone().unwrap_or_else(|| Arc::from("-")),
                        o.cache.map_or("none", |c| c.as_str()),
                        o.deployment
                            .as_ref()
                            .and_then(|d| d.to_str().ok())
                            .unwrap_or("-")
                            .to_owned(),
                    )
                }
                None => (Arc::from("-"), "none", "-".to_owned()),
            };
            if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1e3)) {
                response.headers_mut().insert(OVERHEAD, v);
            }
            let status = response.status();
            metrics
                .requests
                .with_label_values(&[&model, endpoint, status.as_str(), cache])
                .inc();
            metrics
                .overhead
                .with_label_values(&[endpoint])
                .observe(overhead.as_secs_f64());
            let done = Done {
                start,
                to_headers,
                overhead,
                upstream,
                metrics,
                model,
                endpoint,
                status: status.as_u16(),
                cache,
                deployment,
                method,
                path,
            };
            crate::guard::hold_until_body_ends(response, done)
        }
    }
}

/// What is logged and observed once the body has ended (or been dropped by a client).
struct Done {
    start: Instant,
    to_headers: Duration,
    overhead: Duration,
    upstream: Duration,
    metrics: RequestMetrics,
    model: Arc<str>,
    endpoint: &'static str,
    status: u16,
    cache: &'static str,
    deployment: String,
    method: http::Method,
    path: String,
}

impl Drop for Done {
    fn drop(&mut self) {
        let total = self.start.elapsed();
        self.metrics
            .duration
            .with_label_values(&[&self.model, self.endpoint])
            .observe(total.as_secs_f64());
        tracing::info!(
            target: "tollgate::access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            model = %self.model,
            deployment = %self.deployment,
            cache = self.cache,
            headers_ms = self.to_headers.as_secs_f64() * 1e3,
            upstream_ms = self.upstream.as_secs_f64() * 1e3,
            overhead_ms = self.overhead.as_secs_f64() * 1e3,
            total_ms = total.as_secs_f64() * 1e3,
            "access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_are_a_closed_set() {
        assert_eq!(endpoint_label("/v1/chat/completions"), "chat_completions");
        assert_eq!(endpoint_label("/v1/models/gpt-4o"), "models");
        assert_eq!(endpoint_label("/v1/files/file-abc/content"), "files");
        assert_eq!(endpoint_label("/v1/anything-a-client-makes-up"), "other");
        assert_eq!(endpoint_label("/"), "other");
    }
}
