//! OpenAI wire types: the endpoints the gateway serves and the checks on their request
//! bodies.
//!
//! The body is parsed once, into a JSON object that is forwarded as it came (unknown fields
//! such as `tools`, `response_format`, `logprobs` or image parts pass through unchanged).
//! Next to it, a typed view of the fields the gateway reads is deserialized from that same
//! object, so a wrong type is a 400 that names the field (`messages[0].role`).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A `POST` endpoint of the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    ImagesGenerations,
    Moderations,
}

impl Endpoint {
    /// The path below the API root, as sent upstream.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::ImagesGenerations => "/images/generations",
            Self::Moderations => "/moderations",
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::ImagesGenerations => "images_generations",
            Self::Moderations => "moderations",
        }
    }

    fn can_stream(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }
}

/// A parsed, checked request body.
#[derive(Debug, Clone)]
pub struct Request {
    pub endpoint: Endpoint,
    /// The client-facing model name.
    pub model: String,
    pub stream: bool,
    /// The whole body, forwarded with only `model` rewritten.
    pub body: Map<String, Value>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct ChatView {
    model: String,
    messages: Vec<MessageView>,
    stream: Option<bool>,
    stream_options: Option<StreamOptionsView>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct MessageView {
    role: String,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct StreamOptionsView {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct CompletionView {
    model: String,
    prompt: Value,
    stream: Option<bool>,
    stream_options: Option<StreamOptionsView>,
    max_tokens: Option<u64>,
    n: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct EmbeddingView {
    model: String,
    input: Value,
    dimensions: Option<u32>,
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct ImageView {
    model: String,
    prompt: String,
    n: Option<u32>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct ModerationView {
    model: String,
    input: Value,
}

impl Request {
    /// Parses and checks a request body for `endpoint`.
    ///
    /// `model` is required on every endpoint (also moderations, where OpenAI has a default)
    /// because routing needs it.
    pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::invalid_request(
                format!(
                    "We could not parse the JSON body of your request ({}). The body must be a JSON object.",
                    e
                ),
                None,
            )
        })?;
        let Value::Object(body) = value else {
            return Err(ApiError::invalid_request(
                "The request body must be a JSON object.",
                None,
            ));
        };
        match endpoint {
            Endpoint::ChatCompletions => {
                let view: ChatView = typed(&body)?;
                if view.messages.is_empty() {
                    return Err(ApiError::invalid_request(
                        "'messages' must contain at least one message.",
                        Some("messages"),
                    ));
                }
            }
            Endpoint::Completions => {
                let _: CompletionView = typed(&body)?;
            }
            Endpoint::Embeddings => {
                let view: EmbeddingView = typed(&body)?;
                check_input(&view.input)?;
            }
            Endpoint::ImagesGenerations => {
                let _: ImageView = typed(&body)?;
            }
            Endpoint::Moderations => {
                let view: ModerationView = typed(&body)?;
                check_input(&view.input)?;
            }
        }
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => {
                return Err(ApiError::invalid_request(
                    "'model' must be a non-empty string.",
                    Some("model"),
                ));
            }
        };
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        if stream && !endpoint.can_stream() {
            return Err(ApiError::invalid_request(
                "Streaming is not supported on this endpoint.",
                Some("stream"),
            ));
        }
        Ok(Self {
            endpoint,
            model,
            stream,
            body,
        })
    }
}

/// `input` of embeddings and moderations: a string or a non-empty array.
fn check_input(input: &Value) -> Result<(), ApiError> {
    match input {
        Value::String(_) => Ok(()),
        Value::Array(items) if !items.is_empty() => Ok(()),
        Value::Array(_) => Err(ApiError::invalid_request(
            "'input' must not be empty.",
            Some("input"),
        )),
        _ => Err(ApiError::invalid_request(
            "'input' must be a string or an array.",
            Some("input"),
        )),
    }
}

/// Deserializes the typed view, turning serde's error into a 400 naming the field.
fn typed<T: DeserializeOwned>(body: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let path = if path == "." { String::new() } else { path };
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let param = if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            return ApiError::invalid_request(
                format!("Missing required parameter: '{param}'."),
                Some(&param),
            );
        }
        let param = if path.is_empty() {
            None
        } else {
            Some(path.as_str())
        };
        let shown = param.unwrap_or("body");
        ApiError::invalid_request(format!("Invalid value for '{shown}': {message}."), param)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn err(endpoint: Endpoint, body: &str) -> ApiError {
        Request::parse(endpoint, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn chat_keeps_unknown_fields() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:x"}}]}],
            "tools":[{"type":"function"}],"response_format":{"type":"json_object"},"logprobs":true,"seed":7,"stream":true}"#;
        let r = Request::parse(Endpoint::ChatCompletions, body.as_bytes()).unwrap();
        assert_eq!(r.model, "m");
        assert!(r.stream);
        let original: Value = serde_json::from_str(body).unwrap();
        assert_eq!(Value::Object(r.body), original);
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
        let e = err(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user"}],"temperature":"hot"}"#,
        );
        assert_eq!(e.param.as_deref(), Some("temperature"));
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
