//! The bridge: client dialects on deployments that do not speak them.
//!
//! Every provider is built behind a [`Bridge`] that knows which dialects it speaks itself
//! ([`Native`]). A call in chat's dialect, or in one the provider speaks, passes straight
//! through; a call in Anthropic's (`/v1/messages`) or the Responses API's is translated to
//! chat completions (`dialect::anthropic::bridge`, `dialect::responses::bridge`), sent to
//! the provider as a chat call, and its answer (whole, streamed, or an error) comes back
//! in the client's dialect.
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
use crate::dialect::responses::bridge as responses;
use crate::error::UpstreamError;
use crate::exchange::view::AnswerView;
use crate::exchange::{Answer, Call, Endpoint, Event, Events, Params, Payload, Reply, StreamError};

/// The client dialects a provider speaks itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Native {
    /// Anthropic's Messages API (`anthropic`).
    pub messages: bool,
    /// OpenAI's Responses API (`openai`, `azure`).
    pub responses: bool,
}

/// A provider behind the bridge; see the module docs.
#[derive(Debug)]
pub struct Bridge {
    inner: Arc<dyn Provider>,
    native: Native,
}

impl Bridge {
    pub fn new(inner: Arc<dyn Provider>, native: Native) -> Self {
        Self { inner, native }
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
                Endpoint::Messages if !self.native.messages => {
                    self.messages(call, upstream_model).await
                }
                Endpoint::CountTokens if !self.native.messages => Ok(count_tokens(call).await),
                Endpoint::Responses if !self.native.responses => {
                    self.responses(call, upstream_model).await
                }
                _ => self.inner.send(call, upstream_model).await,
            }
        })
    }
}

/// A call of another dialect as a chat call with `chat` as its body (same request id,
/// principal and model).
fn chat_call(call: &Call, chat: serde_json::Map<String, Value>) -> Result<Call, UpstreamError> {
    let bytes = serde_json::to_vec(&Value::Object(chat))
        .map_err(|_| UpstreamError::Internal("serialize the translated request"))?;
    let payload = Payload::parse(Bytes::from(bytes))
        .map_err(|_| UpstreamError::Internal("the translated request"))?;
    Ok(Call {
        endpoint: Endpoint::ChatCompletions,
        params: Params {
            stream: call.params.stream,
            // The translation asks a stream for its usage (both dialects always report it).
            include_usage: call.params.stream,
            max_output: call.params.max_output,
            temperature: call.params.temperature,
            ..Params::default()
        },
        payload: Arc::new(payload),
        ask_usage: false,
        ..call.clone()
    })
}

impl Bridge {
    /// A Responses API call as a chat call, and its answer back.
    async fn responses(&self, call: &Call, upstream_model: &str) -> Result<Reply, UpstreamError> {
        let request = call.payload.to_map();
        let chat = match responses::chat_request(&request) {
            Ok(chat) => chat,
            Err(e) => return Ok(Reply::error(e)),
        };
        let echo = responses::Echo::new(&call.model, &request);
        let chat_call = chat_call(call, chat)?;
        let Reply {
            status,
            answer,
            facts,
        } = self.inner.send(&chat_call, upstream_model).await?;
        let answer = match answer {
            Answer::Json { bytes, .. } if status.is_success() => {
                let (response, usage) = responses::response_answer(&bytes, &echo).ok_or(
                    UpstreamError::Malformed("an answer that is not a chat completion"),
                )?;
                Answer::Json {
                    bytes: Bytes::from(response.to_string()),
                    view: Some(AnswerView::of_usage("response", Some(usage))),
                }
            }
            Answer::Events(events) => {
                let mut bridge = responses::StreamBridge::new(echo);
                Answer::Events(Events::new(translate_with(
                    events.into_stream(),
                    move |event, out| {
                        bridge.event(event, out)?;
                        Ok(bridge.finished())
                    },
                )))
            }
            other => other,
        };
        let mut facts = facts;
        facts.bridged = true;
        Ok(Reply {
            status,
            answer,
            facts,
        })
    }

    /// A Messages API call as a chat call, and its answer back.
    async fn messages(&self, call: &Call, upstream_model: &str) -> Result<Reply, UpstreamError> {
        let chat = match messages::chat_request(&call.payload.to_map()) {
            Ok(chat) => chat,
            Err(e) => return Ok(Reply::error(e)),
        };
        let chat_call = chat_call(call, chat)?;
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
            Answer::Events(events) => {
                let mut bridge = StreamBridge::new(&call.model);
                Answer::Events(Events::new(translate_with(
                    events.into_stream(),
                    move |event, out| {
                        bridge.event(event, out)?;
                        Ok(bridge.finished())
                    },
                )))
            }
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

/// A chat stream → another dialect's events: `step` turns each chat event into the
/// client's and says whether the client's stream is whole (then nothing more is read).
/// A failure of the chat stream, or its end before the translation finished,
/// fails this one (the client sees its dialect's error event).
fn translate_with<F>(
    source: BoxStream<'static, Result<Event, StreamError>>,
    step: F,
) -> impl Stream<Item = Result<Event, StreamError>> + Send + 'static
where
    F: FnMut(&Event, &mut VecDeque<Event>) -> Result<bool, StreamError> + Send + 'static,
{
    struct State<F> {
        source: BoxStream<'static, Result<Event, StreamError>>,
        step: F,
        out: VecDeque<Event>,
        /// The client's stream is whole: nothing more is read.
        done: bool,
        ended: bool,
    }
    let state = State {
        source,
        step,
        out: VecDeque::new(),
        done: false,
        ended: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.out.pop_front() {
                return Some((Ok(event), s));
            }
            if s.ended || s.done {
                return None;
            }
            let failed = match s.source.next().await {
                Some(Ok(event)) => match (s.step)(&event, &mut s.out) {
                    Ok(done) => {
                        s.done = done;
                        None
                    }
                    Err(e) => Some(e),
                },
                Some(Err(e)) => Some(e),
                None => Some(StreamError("the stream ended before [DONE]".into())),
            };
            if let Some(e) = failed {
                s.ended = true;
                return Some((Err(e), s));
            }
        }
    })
}
