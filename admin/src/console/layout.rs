//! The page around every console view (header, navigation, health strip, flash), the
//! bare page for refusals, and the small pieces views share: the CSRF field, a submit
//! button that says why it is disabled, number formats.
//!
//! maud escapes every interpolated value (`(value)`) unless it is wrapped in
//! `PreEscaped`, which the console uses for nothing that holds data, so a name such as
//! `<img src=x onerror=alert(1)>` is text wherever it appears.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::request::Ctx;
use super::session::Flash;
use crate::operator::Role;
use crate::store::MicroUsd;

/// The navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Tenants,
    Plans,
    Prices,
}

/// An HTML answer that no cache keeps (pages hold tenant data).
pub(crate) fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · Tollgate console" }
            link rel="icon" href=(assets::url("favicon.svg")) type="image/svg+xml";
            link rel="stylesheet" href=(assets::url("console.css"));
            script src=(assets::url("console.js")) defer {}
        }
    }
}

/// A signed-in page: header with the operator and sign-out, navigation, health strip, the
/// flash of the last form, then `body`.
pub(crate) fn page(
    ctx: &Ctx,
    title: &str,
    nav: Nav,
    flash: Option<&Flash>,
    body: Markup,
) -> Response {
    let op = &ctx.operator;
    let role = match op.role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/console/tenants" { "Tollgate" }
                    nav {
                        a href="/console/tenants" aria-current=[(nav == Nav::Tenants).then_some("page")] { "Tenants" }
                        a href="/console/plans" aria-current=[(nav == Nav::Plans).then_some("page")] { "Plans" }
                        a href="/console/prices" aria-current=[(nav == Nav::Prices).then_some("page")] { "Prices" }
                    }
                    div.who {
                        span #operator { (op.subject) " · " (role) }
                        @if let Some(tenant) = &op.tenant {
                            " · tenant " code { (tenant) }
                        }
                        form method="post" action="/console/logout" {
                            (csrf_field(ctx))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                (health_strip())
                main {
                    (flash_box(flash))
                    (body)
                }
            }
        }
    };
    html(StatusCode::OK, markup)
}

/// Store, Redis, deployments' circuits and spool depth: filled in (and refreshed) by
/// `console.js` from `/readyz` and `/metrics`, which need no token.
fn health_strip() -> Markup {
    html! {
        section #health.health aria-label="Gateway health" aria-live="polite" {
            span.item data-health="store" { "Store " b.unknown { "…" } }
            span.item data-health="redis" { "Redis " b.unknown { "…" } }
            span.item data-health="spool" { "Spool " b.unknown { "…" } }
            span.item data-health="circuits" { "Deployments " b.unknown { "…" } }
        }
    }
}

/// A page for the signed-out (the sign-in form) or for a refusal.
pub(crate) fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.top { a.brand href="/console/" { "Tollgate" } }
                main { (body) }
            }
        }
    };
    html(status, markup)
}

/// A refusal or failure, as a page that says what happened and where to go.
pub(crate) fn problem(status: StatusCode, message: &str) -> Response {
    bare(
        status,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.problem role="alert" { (message) }
            p { a href="/console/tenants" { "Back to the console" } }
        },
    )
}

/// The hidden field that carries the session's CSRF token in every form.
pub(crate) fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// A submit button, disabled with its reason shown beside it when `why` is given.
pub(crate) fn submit(label: &str, class: &str, why: Option<&str>) -> Markup {
    html! {
        @if let Some(why) = why {
            button type="submit" class=(class) disabled title=(why) { (label) }
            span.why { (why) }
        } @else {
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A small inline button (in a table row): disabled with its reason as a tooltip; the
/// section around it says the reason once in words.
pub(crate) fn small_submit(label: &str, class: &str, why: Option<&str>) -> Markup {
    html! {
        @if let Some(why) = why {
            button type="submit" class=(class) disabled title=(why) { (label) }
        } @else {
            button type="submit" class=(class) { (label) }
        }
    }
}

/// The outcome of the last form, once.
pub(crate) fn flash_box(flash: Option<&Flash>) -> Markup {
    html! {
        @if let Some(flash) = flash {
            @if flash.error {
                p.flash.error role="alert" { (flash.message) }
            } @else {
                p.flash.notice role="status" { (flash.message) }
            }
        }
    }
}

/// The API refused to show a page: its message, in the page.
pub(crate) fn failure_box(message: &str) -> Markup {
    html! { p.flash.error role="alert" { (message) } }
}

/// `$1,234.50`, `$0.001350`: exact (every micro-dollar shown), trailing zeros beyond
/// the cents left out.
pub(crate) fn usd(amount: MicroUsd) -> String {
    let micros = u64::try_from(amount.micros()).unwrap_or(0);
    let fraction = format!("{:06}", micros % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    let cents = if fraction.len() < 2 {
        format!("{fraction:0<2}")
    } else {
        fraction.to_owned()
    };
    format!("${}.{cents}", grouped(micros / 1_000_000))
}

/// `$12.35` for chart labels: whole cents, or the full amount under a cent.
pub(crate) fn usd_short(micros: u64) -> String {
    if micros == 0 {
        "$0".to_owned()
    } else if micros < 10_000 {
        format!("${}.{:06}", micros / 1_000_000, micros % 1_000_000)
    } else {
        let cents = (micros + 5_000) / 10_000;
        format!("${}.{:02}", grouped(cents / 100), cents % 100)
    }
}

/// `1,234,567`.
pub(crate) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.2M`, `35k`, `980` for chart axes.
pub(crate) fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => trim_decimal(n, 1_000, "k"),
        1_000_000..1_000_000_000 => trim_decimal(n, 1_000_000, "M"),
        _ => trim_decimal(n, 1_000_000_000, "G"),
    }
}

fn trim_decimal(n: u64, unit: u64, suffix: &str) -> String {
    let tenths = (n * 10 + unit / 2) / unit;
    if tenths.is_multiple_of(10) || tenths >= 100 {
        format!("{}{suffix}", (tenths + 5) / 10)
    } else {
        format!("{}.{}{suffix}", tenths / 10, tenths % 10)
    }
}

/// An RFC 3339 UTC time as `2026-12-06 14:03 UTC`, for tables.
pub(crate) fn when(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(date), Some(time)) if rfc3339.as_bytes().get(10) == Some(&b'T') => {
            format!("{date} {time} UTC")
        }
        _ => rfc3339.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(compact(980), "980");
        assert_eq!(compact(1_000), "1k");
        assert_eq!(compact(1_250), "1.3k");
        assert_eq!(compact(35_000), "35k");
        assert_eq!(compact(2_500_000), "2.5M");
        let usd_of = |m: i64| usd(MicroUsd::from_micros(m).unwrap_or(MicroUsd::ZERO));
        assert_eq!(usd_of(0), "$0.00");
        assert_eq!(usd_of(250_000_000), "$250.00");
        assert_eq!(usd_of(1_234_500_000), "$1,234.50");
        assert_eq!(usd_of(212_954_973), "$212.954973");
        assert_eq!(usd_of(17_100), "$0.0171");
        assert_eq!(usd_short(0), "$0");
        assert_eq!(usd_short(1_350), "$0.001350");
        assert_eq!(usd_short(12_345_678), "$12.35");
        assert_eq!(usd_short(1_234_000_000), "$1,234.00");
        assert_eq!(when("2026-12-06T14:03:09Z"), "2026-12-06 14:03 UTC");
        assert_eq!(when("soon"), "soon");
    }
}
