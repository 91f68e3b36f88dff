//! Signing in (with the bootstrap token or an operator JWT) and out.

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::header::SET_COOKIE;
use http::{HeaderValue, StatusCode};
use maud::html;
use serde::Deserialize;

use super::Console;
use super::layout;
use super::request::{Form, Submit, safe_next, same_origin};
use super::session;

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    expired: Option<String>,
}

fn form_page(status: StatusCode, next: Option<&str>, message: Option<&str>) -> Response {
    layout::bare(
        status,
        "Sign in",
        html! {
            h1 { "Sign in" }
            p { "Paste the gateway's admin token (" code { "TOLLGATE_ADMIN_TOKEN" } ") or an operator JWT. "
                "Viewer tokens can look at everything and change nothing; a token bound to a tenant sees only that tenant." }
            @if let Some(message) = message {
                p.flash.error role="alert" { (message) }
            }
            form.signin method="post" action="/console/login" {
                label for="token" { "Admin token or operator JWT" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                @if let Some(next) = next.filter(|n| safe_next(n)) {
                    input type="hidden" name="next" value=(next);
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// `GET /console/login`.
pub(crate) async fn page(Query(query): Query<LoginQuery>) -> Response {
    let message = query
        .expired
        .is_some()
        .then_some("Your session ended (signed out, expired, or the token is no longer accepted). Sign in again.");
    form_page(StatusCode::OK, query.next.as_deref(), message)
}

/// `POST /console/login`: checks the credential exactly as the admin API does, then
/// starts a session. Same-origin only, so another site cannot sign a browser in with its
/// own token (login CSRF).
pub(crate) async fn login(State(console): State<Console>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if !same_origin(&parts) {
        return layout::problem(
            StatusCode::FORBIDDEN,
            "Refused: sign-in must come from the console's own page (cross-site request).",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return layout::problem(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let form = Form::parse(&bytes).unwrap_or_default();
    let next = form.opt("next").filter(|n| safe_next(n));
    let token = form.get("token");
    let header = HeaderValue::from_str(&format!("Bearer {token}")).ok();
    if let Err(error) = console.auth.authenticate(header.as_ref()) {
        tracing::info!(reason = %error.message, "console sign-in refused");
        return form_page(StatusCode::UNAUTHORIZED, next, Some(&error.message));
    }
    let value = console.sessions.create(token.to_owned());
    let mut response = Redirect::to(next.unwrap_or("/console/tenants")).into_response();
    if let Some(cookie) = session::set_cookie(&value, session::over_https(&parts.headers)) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

/// `POST /console/logout`: ends the session here and removes the cookie.
pub(crate) async fn logout(submit: Submit) -> Response {
    submit.ctx.end_session();
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, session::clear_cookie());
    response
}
