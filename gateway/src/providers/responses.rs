//! Native Responses API answers (`openai` and `azure` deployments, see
//! `dialect::responses`): relayed as they came. The gateway only reads them: a whole
//! response's `usage` (its view, as for chat), and in a stream each event's delivered
//! text (`response.output_text.delta`, `response.function_call_arguments.delta`,
//! `response.refusal.delta`) and the final response's `usage`
//! (`response.completed`, `.incomplete`, `.failed`), which it gives the meter as the
//! events' views. A stream that ends before one of those (or `error`) failed.

use std::collections::VecDeque;

use http::header;
use serde::Deserialize;
use serde_json::Value;

use super::relay::{self, Convert, Deadlines, Guard};
use crate::error::UpstreamError;
use crate::exchange::view::{AnswerView, ChunkView};
use crate::exchange::{Event, Events, Reply, StreamError};
use crate::sse::Frame;

/// The largest Responses event accepted (`response.completed` repeats the whole answer).
const MAX_EVENT: usize = 16 << 20;

/// Relays a Responses API answer; errors as for chat ([`relay::failed`]).
pub(crate) async fn relay(
    upstream: reqwest::Response,
    stream: bool,
    deadlines: &Deadlines,
    guard: &Guard,
) -> Result<Reply, UpstreamError> {
    let status = upstream.status();
    if !status.is_success() {
        return relay::failed(upstream, deadlines, guard).await;
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
        let max = guard.max_body().min(MAX_EVENT);
        let source = relay::events(upstream, deadlines, max, Watch::default());
        return Ok(Reply::events(Events::new(source)));
    }
    let bytes = relay::read_all(upstream, deadlines.body, guard.max_body()).await?;
    let view =
        AnswerView::parse(&bytes).ok_or(UpstreamError::Malformed("an answer that is not JSON"))?;
    Ok(Reply::json(status, bytes, Some(view)))
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    response: Option<Finished>,
}

#[derive(Deserialize)]
struct Finished {
    #[serde(default)]
    usage: Option<Value>,
}

/// See the module docs.
#[derive(Default)]
struct Watch {
    finished: bool,
}

impl Convert for Watch {
    fn frame(&mut self, frame: Frame, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if self.finished {
            return Ok(());
        }
        if frame.data.trim_ascii() == b"[DONE]" {
            self.finished = true;
            return Ok(());
        }
        let data: Data = serde_json::from_slice(&frame.data)
            .map_err(|_| StreamError("the upstream sent an event that is not JSON".into()))?;
        let view = match data.kind.as_str() {
            "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.refusal.delta" => match data.delta {
                Some(Value::String(text)) => Some(ChunkView::text(text)),
                _ => None,
            },
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.finished = true;
                data.response
                    .and_then(|r| r.usage)
                    .filter(Value::is_object)
                    .map(ChunkView::usage_of)
            }
            "error" => {
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
                "the upstream's stream ended before response.completed".into(),
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

    #[test]
    fn events_pass_with_text_and_final_usage_views() {
        let mut w = Watch::default();
        let mut out = VecDeque::new();
        w.frame(
            Frame::named(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":3}"#,
            ),
            &mut out,
        )
        .unwrap();
        assert!(w.end(&mut out).is_err());
        w.frame(
            Frame::named(
                "response.completed",
                r#"{"type":"response.completed","response":{"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":3}}}"#,
            ),
            &mut out,
        )
        .unwrap();
        assert!(w.end(&mut out).is_ok());
        let mut text = String::new();
        out[0].view().unwrap().push_text(&mut text);
        assert_eq!(text, "Hi");
        let u = out[1].view().unwrap().usage().unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_tokens),
            (7, 3, 2)
        );
    }
}
