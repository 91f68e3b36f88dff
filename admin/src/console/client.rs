//! The admin API, called in process: how the console reads and changes everything.
//!
//! Each console action becomes the admin API request a script would send, run through the
//! same router ([`crate::api::routes`]) with the signed-in [`Operator`] in its extensions
//! (where the bearer-token middleware would have put it). So the console cannot do
//! anything the API would refuse this operator, validates input with the API's own rules,
//! shows the API's own error messages (naming the field), and leaves the same audit log
//! lines. No socket is involved: a call costs the JSON round trip and the store query.
//! What the host adds around the admin router (the gateway's cache-purge hook) is not on
//! this path; the console does not call those routes.

use axum::Router;
use axum::body::{Body, Bytes};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::operator::Operator;

/// The largest answer the console reads (an invoice or a page of keys is far smaller).
const MAX_ANSWER: usize = 16 << 20;

/// The admin API's routes, without the bearer-token layer (the console authenticates).
#[derive(Clone, Debug)]
pub(crate) struct Api {
    router: Router,
}

/// An admin API refusal, as the operator should read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    /// The field at fault, as the API names it (`name`, `monthly_budget_usd`).
    pub param: Option<String>,
}

impl ApiFailure {
    /// The message with the field it names, for a flash above the form.
    pub(crate) fn describe(&self) -> String {
        match &self.param {
            Some(param) if !self.message.contains(param.as_str()) => {
                format!("{param}: {}", self.message)
            }
            _ => self.message.clone(),
        }
    }

    fn internal(what: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the console could not read the admin API's answer ({what})"),
            param: None,
        }
    }
}

impl From<crate::store::StoreError> for ApiFailure {
    /// A store error as the admin API would answer it (its one mapping, logging included).
    fn from(error: crate::store::StoreError) -> Self {
        let error = crate::error::ApiError::from(error);
        Self {
            status: error.status,
            message: error.message,
            param: error.param,
        }
    }
}

/// A page of an admin API list (`{"object":"list","data":[...],"has_more":bool}`).
#[derive(Deserialize, Debug)]
pub(crate) struct ListOf<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    message: String,
    param: Option<String>,
}

/// A successful answer: its headers and body.
pub(crate) struct Answer {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Api {
    pub(crate) fn new(router: Router) -> Self {
        Self { router }
    }

    /// Sends one request as `operator`; a non-2xx answer is an [`ApiFailure`].
    pub(crate) async fn call(
        &self,
        operator: &Operator,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ApiFailure> {
        let body = match body {
            Some(value) => {
                Body::from(serde_json::to_vec(value).map_err(|_| ApiFailure::internal("request"))?)
            }
            None => Body::empty(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|_| ApiFailure::internal("request"))?;
        request.extensions_mut().insert(operator.clone());
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_ANSWER)
            .await
            .map_err(|_| ApiFailure::internal("body"))?;
        if parts.status.is_success() {
            return Ok(Answer {
                headers: parts.headers,
                body: bytes,
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => ApiFailure {
                status: parts.status,
                message: e.error.message,
                param: e.error.param,
            },
            Err(_) => ApiFailure {
                status: parts.status,
                message: format!("the admin API answered {}", parts.status),
                param: None,
            },
        })
    }

    /// Sends one request and reads the JSON answer as `T`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        operator: &Operator,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiFailure> {
        let answer = self.call(operator, method, uri, body).await?;
        serde_json::from_slice(&answer.body).map_err(|_| ApiFailure::internal("JSON"))
    }
}

/// A path segment, percent-encoded (everything but RFC 3986's unreserved characters), so
/// an id from a URL cannot add segments or a query to the API path it is put into.
pub(crate) fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `a=1&b=2`, each value form-encoded.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_escape_their_place() {
        assert_eq!(seg("ten_abc-1.2~"), "ten_abc-1.2~");
        assert_eq!(seg("../keys?x=1#"), "..%2Fkeys%3Fx%3D1%23");
        assert_eq!(seg("é"), "%C3%A9");
        assert_eq!(
            query(&[("tenant", "a&b"), ("q", "x y")]),
            "tenant=a%26b&q=x+y"
        );
    }
}
