//! Local inference on candle: `provider: local` and `tollgate worker`.
//!
//! A model folder in Hugging Face's layout (`config.json`, `tokenizer.json`,
//! `*.safetensors`) is loaded once, at start, into an [`Engine`]:
//! - BERT-family models ([`embed`]) serve `/v1/embeddings` (mean pooling over the
//!   attention mask, then L2 normalisation, as sentence-transformers does);
//! - Llama-family models (Llama 2/3, Qwen 2/2.5; [`decoder`], [`generate`]) serve
//!   `/v1/chat/completions` and `/v1/completions`, with tools ([`tools`]) and JSON output
//!   ([`grammar`]) through constrained decoding.
//!
//! Inference runs on a dedicated thread per model, never on the async runtime: a forward
//! pass holds a core for milliseconds to seconds, which would stall every other request
//! sharing that runtime worker. Requests reach the thread through a bounded queue; when it
//! is full the deployment answers 429 at once instead of queueing without bound, so the
//! router moves the request to the model's next deployment (e.g. a hosted provider). The
//! generation thread batches the decode steps of all running requests, and never waits on
//! a client: each request's output waits in its own bounded buffer.
//!
//! [`serve`] turns a parsed OpenAI request into the OpenAI answer (JSON or SSE); the
//! gateway's [`Local`] provider and the standalone worker ([`worker`]) both use it.

pub mod bert;
pub mod decoder;
pub mod embed;
pub mod generate;
pub mod grammar;
mod http;
pub mod sampling;
pub mod template;
pub mod tools;
pub mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::base::ConfigError;
use crate::error::{ApiError, UpstreamError};
use crate::openai::Request;

pub use http::serve;

/// Requests waiting for a model's thread when `queue_size` is not configured.
pub const DEFAULT_QUEUE_SIZE: usize = 64;

pub use generate::DEFAULT_STREAM_BUFFER;

/// Streams stopped because their client fell `stream_buffer` events behind: one counter
/// per process, like the engines' registry (`None` only if the name were invalid).
fn streams_cut_counter() -> Option<&'static prometheus::IntCounter> {
    static COUNTER: OnceLock<Option<prometheus::IntCounter>> = OnceLock::new();
    COUNTER
        .get_or_init(|| {
            prometheus::IntCounter::new(
                "tollgate_local_streams_cut_total",
                "Local-model requests stopped because their client fell stream_buffer events behind",
            )
            .ok()
        })
        .as_ref()
}

/// Counts one stream cut for a slow client.
pub(crate) fn count_stream_cut() {
    if let Some(c) = streams_cut_counter() {
        c.inc();
    }
}

/// Streams cut so far in this process.
pub fn streams_cut() -> u64 {
    streams_cut_counter().map_or(0, prometheus::IntCounter::get)
}

/// Adds the local-engine metrics to `registry` (`/metrics`).
pub fn register_metrics(registry: &prometheus::Registry) -> prometheus::Result<()> {
    match streams_cut_counter() {
        Some(c) => registry.register(Box::new(c.clone())),
        None => Ok(()),
    }
}

/// A loaded model with its inference thread.
pub enum Engine {
    Embed(embed::Embedder),
    Generate(generate::Generator),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Embed(_) => "Engine::Embed",
            Self::Generate(_) => "Engine::Generate",
        })
    }
}

/// What kind of model a folder holds, from `config.json`'s `model_type`/`architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Bert,
    Llama,
    Qwen2,
}

/// Why a model folder cannot be served. The message is for the operator (config errors,
/// logs), never for API clients.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

impl LoadError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The device models run on: CPU, or the first CUDA GPU when built with `cuda` and one is
/// present.
pub fn device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::cuda_if_available(0) {
        return d;
    }
    candle_core::Device::Cpu
}

/// Reads `config.json` and decides which engine serves the folder.
pub fn model_kind(dir: &Path) -> Result<(ModelKind, Value), LoadError> {
    let config = read_json(&dir.join("config.json"))?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let architectures: Vec<String> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let is = |name: &str| model_type == name || architectures.iter().any(|a| a.starts_with(name));
    if is("bert") {
        Ok((ModelKind::Bert, config))
    } else if is("llama") {
        Ok((ModelKind::Llama, config))
    } else if is("qwen2") && !is("qwen2_moe") && !is("qwen2moe") {
        Ok((ModelKind::Qwen2, config))
    } else {
        Err(LoadError::new(format!(
            "config.json: unsupported model_type '{model_type}' (supported: bert for embeddings, llama and qwen2 for chat and completions)"
        )))
    }
}

/// Loads the model in `dir` and starts its inference thread.
pub fn load(dir: &Path, queue_size: usize) -> Result<Engine, LoadError> {
    load_with(dir, queue_size, DEFAULT_STREAM_BUFFER)
}

