//! `tollgate worker --model DIR`: one local model as a standalone OpenAI-compatible server,
//! so a machine with a GPU (or spare CPUs) can host models that gateways route to with
//! `provider: openai` and `base_url: http://worker:8090/v1`.
//!
//! Same engine and wire format as `provider: local`. No keys, limits or metering: those
//! stay with the gateway in front; bind it to a private address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{Engine, LoadError, serve};
use crate::openai::{Endpoint, Request};

/// Request bodies above this are refused (413), as the gateway's default `max_body_mb`.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Worker {
    engine: Arc<Engine>,
    /// The id in `/v1/models`: `--name`, or the model folder's name.
    name: Arc<str>,
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("--model: {0}")]
    Load(#[from] LoadError),
    #[error("--listen: {0}")]
    Listen(String),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

impl WorkerError {
    /// 64 for bad arguments (as for a bad config), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Load(_) | Self::Listen(_) => 64,
            Self::Serve(_) => 1,
        }
    }
}

/// The worker's routes, for `run` and for tests.
pub fn router(engine: Arc<Engine>, name: &str) -> axum::Router {
    let state = Worker {
        engine,
        name: Arc::from(name),
    };
    axum::Router::new()
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .fallback(|| async { crate::error::unknown_url() })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Loads the model, binds `listen` and serves until Ctrl-C or SIGTERM.
pub async fn run(
    model_dir: &Path,
    listen: &str,
    name: Option<String>,
    queue_size: usize,
    stream_buffer: usize,
) -> Result<(), WorkerError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| WorkerError::Listen(format!("'{listen}' is not an address: {e}")))?;
    let name = name.unwrap_or_else(|| {
        model_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "local".to_owned())
    });
    let dir = model_dir.to_owned();
    let engine =
        tokio::task::spawn_blocking(move || super::load_with(&dir, queue_size, stream_buffer))
            .await
            .map_err(|e| LoadError::new(format!("loading failed: {e}")))??;
    let kind = match engine {
        Engine::Embed(_) => "embeddings",
        Engine::Generate(_) => "chat and completions",
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| WorkerError::Listen(format!("cannot bind {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| WorkerError::Listen(e.to_string()))?;
    println!("tollgate worker: serving '{name}' ({kind}) on http://{bound}/v1");
    let app = router(Arc::new(engine), &name);
    // The gateway's own listener: the same header timeout, head limit (431) and drain.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::listener::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    crate::listener::serve(listener, app, None, stop_rx)
        .await
        .map_err(WorkerError::Serve)
}

/// The worker's own counters (Prometheus text): no tenant data, like `/healthz`.
async fn metrics() -> Response {
    use prometheus::Encoder;
    let registry = prometheus::Registry::new();
    if let Err(e) = super::register_metrics(&registry) {
        tracing::warn!(error = %e, "worker metrics");
    }
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode(&registry.gather(), &mut out) {
        Ok(()) => (
            [(http::header::CONTENT_TYPE, encoder.format_type().to_owned())],
            out,
        )
            .into_response(),
        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn models(State(w): State<Worker>) -> Response {
    axum::Json(json!({"object": "list", "data": [
        {"id": &*w.name, "object": "model", "created": 0, "owned_by": "tollgate"}
    ]}))
    .into_response()
}

async fn answer(w: Worker, endpoint: Endpoint, body: Bytes) -> Response {
    match Request::parse(endpoint, &body) {
        // The answer names the model the client asked for, as the gateway expects back.
        Ok(request) => serve(&w.engine, &request, &request.model).await,
        Err(e) => e.into_response(),
    }
}

async fn embeddings(State(w): State<Worker>, body: Bytes) -> Response {
    answer(w, Endpoint::Embeddings, body).await
}

async fn chat(State(w): State<Worker>, body: Bytes) -> Response {
    answer(w, Endpoint::ChatCompletions, body).await
}

async fn completions(State(w): State<Worker>, body: Bytes) -> Response {
    answer(w, Endpoint::Completions, body).await
}
