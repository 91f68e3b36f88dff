//! A mock OpenAI upstream: the one fake backend of the project.
//!
//! The gateway is tested end to end with the official OpenAI SDK as its client, so whatever
//! this server answers travels through the gateway and is parsed by the SDK. It therefore
//! speaks OpenAI's wire format exactly (object names, ids, `created`, `usage`, SSE framing,
//! error shape) rather than "something JSON-ish": a shape the real API would never send is
//! a bug here, because it would hide (or invent) gateway bugs.
//!
//! Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`,
//! `POST /v1/completions`, `POST /v1/embeddings`, `POST /v1/images/generations`,
//! `POST /v1/moderations`, `POST /v1/responses` (the Responses API, `upstream/responses.rs`).
//! The same endpoints also answer under Azure OpenAI's
//! `/openai/deployments/{deployment}/...` paths (the model defaults to the deployment name
//! there), so the gateway's Azure provider can be tested against the same fake.
//!
//! Files, fine-tuning jobs and batches (`/v1/files...`, `/v1/fine_tuning/jobs...`,
//! `/v1/batches...`) are kept in memory and answered in OpenAI's shapes; see
//! `upstream/objects.rs`.
//!
//! Anthropic: `POST /v1/messages` speaks Anthropic's Messages API instead (JSON and SSE,
//! Anthropic's error shape, `x-api-key` and `anthropic-version` required, unknown fields
//! refused as Anthropic does); see `upstream/anthropic.rs`. Its knobs ride in the `system` prompt
//! (`mock:{...}`), because the gateway translates the body and drops unknown fields.
//!
//! Scripting: a request body may carry `"mock": {...}` (the gateway passes unknown fields
//! through) to script the answer; see [`Knobs`] for the fields. Unknown knob fields are
//! refused with a 400 so that a typo in a test never silently does nothing.
//!
//! Recording: every request (except the `/_mock/...` control endpoints) is recorded before
//! it is answered; read them with [`MockUpstream::requests`] or `GET /_mock/requests`,
//! clear them with [`MockUpstream::clear`] or `DELETE /_mock/requests`.
//!
//! Lifetime: dropping the [`MockUpstream`] shuts the server down (it stops accepting at
//! once; requests already in flight finish). Keep the value alive for as long as the
//! gateway under test needs its upstream; dropping it on purpose is how a test makes the
//! upstream "go away".

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::serve::ListenerExt as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

mod anthropic;
pub mod audio;
pub mod bedrock;
pub mod google;
mod hostile;
mod objects;
mod responses;

