//! OTLP trace export (`otlp:` in config; absent: off): one span per data-plane request,
//! one child span per upstream attempt, sent as OTLP/HTTP JSON to `<endpoint>/v1/traces`.
//!
//! - A caller's W3C `traceparent` is honoured: the request span joins the caller's trace
//!   as a child of its span, and the caller's sampling decision stands. Without one, a new
//!   trace is sampled at `sample_ratio`.
//! - Upstreams get a `traceparent` naming the attempt's span (also when not sampled, with
//!   the flag off), so a traced model server continues the same trace.
//! - Export is off the request path ([`export`]): a bounded queue and one background task;
//!   a full queue or a dead collector drops spans (counted in
//!   `tollgate_otlp_spans_total`), it never slows or fails a request.
//! - Attributes name who and what (tenant and key ids, model, deployment, cache result,
//!   status, request id), never credentials, headers or prompt text.
//!
//! The context travels in a task-local ([`CURRENT`]) rather than in every type between
//! the edge and the providers: auth records the principal into it, the router wraps each
//! upstream call in an attempt span, and `providers::relay::send` adds the header.
//!
//! Written here rather than with the `opentelemetry` crates (0.33): they add 12 crates
//! (prost among them) for what is two span kinds and one JSON POST here; their batch
//! processor runs exports on its own thread with no Tokio reactor, so the async reqwest
//! client panics there and a blocking client would be needed; and a
//! `tracing-opentelemetry` layer would cost every `tracing` span in the process, where
//! this module touches only the request it traces.

mod context;
mod encode;
mod export;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Request};
use serde::Deserialize;

use crate::base::{ConfigError, Secret};
use crate::exchange::{Endpoint, Outcome, Reply};
use context::Parent;
use encode::{Kind, SpanRecord, Value};
pub use export::shutdown;

/// `otlp:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans are POSTed to
    /// `<endpoint>/v1/traces` (an endpoint already ending in `/v1/traces` is used as is).
    pub endpoint: String,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces kept (0 to 1). A caller's `traceparent` decides for its own.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Extra headers on each export (a collector's or vendor's token); never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Longest a finished span waits for its batch to be sent, in milliseconds (a full
    /// batch goes at once).
    #[serde(default = "default_batch_delay_ms")]
    pub batch_delay_ms: u64,
    /// Deadline of one export POST, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Finished spans waiting for export (besides the batch being sent, itself at most
    /// this many and 512); beyond it new ones are dropped and counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
}

fn default_service_name() -> String {
    "tollgate".to_owned()
}
fn default_sample_ratio() -> f64 {
    1.0
}
fn default_batch_delay_ms() -> u64 {
    5000
}
fn default_timeout_s() -> f64 {
    10.0
}
fn default_queue_size() -> usize {
    4096
}

