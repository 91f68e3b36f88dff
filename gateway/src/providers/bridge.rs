//! The bridge: client dialects on deployments that do not speak them.
//!
//! Every provider but `anthropic` is built behind a [`Bridge`]. A call in OpenAI's
//! dialect passes straight through; a call in Anthropic's (`/v1/messages`) is translated
//! to chat completions (`dialect::anthropic::bridge`), sent to the provider as a chat
//! call, and its answer (whole, streamed, or an error) comes back in Anthropic's dialect.
//! `count_tokens` is answered here with the gateway's tokenizer (no upstream call: chat
//! has no such endpoint).
//!
//! The provider below sees an ordinary chat call (the same request id, principal and
//! model), so its own translation, deadlines and stream checks apply unchanged; the
//! layers above see a Messages reply with views that carry the chat answer's usage and
//! text, so metering, limits and the ledger work as for chat.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};

use super::Provider;
use crate::dialect::anthropic::bridge::{self as messages, StreamBridge};
use crate::error::UpstreamError;
use crate::exchange::view::AnswerView;
use crate::exchange::{Answer, Call, Endpoint, Event, Events, Params, Payload, Reply, StreamError};

/// A provider behind the bridge; see the module docs.
#[derive(Debug)]
pub struct Bridge {
    inner: Arc<dyn Provider>,
}

impl Bridge {
    pub fn new(inner: Arc<dyn Provider>) -> Self {
        Self { inner }
    }
}

impl Provider for Bridge {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(async move {
            match call.endpoint {
                Endpoint::Messages => self.messages(call, upstream_model).await,
                Endpoint::CountTokens => Ok(count_tokens(call).await),
                _ => self.inner.send(call, upstream_model).await,
            }
        })
    }
}

impl Bridge {
    /// A Messages API call as a chat call, and its answer back.
    async fn messages(&self, call: &Call, upstream_model: &str) -> Result<Reply, UpstreamError> {
        let chat = match messages::chat_request(&call.payload.to_map()) {
            Ok(chat) => chat,
            Err(e) => return Ok(Reply::error(e)),
        };
        let bytes = serde_json::to_vec(&Value::Object(chat))
            .map_err(|_| UpstreamError::Internal("serialize the translated request"))?;
        let payload = Payload::parse(Bytes::from(bytes))
            .map_err(|_| UpstreamError::Internal("the translated request"))?;
        let chat_call = Call {
            endpoint: Endpoint::ChatCompletions,
            params: Params {
                stream: call.params.stream,
                // The translation asks a stream for its usage (Anthropic always sends it).
                include_usage: call.params.stream,
                max_output: call.params.max_output,
                temperature: call.params.temperature,
                ..Params::default()
            },
            payload: Arc::new(payload),
            ask_usage: false,
            ..call.clone()
        };
        let Reply {
            status,
            answer,
            facts,
        } = self.inner.send(&chat_call, upstream_model).await?;
        let answer = match answer {
            Answer::Json { bytes, .. } if status.is_success() => {
                let (message, usage) = messages::message_answer(&bytes, &call.model).ok_or(
                    UpstreamError::Malformed("an answer that is not a chat completion"),
                )?;
                Answer::Json {
                    bytes: Bytes::from(message.to_string()),
                    view: Some(AnswerView::of_usage("message", usage)),
                }
            }
            Answer::Events(events) => Answer::Events(Events::new(translate_stream(
                events.into_stream(),
                StreamBridge::new(&call.model),
            ))),
            // Errors stay as they are: the edge gives them Anthropic's shape.
            other => other,
        };
        Ok(Reply {
            status,
            answer,
            facts,
        })
    }
}

/// `count_tokens` with the gateway's tokenizer (off the async threads: a long prompt is
/// CPU work).
async fn count_tokens(call: &Call) -> Reply {
    let payload = call.payload.clone();
    let model = call.model.clone();
    let counted = tokio::task::spawn_blocking(move || {
        crate::meter::usage::Prompt::of(Endpoint::CountTokens, &payload).count(&model)
    })
    .await;
    match counted {
        Ok(n) => Reply::json(
            StatusCode::OK,
            Bytes::from(json!({"input_tokens": n}).to_string()),
            Some(AnswerView::of_usage("count_tokens", None)),
        ),
        Err(_) => Reply::error(crate::error::ApiError::internal()),
    }
}

/// A chat stream → Anthropic's events (see [`StreamBridge`]); a failure of the chat
/// stream, or its end before `[DONE]`, fails this one (the client sees Anthropic's
/// `error` event).
fn translate_stream(
    source: BoxStream<'static, Result<Event, StreamError>>,
    bridge: StreamBridge,
) -> impl Stream<Item = Result<Event, StreamError>> + Send + 'static {
    struct State {
        source: BoxStream<'static, Result<Event, StreamError>>,
        bridge: StreamBridge,
        out: VecDeque<Event>,
        ended: bool,
    }
    let state = State {
        source,
        bridge,
        out: VecDeque::new(),
        ended: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.out.pop_front() {
                return Some((Ok(event), s));
            }
            if s.ended || s.bridge.finished() {
                return None;
            }
            let failed = match s.source.next().await {
                Some(Ok(event)) => s.bridge.event(&event, &mut s.out).err(),
                Some(Err(e)) => Some(e),
                None => s.bridge.end().err(),
            };
            if let Some(e) = failed {
                s.ended = true;
                return Some((Err(e), s));
            }
        }
    })
}