/// What a chat or completion answers when the request does not script `mock.content`.
pub const DEFAULT_CONTENT: &str = "Hello from the mock upstream.";
/// Embedding length when the request has no `dimensions`: small, so tests stay readable.
pub const DEFAULT_EMBEDDING_DIMS: usize = 8;
/// Larger than the gateway's default body limit (16 MiB), so 413s in tests come from
/// the gateway, never from the mock.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
const MAX_EMBEDDING_DIMS: u64 = 8192;
/// Guards against a typo such as `"chunks": 10000000000` eating the test machine.
const MAX_CHUNKS: usize = 100_000;
/// `system_fingerprint` on chat and completion objects; OpenAI sends one, SDKs expose it.
const FINGERPRINT: &str = "fp_mock";
/// Models listed by `GET /v1/models`. `GET /v1/models/{id}` answers for any id, because
/// gateway configs in tests name upstream models freely.
const LISTED_MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "dall-e-3",
    "omni-moderation-latest",
];
/// `created` of model objects: fixed, so model listings are byte-for-byte stable.
const MODEL_CREATED: u64 = 1_700_000_000;
/// A valid 1x1 PNG, served as `b64_json` and at the `url` of generated images.
const PNG_1X1_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
/// OpenAI's moderation categories (omni-moderation), in the order the API lists them.
const MODERATION_CATEGORIES: &[&str] = &[
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// How to start a [`MockUpstream`].
#[derive(Default, Clone, Debug)]
pub struct MockOptions {
    /// Added before the response headers of every request (on top of `mock.delay_ms`):
    /// simulates a slow backend for timeout and overhead measurements.
    pub latency: Duration,
    /// Where to listen; `None` means `127.0.0.1:0` (a free port).
    pub addr: Option<SocketAddr>,
}

/// One request as the mock received it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path including the query string, e.g. `/v1/chat/completions?api-version=x`.
    pub path: String,
    /// In arrival order; names lower-case (HTTP/2 and hyper normalise them so).
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body, or `Null` when the body was empty or not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running mock upstream. Dropping it shuts the server down (see the module docs).
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts a mock on a free port of 127.0.0.1 with no added latency.
    pub async fn start() -> MockUpstream {
        Self::start_with(MockOptions::default()).await
    }

    /// Starts a mock with `opts`. Panics if the address cannot be bound (test support:
    /// fail loudly); use [`MockUpstream::try_start_with`] to handle that instead.
    pub async fn start_with(opts: MockOptions) -> MockUpstream {
        match Self::try_start_with(opts).await {
            Ok(mock) => mock,
            Err(e) => panic!("mock upstream: cannot bind: {e}"),
        }
    }

    /// Like [`MockUpstream::start_with`], but returns the bind error.
    pub async fn try_start_with(opts: MockOptions) -> std::io::Result<MockUpstream> {
        let bind = opts
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latency: opts.latency,
            recorded: Mutex::new(VecDeque::new()),
            record_limit: AtomicUsize::new(usize::MAX),
            ids: AtomicU64::new(0),
            id_seed: id_seed(),
            origin: format!("http://{addr}"),
            objects: Default::default(),
            tokens: Default::default(),
            responses: Default::default(),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        // Without TCP_NODELAY small SSE frames can wait on delayed ACKs (~40 ms), which
        // would distort stream timings and the benchmark.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                // Either an explicit send or the sender being dropped means "stop".
                let _ = rx.await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(MockUpstream {
            addr,
            shared,
            shutdown: Some(tx),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`: what a gateway deployment's `base_url` should be.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.shared.origin)
    }

    /// Every request received so far (except `/_mock/...`), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.recorded).iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        lock(&self.shared.recorded).clear();
    }

    /// Keeps only the `limit` most recent requests (`None`: all, the default; `Some(0)`:
    /// none, which also skips the copying). Long benchmark runs use this so the record
    /// does not grow without bound.
    pub fn set_record_limit(&self, limit: Option<usize>) {
        let limit = limit.unwrap_or(usize::MAX);
        self.shared.record_limit.store(limit, Ordering::Relaxed);
        let mut recorded = lock(&self.shared.recorded);
        while recorded.len() > limit {
            recorded.pop_front();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// State shared by the handle and the server task.
struct Shared {
    latency: Duration,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    /// `usize::MAX` means unlimited.
    record_limit: AtomicUsize,
    ids: AtomicU64,
    /// Makes ids unique across mock instances and runs, so a test can tell a cached
    /// replay (same id) from a fresh upstream answer (new id).
    id_seed: u64,
    /// `http://ADDR`, for image URLs that point back at this server.
    origin: String,
    /// Files, fine-tuning jobs and batches (`upstream/objects.rs`).
    objects: objects::Objects,
    /// Access tokens issued by the OAuth2 token endpoint (`upstream/google.rs`).
    tokens: google::Tokens,
    /// Responses kept for retrieval and follow-ups (`upstream/responses.rs`).
    responses: responses::Stored,
}

impl Shared {
    fn record(&self, make: impl FnOnce() -> RecordedRequest) {
        let limit = self.record_limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let request = make();
        let mut recorded = lock(&self.recorded);
        recorded.push_back(request);
        while recorded.len() > limit {
            recorded.pop_front();
        }
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{:012x}{n:012x}", self.id_seed & 0xffff_ffff_ffff)
    }
}

/// A poisoned lock only means another test thread panicked while holding it; the data
/// (a list of requests) is still fine to read.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn id_seed() -> u64 {
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
    splitmix64(nanos ^ (u64::from(std::process::id()) << 32) ^ instance.wrapping_mul(0x9e37_79b9))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The per-request script, from the body's `"mock"` object. All fields are optional.
#[derive(Deserialize, Default, Debug)]
#[serde(default, deny_unknown_fields)]
struct Knobs {
    /// Answer with this status. 400..=599: an OpenAI-shaped error body fitting the status
    /// (429 `rate_limit_exceeded`, 5xx `server_error`, ...). Below 400: the normal answer,
    /// with this status.
    status: Option<u16>,
    /// Replaces the error body; status 500 if no `status` is given. Either the whole body
    /// (an object with an `error` key, sent as is) or just the error object (sent as
    /// `{"error": <this>}`): tests write both, and neither reading is ambiguous.
    error: Option<Value>,
    /// Sleep before the response headers (added to the global latency).
    delay_ms: u64,
    /// Sleep between stream events (also between the last chunk and `[DONE]`).
    chunk_delay_ms: u64,
    /// Number of content chunks (= completion tokens per choice). Fewer than the content
    /// has words: the words are grouped (the text stays the same); more: the words repeat.
    chunks: Option<usize>,
    /// The answer text.
    content: Option<String>,
    /// Streams: close the connection abruptly after this many events, never sending
    /// `[DONE]`. Non-stream answers: after this many bytes of the JSON body.
    drop_after: Option<usize>,
    /// Extra response headers (values: strings or numbers); they override the mock's own.
    headers: Option<Map<String, Value>>,
    /// Overrides the computed `usage.prompt_tokens`.
    prompt_tokens: Option<u64>,
    /// Reported as `usage.prompt_tokens_details.cached_tokens` (part of prompt_tokens);
    /// Anthropic: `usage.cache_read_input_tokens` (and `prompt_tokens` is `input_tokens`,
    /// which excludes cached tokens there).
    cached_tokens: Option<u64>,
    /// Anthropic only: `usage.cache_creation_input_tokens` (Bedrock: `cacheWriteInputTokens`).
    cache_creation_tokens: Option<u64>,
    /// Anthropic only: the 1-hour part of `cache_creation_tokens`. When set, the usage also
    /// carries `cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}`.
    cache_creation_1h_tokens: Option<u64>,
    /// Chat: reported as `usage.completion_tokens_details.reasoning_tokens` (part of
    /// `completion_tokens`, which grows by this much).
    reasoning_tokens: Option<u64>,
    /// Anthropic only: answer with these tool calls (`tool_use` blocks, stop reason
    /// `tool_use`); text comes first only when `content` is set too.
    tool_calls: Option<Vec<anthropic::ToolCallKnob>>,
    /// Anthropic only: after this many stream events, send an `error` event
    /// (`overloaded_error`) and end the stream, as Anthropic does when it fails mid-answer.
    error_after: Option<usize>,
    /// Anthropic only: frame stream events with `\r\n` line endings.
    crlf: bool,
    /// A broken or malicious answer instead of the real one; see `upstream/hostile.rs`.
    hostile: Option<hostile::Hostile>,
    /// With an error answer (`status` >= 400 or `error`): its message repeats the
    /// credential headers the mock received, as careless servers do.
    echo_auth: bool,
}

/// An OpenAI-shaped error answer.
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(
        status: StatusCode,
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            body: json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}}),
        }
    }

    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            param,
            None,
        )
    }

    /// The error OpenAI would send for `status`, used by the `mock.status` knob.
    fn for_status(status: StatusCode) -> Self {
        let (message, kind, code) = match status.as_u16() {
            400 => (
                "Invalid request (scripted by mock.status).",
                "invalid_request_error",
                None,
            ),
            401 => (
                "Incorrect API key provided.",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            403 => (
                "You are not allowed to access this resource.",
                "invalid_request_error",
                None,
            ),
            404 => (
                "The model does not exist or you do not have access to it.",
                "invalid_request_error",
                Some("model_not_found"),
            ),
            429 => (
                "Rate limit reached for requests.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                Some("server_error"),
            ),
            503 => (
                "The server is overloaded or not ready yet.",
                "server_error",
                Some("server_error"),
            ),
            s if s >= 500 => (
                "Upstream failure (scripted by mock.status).",
                "server_error",
                Some("server_error"),
            ),
            _ => (
                "Request failed (scripted by mock.status).",
                "invalid_request_error",
                None,
            ),
        };
        Self::new(status, message, kind, None, code)
    }
}

