//! OpenAI's wire format for local engines: request fields in, JSON or SSE answers out.
//!
//! The request was already parsed and type-checked by `openai::Request::parse`; here
//! only what a local model reads is picked out and range-checked, each error a 400 naming
//! its field. A full queue is a 429 (`rate_limit_exceeded`) without `retry-after`: the
//! queue drains in milliseconds, and a `retry-after` would make the router skip this
//! deployment for whole seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use http::header;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::Engine;
use super::embed::Embedder;
use super::generate::{Event, Finish, Generator, Job, Sampler};
use super::template::{Message, content_text};
use crate::error::ApiError;
use crate::openai::{Endpoint, Request};

/// Choices one request may ask for (`n`); each runs in turn on the model's thread.
const MAX_N: u64 = 16;
/// `max_tokens` of `/v1/completions` when the client sets none (OpenAI's default).
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// Answers `request` with `engine`; `model` is the name echoed in the answer.
pub async fn serve(engine: &Engine, request: &Request, model: &str) -> Response {
    let result = match (engine, request.endpoint) {
        (Engine::Embed(e), Endpoint::Embeddings) => embeddings(e, &request.body, model).await,
        (Engine::Generate(g), Endpoint::ChatCompletions | Endpoint::Completions) => {
            generation(g, request, model).await
        }
        (Engine::Embed(_), endpoint) => Err(crate::error::endpoint_not_supported(
            model,
            endpoint,
            "this local model is an embedding model (only /v1/embeddings).",
        )),
        (Engine::Generate(_), endpoint) => Err(crate::error::endpoint_not_supported(
            model,
            endpoint,
            "this local model generates text (only /v1/chat/completions and /v1/completions).",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn busy(model: &str) -> ApiError {
    crate::error::model_busy(model)
}

fn failed() -> ApiError {
    crate::error::model_failed()
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Texts of `input`/`prompt`: a string or an array of strings. Token arrays are refused:
/// their ids belong to another tokenizer than the local model's.
fn texts(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(bad(
                    &format!("{field}[{i}]"),
                    format!(
                        "'{field}[{i}]' must be a string: local models take text, not token ids."
                    ),
                )),
            })
            .collect(),
        _ => Err(bad(
            field,
            format!("'{field}' must be a string or a non-empty array of strings."),
        )),
    }
}

async fn embeddings(
    embedder: &Embedder,
    body: &Map<String, Value>,
    model: &str,
) -> Result<Response, ApiError> {
    let inputs = texts(body, "input")?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        _ => {
            return Err(bad(
                "encoding_format",
                "'encoding_format' must be 'float' or 'base64'.",
            ));
        }
    };
    if let Some(d) = body.get("dimensions").filter(|v| !v.is_null())
        && d.as_u64() != Some(embedder.dimensions as u64)
    {
        return Err(bad(
            "dimensions",
            format!(
                "This model only produces {} dimensions.",
                embedder.dimensions
            ),
        ));
    }
    let rx = embedder.submit(inputs).map_err(|_| busy(model))?;
    let done = rx.await.map_err(|_| failed())?.map_err(|e| {
        tracing::error!(error = %e, "local embedding failed");
        failed()
    })?;
    let data: Vec<Value> = done
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens},
    }))
    .into_response())
}

/// The fields of a generation request, checked.
struct Params {
    prompts: Vec<Vec<u32>>,
    n: usize,
    max_tokens: usize,
    sampler: Sampler,
    stop: Vec<String>,
    include_usage: bool,
}

fn number(body: &Map<String, Value>, field: &str) -> Option<f64> {
    body.get(field).and_then(Value::as_f64)
}

