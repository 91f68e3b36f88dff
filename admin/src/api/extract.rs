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
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|_| ApiError::invalid_request("invalid query string", None))
    }
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
    }
}
