//! What every console request goes through: the session ([`Ctx`]) for every page, and for
//! every form sent ([`Submit`]) the same-origin check and the CSRF token.
//!
//! A state change needs all three: the `SameSite=Strict` cookie (another site's page
//! cannot make the browser send it), a same-origin request (`Sec-Fetch-Site`, else
//! `Origin` against `Host`), and the session's CSRF token in the form, compared in
//! constant time. Everything else is a GET that changes nothing.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Redirect, Response};
use http::header::{HOST, ORIGIN};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::Console;
use super::client::{ApiFailure, seg};
use super::layout;
use super::session::{self, Flash, Secret, SessionId};
use crate::operator::{Operator, Role};

/// The largest form the console accepts.
const MAX_FORM: usize = 64 << 10;

/// A signed-in request: the operator, the session, and the in-process admin API.
pub(crate) struct Ctx {
    pub console: Console,
    pub operator: Operator,
    pub csrf: String,
    session: SessionId,
}

/// Where to go to sign in, coming back to `next` afterwards.
fn to_login(next: Option<&str>, expired: bool) -> Response {
    let mut pairs = Vec::new();
    if let Some(next) = next.filter(|n| safe_next(n)) {
        pairs.push(("next", next));
    }
    if expired {
        pairs.push(("expired", "1"));
    }
    let query = super::client::query(&pairs);
    let location = if query.is_empty() {
        "/console/login".to_owned()
    } else {
        format!("/console/login?{query}")
    };
    Redirect::to(&location).into_response()
}

/// Whether `next` is a console page to send the browser to after sign-in: a path on this
/// site under `/console/`, never `//elsewhere` or a full URL (an open redirect).
pub(crate) fn safe_next(next: &str) -> bool {
    next.starts_with("/console/")
        && !next.contains("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
}

impl FromRequestParts<Console> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Self, Self::Rejection> {
        let next = (parts.method == Method::GET)
            .then(|| parts.uri.path_and_query().map(|p| p.as_str()))
            .flatten();
        let Some(active) =
            session::cookie_value(&parts.headers).and_then(|v| console.sessions.get(v))
        else {
            return Err(to_login(next, false));
        };
        let header = HeaderValue::from_str(&format!("Bearer {}", active.credential)).ok();
        match console.auth.authenticate(header.as_ref()) {
            Ok(operator) => Ok(Ctx {
                console: console.clone(),
                operator,
                csrf: active.csrf,
                session: active.id,
            }),
            // The JWT expired (or the token is no longer accepted): sign in again.
            Err(_) => {
                console.sessions.remove(active.id);
                Err(to_login(next, true))
            }
        }
    }
}

impl Ctx {
    /// GET `uri` on the admin API as this operator, read as `T`.
    pub(crate) async fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ApiFailure> {
        self.console
            .api
            .json(&self.operator, Method::GET, uri, None)
            .await
    }

    /// `method` `uri` with a JSON body on the admin API as this operator.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiFailure> {
        self.console
            .api
            .json(&self.operator, method, uri, body)
            .await
    }

    /// The tenant `id` as this operator may see it (the API answers 404 otherwise).
    pub(crate) async fn tenant(&self, id: &str) -> Result<TenantView, ApiFailure> {
        self.get(&format!("/admin/v1/tenants/{}", seg(id))).await
    }

    pub(crate) fn flash(&self, flash: Flash) {
        self.console.sessions.set_flash(self.session, flash);
    }

    pub(crate) fn take_flash(&self) -> Option<Flash> {
        self.console.sessions.take_flash(self.session)
    }

    pub(crate) fn keep_secret(&self, secret: Secret) {
        self.console.sessions.set_secret(self.session, secret);
    }

    pub(crate) fn take_secret(&self) -> Option<Secret> {
        self.console.sessions.take_secret(self.session)
    }

    pub(crate) fn end_session(&self) {
        self.console.sessions.remove(self.session);
    }

    /// Why this operator may not change a tenant's keys, or `None` when it may.
    pub(crate) fn cannot_write(&self) -> Option<String> {
        (self.operator.role == Role::Viewer)
            .then(|| "Read-only: your operator token has the viewer role.".to_owned())
    }

    /// Why this operator may not create or change tenants, plans and prices, or `None`.
    pub(crate) fn cannot_write_global(&self) -> Option<String> {
        self.cannot_write().or_else(|| {
            self.operator.tenant.as_ref().map(|t| {
                format!("Your operator token is limited to tenant {t}; only a global operator may do this.")
            })
        })
    }

    /// After a refused form: back to `location`, the API's message shown above the form
    /// with what was typed in (never a secret: forms hold none but the CSRF token).
    pub(crate) fn refused(&self, location: &str, failure: &ApiFailure, form: &Form) -> Response {
        self.flash(Flash::error(failure.describe(), form.refill()));
        Redirect::to(location).into_response()
    }

    /// After a form that worked: to `location`, with `message` shown once.
    pub(crate) fn done(&self, location: &str, message: impl Into<String>) -> Response {
        self.flash(Flash::notice(message));
        Redirect::to(location).into_response()
    }
}