/// What to send, before the knobs that apply to every answer (headers, delays, drops).
enum Payload {
    Json(StatusCode, Value),
    /// SSE events, each already framed as `data: ...\n\n`; `[DONE]` is added on sending.
    Sse(Vec<Bytes>),
    /// SSE events sent as they are, without `[DONE]` (Anthropic's streams end with an event).
    EventStream(Vec<Bytes>),
    /// A streamed binary body of this content type (Bedrock's AWS event-stream frames).
    Binary(&'static str, Vec<Bytes>),
}

impl From<ApiError> for Payload {
    fn from(e: ApiError) -> Self {
        Payload::Json(e.status, e.body)
    }
}

/// The single handler: routing by hand keeps recording, knobs and errors in one place
/// (unknown paths and wrong methods get OpenAI-shaped errors too, and are recorded).
async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if let Some(rest) = path.strip_prefix("/_mock/") {
        return control(&shared, &parts.method, rest);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let body: Value = match &bytes {
        // Uploads are recorded as their text fields and each file's name and size.
        Ok(b) if content_type.starts_with("multipart/form-data") => {
            audio::form(content_type, b).map_or(Value::Null, |form| audio::summary(&form))
        }
        Ok(b) if !b.is_empty() => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    shared.record(|| RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });

    // Google and AWS speak their own formats (and the token endpoint is a form post).
    if (google::handles(path) || bedrock::handles(path))
        && let Ok(raw) = &bytes
    {
        let reply = if google::handles(path) {
            google::route(&shared, &parts, &body, raw)
        } else {
            bedrock::route(&shared, &parts, &body, raw)
        };
        return reply.into_response(&shared);
    }
    if let Some((endpoint, _)) = endpoint(path)
        && audio::handles(endpoint)
        && let Ok(raw) = &bytes
    {
        return audio::route(&parts, endpoint, raw, &body).into_response(&shared);
    }
    if objects::handles(path)
        && let Ok(bytes) = &bytes
    {
        return shared
            .objects
            .handle(&parts.method, path, &parts.headers, bytes);
    }
    let mut delay = shared.latency;
    let reply = match bytes {
        Err(_) => Reply::plain(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large for the mock upstream.",
            "invalid_request_error",
            None,
            None,
        )),
        Ok(_) => {
            let knobs = if anthropic::is_messages(path) {
                anthropic::knobs(&body)
            } else {
                parse_knobs(&body)
            };
            match knobs {
                Err(e) => Reply::plain(e),
                Ok(knobs) => {
                    delay += Duration::from_millis(knobs.delay_ms);
                    if let Some(h) = &knobs.hostile {
                        tokio::time::sleep(delay).await;
                        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
                        let model = body.get("model").and_then(Value::as_str).unwrap_or("mock");
                        let chunk_delay = Duration::from_millis(knobs.chunk_delay_ms);
                        return hostile::respond(h, stream, model, chunk_delay).await;
                    }
                    Reply::scripted(&shared, &parts, &body, knobs)
                }
            }
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    reply.into_response(&shared)
}

/// A payload plus the knobs that shape how it is sent.
struct Reply {
    payload: Payload,
    status_override: Option<StatusCode>,
    headers: Vec<(HeaderName, HeaderValue)>,
    chunk_delay: Duration,
    drop_after: Option<usize>,
}

impl Reply {
    fn plain(e: ApiError) -> Self {
        Reply {
            payload: e.into(),
            status_override: None,
            headers: Vec::new(),
            chunk_delay: Duration::ZERO,
            drop_after: None,
        }
    }

    fn scripted(shared: &Shared, parts: &http::request::Parts, body: &Value, knobs: Knobs) -> Self {
        let (method, path) = (&parts.method, parts.uri.path());
        let anthropic = anthropic::is_messages(path);
        let headers = match knob_headers(knobs.headers.as_ref()) {
            Ok(h) => h,
            Err(e) => return Reply::plain(e),
        };
        let status = match knobs.status.map(StatusCode::from_u16).transpose() {
            Ok(s) => s,
            Err(_) => {
                return Reply::plain(ApiError::invalid(
                    "mock.status is not a valid HTTP status",
                    Some("mock"),
                ));
            }
        };
        let mut status_override = None;
        let payload = match (status, &knobs.error) {
            (s, Some(error)) => {
                let s = s.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = match error {
                    Value::Object(o) if o.contains_key("error") => error.clone(),
                    _ if anthropic => json!({ "type": "error", "error": error }),
                    _ => json!({ "error": error }),
                };
                Payload::Json(s, body)
            }
            (Some(s), None) if s.as_u16() >= 400 && anthropic => {
                anthropic::error_for_status(s).into()
            }
            (Some(s), None) if s.as_u16() >= 400 => ApiError::for_status(s).into(),
            (s, None) => {
                status_override = s;
                let answer = if anthropic {
                    anthropic::messages(shared, parts, body, &knobs)
                } else {
                    route(shared, method, path, body, &knobs)
                };
                answer.unwrap_or_else(Payload::from)
            }
        };
        let payload = match payload {
            Payload::Json(s, mut body) if knobs.echo_auth && s.as_u16() >= 400 => {
                let echoed: Vec<String> = ["authorization", "api-key", "x-api-key"]
                    .iter()
                    .filter_map(|n| Some(format!("{n}: {}", parts.headers.get(*n)?.to_str().ok()?)))
                    .collect();
                if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
                    error.insert(
                        "message".into(),
                        json!(format!(
                            "Incorrect API key provided ({}).",
                            echoed.join(", ")
                        )),
                    );
                }
                Payload::Json(s, body)
            }
            p => p,
        };
        Reply {
            payload,
            status_override,
            headers,
            chunk_delay: Duration::from_millis(knobs.chunk_delay_ms),
            drop_after: knobs.drop_after,
        }
    }

    fn into_response(self, shared: &Shared) -> Response {
        let (status, content_type, frames, abort) = match self.payload {
            Payload::Json(status, value) => {
                let mut bytes = Bytes::from(value.to_string());
                let abort = self.drop_after.is_some_and(|n| {
                    bytes.truncate(n);
                    true
                });
                (status, "application/json", vec![bytes], abort)
            }
            payload @ (Payload::Sse(_) | Payload::EventStream(_) | Payload::Binary(..)) => {
                let mut content_type = "text/event-stream";
                let (mut events, done) = match payload {
                    Payload::Sse(events) => (events, true),
                    Payload::EventStream(events) => (events, false),
                    Payload::Binary(kind, events) => {
                        content_type = kind;
                        (events, false)
                    }
                    Payload::Json(..) => (Vec::new(), false),
                };
                let abort = match self.drop_after {
                    Some(n) => {
                        events.truncate(n);
                        true
                    }
                    None => {
                        if done {
                            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
                        }
                        false
                    }
                };
                // With no delay one write carries the whole stream: cheapest for the
                // benchmark, and SSE parsers do not care how events are split.
                if self.chunk_delay.is_zero() && events.len() > 1 {
                    events = vec![events.concat().into()];
                }
                (StatusCode::OK, content_type, events, abort)
            }
        };
        let streamed = content_type != "application/json";
        let body = if !streamed && !abort {
            frames
                .into_iter()
                .next()
                .map_or_else(Body::empty, Body::from)
        } else {
            Body::from_stream(frame_stream(frames, self.chunk_delay, abort))
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status_override.unwrap_or(status);
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(v) = HeaderValue::from_str(&shared.next_id("req_")) {
            h.insert("x-request-id", v);
        }
        for (name, value) in self.headers {
            h.insert(name, value);
        }
        resp
    }
}

/// Sends `frames` with `delay` between them; with `abort`, then fails the body, which
/// makes hyper cut the connection without the final chunk: what a crashing upstream does.
fn frame_stream(
    frames: Vec<Bytes>,
    delay: Duration,
    abort: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(
        (frames.into_iter(), false, abort),
        move |(mut it, started, abort)| async move {
            match it.next() {
                Some(frame) => {
                    if started && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok(frame), (it, true, abort)))
                }
                None if abort => {
                    // Give hyper a moment to flush what was sent before the connection dies,
                    // so the client really sees the first events.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let err = std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "mock.drop_after",
                    );
                    Some((Err(err), (it, true, false)))
                }
                None => None,
            }
        },
    )
}

fn parse_knobs(body: &Value) -> Result<Knobs, ApiError> {
    match body.get("mock") {
        None | Some(Value::Null) => Ok(Knobs::default()),
        Some(v) => Knobs::deserialize(v)
            .map_err(|e| ApiError::invalid(format!("invalid mock knobs: {e}"), Some("mock"))),
    }
}

