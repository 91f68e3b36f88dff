//! OpenAI's request bodies: checked and read once, at the edge.
//!
//! [`parse`] splits the body into its fields once ([`Payload`]), checks the types of the
//! fields the gateway reads (a wrong type is a 400 naming the field, `messages[0].role`),
//! and reads the typed [`Params`] the layers decide on. The body itself goes upstream as
//! it came: unknown fields such as `tools`, `response_format`, `logprobs` or image parts
//! pass through byte for byte.
//!
//! [`Request`] is the same body as a JSON tree, for the providers that translate it into
//! another API (Anthropic) or run it themselves (local models).

use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
pub use crate::exchange::Endpoint;
use crate::exchange::{Call, Params, Payload, PayloadError, without_position};

/// A checked request body and what the layers read from it.
#[derive(Debug)]
pub struct Parsed {
    /// The client-facing model name.
    pub model: String,
    pub params: Params,
    pub payload: Payload,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct MessageView {
    role: String,
}

#[derive(Deserialize)]
struct StreamOptionsView {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Parses and checks a request body for `endpoint`.
///
/// `model` is required on every endpoint (also moderations, where OpenAI has a default)
/// because routing needs it.
pub fn parse(endpoint: Endpoint, bytes: Bytes) -> Result<Parsed, ApiError> {
    let payload = split(bytes)?;
    parse_payload(endpoint, payload)
}

/// Splits a body into its fields: a 400 when it is not a JSON object.
pub(crate) fn split(bytes: Bytes) -> Result<Payload, ApiError> {
    Payload::parse(bytes).map_err(|e| match e {
        PayloadError::Syntax(message) => ApiError::invalid_request(
            format!(
                "We could not parse the JSON body of your request ({message}). The body must be a JSON object."
            ),
            None,
        ),
        PayloadError::NotAnObject => {
            ApiError::invalid_request("The request body must be a JSON object.", None)
        }
    })
}

fn parse_payload(endpoint: Endpoint, payload: Payload) -> Result<Parsed, ApiError> {
    let mut params = Params::default();
    let mut max_tokens = None;
    let mut max_completion_tokens = None;
    // Fields in the order the client wrote them: the first wrong one is reported.
    for (key, raw) in payload.iter() {
        match (key, endpoint) {
            ("model", _) => {
                typed::<String>(key, raw)?;
            }
            ("messages", Endpoint::ChatCompletions) => {
                typed::<Vec<MessageView>>(key, raw)?;
            }
            ("prompt", Endpoint::ImagesGenerations) | ("input", Endpoint::AudioSpeech) => {
                typed::<String>(key, raw)?;
            }
            ("stream", _) => params.stream = typed::<Option<bool>>(key, raw)?.unwrap_or(false),
            ("stream_options", Endpoint::ChatCompletions | Endpoint::Completions) => {
                params.include_usage = typed::<Option<StreamOptionsView>>(key, raw)?
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false);
            }
            ("max_tokens", Endpoint::ChatCompletions | Endpoint::Completions) => {
                max_tokens = typed::<Option<u64>>(key, raw)?;
            }
            ("max_completion_tokens", Endpoint::ChatCompletions) => {
                max_completion_tokens = typed::<Option<u64>>(key, raw)?;
            }
            (
                "n",
                Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::ImagesGenerations,
            ) => params.n = typed::<Option<u32>>(key, raw)?.map(u64::from),
            ("temperature", Endpoint::ChatCompletions | Endpoint::Completions) => {
                params.temperature = typed::<Option<f64>>(key, raw)?;
            }
            ("top_p", Endpoint::ChatCompletions | Endpoint::Completions) => {
                typed::<Option<f64>>(key, raw)?;
            }
            ("seed", Endpoint::ChatCompletions | Endpoint::Completions) => {
                params.seed = typed::<Option<i64>>(key, raw)?.is_some();
            }
            ("dimensions", Endpoint::Embeddings) => {
                typed::<Option<u32>>(key, raw)?;
            }
            ("encoding_format", Endpoint::Embeddings) => {
                typed::<Option<String>>(key, raw)?;
            }
            _ => {}
        }
    }
    params.max_output = max_completion_tokens.or(max_tokens);
    let required: &[&str] = match endpoint {
        Endpoint::ChatCompletions => &["model", "messages"],
        Endpoint::Completions => &["model", "prompt"],
        Endpoint::Embeddings | Endpoint::Moderations => &["model", "input"],
        Endpoint::ImagesGenerations => &["model", "prompt"],
        Endpoint::AudioSpeech => &["model", "input"],
        // Anthropic's dialect is checked by `dialect::anthropic`.
        Endpoint::Messages | Endpoint::CountTokens => &["model", "messages"],
        // The Responses API is checked by `dialect::responses`.
        Endpoint::Responses => &["model", "input"],
        Endpoint::Files
        | Endpoint::ResponseObject
        | Endpoint::FineTuning
        | Endpoint::Batches
        | Endpoint::AudioTranscriptions
        | Endpoint::AudioTranslations => &[],
    };
    for field in required {
        if payload.raw(field).is_none() {
            return Err(ApiError::invalid_request(
                format!("Missing required parameter: '{field}'."),
                Some(field),
            ));
        }
    }
    match endpoint {
        Endpoint::ChatCompletions
            if payload
                .raw("messages")
                .is_some_and(|m| m.starts_with(b"[") && is_empty_array(m)) =>
        {
            return Err(ApiError::invalid_request(
                "'messages' must contain at least one message.",
                Some("messages"),
            ));
        }
        Endpoint::Embeddings | Endpoint::Moderations => check_input(payload.raw("input"))?,
        _ => {}
    }
    let model = match payload.field::<String>("model") {
        Some(Ok(m)) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::invalid_request(
                "'model' must be a non-empty string.",
                Some("model"),
            ));
        }
    };
    if params.stream && !endpoint.can_stream() {
        return Err(ApiError::invalid_request(
            "Streaming is not supported on this endpoint.",
            Some("stream"),
        ));
    }
    Ok(Parsed {
        model,
        params,
        payload,
    })
}