/// [`load`] with a per-request output buffer of `stream_buffer` events.
pub fn load_with(dir: &Path, queue_size: usize, stream_buffer: usize) -> Result<Engine, LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::new(format!(
            "'{}' is not a folder",
            dir.display()
        )));
    }
    let (kind, config) = model_kind(dir)?;
    let queue_size = queue_size.max(1);
    Ok(match kind {
        ModelKind::Bert => Engine::Embed(embed::Embedder::start(
            embed::BertEmbedder::load(dir, &config)?,
            queue_size,
        )?),
        ModelKind::Llama | ModelKind::Qwen2 => Engine::Generate(generate::Generator::start(
            generate::LlamaModel::load(dir, &config)?,
            queue_size,
            stream_buffer,
        )?),
    })
}

pub(crate) fn read_json(path: &Path) -> Result<Value, LoadError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::new(format!("cannot read {name}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| LoadError::new(format!("{name}: invalid JSON: {e}")))
}

/// The `*.safetensors` files of a folder, sorted (sharded checkpoints load together).
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LoadError::new(format!("cannot list the folder: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::new("no *.safetensors weights in the folder"));
    }
    Ok(files)
}

/// The weights of `files`, read into memory (memory-mapping needs `unsafe`, which the
/// workspace forbids) and converted to f32.
pub(crate) fn weights(
    files: &[PathBuf],
    device: &candle_core::Device,
) -> Result<candle_nn::VarBuilder<'static>, LoadError> {
    let mut tensors = HashMap::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let loaded = candle_core::safetensors::load(file, device)
            .map_err(|e| LoadError::new(format!("{name}: {e}")))?;
        tensors.extend(loaded);
    }
    Ok(candle_nn::VarBuilder::from_tensors(
        tensors,
        candle_core::DType::F32,
        device,
    ))
}

/// Engines loaded at start by [`preload`], by canonical folder, for
/// `ProviderSet::build` (which cannot fail) to pick up. Deployments of the same folder
/// share one engine and one queue.
fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Engine>>> {
    static ENGINES: OnceLock<Mutex<HashMap<PathBuf, Arc<Engine>>>> = OnceLock::new();
    ENGINES.get_or_init(Default::default)
}

fn canonical(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// Loads every `provider: local` model of the config before the routes are built, so a
/// bad folder stops the start with an error naming the field (exit 64).
///
/// `deployments`: each `provider: local` deployment's [`LocalModel`].
pub fn preload<'a>(
    deployments: impl IntoIterator<Item = LocalModel<'a>>,
) -> Result<(), ConfigError> {
    {
        for LocalModel {
            at,
            model,
            path,
            queue_size,
            stream_buffer,
        } in deployments
        {
            let field = format!("{at}.path");
            let Some(path) = path else {
                return Err(ConfigError::new(field, "missing"));
            };
            let key = canonical(path);
            let mut engines = registry().lock().unwrap_or_else(|e| e.into_inner());
            if engines.contains_key(&key) {
                continue;
            }
            let queue = queue_size.map_or(DEFAULT_QUEUE_SIZE, |q| q as usize);
            let buffer = stream_buffer.map_or(DEFAULT_STREAM_BUFFER, |b| b as usize);
            let started = std::time::Instant::now();
            let engine = load_with(&key, queue, buffer)
                .map_err(|e| ConfigError::new(field.clone(), e.to_string()))?;
            tracing::info!(
                model = %model,
                path = %key.display(),
                engine = ?engine,
                ms = started.elapsed().as_millis() as u64,
                "local model loaded"
            );
            engines.insert(key, Arc::new(engine));
        }
    }
    Ok(())
}

/// A `provider: local` deployment as [`preload`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct LocalModel<'a> {
    /// Its config path (`models[0].deployments[1]`), for errors.
    pub at: &'a str,
    /// The model's client-facing name, for the log.
    pub model: &'a str,
    /// `path`: the model folder.
    pub path: Option<&'a str>,
    /// `queue_size`.
    pub queue_size: Option<u32>,
    /// `stream_buffer`.
    pub stream_buffer: Option<u32>,
}

/// `provider: local`: answers from an engine in this process.
#[derive(Debug)]
pub struct Local {
    /// `None` only if [`preload`] did not run for this deployment; answers 503 then.
    engine: Option<Arc<Engine>>,
}

impl Local {
    /// The engine [`preload`] loaded from `path`.
    pub fn new(path: Option<&str>) -> Self {
        let engine = path.and_then(|p| {
            registry()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&canonical(p))
                .cloned()
        });
        Self { engine }
    }

    pub async fn send(
        &self,
        request: &Request,
        upstream_model: &str,
    ) -> Result<Response, UpstreamError> {
        let Some(engine) = &self.engine else {
            return Ok(ApiError::unavailable("The local model is not loaded.").into_response());
        };
        Ok(serve(engine, request, upstream_model).await)
    }
}