fn knob_headers(
    headers: Option<&Map<String, Value>>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ApiError> {
    let Some(headers) = headers else {
        return Ok(Vec::new());
    };
    headers
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                Value::Number(n) => Cow::Owned(n.to_string()),
                Value::Bool(b) => Cow::Owned(b.to_string()),
                _ => {
                    return Err(ApiError::invalid(
                        format!("mock.headers.{name} must be a string"),
                        Some("mock"),
                    ));
                }
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ApiError::invalid(
                    format!("mock.headers: invalid header name {name:?}"),
                    Some("mock"),
                )
            })?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                ApiError::invalid(format!("mock.headers.{name}: invalid value"), Some("mock"))
            })?;
            Ok((name, value))
        })
        .collect()
}

/// `/_mock/...`: inspection endpoints, never recorded themselves.
fn control(shared: &Shared, method: &Method, rest: &str) -> Response {
    let (status, content_type, body) = match (method, rest) {
        (&Method::GET, "requests") => {
            let list: Vec<RecordedRequest> = lock(&shared.recorded).iter().cloned().collect();
            let body = serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec());
            (StatusCode::OK, "application/json", Body::from(body))
        }
        (&Method::DELETE, "requests") => {
            lock(&shared.recorded).clear();
            (StatusCode::NO_CONTENT, "application/json", Body::empty())
        }
        (&Method::GET, p) if p.starts_with("images/") => {
            let png = BASE64.decode(PNG_1X1_B64).unwrap_or_default();
            (StatusCode::OK, "image/png", Body::from(png))
        }
        _ => {
            let e = ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Invalid URL ({method} /_mock/{rest})"),
                "invalid_request_error",
                None,
                None,
            );
            (e.status, "application/json", Body::from(e.body.to_string()))
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Maps the path to an endpoint: `/v1/X` or Azure's `/openai/deployments/{d}/X`.
fn endpoint(path: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = path.strip_prefix("/v1/") {
        return Some((rest, None));
    }
    if path == "/openai/responses" {
        // Azure's Responses API: one URL, the deployment named by the body's `model`.
        return Some(("responses", None));
    }
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, rest) = rest.split_once('/')?;
    Some((rest, Some(deployment)))
}

fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: &Value,
    knobs: &Knobs,
) -> Result<Payload, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
            None,
            None,
        )
    };
    let (endpoint, deployment) = endpoint(path).ok_or_else(not_found)?;
    let wrong_method = || {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {method} not allowed for {path}"),
            "invalid_request_error",
            None,
            None,
        )
    };
    match endpoint {
        "models" if method == Method::GET => Ok(list_models()),
        "responses" if method == Method::POST => match body {
            Value::Object(req) => responses::create(shared, req, deployment, knobs),
            _ => Err(ApiError::invalid(
                "We could not parse the JSON body of your request.",
                None,
            )),
        },
        "chat/completions" | "completions" | "embeddings" | "images/generations"
        | "moderations"
            if method == Method::POST =>
        {
            let Value::Object(req) = body else {
                return Err(ApiError::invalid(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
                     using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
                     sent was not valid JSON.)",
                    None,
                ));
            };
            match endpoint {
                "chat/completions" => chat(shared, req, deployment, knobs),
                "completions" => completions(shared, req, deployment, knobs),
                "embeddings" => embeddings(req, deployment, knobs),
                "images/generations" => images(shared, req, deployment),
                _ => moderations(shared, req, deployment),
            }
        }
        "models" | "chat/completions" | "completions" | "embeddings" | "images/generations"
        | "moderations" | "responses" => Err(wrong_method()),
        e if e.starts_with("responses/") => responses::object(shared, method, e),
        e => match e.strip_prefix("models/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                if method == Method::GET {
                    Ok(Payload::Json(StatusCode::OK, model_object(id)))
                } else {
                    Err(wrong_method())
                }
            }
            _ => Err(not_found()),
        },
    }
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODEL_CREATED, "owned_by": "mock-upstream"})
}

fn list_models() -> Payload {
    let data: Vec<Value> = LISTED_MODELS.iter().map(|m| model_object(m)).collect();
    Payload::Json(StatusCode::OK, json!({"object": "list", "data": data}))
}

// ---- request field helpers: a wrong type is a 400 naming the field, like OpenAI's ----

fn opt_field<'a>(req: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    req.get(key).filter(|v| !v.is_null())
}

fn opt_str<'a>(req: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match opt_field(req, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be a string"),
            Some(key),
        )),
    }
}

fn opt_bool(req: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match opt_field(req, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be a boolean"),
            Some(key),
        )),
    }
}

fn opt_u64(req: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match opt_field(req, key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::invalid(format!("'{key}' must be a non-negative integer"), Some(key))
        }),
    }
}

/// `model` echoed in answers: the request's, else the Azure deployment, else `default`.
fn model<'a>(
    req: &'a Map<String, Value>,
    deployment: Option<&'a str>,
    default: Option<&'a str>,
) -> Result<&'a str, ApiError> {
    opt_str(req, "model")?
        .or(deployment)
        .or(default)
        .ok_or_else(|| ApiError::invalid("you must provide a model parameter", Some("model")))
}

fn choice_count(req: &Map<String, Value>, max: u64) -> Result<u64, ApiError> {
    match opt_u64(req, "n")? {
        None => Ok(1),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            format!("{n} is not valid for 'n': must be between 1 and {max}"),
            Some("n"),
        )),
    }
}

fn include_usage(req: &Map<String, Value>) -> Result<bool, ApiError> {
    match opt_field(req, "stream_options") {
        None => Ok(false),
        Some(Value::Object(o)) => Ok(opt_bool(o, "include_usage")?.unwrap_or(false)),
        Some(_) => Err(ApiError::invalid(
            "'stream_options' must be an object",
            Some("stream_options"),
        )),
    }
}

fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Splits `content` into word pieces whose concatenation is `content` exactly: each piece
/// but the first starts with the whitespace before its word, as tokens do.
fn words(content: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut prev_ws = false;
    for (i, c) in content.char_indices() {
        let ws = c.is_whitespace();
        // A word begins after whitespace: the piece before it ends where that run began.
        if ws && !prev_ws && i > start {
            let rest = &content[i..];
            if rest.trim_start().is_empty() {
                break; // trailing whitespace belongs to the last piece
            }
            pieces.push(&content[start..i]);
            start = i;
        }
        prev_ws = ws;
    }
    if start < content.len() {
        pieces.push(&content[start..]);
    }
    pieces
}

/// The content pieces (one per stream chunk and completion token); see `Knobs::chunks`.
fn pieces<'a>(content: &'a str, chunks: Option<usize>) -> Vec<Cow<'a, str>> {
    let words = words(content);
    let Some(n) = chunks.map(|n| n.min(MAX_CHUNKS)) else {
        return words.into_iter().map(Cow::Borrowed).collect();
    };
    if words.is_empty() || n == 0 {
        return Vec::new();
    }
    if n <= words.len() {
        // Group consecutive words into n slices of content, sizes as equal as possible.
        let mut out = Vec::with_capacity(n);
        let mut offset = 0;
        let mut w = 0;
        for g in 0..n {
            let take = words.len() / n + usize::from(g < words.len() % n);
            let len: usize = words[w..w + take].iter().map(|p| p.len()).sum();
            out.push(Cow::Borrowed(&content[offset..offset + len]));
            offset += len;
            w += take;
        }
        return out;
    }
    (0..n)
        .map(|i| {
            let word = words[i % words.len()];
            if i >= words.len() && i % words.len() == 0 {
                // The content starts again: separate it from the previous repetition.
                Cow::Owned(format!(" {}", word.trim_start()))
            } else {
                Cow::Borrowed(word)
            }
        })
        .collect()
}