fn is_empty_array(raw: &[u8]) -> bool {
    raw[1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b']')
}

/// `input` of embeddings and moderations: a string or a non-empty array.
fn check_input(input: Option<&[u8]>) -> Result<(), ApiError> {
    let input = input.unwrap_or_default();
    match input.first() {
        Some(b'"') => Ok(()),
        Some(b'[') if !is_empty_array(input) => Ok(()),
        Some(b'[') => Err(ApiError::invalid_request(
            "'input' must not be empty.",
            Some("input"),
        )),
        _ => Err(ApiError::invalid_request(
            "'input' must be a string or an array.",
            Some("input"),
        )),
    }
}

/// Deserializes one field, turning serde's error into a 400 naming the field.
pub(crate) fn typed<T: DeserializeOwned>(field: &str, raw: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            field.to_owned()
        } else if inner.starts_with('[') {
            format!("{field}{inner}")
        } else {
            format!("{field}.{inner}")
        };
        let message = without_position(e.inner());
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let param = format!("{path}.{missing}");
            return ApiError::invalid_request(
                format!("Missing required parameter: '{param}'."),
                Some(&param),
            );
        }
        ApiError::invalid_request(
            format!("Invalid value for '{path}': {message}."),
            Some(&path),
        )
    })
}

/// A request body as a JSON tree, for providers that translate or run it.
#[derive(Debug, Clone)]
pub struct Request {
    pub endpoint: Endpoint,
    /// The client-facing model name.
    pub model: String,
    pub stream: bool,
    /// The whole body.
    pub body: Map<String, Value>,
}

