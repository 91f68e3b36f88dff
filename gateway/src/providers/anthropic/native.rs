//! Calls in Anthropic's own dialect (`/v1/messages`, `/v1/messages/count_tokens`, see
//! `dialect::anthropic`): forwarded as they came, with only `model` replaced, the
//! deployment's key and `anthropic-version`, and the client's `anthropic-beta`. The answer
//! comes back as Anthropic sent it (errors too, their key redacted); the gateway only
//! reads it: a message's `usage`, and in a stream each event's delivered text and the
//! usage of `message_start` and `message_delta` (cumulative, merged), which it gives the
//! meter as the events' views.

use std::collections::VecDeque;

use bytes::Bytes;
use http::{HeaderValue, header};
use serde::Deserialize;

use super::translate::Usage;
use crate::dialect::anthropic as dialect;
use crate::error::UpstreamError;
use crate::exchange::view::{AnswerView, ChunkView};
use crate::exchange::{Call, Endpoint, Event, Events, Reply, StreamError};
use crate::providers::relay::{self, Convert};
use crate::sse::Frame;

/// Where and how a native call goes.
pub(super) struct Native<'a> {
    pub client: &'a reqwest::Client,
    pub messages_url: &'a str,
    pub count_tokens_url: &'a str,
    pub api_key: Option<&'a HeaderValue>,
    pub timeouts: &'a relay::Timeouts,
    pub guard: &'a relay::Guard,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

/// Forwards one Messages API call; see the module docs.
pub(super) async fn forward(
    to: &Native<'_>,
    call: &Call,
    upstream_model: &str,
) -> Result<Reply, UpstreamError> {
    let url = if call.endpoint == Endpoint::CountTokens {
        to.count_tokens_url
    } else {
        to.messages_url
    };
    let deadlines = to.timeouts.start();
    let stream = call.params.stream;
    let mut builder = to
        .client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("anthropic-version", super::API_VERSION)
        .body(call.payload.write(upstream_model, false));
    if let Some(key) = to.api_key {
        builder = builder.header("x-api-key", key.clone());
    }
    if let Some(beta) = &call.params.anthropic_beta {
        builder = builder.header("anthropic-beta", beta.clone());
    }
    if stream {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    }
    let upstream = relay::send(builder, deadlines.headers).await?;
    let status = upstream.status();
    if !status.is_success() {
        return relay::failed_with(upstream, &deadlines, to.guard, |status, _, body| {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(v) if v.get("type").and_then(|t| t.as_str()) == Some("error") => v,
                _ => {
                    let shown = String::from_utf8_lossy(&body[..body.len().min(512)]);
                    dialect::error_body(
                        dialect::error_type(status),
                        &format!(
                            "The upstream answered HTTP {}: {}",
                            status.as_u16(),
                            shown.trim()
                        ),
                    )
                }
            }
        })
        .await;
    }
    if stream {
        if upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| !t.as_bytes().starts_with(b"text/event-stream"))
        {
            return Err(UpstreamError::Malformed(
                "a stream answered without an event stream",
            ));
        }
        let max = to.guard.max_body().min(super::sse_limit());
        let source = relay::events(upstream, &deadlines, max, Watch::default());
        return Ok(Reply::events(Events::new(source)));
    }
    let bytes = relay::read_all(upstream, deadlines.body, to.guard.max_body()).await?;
    let view = answer_view(call.endpoint, &bytes)?;
    Ok(Reply::json(status, bytes, Some(view)))
}

/// The view of a native answer: a message's usage in the meter's terms (a count of
/// tokens has none: it is free).
fn answer_view(endpoint: Endpoint, bytes: &Bytes) -> Result<AnswerView, UpstreamError> {
    let answer: WithUsage = serde_json::from_slice(bytes)
        .map_err(|_| UpstreamError::Malformed("an answer that is not JSON"))?;
    if endpoint == Endpoint::CountTokens {
        return Ok(AnswerView::of_usage("count_tokens", None));
    }
    Ok(AnswerView::of_usage(
        "message",
        answer.usage.map(Usage::to_openai),
    ))
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: Option<WithUsage>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
}

/// Relays Anthropic's events as they are, each with the view the observers read.
#[derive(Default)]
struct Watch {
    usage: Usage,
    /// `message_stop` or `error` went out: the stream is whole.
    finished: bool,
}

impl Convert for Watch {
    fn frame(&mut self, frame: Frame, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if self.finished {
            return Ok(());
        }
        let data: Data = serde_json::from_slice(&frame.data)
            .map_err(|_| StreamError("the upstream sent an event that is not JSON".into()))?;
        let view = match data.kind.as_str() {
            "message_start" => {
                if let Some(usage) = data.message.and_then(|m| m.usage) {
                    self.usage.merge(usage);
                }
                None
            }
            "content_block_delta" => data
                .delta
                .and_then(|d| d.text.or(d.partial_json).or(d.thinking))
                .map(ChunkView::text),
            "message_delta" => {
                if let Some(usage) = data.usage {
                    self.usage.merge(usage);
                }
                Some(ChunkView::usage_of(self.usage.to_openai()))
            }
            "message_stop" | "error" => {
                self.finished = true;
                None
            }
            _ => None,
        };
        let mut event = Event::from_frame(frame);
        event.set_view(view);
        out.push_back(event);
        Ok(())
    }

    fn end(&mut self, _out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if self.finished {
            Ok(())
        } else {
            Err(StreamError(
                "the upstream's stream ended before message_stop".into(),
            ))
        }
    }

    fn finished(&self) -> bool {
        self.finished
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &'static str, data: &str) -> Frame {
        Frame::named(name, data.to_owned())
    }

    #[test]
    fn events_pass_as_they_are_with_text_and_merged_usage_views() {
        let mut w = Watch::default();
        let mut out = VecDeque::new();
        let frames = [
            frame(
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":10,"cache_read_input_tokens":4,"cache_creation_input_tokens":2,"output_tokens":1}}}"#,
            ),
            frame(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            frame("ping", r#"{"type":"ping"}"#),
            frame(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
            ),
        ];
        for f in frames {
            w.frame(f, &mut out).unwrap();
        }
        assert!(w.end(&mut out).is_err(), "no message_stop yet");
        w.frame(
            frame("message_stop", r#"{"type":"message_stop"}"#),
            &mut out,
        )
        .unwrap();
        assert!(w.end(&mut out).is_ok());
        assert_eq!(out.len(), 5);
        assert_eq!(out[1].name(), Some(&b"content_block_delta"[..]));
        let mut text = String::new();
        out[1].view().unwrap().push_text(&mut text);
        assert_eq!(text, "Hi");
        assert!(out[0].view().is_none(), "no usage before message_delta");
        let usage = out[3].view().unwrap().usage().unwrap();
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
            (16, 7, 4)
        );
        assert_eq!(out[3].encode(), frame("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#).encode());
        assert!(
            w.frame(Frame::data("not json"), &mut VecDeque::new())
                .is_ok(),
            "nothing is read after the end"
        );
    }

    #[test]
    fn a_garbled_event_fails_the_stream() {
        let mut w = Watch::default();
        assert!(w.frame(Frame::data("nope"), &mut VecDeque::new()).is_err());
    }
}
