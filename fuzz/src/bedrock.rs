//! Target `bedrock`: the translation between OpenAI's chat completions and Bedrock's
//! Converse API (`providers/bedrock/`), and the AWS event-stream decoding of its streams.
//!
//! Input: one byte picks the mode, the rest is its input.
//! - 0, request: a client's chat body → the Converse body: messages alternate user and
//!   assistant turns with content; or a 400 naming the field.
//! - 1, answer: an upstream body → `chat.completion` (one choice, known finish reason,
//!   `total_tokens` = prompt + completion).
//! - 2, error: two bytes pick a 4xx/5xx status, one byte an AWS error type, the rest is the
//!   body → OpenAI's error shape.
//! - 3, frames: the rest describes event-stream messages (a kind byte picking the event or
//!   exception type, a length byte, that many payload bytes), encoded with real CRCs and cut
//!   ([`crate::cut`]) → the client's stream: `data:` events ending in exactly one `[DONE]`
//!   or error event (or a failure, with nothing after an end), the same however cut.
//! - 4, raw: arbitrary bytes as an event stream: no panic, the same however cut.

use http::StatusCode;
use serde_json::Value;
use tollgate_gateway::fuzzing::bedrock;

const EVENTS: [&str; 7] = [
    "messageStart",
    "contentBlockStart",
    "contentBlockDelta",
    "contentBlockStop",
    "messageStop",
    "metadata",
    "somethingNew",
];
const ERROR_TYPES: [&str; 6] = [
    "ValidationException",
    "ThrottlingException",
    "AccessDeniedException",
    "ServiceUnavailableException",
    "ModelErrorException",
    "SomethingNewException",
];

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => request(rest),
        1 => answer(rest),
        2 => error(rest),
        3 => frames(rest, mode & 0x80 != 0),
        _ => raw(rest),
    }
}

fn request(body: &[u8]) {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    match bedrock::translate_request(&body) {
        Ok(out) => {
            let Some(Value::Array(messages)) = out.get("messages") else {
                panic!("no messages: {out:?}");
            };
            for pair in messages.windows(2) {
                assert_ne!(
                    pair[0]["role"], pair[1]["role"],
                    "turns of one role in a row"
                );
            }
            for m in messages {
                assert!(
                    m["content"].as_array().is_some_and(|c| !c.is_empty()),
                    "{m}"
                );
            }
        }
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.param.as_deref().is_some_and(|p| !p.is_empty()));
        }
    }
}

fn answer(body: &[u8]) {
    let Some(out) = bedrock::translate_response(body) else {
        return;
    };
    assert_eq!(out["choices"].as_array().map_or(0, Vec::len), 1);
    let usage = &out["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
}

fn error(data: &[u8]) {
    let (code, kind, body) = match data {
        [a, b, k, body @ ..] => (
            400 + u16::from_be_bytes([*a, *b]) % 200,
            Some(ERROR_TYPES[usize::from(*k) % ERROR_TYPES.len()]),
            body,
        ),
        _ => (500, None, data),
    };
    let Ok(status) = StatusCode::from_u16(code) else {
        return;
    };
    let out = bedrock::translate_error(status, kind, body);
    assert!(out["error"]["message"].is_string());
    assert!(out["error"]["type"].is_string());
}

/// The client's events (`id` and `created` removed: they are made fresh per stream), or
/// the events before a failure (which then hold no end: no `[DONE]`, nothing after an
/// error event). `Ok` streams are checked by [`crate::anthropic::events`].
pub(crate) fn outcome(result: Result<Vec<bytes::Bytes>, Vec<bytes::Bytes>>) -> (bool, Vec<Value>) {
    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
            o.remove("created");
        }
        v
    };
    match result {
        Ok(body) => (
            true,
            crate::anthropic::events(&body)
                .into_iter()
                .map(strip)
                .collect(),
        ),
        Err(body) => {
            let text = body.concat();
            let text = String::from_utf8_lossy(&text);
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            let mut out = Vec::new();
            for (i, e) in events.iter().enumerate() {
                assert!(!e.contains("[DONE]"), "[DONE] before a failure");
                if e.contains("\"error\"") {
                    assert_eq!(i + 1, events.len(), "an event after an error");
                }
                let data = e.strip_prefix("data: ").unwrap_or(e);
                out.push(
                    serde_json::from_str::<Value>(data)
                        .map_or_else(|_| Value::String((*e).to_owned()), strip),
                );
            }
            (false, out)
        }
    }
}

fn frames(data: &[u8], include_usage: bool) {
    let mut blob = Vec::new();
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        let frame = if kind % 8 == 7 {
            bedrock::encode_frame(
                &[
                    (":message-type", "exception"),
                    (":exception-type", "throttlingException"),
                ],
                payload,
            )
        } else {
            let event = EVENTS[usize::from(*kind % 8) % EVENTS.len()];
            bedrock::encode_frame(
                &[
                    (":message-type", "event"),
                    (":event-type", event),
                    (":content-type", "application/json"),
                ],
                payload,
            )
        };
        blob.extend_from_slice(&frame);
        rest = next;
    }
    // Cut positions from the start of the input, over the encoded stream.
    let mut cut_input = data.iter().take(9).copied().collect::<Vec<u8>>();
    cut_input.extend_from_slice(&blob);
    let (chunks, payload) = crate::cut(&cut_input);
    let whole = outcome(bedrock::translate_stream(&[payload], include_usage));
    let cut = outcome(bedrock::translate_stream(&chunks, include_usage));
    assert_eq!(whole, cut);
}

fn raw(data: &[u8]) {
    let (chunks, payload) = crate::cut(data);
    let whole = outcome(bedrock::translate_stream(&[payload], false));
    let cut = outcome(bedrock::translate_stream(&chunks, false));
    assert_eq!(whole, cut);
}