impl Request {
    /// The tree of a call's body (one parse of it), with `stream_options.include_usage`
    /// set when the meter asks for usage.
    pub fn of(call: &Call) -> Self {
        let mut body = call.payload.to_map();
        if call.ask_usage {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(options) = options {
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
        Self {
            endpoint: call.endpoint,
            model: call.model.to_string(),
            stream: call.params.stream,
            body,
        }
    }

    /// Checks a body ([`parse`]) and makes its tree.
    pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<Self, ApiError> {
        let parsed = parse(endpoint, Bytes::copy_from_slice(bytes))?;
        Ok(Self {
            endpoint,
            model: parsed.model,
            stream: parsed.params.stream,
            body: parsed.payload.to_map(),
        })
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
/// A call for tests: `body` checked as a client's, by tenant `t1` key `k1` on plan
/// `default`, request id `req-1`.
#[cfg(test)]
#[allow(clippy::panic, reason = "tests")]
pub fn test_call(endpoint: Endpoint, body: Value) -> Call {
    let parsed = parse(endpoint, Bytes::from(body.to_string()))
        .unwrap_or_else(|e| panic!("test body refused: {}", e.message));
    Call {
        request_id: "req-1".into(),
        principal: std::sync::Arc::new(crate::exchange::Principal {
            tenant_id: "t1".into(),
            key_id: "k1".into(),
            plan: "default".into(),
            models: std::sync::Arc::new([]),
            rpm: None,
            tpm: None,
            max_concurrent: None,
            monthly_budget_micro_usd: None,
            monthly_tokens: None,
        }),
        endpoint,
        model: parsed.model.into(),
        params: parsed.params,
        payload: std::sync::Arc::new(parsed.payload),
        directives: crate::exchange::Directives::default(),
        ask_usage: false,
        upload: None,
        by_pattern: false,
        attribution: Default::default(),
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn err(endpoint: Endpoint, body: &str) -> ApiError {
        parse(endpoint, Bytes::copy_from_slice(body.as_bytes())).unwrap_err()
    }

    #[test]
    fn chat_keeps_unknown_fields_and_reads_params() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:x"}}]}],
            "tools":[{"type":"function"}],"response_format":{"type":"json_object"},"logprobs":true,"seed":7,"stream":true,
            "stream_options":{"include_usage":true},"max_tokens":5,"max_completion_tokens":9,"temperature":0}"#;
        let p = parse(
            Endpoint::ChatCompletions,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .unwrap();
        assert_eq!(p.model, "m");
        assert!(p.params.stream && p.params.include_usage && p.params.seed);
        assert_eq!(p.params.max_output, Some(9));
        assert_eq!(p.params.temperature, Some(0.0));
        let original: Value = serde_json::from_str(body).unwrap();
        assert_eq!(Value::Object(p.payload.to_map()), original);
        let forwarded: Value = serde_json::from_slice(&p.payload.write("m", false)).unwrap();
        assert_eq!(forwarded, original);
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(
            Endpoint::ChatCompletions,
            r#"{"messages":[{"role":"user"}]}"#,
        );
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("model"))
        );
        let e = err(Endpoint::ChatCompletions, r#"{"model":"m"}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"content":"x"}]}"#,
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert_eq!(e.message, "Missing required parameter: 'messages[0].role'.");
        let e = err(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user"}],"temperature":"hot"}"#,
        );
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert!(
            e.message
                .starts_with("Invalid value for 'temperature': invalid type: string \"hot\""),
            "{}",
            e.message
        );
        let e = err(Endpoint::ChatCompletions, r#"{"model":7,"messages":[]}"#);
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = err(Endpoint::ChatCompletions, r#"{"model":"m","messages":[]}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(Endpoint::Embeddings, r#"{"model":"m","input":5}"#);
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = err(
            Endpoint::Embeddings,
            r#"{"model":"m","input":"x","stream":true}"#,
        );
        assert_eq!(e.param.as_deref(), Some("stream"));
        let e = err(
            Endpoint::ChatCompletions,
            r#"{"model":"","messages":[{"role":"user"}]}"#,
        );
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = err(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user"}],"stream_options":{"include_usage":"yes"}}"#,
        );
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
    }

    #[test]
    fn bad_json_is_a_400_without_param() {
        for body in ["{", "[]", "\"x\"", "", "{\"model\": \"m\",}"] {
            let e = err(Endpoint::Completions, body);
            assert_eq!(
                (e.status.as_u16(), e.kind, e.param.clone()),
                (400, "invalid_request_error", None),
                "{body}"
            );
        }
    }
}