fn params(g: &Generator, request: &Request) -> Result<Params, ApiError> {
    let body = &request.body;
    let model = g.model();
    let chat = request.endpoint == Endpoint::ChatCompletions;
    let prompts = if chat {
        let mut messages = Vec::new();
        for (i, m) in body
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            let content = content_text(m.get("content").unwrap_or(&Value::Null)).map_err(|e| {
                bad(
                    &format!("messages[{i}].content"),
                    format!("'messages[{i}].content' {e}"),
                )
            })?;
            messages.push(Message {
                role: role.to_owned(),
                content,
            });
        }
        vec![
            model
                .chat_prompt(&messages)
                .map_err(|e| bad("messages", format!("Cannot build the prompt: {e}")))?,
        ]
    } else {
        texts(body, "prompt")?
            .iter()
            .map(|p| model.completion_prompt(p))
            .collect::<Result<_, _>>()
            .map_err(|e| bad("prompt", format!("Cannot tokenize the prompt: {e}")))?
    };
    let context = model.context_length();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest >= context {
        let field = if chat { "messages" } else { "prompt" };
        return Err(bad(
            field,
            format!(
                "This model's maximum context length is {context} tokens; the prompt has {longest}."
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let max_field = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find(|f| body.get(*f).is_some_and(|v| !v.is_null()));
    let max_tokens = match max_field {
        Some(f) => match body.get(f).and_then(Value::as_u64) {
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => return Err(bad(f, format!("'{f}' must be at least 1."))),
        },
        None if chat => context,
        None => COMPLETIONS_DEFAULT_MAX_TOKENS,
    };
    let n = match body.get("n").filter(|v| !v.is_null()) {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_N).contains(&n) => n as usize,
            _ => return Err(bad("n", format!("'n' must be between 1 and {MAX_N}."))),
        },
    };
    let temperature = number(body, "temperature").unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad("temperature", "'temperature' must be between 0 and 2."));
    }
    let top_p = number(body, "top_p").unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad(
            "top_p",
            "'top_p' must be greater than 0 and at most 1.",
        ));
    }
    let seed = match body.get("seed").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => match (v.as_i64(), v.as_u64()) {
            (Some(s), _) => Some(s as u64),
            (None, Some(s)) => Some(s),
            _ => return Err(bad("seed", "'seed' must be an integer.")),
        },
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items))
            if items.len() <= 4
                && items
                    .iter()
                    .all(|s| s.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        }
        Some(_) => {
            return Err(bad(
                "stop",
                "'stop' must be a string or an array of up to 4 non-empty strings.",
            ));
        }
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Params {
        prompts,
        n,
        max_tokens,
        sampler: Sampler {
            temperature,
            top_p,
            seed,
        },
        stop,
        include_usage,
    })
}

async fn generation(g: &Generator, request: &Request, model: &str) -> Result<Response, ApiError> {
    let p = params(g, request)?;
    let prompt_tokens: usize = p.prompts.iter().map(Vec::len).sum();
    let choices = p.prompts.len() * p.n;
    // Room for a burst of deltas; the model's thread waits when a slow client lags.
    let (events, rx) = mpsc::channel(64);
    g.submit(Job {
        prompts: p.prompts,
        n: p.n,
        max_tokens: p.max_tokens,
        sampler: p.sampler,
        stop: p.stop,
        events,
    })
    .map_err(|_| busy(model))?;
    let chat = request.endpoint == Endpoint::ChatCompletions;
    let id = format!(
        "{}-{}",
        if chat { "chatcmpl" } else { "cmpl" },
        uuid::Uuid::new_v4().simple()
    );
    let answer = Answer {
        id,
        chat,
        model: model.to_owned(),
        created: now(),
        choices,
        prompt_tokens,
    };
    if request.stream {
        Ok(answer.stream(rx, p.include_usage))
    } else {
        answer.collect(rx).await
    }
}

/// What the answer's chunks or object share.
struct Answer {
    id: String,
    chat: bool,
    model: String,
    created: u64,
    choices: usize,
    prompt_tokens: usize,
}