impl OtlpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| ConfigError::new("otlp.endpoint", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "otlp.endpoint",
                "must be an http:// or https:// URL (OTLP over HTTP; gRPC is not supported)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new(
                "otlp.endpoint",
                "must not have a query or fragment",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::new("otlp.service_name", "must not be empty"));
        }
        if !(self.sample_ratio.is_finite() && (0.0..=1.0).contains(&self.sample_ratio)) {
            return Err(ConfigError::new(
                "otlp.sample_ratio",
                "must be between 0 and 1",
            ));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 300.0) {
            return Err(ConfigError::new(
                "otlp.timeout_s",
                "must be more than 0 and at most 300 seconds",
            ));
        }
        if !(1..=600_000).contains(&self.batch_delay_ms) {
            return Err(ConfigError::new(
                "otlp.batch_delay_ms",
                "must be between 1 and 600000",
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            return Err(ConfigError::new(
                "otlp.queue_size",
                "must be between 1 and 1000000",
            ));
        }
        for (name, value) in &self.headers {
            let at = format!("otlp.headers.{name}");
            if http::HeaderName::try_from(name.as_str()).is_err() {
                return Err(ConfigError::new(at, "not a valid header name"));
            }
            if HeaderValue::from_str(value.expose()).is_err() {
                // The value is not shown: it is usually a token.
                return Err(ConfigError::new(at, "not a valid header value"));
            }
        }
        Ok(())
    }

    /// `<endpoint>/v1/traces`.
    fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// What the exporter needs per request; `None` in [`OtlpLayer`] when export is off.
#[derive(Clone)]
struct Tracer {
    queue: export::Queue,
    sample_ratio: f64,
}

/// The request's trace context, reachable from anywhere in its task.
struct Current {
    tracer: Tracer,
    trace_id: [u8; 16],
    /// The request (server) span.
    span_id: [u8; 8],
    sampled: bool,
    /// The caller's `tracestate`, passed on unchanged with the `traceparent`.
    tracestate: Option<HeaderValue>,
    /// Upstream attempts so far.
    attempts: AtomicU32,
}

tokio::task_local! {
    static CURRENT: Arc<Current>;
    /// The upstream attempt in progress: the parent the upstream is told about.
    static ATTEMPT: [u8; 8];
}

/// A request span per request (a stage of the edge).
#[derive(Clone)]
pub struct Otlp {
    tracer: Tracer,
}

impl Otlp {
    /// Starts the exporter when `config` is set, and registers its counters in `registry`.
    /// `None` without a config (or without a runtime to export from): the stack then has
    /// no layer at all, so export off costs requests nothing.
    pub fn start(
        config: Option<&OtlpConfig>,
        registry: &prometheus::Registry,
    ) -> Result<Option<Self>, prometheus::Error> {
        let Some(config) = config else {
            return Ok(None);
        };
        let counters = export::Counters::new()?;
        registry.register(Box::new(counters.spans.clone()))?;
        match export::start(config, counters) {
            Ok(queue) => Ok(Some(Self {
                tracer: Tracer {
                    queue,
                    sample_ratio: config.sample_ratio,
                },
            })),
            Err(e) => {
                tracing::warn!(error = %e, "otlp: trace export is off");
                Ok(None)
            }
        }
    }
}

impl<S> crate::service::Stage<S> for Otlp
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
        let tracer = self.tracer.clone();
        let headers = request.headers();
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse_traceparent);
        let trace_id = parent.map_or_else(context::new_trace_id, |p| p.trace_id);
        let sampled = context::sampled(parent.as_ref(), &trace_id, tracer.sample_ratio);
        let tracestate = parent
            .and(headers.get("tracestate"))
            .filter(|v| v.len() <= 512)
            .cloned();
        let current = Arc::new(Current {
            tracer,
            trace_id,
            span_id: context::new_span_id(),
            sampled,
            tracestate,
            attempts: AtomicU32::new(0),
        });
        let open = sampled.then(|| OpenSpan::new(&current, parent.as_ref(), &request));
        CURRENT.scope(current.clone(), async move {
            let response = crate::service::call(next, request).await;
            let Some(mut open) = open else {
                return response;
            };
            open.on_response(&current, &response);
            crate::guard::tap(response, open)
        })
    }
}

/// The request span until its body ends (the tap reports the end, a failure, or the
/// client leaving).
struct OpenSpan {
    record: Option<SpanRecord>,
    started: Instant,
    queue: export::Queue,
}

