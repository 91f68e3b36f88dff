//! Target `gemini`: the translation between OpenAI's chat completions and embeddings and
//! Google's Gemini API (`providers/gemini/`, also what `vertex` runs for Gemini models), on
//! every input it takes from outside.
//!
//! Input: one byte picks the mode, the rest is its input.
//! - 0, request: a client's chat body → `generateContent`'s body: `contents` is an array
//!   of turns with role `user` or `model`, each with parts; or a 400 naming the field.
//! - 1, answer: an upstream body → `chat.completion`: known finish reasons, tool call
//!   `arguments` that are JSON text, `total_tokens` = prompt + completion, cached tokens
//!   within the prompt.
//! - 2, error: two bytes pick a 4xx/5xx status, the rest is Google's error body → OpenAI's
//!   error shape.
//! - 3, stream: a cut list and an upstream SSE stream ([`crate::cut`]) → the client's
//!   stream: `data:` events ending in exactly one `[DONE]` or error event (or, when the
//!   bytes are not SSE, the events before that failure, with no end among them), the same
//!   however the upstream's bytes were cut.
//! - 4, embeddings: an upstream body → vectors (no panic; a predict answer's token count is
//!   the sum of its instances').

use http::StatusCode;
use serde_json::Value;
use tollgate_gateway::fuzzing::gemini;

const FINISH_REASONS: [&str; 4] = ["stop", "length", "tool_calls", "content_filter"];

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => request(rest),
        1 => answer(rest),
        2 => error(rest),
        3 => stream(rest, mode & 0x80 != 0),
        _ => {
            let _ = gemini::embeddings(rest);
        }
    }
}

fn request(body: &[u8]) {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    match gemini::translate_request(&body) {
        Ok(out) => {
            let Some(Value::Array(contents)) = out.get("contents") else {
                panic!("no contents: {out:?}");
            };
            for turn in contents {
                assert!(turn["role"] == "user" || turn["role"] == "model", "{turn}");
                assert!(
                    turn["parts"].as_array().is_some_and(|p| !p.is_empty()),
                    "{turn}"
                );
            }
            assert!(serde_json::to_vec(&out).is_ok());
        }
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.param.as_deref().is_some_and(|p| !p.is_empty()));
        }
    }
}

fn answer(body: &[u8]) {
    let Some(out) = gemini::translate_response(body) else {
        return;
    };
    assert_eq!(out["object"], "chat.completion");
    for choice in out["choices"].as_array().into_iter().flatten() {
        assert!(FINISH_REASONS.iter().any(|r| choice["finish_reason"] == *r));
        for call in choice["message"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
            assert!(
                serde_json::from_str::<Value>(arguments).is_ok(),
                "{arguments}"
            );
        }
    }
    let usage = &out["usage"];
    let (Some(prompt), Some(completion), Some(total)) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
        usage["total_tokens"].as_u64(),
    ) else {
        panic!("usage without token counts: {usage}");
    };
    assert_eq!(total, prompt.saturating_add(completion));
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64() <= Some(prompt));
}

fn error(data: &[u8]) {
    let (code, body) = match data {
        [a, b, body @ ..] => (400 + u16::from_be_bytes([*a, *b]) % 200, body),
        _ => (500, data),
    };
    let Ok(status) = StatusCode::from_u16(code) else {
        return;
    };
    let out = gemini::translate_error(status, body);
    assert!(out["error"]["message"].is_string());
    assert!(out["error"]["type"].is_string());
}

fn stream(data: &[u8], include_usage: bool) {
    let (chunks, payload) = crate::cut(data);
    let whole = crate::bedrock::outcome(gemini::translate_stream(&[payload], include_usage));
    let cut = crate::bedrock::outcome(gemini::translate_stream(&chunks, include_usage));
    assert_eq!(whole, cut, "cut at {chunks:?}");
}
