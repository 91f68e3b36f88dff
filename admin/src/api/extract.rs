//! Extractors whose rejections are [`ApiError`]s, so a bad body, path or query string gets
//! the same OpenAI-shaped 400 as every other error instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use http::StatusCode;
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Errors name the field at fault in `param` (via `serde_path_to_error`):
/// `"name"` for a missing name, `"models[0]"` for a number where a string belongs.
///
/// The content type is not checked: `curl -d '{...}'` without a header is a common way to
/// call an admin API, and the body is parsed as JSON either way.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request body too large",
        )
        .with_code("request_too_large")
    } else {
        ApiError::invalid_request("could not read the request body", None)
    }
}

/// Parses a whole body as `T`, turning serde's error into a 400 that names the field.
///
/// Every admin body is a JSON object, and only an object is accepted: serde would also
/// fill a struct from an array, by position (`["x"]` as `{"name":"x"}`), which no client
/// means.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "the request body must be a JSON object",
            None,
        ));
    }
    if has_nul_escape(bytes) {
        // Rare: find the field, so the error names it like every other 400.
        let field = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| nul_field(&v, String::new()));
        return Err(ApiError::invalid_request(
            "text must not contain NUL characters",
            Some(field.as_deref().unwrap_or("body")),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    // Trailing garbage after the object is an error too, not silently ignored.
    de.end()
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}"), None))?;
    Ok(value)
}

fn json_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = error.inner();
    if !inner.is_data() {
        // Syntax error or cut-off body: there is no field to name.
        return ApiError::invalid_request(format!("invalid JSON body: {inner}"), None);
    }
    let message = inner.to_string();
    let path = error.path().to_string();
    // serde reports a missing or unknown field at the enclosing object, with the field's
    // name in backticks: append it so `param` names the field itself.
    let field = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|lead| message.strip_prefix(lead))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    let param = match (path.as_str(), field) {
        (".", Some(field)) => Some(field.to_owned()),
        (".", None) => None,
        (path, Some(field)) if path != field && !path.ends_with(&format!(".{field}")) => {
            Some(format!("{path}.{field}"))
        }
        (path, _) => Some(path.to_owned()),
    };
    let message = match &param {
        Some(param) => format!("invalid request body at `{param}`: {message}"),
        None => format!("invalid request body: {message}"),
    };
    ApiError::invalid_request(message, param.as_deref())
}

/// Path parameters; a segment that does not decode is a 400, not axum's plain text.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_nul(parts.uri.path()) {
            return Err(nul_error("path"));
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|_| ApiError::invalid_request("invalid path parameter", None))
    }
}

/// Query string parameters; one that does not parse is a 400 in the OpenAI shape.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(has_nul) {
            return Err(nul_error("query"));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|_| ApiError::invalid_request("invalid query string", None))
    }
}

// NUL characters: Postgres text cannot hold them (SQLite can), so they are refused for
// every input, the same way on both stores, before any query.

/// A percent-encoded NUL in a path or query string.
fn has_nul(raw: &str) -> bool {
    raw.contains("%00")
}

/// A `\u0000` escape in a JSON text (the only way JSON can carry a NUL), not counting an
/// escaped backslash followed by the letters `u0000`.
fn has_nul_escape(bytes: &[u8]) -> bool {
    let needle = b"\\u0000";
    bytes.windows(needle.len()).enumerate().any(|(i, w)| {
        w == needle && bytes[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 0
    })
}

/// The path (`name`, `models[0]`) of the first string, or object key, holding a NUL.
fn nul_field(value: &serde_json::Value, path: String) -> Option<String> {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_field(v, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            let at = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(at)
            } else {
                nul_field(v, at)
            }
        }),
        _ => None,
    }
}

fn nul_error(place: &str) -> ApiError {
    ApiError::invalid_request(
        format!("the request {place} must not contain NUL characters"),
        None,
    )
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_but_escaped_backslashes_are_not() {
        assert!(has_nul_escape(br#"{"name":"a\u0000b"}"#));
        assert!(has_nul_escape(br#"{"name":"\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"name":"\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"name":"u0000"}"#));
        assert!(has_nul("/admin/v1/keys/a%00b"));
        assert!(!has_nul("/admin/v1/keys/a%20b"));
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialised")]
    struct Body {
        name: String,
        models: Option<Vec<String>>,
        rpm: Option<u32>,
    }

    fn param_of(json: &str) -> Option<String> {
        let error = parse_json::<Body>(json.as_bytes()).expect_err("should fail");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.kind, "invalid_request_error");
        error.param
    }

    #[test]
    fn names_the_field_at_fault() {
        assert!(parse_json::<Body>(br#"{"name":"a"}"#).is_ok());
        assert_eq!(param_of(r#"{}"#).as_deref(), Some("name"));
        assert_eq!(param_of(r#"{"name":5}"#).as_deref(), Some("name"));
        assert_eq!(param_of(r#"{"name":null}"#).as_deref(), Some("name"));
        assert_eq!(
            param_of(r#"{"name":"a","models":"m"}"#).as_deref(),
            Some("models")
        );
        assert_eq!(
            param_of(r#"{"name":"a","models":[1]}"#).as_deref(),
            Some("models[0]")
        );
        assert_eq!(param_of(r#"{"name":"a","rpm":-1}"#).as_deref(), Some("rpm"));
        assert_eq!(
            param_of(r#"{"name":"a","rpm":4294967296}"#).as_deref(),
            Some("rpm")
        );
        assert_eq!(
            param_of(r#"{"name":"a","model":["m"]}"#).as_deref(),
            Some("model")
        );
    }

    #[test]
    fn syntax_errors_have_no_param() {
        assert_eq!(param_of(""), None);
        assert_eq!(param_of("{"), None);
        assert_eq!(param_of("not json"), None);
        assert_eq!(param_of(r#"{"name":"a"} x"#), None);
        assert_eq!(param_of("[]"), None);
        assert_eq!(param_of(r#"["a"]"#), None);
        assert_eq!(param_of("null"), None);
        assert_eq!(param_of(" 5"), None);
    }
}