/// `http.route` for the data plane's own routes; other paths get none (a client's made-up
/// path is not a route).
fn route(path: &str) -> Option<&'static str> {
    Some(match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/images/generations" => "/v1/images/generations",
        "/v1/moderations" => "/v1/moderations",
        "/v1/models" => "/v1/models",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        p if p.starts_with("/v1/files") => "/v1/files",
        p if p.starts_with("/v1/fine_tuning") => "/v1/fine_tuning/jobs",
        p if p.starts_with("/v1/batches") => "/v1/batches",
        _ => return None,
    })
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl OpenSpan {
    fn new(current: &Current, parent: Option<&Parent>, request: &Request<Body>) -> Self {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path();
        let route = route(path);
        let mut attributes = vec![
            ("http.request.method", Value::Str(method.clone())),
            ("url.path", Value::Str(path.to_owned())),
        ];
        if let Some(route) = route {
            attributes.push(("http.route", Value::Str(route.to_owned())));
        }
        if let Some(id) = header_str(request.headers(), "x-request-id") {
            attributes.push(("tollgate.request_id", Value::Str(id.to_owned())));
        }
        Self {
            record: Some(SpanRecord {
                trace_id: current.trace_id,
                span_id: current.span_id,
                parent_span_id: parent.map(|p| p.span_id),
                name: match route {
                    Some(route) => format!("{method} {route}"),
                    None => method,
                },
                kind: Kind::Server,
                start_unix_nanos: unix_nanos_now(),
                end_unix_nanos: 0,
                attributes,
                error: None,
            }),
            started: Instant::now(),
            queue: current.tracer.queue.clone(),
        }
    }

    /// What the response headers tell: status, model, deployment, cache, overhead.
    fn on_response<B>(&mut self, current: &Current, response: &http::Response<B>) {
        let Some(record) = self.record.as_mut() else {
            return;
        };
        let attrs = &mut record.attributes;
        let status = response.status();
        attrs.push((
            "http.response.status_code",
            Value::Int(i64::from(status.as_u16())),
        ));
        let outcome = response.extensions().get::<Outcome>();
        if let Some(p) = outcome.and_then(|o| o.principal.as_ref()) {
            attrs.push(("tollgate.tenant_id", Value::Str(p.tenant_id.clone())));
            attrs.push(("tollgate.key_id", Value::Str(p.key_id.clone())));
        }
        if let Some(model) = outcome.and_then(|o| o.model.as_ref()) {
            attrs.push(("gen_ai.request.model", Value::Str(model.to_string())));
        }
        if let Some(d) = outcome
            .and_then(|o| o.deployment.as_ref())
            .and_then(|d| d.to_str().ok())
        {
            attrs.push(("tollgate.deployment", Value::Str(d.to_owned())));
        }
        // As in the request metrics: `none` when the cache had no say.
        let cache = outcome.and_then(|o| o.cache).map_or("none", |c| c.as_str());
        attrs.push(("tollgate.cache", Value::Str(cache.to_owned())));
        if let Some(overhead) = outcome.and_then(|o| o.overhead) {
            attrs.push((
                "tollgate.overhead_ms",
                Value::Double(overhead.as_secs_f64() * 1e3),
            ));
        }
        let attempts = current.attempts.load(Ordering::Relaxed);
        if attempts > 0 {
            attrs.push((
                "tollgate.upstream_attempts",
                Value::Int(i64::from(attempts)),
            ));
        }
        // Server spans: 5xx is an error of ours, 4xx the client's (OpenTelemetry's HTTP
        // conventions).
        if status.is_server_error() {
            attrs.push(("error.type", Value::Str(status.as_str().to_owned())));
            record.error = Some(status.canonical_reason().unwrap_or("").to_owned());
        }
    }

    fn finish(&mut self, failure: Option<&'static str>) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        record.end_unix_nanos = record.start_unix_nanos.saturating_add(elapsed);
        if let Some(why) = failure {
            record.error.get_or_insert_with(|| why.to_owned());
            record
                .attributes
                .push(("error.type", Value::Str(why.to_owned())));
        }
        self.queue.push(record);
    }
}

impl crate::guard::Tap for OpenSpan {
    fn end(&mut self) {
        self.finish(None);
    }
    fn error(&mut self) {
        self.finish(Some("response body failed"));
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        // Dropped before its end: the client went away mid-answer.
        self.finish(Some("client closed the connection"));
    }
}

/// Adds `traceparent` (and the caller's `tracestate`) to an upstream request, naming the
/// attempt's span as the parent. A no-op when export is off.
pub(crate) fn propagate(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let Ok((traceparent, tracestate)) = CURRENT.try_with(|c| {
        let parent = ATTEMPT.try_with(|a| *a).unwrap_or(c.span_id);
        (
            context::format_traceparent(&c.trace_id, &parent, c.sampled),
            c.tracestate.clone(),
        )
    }) else {
        return builder;
    };
    let builder = builder.header("traceparent", traceparent);
    match tracestate {
        Some(state) => builder.header("tracestate", state),
        None => builder,
    }
}

/// Runs one upstream attempt in a client span of its own (to its response headers, or
/// the whole answer when it is not streamed). A plain call when export is off.
pub async fn upstream_attempt<F>(
    deployment: &str,
    upstream_model: &str,
    endpoint: Endpoint,
    attempt: F,
) -> Result<Reply, crate::error::UpstreamError>
where
    F: Future<Output = Result<Reply, crate::error::UpstreamError>>,
{
    let Ok(current) = CURRENT.try_with(Arc::clone) else {
        return attempt.await;
    };
    let number = current.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    let span_id = context::new_span_id();
    let start = unix_nanos_now();
    let started = Instant::now();
    let result = ATTEMPT.scope(span_id, attempt).await;
    if !current.sampled {
        return result;
    }
    let operation = match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
        Endpoint::ImagesGenerations => "generate_content",
        Endpoint::Moderations => "moderations",
        Endpoint::Files => "files",
        Endpoint::FineTuning => "fine_tuning",
        Endpoint::Batches => "batches",
        Endpoint::AudioTranscriptions => "transcription",
        Endpoint::AudioTranslations => "translation",
        Endpoint::AudioSpeech => "speech",
        Endpoint::Messages => "chat",
        Endpoint::CountTokens => "count_tokens",
        Endpoint::Responses => "chat",
        Endpoint::ResponseObject => "responses",
    };
    let mut attributes = vec![
        ("gen_ai.operation.name", Value::Str(operation.to_owned())),
        (
            "gen_ai.request.model",
            Value::Str(upstream_model.to_owned()),
        ),
        ("tollgate.deployment", Value::Str(deployment.to_owned())),
        ("tollgate.attempt", Value::Int(i64::from(number))),
    ];
    let error = match &result {
        Ok(reply) => {
            let status = reply.status;
            attributes.push((
                "http.response.status_code",
                Value::Int(i64::from(status.as_u16())),
            ));
            // Client spans: any 4xx/5xx from the upstream is an error of this attempt.
            (status.is_client_error() || status.is_server_error()).then(|| {
                attributes.push(("error.type", Value::Str(status.as_str().to_owned())));
                format!("upstream answered {status}")
            })
        }
        Err(e) => {
            attributes.push(("error.type", Value::Str(error_type(e).to_owned())));
            Some(e.to_string())
        }
    };
    let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    current.tracer.queue.push(SpanRecord {
        trace_id: current.trace_id,
        span_id,
        parent_span_id: Some(current.span_id),
        name: format!("{operation} {upstream_model}"),
        kind: Kind::Client,
        start_unix_nanos: start,
        end_unix_nanos: start.saturating_add(elapsed),
        attributes,
        error,
    });
    result
}

