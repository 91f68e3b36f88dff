//! Target `request`: a client's body for each data-plane endpoint into the typed request
//! (`openai::Request::parse`, what `api.rs` runs before anything else reads it).
//!
//! Input: one byte picks the endpoint, the rest is the body. Properties: a parsed request
//! has a non-empty `model` and `stream` only where streaming exists, both as the body says;
//! the body re-serialised (what goes upstream) parses back to the same request; a refusal
//! is a 400 `invalid_request_error` whose `param`, when set, is non-empty.
//!
//! "The same" is exact, floats included: this target found serde_json's default float
//! parser one ulp off for a 47-digit number, so the workspace turns on its
//! `float_roundtrip` feature.

use http::StatusCode;
use serde_json::Value;
use tollgate_gateway::meter::usage::Prompt;
use tollgate_gateway::openai::{Endpoint, Request};

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
    match Request::parse(endpoint, body) {
        Ok(request) => check(endpoint, &request),
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.kind, "invalid_request_error");
            assert!(e.param.as_deref().is_none_or(|p| !p.is_empty()));
            let shown = e.body();
            assert!(shown["error"]["message"].is_string());
        }
    }
}

fn check(endpoint: Endpoint, request: &Request) {
    assert_eq!(request.endpoint, endpoint);
    assert!(!request.model.is_empty());
    assert_eq!(
        request.body.get("model").and_then(Value::as_str),
        Some(request.model.as_str())
    );
    let stream = request
        .body
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    assert_eq!(request.stream, stream);
    if stream {
        assert!(matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        ));
    }
    let Ok(sent) = serde_json::to_vec(&request.body) else {
        panic!("a parsed body does not serialise");
    };
    match Request::parse(endpoint, &sent) {
        Ok(again) => {
            assert_eq!(again.model, request.model);
            assert_eq!(again.stream, request.stream);
            assert!(
                same(
                    &Value::Object(again.body),
                    &Value::Object(request.body.clone())
                ),
                "the body changed in a round trip"
            );
        }
        Err(e) => panic!("the re-serialised body is refused: {}", e.message),
    }
    // The meter copies the prompt text of every request it passes.
    let _ = Prompt::of(request);
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