/// A tenant as the admin API shows it.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct TenantView {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub created_at: String,
    pub disabled: bool,
}

/// The fields of a form sent (`application/x-www-form-urlencoded`), in order; a name may
/// repeat (checkboxes).
#[derive(Clone, Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        serde_urlencoded::from_bytes(bytes).ok().map(Form)
    }

    /// The first value of `name`, trimmed; `""` when absent.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }

    /// The value of `name`, trimmed, when present and not empty.
    pub(crate) fn opt(&self, name: &str) -> Option<&str> {
        Some(self.get(name)).filter(|v| !v.is_empty())
    }

    /// Every value of `name`, trimmed, empty ones left out.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The fields to put back in the form after a refusal.
    fn refill(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(k, _)| k != "csrf")
            .cloned()
            .collect()
    }
}

/// A form sent to the console by a signed-in operator, same-origin, with the session's
/// CSRF token. Anything else is refused with 403 before a handler runs.
pub(crate) struct Submit {
    pub ctx: Ctx,
    pub form: Form,
}

/// Whether the browser says this request comes from a console page: `Sec-Fetch-Site:
/// same-origin` where the browser sends it, else an `Origin` equal to the `Host` the
/// request was sent to. A request with neither is refused: every browser that can run
/// the console sends one of them on a POST.
pub(crate) fn same_origin(parts: &Parts) -> bool {
    if let Some(site) = parts.headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = parts.headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

impl FromRequest<Console> for Submit {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        if !same_origin(&parts) {
            return Err(layout::problem(
                StatusCode::FORBIDDEN,
                "Refused: this form was not sent from the console's own pages (cross-site request).",
            ));
        }
        let ctx = Ctx::from_request_parts(&mut parts, console).await?;
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
            return Err(layout::problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large.",
            ));
        };
        let Some(form) = Form::parse(&bytes) else {
            return Err(layout::problem(
                StatusCode::BAD_REQUEST,
                "The form could not be read.",
            ));
        };
        let sent = form.get("csrf").as_bytes();
        if !bool::from(sent.ct_eq(ctx.csrf.as_bytes())) {
            return Err(layout::problem(
                StatusCode::FORBIDDEN,
                "Refused: the form's security token is missing or out of date. Reload the page and try again.",
            ));
        }
        Ok(Submit { ctx, form })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_console() {
        assert!(safe_next("/console/tenants?q=a"));
        assert!(!safe_next("//evil.example/console/"));
        assert!(!safe_next("/console//evil.example"));
        assert!(!safe_next("https://evil.example/console/"));
        assert!(!safe_next("/admin/v1/tenants"));
        assert!(!safe_next("/console/\\evil"));
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri("/console/tenants");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder
            .body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn same_origin_needs_the_browsers_word() {
        assert!(same_origin(&parts(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&parts(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&parts(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(&parts(&[
            ("origin", "http://127.0.0.1:8081"),
            ("host", "127.0.0.1:8081")
        ])));
        assert!(!same_origin(&parts(&[
            ("origin", "http://localhost:8081"),
            ("host", "127.0.0.1:8081")
        ])));
        assert!(!same_origin(&parts(&[("origin", "null"), ("host", "h")])));
        assert!(!same_origin(&parts(&[("host", "127.0.0.1:8081")])));
    }

    #[test]
    fn forms_keep_repeated_fields_and_drop_the_token_on_refill() {
        let form = Form::parse(b"name=+a+&models=x&models=&models=y&csrf=t").unwrap_or_default();
        assert_eq!(form.get("name"), "a");
        assert_eq!(form.all("models").collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(form.opt("missing"), None);
        assert!(form.refill().iter().all(|(k, _)| k != "csrf"));
    }
}