fn error_type(e: &crate::error::UpstreamError) -> &'static str {
    use crate::error::UpstreamError as E;
    match e {
        E::Unreachable(_) => "unreachable",
        E::Timeout => "timeout",
        E::Internal(_) => "internal",
        _ => "bad_response",
    }
}

/// How long the exporters may take to send what is queued when the process stops.
pub const FLUSH_GRACE: Duration = Duration::from_secs(5);

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Result<OtlpConfig, String> {
        let c: OtlpConfig = yaml_serde::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate()
            .map_err(|e| format!("{}: {}", e.path, e.message))?;
        Ok(c)
    }

    #[test]
    fn defaults_and_the_traces_url() {
        let c = config("endpoint: http://collector:4318").unwrap();
        assert_eq!(c.service_name, "tollgate");
        assert_eq!(c.sample_ratio, 1.0);
        assert_eq!(c.traces_url(), "http://collector:4318/v1/traces");
        let c = config("endpoint: https://otel.example.com/otlp/").unwrap();
        assert_eq!(c.traces_url(), "https://otel.example.com/otlp/v1/traces");
        let c = config("endpoint: http://c:4318/v1/traces").unwrap();
        assert_eq!(c.traces_url(), "http://c:4318/v1/traces");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (yaml, field) in [
            ("endpoint: collector:4317", "otlp.endpoint"),
            ("endpoint: grpc://c:4317", "otlp.endpoint"),
            ("endpoint: 'http://c:4318?x=1'", "otlp.endpoint"),
            (
                "{endpoint: 'http://c', sample_ratio: 1.5}",
                "otlp.sample_ratio",
            ),
            (
                "{endpoint: 'http://c', sample_ratio: -0.1}",
                "otlp.sample_ratio",
            ),
            ("{endpoint: 'http://c', timeout_s: 0}", "otlp.timeout_s"),
            ("{endpoint: 'http://c', queue_size: 0}", "otlp.queue_size"),
            (
                "{endpoint: 'http://c', batch_delay_ms: 0}",
                "otlp.batch_delay_ms",
            ),
            (
                "{endpoint: 'http://c', service_name: ' '}",
                "otlp.service_name",
            ),
            (
                "{endpoint: 'http://c', headers: {'bad name': x}}",
                "otlp.headers.bad name",
            ),
        ] {
            let err = config(yaml).unwrap_err();
            assert!(err.starts_with(field), "{yaml}: {err}");
        }
        let err =
            config("{endpoint: 'http://c', headers: {authorization: \"a\\nb\"}}").unwrap_err();
        assert!(err.starts_with("otlp.headers.authorization"), "{err}");
        assert!(!err.contains("a\nb"), "the value is not shown: {err}");
    }

    #[test]
    fn routes_are_a_closed_set() {
        assert_eq!(route("/v1/chat/completions"), Some("/v1/chat/completions"));
        assert_eq!(route("/v1/models/gpt-4o"), Some("/v1/models/{id}"));
        assert_eq!(route("/v1/made-up"), None);
    }

    #[tokio::test]
    async fn propagation_and_attempts_are_no_ops_outside_a_traced_request() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let request = propagate(client.get("http://127.0.0.1:9/"))
            .build()
            .unwrap();
        assert!(request.headers().get("traceparent").is_none());
        let answer = upstream_attempt("d", "m", crate::openai::Endpoint::ChatCompletions, async {
            Err(crate::error::UpstreamError::Timeout)
        })
        .await;
        assert!(matches!(answer, Err(crate::error::UpstreamError::Timeout)));
    }
}