impl Answer {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    async fn collect(self, mut rx: mpsc::Receiver<Event>) -> Result<Response, ApiError> {
        let mut texts = vec![String::new(); self.choices];
        let mut finishes: Vec<Option<Finish>> = vec![None; self.choices];
        let mut completion_tokens = 0;
        let mut done = 0;
        while done < self.choices {
            match rx.recv().await {
                Some(Event::Delta { choice, text }) => {
                    if let Some(t) = texts.get_mut(choice) {
                        t.push_str(&text);
                    }
                }
                Some(Event::Finished {
                    choice,
                    finish,
                    completion_tokens: n,
                }) => {
                    if let Some(f) = finishes.get_mut(choice) {
                        *f = Some(finish);
                    }
                    completion_tokens += n;
                    done += 1;
                }
                Some(Event::Failed(e)) => {
                    tracing::error!(error = %e, "local generation failed");
                    return Err(failed());
                }
                None => return Err(failed()),
            }
        }
        let choices: Vec<Value> = texts
            .into_iter()
            .zip(finishes)
            .enumerate()
            .map(|(index, (text, finish))| {
                let finish = finish.unwrap_or(Finish::Stop).as_str();
                if self.chat {
                    json!({"index": index, "message": {"role": "assistant", "content": text},
                           "logprobs": null, "finish_reason": finish})
                } else {
                    json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
                }
            })
            .collect();
        Ok(axum::Json(json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(completion_tokens),
        }))
        .into_response())
    }

    /// One SSE chunk with a single choice.
    fn chunk(&self, index: usize, delta: Value, finish: Option<Finish>) -> Bytes {
        let finish = finish.map(Finish::as_str);
        let choice = if self.chat {
            json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            let text = delta.get("content").cloned().unwrap_or(json!(""));
            json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
        };
        self.frame(json!([choice]), None)
    }

    fn frame(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            chunk["usage"] = u;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn stream(self, rx: mpsc::Receiver<Event>, include_usage: bool) -> Response {
        // Chat streams open each choice with the assistant's role, as OpenAI's do.
        let opening: Vec<Bytes> = if self.chat {
            (0..self.choices)
                .map(|i| self.chunk(i, json!({"role": "assistant", "content": ""}), None))
                .collect()
        } else {
            Vec::new()
        };
        struct State {
            answer: Answer,
            rx: mpsc::Receiver<Event>,
            done: usize,
            completion_tokens: usize,
            include_usage: bool,
            finished: bool,
        }
        let state = State {
            answer: self,
            rx,
            done: 0,
            completion_tokens: 0,
            include_usage,
            finished: false,
        };
        let events = futures_util::stream::unfold(state, |mut s| async move {
            if s.finished {
                return None;
            }
            let bytes = match s.rx.recv().await {
                Some(Event::Delta { choice, text }) => {
                    s.answer.chunk(choice, json!({"content": text}), None)
                }
                Some(Event::Finished {
                    choice,
                    finish,
                    completion_tokens,
                }) => {
                    s.done += 1;
                    s.completion_tokens += completion_tokens;
                    let mut out = s.answer.chunk(choice, json!({}), Some(finish)).to_vec();
                    if s.done == s.answer.choices {
                        if s.include_usage {
                            let usage = s.answer.usage(s.completion_tokens);
                            out.extend_from_slice(&s.answer.frame(json!([]), Some(usage)));
                        }
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        s.finished = true;
                    }
                    Bytes::from(out)
                }
                Some(Event::Failed(_)) | None => {
                    // Ends without [DONE], so clients see the answer is incomplete.
                    s.finished = true;
                    let e = failed();
                    Bytes::from(format!("data: {}\n\n", e.body()))
                }
            };
            Some((Ok::<_, std::convert::Infallible>(bytes), s))
        });
        let opening =
            futures_util::stream::iter(opening.into_iter().map(Ok::<_, std::convert::Infallible>));
        let body = Body::from_stream(futures_util::StreamExt::chain(opening, events));
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        response
    }
}