/// What a chat or completion answers: the pieces after `max_tokens`, and why it stopped.
struct Completion<'a> {
    pieces: Vec<Cow<'a, str>>,
    finish_reason: &'static str,
}

impl<'a> Completion<'a> {
    fn new(knobs: &'a Knobs, max_tokens: Option<u64>) -> Self {
        let content = knobs.content.as_deref().unwrap_or(DEFAULT_CONTENT);
        let mut pieces = pieces(content, knobs.chunks);
        let mut finish_reason = "stop";
        if let Some(max) = max_tokens.and_then(|m| usize::try_from(m).ok())
            && pieces.len() > max
        {
            pieces.truncate(max);
            finish_reason = "length";
        }
        Completion {
            pieces,
            finish_reason,
        }
    }

    fn text(&self) -> String {
        self.pieces.concat()
    }
}

fn usage(prompt: u64, completion: u64, cached: Option<u64>, details: bool) -> Value {
    usage_with_reasoning(prompt, completion, cached, details, 0)
}

/// [`usage`] with `reasoning` more completion tokens, reported as reasoning.
fn usage_with_reasoning(
    prompt: u64,
    completion: u64,
    cached: Option<u64>,
    details: bool,
    reasoning: u64,
) -> Value {
    let completion = completion + reasoning;
    let mut u = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if details || cached.is_some() {
        u["prompt_tokens_details"] =
            json!({"cached_tokens": cached.unwrap_or(0).min(prompt), "audio_tokens": 0});
    }
    if details {
        u["completion_tokens_details"] = json!({
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        });
    }
    u
}

fn sse(event: &Value) -> Bytes {
    let mut s = String::with_capacity(256);
    let _ = write!(s, "data: {event}\n\n");
    Bytes::from(s)
}

/// Words in the text of the messages (string contents and `text` parts), at least 1.
fn chat_prompt_tokens(messages: &[Value]) -> u64 {
    let mut n = 0;
    for m in messages {
        match m.get("content") {
            Some(Value::String(s)) => n += word_count(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(Value::String(t)) = p.get("text") {
                        n += word_count(t);
                    }
                }
            }
            _ => {}
        }
    }
    n.max(1)
}

fn chat(
    shared: &Shared,
    req: &Map<String, Value>,
    deployment: Option<&str>,
    knobs: &Knobs,
) -> Result<Payload, ApiError> {
    let model = model(req, deployment, None)?;
    let messages = match opt_field(req, "messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "[] is too short - 'messages'",
                Some("messages"),
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'messages' must be an array",
                Some("messages"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
            ));
        }
    };
    let n = choice_count(req, 128)?;
    let stream = opt_bool(req, "stream")?.unwrap_or(false);
    let include_usage = include_usage(req)?;
    let max_tokens = match opt_u64(req, "max_completion_tokens")? {
        Some(m) => Some(m),
        None => opt_u64(req, "max_tokens")?,
    };
    let completion = Completion::new(knobs, max_tokens);
    let prompt_tokens = knobs
        .prompt_tokens
        .unwrap_or_else(|| chat_prompt_tokens(messages));
    let usage = usage_with_reasoning(
        prompt_tokens,
        completion.pieces.len() as u64 * n,
        knobs.cached_tokens,
        true,
        knobs.reasoning_tokens.unwrap_or(0),
    );
    let id = shared.next_id("chatcmpl-");
    let created = unix_now();

    if !stream {
        let text = completion.text();
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
                    "logprobs": null,
                    "finish_reason": completion.finish_reason,
                })
            })
            .collect();
        return Ok(Payload::Json(
            StatusCode::OK,
            json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT,
            }),
        ));
    }

    let chunk = |index: u64, delta: Value, finish_reason: Option<&str>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage is asked for.
            c["usage"] = Value::Null;
        }
        sse(&c)
    };
    let mut events = Vec::with_capacity((completion.pieces.len() + 2) * n as usize + 1);
    for i in 0..n {
        events.push(chunk(i, json!({"role": "assistant", "content": ""}), None));
    }
    for piece in &completion.pieces {
        for i in 0..n {
            events.push(chunk(i, json!({ "content": piece }), None));
        }
    }
    for i in 0..n {
        events.push(chunk(i, json!({}), Some(completion.finish_reason)));
    }
    if include_usage {
        events.push(sse(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": [],
            "usage": usage,
        })));
    }
    Ok(Payload::Sse(events))
}

/// The inputs of a completions `prompt` or embeddings `input`: a string, an array of
/// strings, an array of token ids (one input), or an array of token arrays.
fn text_inputs(v: Option<&Value>, field: &str) -> Result<Vec<Input>, ApiError> {
    let bad = || {
        ApiError::invalid(
            format!(
                "'{field}' must be a string, an array of strings, an array of tokens or an array of token arrays"
            ),
            Some(field),
        )
    };
    let tokens = |a: &[Value]| -> Result<Vec<i64>, ApiError> {
        a.iter().map(|t| t.as_i64().ok_or_else(bad)).collect()
    };
    match v {
        None | Some(Value::Null) => Err(ApiError::invalid(
            format!("Missing required parameter: '{field}'."),
            Some(field),
        )),
        Some(Value::String(s)) => Ok(vec![Input::Text(s.clone())]),
        Some(Value::Array(items)) if items.is_empty() => Err(ApiError::invalid(
            format!("'{field}' must not be empty"),
            Some(field),
        )),
        Some(Value::Array(items)) => match &items[0] {
            Value::Number(_) => Ok(vec![Input::Tokens(tokens(items)?)]),
            Value::String(_) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(|s| Input::Text(s.to_owned()))
                        .ok_or_else(bad)
                })
                .collect(),
            Value::Array(_) => items
                .iter()
                .map(|i| match i {
                    Value::Array(a) => Ok(Input::Tokens(tokens(a)?)),
                    _ => Err(bad()),
                })
                .collect(),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

enum Input {
    Text(String),
    Tokens(Vec<i64>),
}

impl Input {
    fn tokens(&self) -> u64 {
        match self {
            Input::Text(s) => word_count(s),
            Input::Tokens(t) => t.len() as u64,
        }
    }

    fn hash(&self) -> u64 {
        match self {
            Input::Text(s) => fnv1a(0xcbf2_9ce4_8422_2325, s.as_bytes()),
            Input::Tokens(t) => t
                .iter()
                .fold(0x8422_2325_cbf2_9ce4, |h, tok| fnv1a(h, &tok.to_le_bytes())),
        }
    }
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn completions(
    shared: &Shared,
    req: &Map<String, Value>,
    deployment: Option<&str>,
    knobs: &Knobs,
) -> Result<Payload, ApiError> {
    let model = model(req, deployment, None)?;
    let prompts = text_inputs(req.get("prompt"), "prompt")?;
    let n = choice_count(req, 128)?;
    let stream = opt_bool(req, "stream")?.unwrap_or(false);
    let include_usage = include_usage(req)?;
    let completion = Completion::new(knobs, opt_u64(req, "max_tokens")?);
    let choices = prompts.len() as u64 * n;
    let prompt_tokens = knobs
        .prompt_tokens
        .unwrap_or_else(|| prompts.iter().map(Input::tokens).sum::<u64>().max(1));
    let usage = usage(
        prompt_tokens,
        completion.pieces.len() as u64 * choices,
        knobs.cached_tokens,
        false,
    );
    let id = shared.next_id("cmpl-");
    let created = unix_now();

    let object = |choices: Value| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        })
    };
    if !stream {
        let text = completion.text();
        let list: Vec<Value> = (0..choices)
            .map(|i| json!({"text": text, "index": i, "logprobs": null, "finish_reason": completion.finish_reason}))
            .collect();
        let mut body = object(Value::Array(list));
        body["usage"] = usage;
        return Ok(Payload::Json(StatusCode::OK, body));
    }
    let chunk = |index: u64, text: &str, finish_reason: Option<&str>| {
        let mut c = object(
            json!([{"text": text, "index": index, "logprobs": null, "finish_reason": finish_reason}]),
        );
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse(&c)
    };
    let mut events = Vec::with_capacity((completion.pieces.len() + 1) * choices as usize + 1);
    for piece in &completion.pieces {
        for i in 0..choices {
            events.push(chunk(i, piece, None));
        }
    }
    for i in 0..choices {
        events.push(chunk(i, "", Some(completion.finish_reason)));
    }
    if include_usage {
        let mut last = object(json!([]));
        last["usage"] = usage;
        events.push(sse(&last));
    }
    Ok(Payload::Sse(events))
}

