//! Target `request`: a client's body for each data-plane endpoint, checked and read once
//! (`openai::parse`, what `api.rs` runs before anything else reads it).
//!
//! Input: one byte picks the endpoint, the rest is the body. Properties: a parsed request
//! has a non-empty `model` and `stream` only where streaming exists, both as the body says;
//! the body as it goes upstream (`Payload::write`, the model replaced by itself) is the
//! same JSON as the client's, keys in the same order, and parses back to the same request;
//! a refusal is a 400 `invalid_request_error` whose `param`, when set, is non-empty.
//!
//! "The same" is exact, floats included: this target found serde_json's default float
//! parser one ulp off for a 47-digit number, so the workspace turns on its
//! `float_roundtrip` feature.

use http::StatusCode;
use serde_json::Value;
use tollgate_gateway::meter::usage::Prompt;
use tollgate_gateway::openai::{Endpoint, Parsed, parse};

const ENDPOINTS: [Endpoint; 5] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::ImagesGenerations,
    Endpoint::Moderations,
];

pub fn run(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    match parse(endpoint, bytes::Bytes::copy_from_slice(body)) {
        Ok(parsed) => check(endpoint, body, &parsed),
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.kind, "invalid_request_error");
            assert!(e.param.as_deref().is_none_or(|p| !p.is_empty()));
            let shown = e.body();
            assert!(shown["error"]["message"].is_string());
        }
    }
}

fn check(endpoint: Endpoint, body: &[u8], parsed: &Parsed) {
    assert!(!parsed.model.is_empty());
    let Ok(Value::Object(original)) = serde_json::from_slice::<Value>(body) else {
        panic!("a body that parsed is not a JSON object");
    };
    assert_eq!(
        original.get("model").and_then(Value::as_str),
        Some(parsed.model.as_str())
    );
    let stream = original
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    assert_eq!(parsed.params.stream, stream);
    if stream {
        assert!(matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        ));
    }
    let sent = parsed.payload.write(&parsed.model, false);
    let Ok(Value::Object(upstream)) = serde_json::from_slice::<Value>(&sent) else {
        panic!("the body for the upstream is not a JSON object");
    };
    assert!(
        same(&Value::Object(upstream), &Value::Object(original)),
        "the body changed on its way upstream"
    );
    match parse(endpoint, bytes::Bytes::from(sent)) {
        Ok(again) => {
            assert_eq!(again.model, parsed.model);
            assert_eq!(again.params.stream, parsed.params.stream);
            assert_eq!(again.params.max_output, parsed.params.max_output);
        }
        Err(e) => panic!("the upstream body is refused: {}", e.message),
    }
    // What the quota and the meter read of the prompt, without a tokenizer.
    let _ = Prompt::of(endpoint, &parsed.payload);
    let _ = Prompt::bound(endpoint, &parsed.payload);
}

/// Equal, keys in the same order (what goes upstream keeps the client's order).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    /// The input that found the float round trip (kept as a seed too).
    #[test]
    fn a_long_float_survives_the_round_trip_exactly() {
        let mut input = vec![1]; // completions
        input.extend_from_slice(
            br#"{"model": "m", "prompt": [[44444444444444444444444444444444444444444444440, 2, 3], [47777777774]], "n": 22}"#,
        );
        super::run(&input);
    }
}