/// A deterministic unit vector from the input's hash: equal inputs give equal vectors,
/// different inputs (almost surely) different ones, so cache and routing tests can compare.
fn embedding(input: &Input, dims: usize) -> Vec<f32> {
    let seed = input.hash();
    let mut v: Vec<f32> = (0..dims as u64)
        .map(|i| {
            let r = splitmix64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // 24 random bits -> [-1, 1), exactly representable in f32.
            ((r >> 40) as f32 / (1u32 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn embeddings(
    req: &Map<String, Value>,
    deployment: Option<&str>,
    knobs: &Knobs,
) -> Result<Payload, ApiError> {
    let model = model(req, deployment, None)?;
    let inputs = text_inputs(req.get("input"), "input")?;
    let dims = match opt_u64(req, "dimensions")? {
        None => DEFAULT_EMBEDDING_DIMS,
        Some(d) if (1..=MAX_EMBEDDING_DIMS).contains(&d) => d as usize,
        Some(d) => {
            return Err(ApiError::invalid(
                format!(
                    "{d} is not valid for 'dimensions': must be between 1 and {MAX_EMBEDDING_DIMS}"
                ),
                Some("dimensions"),
            ));
        }
    };
    let base64 = match opt_str(req, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'{other}' is not one of ['float', 'base64'] - 'encoding_format'"),
                Some("encoding_format"),
            ));
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let v = embedding(input, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(BASE64.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt_tokens = knobs
        .prompt_tokens
        .unwrap_or_else(|| inputs.iter().map(Input::tokens).sum::<u64>().max(1));
    Ok(Payload::Json(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    ))
}

fn images(
    shared: &Shared,
    req: &Map<String, Value>,
    deployment: Option<&str>,
) -> Result<Payload, ApiError> {
    let model = model(req, deployment, Some("dall-e-2"))?;
    if opt_str(req, "prompt")?.is_none() {
        return Err(ApiError::invalid(
            "Missing required parameter: 'prompt'.",
            Some("prompt"),
        ));
    }
    let n = choice_count(req, 10)?;
    // gpt-image models always answer base64; the DALL-E models default to URLs.
    let b64 = match opt_str(req, "response_format")? {
        Some("b64_json") => true,
        Some("url") => false,
        None => model.starts_with("gpt-image"),
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'{other}' is not one of ['url', 'b64_json'] - 'response_format'"),
                Some("response_format"),
            ));
        }
    };
    let data: Vec<Value> = (0..n)
        .map(|_| {
            if b64 {
                json!({ "b64_json": PNG_1X1_B64 })
            } else {
                json!({ "url": format!("{}/_mock/images/{}.png", shared.origin, shared.next_id("img-")) })
            }
        })
        .collect();
    Ok(Payload::Json(
        StatusCode::OK,
        json!({"created": unix_now(), "data": data}),
    ))
}

fn moderations(
    shared: &Shared,
    req: &Map<String, Value>,
    deployment: Option<&str>,
) -> Result<Payload, ApiError> {
    let model = model(req, deployment, Some("omni-moderation-latest"))?;
    let count = match opt_field(req, "input") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(items)) if !items.is_empty() => items.len(),
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "'input' must not be empty",
                Some("input"),
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'input' must be a string or an array",
                Some("input"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
            ));
        }
    };
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut applied = Map::new();
    for c in MODERATION_CATEGORIES {
        categories.insert((*c).to_owned(), Value::Bool(false));
        scores.insert((*c).to_owned(), json!(1e-6));
        applied.insert((*c).to_owned(), json!(["text"]));
    }
    let result = json!({
        "flagged": false,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    });
    Ok(Payload::Json(
        StatusCode::OK,
        json!({"id": shared.next_id("modr-"), "model": model, "results": vec![result; count]}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    async fn post(mock: &MockUpstream, path: &str, body: Value) -> reqwest::Response {
        client()
            .post(format!("{}{path}", mock.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn post_json(mock: &MockUpstream, path: &str, body: Value) -> Value {
        let resp = post(mock, path, body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        resp.json().await.unwrap()
    }

    /// Splits an SSE body into its `data:` payloads, checking the framing on the way.
    fn sse_events(body: &str) -> Vec<String> {
        assert!(
            body.ends_with("\n\n"),
            "body must end with a blank line: {body:?}"
        );
        body.split_terminator("\n\n")
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                    .to_owned()
            })
            .collect()
    }

    fn chat_body(extra: Value) -> Value {
        let mut b = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi to me"}]});
        if let (Value::Object(b), Value::Object(extra)) = (&mut b, extra) {
            b.extend(extra);
        }
        b
    }

    #[test]
    fn words_keep_the_text() {
        assert_eq!(
            words(DEFAULT_CONTENT),
            ["Hello", " from", " the", " mock", " upstream."]
        );
        assert_eq!(words("  a  b \n"), ["  a", "  b \n"]);
        assert!(words("").is_empty());
        let grouped = pieces("a b c d e", Some(2));
        assert_eq!(grouped, ["a b c", " d e"]);
        let cycled = pieces("a b", Some(5));
        assert_eq!(cycled.concat(), "a b a b a");
        assert_eq!(pieces("a b", Some(0)).len(), 0);
    }

    #[tokio::test]
    async fn chat_json_shape() {
        let mock = MockUpstream::start().await;
        let v = post_json(&mock, "/chat/completions", chat_body(json!({}))).await;
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["object"], "chat.completion");
        assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["choices"].as_array().unwrap().len(), 1);
        let c = &v["choices"][0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(c["message"]["content"], DEFAULT_CONTENT);
        assert_eq!(c["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 4);
        assert_eq!(v["usage"]["completion_tokens"], 5);
        assert_eq!(v["usage"]["total_tokens"], 9);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        // Ids are unique per answer.
        let v2 = post_json(&mock, "/chat/completions", chat_body(json!({}))).await;
        assert_ne!(v["id"], v2["id"]);
    }

    #[tokio::test]
    async fn chat_knobs_n_content_chunks_max_tokens() {
        let mock = MockUpstream::start().await;
        let v = post_json(
            &mock,
            "/chat/completions",
            chat_body(json!({"n": 3, "mock": {"content": "one two three four", "chunks": 2, "prompt_tokens": 7, "cached_tokens": 3}})),
        )
        .await;
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        assert_eq!(choices[2]["index"], 2);
        assert_eq!(choices[1]["message"]["content"], "one two three four");
        assert_eq!(v["usage"]["completion_tokens"], 6);
        assert_eq!(v["usage"]["prompt_tokens"], 7);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 3);

        let v = post_json(
            &mock,
            "/chat/completions",
            chat_body(json!({"max_tokens": 2})),
        )
        .await;
        assert_eq!(v["choices"][0]["message"]["content"], "Hello from");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 2);
    }

    #[tokio::test]
    async fn chat_stream_event_order() {
        let mock = MockUpstream::start().await;
        let resp = post(
            &mock,
            "/chat/completions",
            chat_body(json!({"stream": true})),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert!(
            resp.headers().get("content-length").is_none(),
            "streams are chunked"
        );
        let body = resp.text().await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"));
        let events = sse_events(&body);
        assert_eq!(events.len(), 1 + 5 + 1 + 1);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let id = chunks[0]["id"].clone();
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["id"], id);
            assert_eq!(c["model"], "gpt-4o-mini");
            assert!(c["created"].as_u64().is_some());
            assert!(
                c.get("usage").is_none(),
                "no usage key unless include_usage"
            );
            assert_eq!(c["choices"].as_array().unwrap().len(), 1);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
        let text: String = chunks[1..6]
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(text, DEFAULT_CONTENT);
        assert_eq!(chunks[6]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    }

    #[tokio::test]
    async fn chat_stream_include_usage() {
        let mock = MockUpstream::start().await;
        let body = chat_body(
            json!({"stream": true, "stream_options": {"include_usage": true}, "mock": {"chunks": 3}}),
        );
        let text = post(&mock, "/chat/completions", body)
            .await
            .text()
            .await
            .unwrap();
        let events = sse_events(&text);
        assert_eq!(events.len(), 1 + 3 + 1 + 1 + 1);
        assert_eq!(events[events.len() - 1], "[DONE]");
        let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(last["object"], "chat.completion.chunk");
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 4);
        assert_eq!(last["usage"]["completion_tokens"], 3);
        assert_eq!(last["usage"]["total_tokens"], 7);
        for e in &events[..events.len() - 2] {
            let c: Value = serde_json::from_str(e).unwrap();
            assert_eq!(c["usage"], Value::Null);
            assert!(c.get("usage").is_some());
        }
        let finish: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    }

    #[tokio::test]
    async fn completions_json_and_stream() {
        let mock = MockUpstream::start().await;
        let v = post_json(
            &mock,
            "/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}),
        )
        .await;
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(v["choices"][0]["text"], DEFAULT_CONTENT);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
        );

        let body = json!({"model": "m", "prompt": [[1, 2, 3]], "stream": true, "stream_options": {"include_usage": true}});
        let text = post(&mock, "/completions", body)
            .await
            .text()
            .await
            .unwrap();
        let events = sse_events(&text);
        assert_eq!(events.len(), 5 + 1 + 1 + 1);
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        let joined: String = chunks[..5]
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(joined, DEFAULT_CONTENT);
        assert_eq!(chunks[5]["choices"][0]["text"], "");
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(chunks[6]["usage"]["prompt_tokens"], 3);
        assert_eq!(events[7], "[DONE]");
    }

    #[tokio::test]
    async fn embeddings_float_and_base64() {
        let mock = MockUpstream::start().await;
        let v = post_json(
            &mock,
            "/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hello world"}),
        )
        .await;
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        assert_eq!(v["data"][0]["object"], "embedding");
        assert_eq!(v["data"][0]["index"], 0);
        let floats: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
        assert_eq!(floats.len(), DEFAULT_EMBEDDING_DIMS);
        let norm: f32 = floats.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(v["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));

        // Same input, base64: the same little-endian f32 values.
        let b = post_json(
            &mock,
            "/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["hello world", "other"], "encoding_format": "base64"}),
        )
        .await;
        let bytes = BASE64
            .decode(b["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(decoded, floats);
        assert_eq!(b["data"][1]["index"], 1);
        assert_ne!(b["data"][0]["embedding"], b["data"][1]["embedding"]);

        let d = post_json(
            &mock,
            "/embeddings",
            json!({"model": "e", "input": [[1, 2], [3]], "dimensions": 3}),
        )
        .await;
        assert_eq!(d["data"].as_array().unwrap().len(), 2);
        assert_eq!(d["data"][1]["embedding"].as_array().unwrap().len(), 3);
        assert_eq!(d["usage"]["prompt_tokens"], 3);

        let bad = post(
            &mock,
            "/embeddings",
            json!({"model": "e", "input": {"x": 1}}),
        )
        .await;
        assert_eq!(bad.status(), 400);
    }

    #[tokio::test]
    async fn images_moderations_models() {
        let mock = MockUpstream::start().await;
        let v = post_json(
            &mock,
            "/images/generations",
            json!({"prompt": "a cat", "n": 2, "response_format": "b64_json"}),
        )
        .await;
        assert!(v["created"].as_u64().is_some());
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        let png = BASE64
            .decode(data[0]["b64_json"].as_str().unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let v = post_json(
            &mock,
            "/images/generations",
            json!({"model": "dall-e-3", "prompt": "a cat"}),
        )
        .await;
        let url = v["data"][0]["url"].as_str().unwrap();
        let img = client().get(url).send().await.unwrap();
        assert_eq!(img.headers()["content-type"], "image/png");
        assert_eq!(img.bytes().await.unwrap().as_ref(), png.as_slice());

        let m = post_json(&mock, "/moderations", json!({"input": ["a", "b"]})).await;
        assert!(m["id"].as_str().unwrap().starts_with("modr-"));
        assert_eq!(m["model"], "omni-moderation-latest");
        let results = m["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["flagged"], false);
        assert_eq!(results[0]["categories"]["self-harm/intent"], false);
        assert!(results[0]["category_scores"]["violence"].as_f64().is_some());

        let list: Value = client()
            .get(format!("{}/models", mock.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["object"], "list");
        assert_eq!(list["data"][0]["object"], "model");
        let one: Value = client()
            .get(format!("{}/models/my-model", mock.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            one,
            json!({"id": "my-model", "object": "model", "created": MODEL_CREATED, "owned_by": "mock-upstream"})
        );
    }

    #[tokio::test]
    async fn errors_are_openai_shaped() {
        let mock = MockUpstream::start().await;
        let url = format!("{}/chat/completions", mock.base_url());
        let resp = client().post(&url).body("{not json").send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        for k in ["message", "type", "param", "code"] {
            assert!(e["error"].get(k).is_some(), "missing {k}");
        }
        let resp = client().post(&url).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let resp = post(
            &mock,
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(resp.status(), 400);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["param"],
            "model"
        );
        let resp = post(&mock, "/nope", json!({})).await;
        assert_eq!(resp.status(), 404);
        let resp = client().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 405);
        // A typo in a knob is refused, not ignored.
        let resp = post(
            &mock,
            "/chat/completions",
            chat_body(json!({"mock": {"delay": 5}})),
        )
        .await;
        assert_eq!(resp.status(), 400);
        assert!(resp.text().await.unwrap().contains("delay"));
    }

    #[tokio::test]
    async fn status_error_and_headers_knobs() {
        let mock = MockUpstream::start().await;
        let resp = post(
            &mock,
            "/chat/completions",
            chat_body(
                json!({"stream": true, "mock": {"status": 429, "headers": {"retry-after": 2}}}),
            ),
        )
        .await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        assert_eq!(e["error"]["param"], Value::Null);

        let resp = post(
            &mock,
            "/chat/completions",
            chat_body(json!({"mock": {"status": 500}})),
        )
        .await;
        assert_eq!(resp.status(), 500);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["type"],
            "server_error"
        );

        let custom = json!({"message": "custom", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"});
        let resp = post(
            &mock,
            "/embeddings",
            json!({"mock": {"status": 429, "error": custom}}),
        )
        .await;
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({ "error": custom })
        );
        // The whole body form is sent as is.
        let whole = json!({ "error": custom });
        let resp = post(
            &mock,
            "/embeddings",
            json!({"mock": {"status": 400, "error": whole}}),
        )
        .await;
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.json::<Value>().await.unwrap(), whole);

        let resp = post(
            &mock,
            "/chat/completions",
            chat_body(json!({"mock": {"headers": {"x-extra": "yes"}}})),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-extra"], "yes");
        assert!(
            resp.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
    }

    #[tokio::test]
    async fn drop_after_cuts_the_stream() {
        let mock = MockUpstream::start().await;
        for chunk_delay in [0, 5] {
            let body = chat_body(
                json!({"stream": true, "mock": {"drop_after": 2, "chunk_delay_ms": chunk_delay}}),
            );
            let mut resp = post(&mock, "/chat/completions", body).await;
            assert_eq!(resp.status(), 200);
            let mut received = Vec::new();
            let err = loop {
                match resp.chunk().await {
                    Ok(Some(b)) => received.extend_from_slice(&b),
                    Ok(None) => panic!("stream ended cleanly; expected a cut"),
                    Err(e) => break e,
                }
            };
            assert!(
                err.is_body() || err.is_decode() || err.is_request(),
                "{err:?}"
            );
            let text = String::from_utf8(received).unwrap();
            let events = sse_events(&text);
            assert_eq!(events.len(), 2, "{text}");
            assert!(!text.contains("[DONE]"));
        }
        // Non-stream: the JSON body is cut after N bytes.
        let resp = post(
            &mock,
            "/chat/completions",
            chat_body(json!({"mock": {"drop_after": 10}})),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.is_err());
    }

    #[tokio::test]
    async fn delays_apply() {
        let mock = MockUpstream::start_with(MockOptions {
            latency: Duration::from_millis(50),
            ..Default::default()
        })
        .await;
        let t = Instant::now();
        post_json(
            &mock,
            "/chat/completions",
            chat_body(json!({"mock": {"delay_ms": 50}})),
        )
        .await;
        assert!(t.elapsed() >= Duration::from_millis(100));

        let t = Instant::now();
        let resp = post(
            &mock,
            "/chat/completions",
            chat_body(json!({"stream": true, "mock": {"chunk_delay_ms": 30}})),
        )
        .await;
        let headers_at = t.elapsed();
        let text = resp.text().await.unwrap();
        // 8 events (role, 5 words, finish, [DONE]): 7 gaps.
        assert!(
            t.elapsed() >= headers_at + Duration::from_millis(7 * 30),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(sse_events(&text).len(), 8);
    }

    #[tokio::test]
    async fn records_requests() {
        let mock = MockUpstream::start().await;
        let c = client();
        c.get(format!("{}/models?limit=2", mock.base_url()))
            .header("X-Custom", "A")
            .send()
            .await
            .unwrap();
        post(
            &mock,
            "/chat/completions",
            chat_body(json!({"mock": {"status": 503}})),
        )
        .await;
        c.post(format!("{}/embeddings", mock.base_url()))
            .body("not json")
            .send()
            .await
            .unwrap();

        let recorded = mock.requests();
        assert_eq!(recorded.len(), 3);
        assert_eq!(recorded[0].method, "GET");
        assert_eq!(recorded[0].path, "/v1/models?limit=2");
        assert_eq!(recorded[0].header("x-custom"), Some("A"));
        assert!(
            recorded[0]
                .headers
                .iter()
                .any(|(n, v)| n == "x-custom" && v == "A")
        );
        assert_eq!(recorded[0].body, Value::Null);
        assert_eq!(recorded[1].method, "POST");
        assert_eq!(recorded[1].path, "/v1/chat/completions");
        assert_eq!(recorded[1].body["model"], "gpt-4o-mini");
        assert_eq!(recorded[1].body["mock"]["status"], 503);
        assert_eq!(recorded[2].body, Value::Null);

        let over_http: Vec<RecordedRequest> = c
            .get(format!("http://{}/_mock/requests", mock.addr()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(over_http, recorded, "control endpoints are not recorded");

        let resp = c
            .delete(format!("http://{}/_mock/requests", mock.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert!(mock.requests().is_empty());

        post(&mock, "/moderations", json!({"input": "x"})).await;
        assert_eq!(mock.requests().len(), 1);
        mock.clear();
        assert!(mock.requests().is_empty());

        mock.set_record_limit(Some(1));
        post(&mock, "/moderations", json!({"input": "1"})).await;
        post(&mock, "/moderations", json!({"input": "2"})).await;
        let kept = mock.requests();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].body["input"], "2");
    }

    #[tokio::test]
    async fn azure_paths() {
        let mock = MockUpstream::start().await;
        let url = format!(
            "http://{}/openai/deployments/my-dep/chat/completions?api-version=2024-10-21",
            mock.addr()
        );
        let v: Value = client()
            .post(url)
            .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["model"], "my-dep");
        assert_eq!(
            mock.requests()[0].path,
            "/openai/deployments/my-dep/chat/completions?api-version=2024-10-21"
        );
    }

    #[tokio::test]
    async fn drop_shuts_down() {
        let mock = MockUpstream::start().await;
        let addr = mock.addr();
        drop(mock);
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the listener should close after drop");
    }
}
