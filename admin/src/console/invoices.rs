//! A tenant's invoices: pick a month, read the lines, download JSON or CSV (the admin
//! API's own documents, byte for byte).

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use http::{HeaderValue, Method};
use maud::html;
use serde::Deserialize;

use super::client::{query, seg};
use super::keys::tenant_header;
use super::layout::{self, Nav};
use super::request::Ctx;
use crate::billing::Period;
use crate::store::MicroUsd;

#[derive(Deserialize, Default)]
pub(crate) struct InvoiceQuery {
    period: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize)]
struct InvoiceView {
    period: String,
    lines: Vec<LineView>,
    total_usd: MicroUsd,
}

#[derive(Deserialize)]
struct LineView {
    model: String,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: MicroUsd,
}

fn period_of(params: &InvoiceQuery) -> String {
    params
        .period
        .as_deref()
        .filter(|p| !p.is_empty())
        .map_or_else(|| Period::current().to_string(), str::to_owned)
}

fn invoice_uri(tenant: &str, period: &str, format: &str) -> String {
    format!(
        "/admin/v1/invoices?{}",
        query(&[("tenant", tenant), ("period", period), ("format", format)])
    )
}

/// `GET /console/tenants/{id}/invoices?period=YYYY-MM`.
pub(crate) async fn page(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(params): Query<InvoiceQuery>,
) -> Response {
    let flash = ctx.take_flash();
    let tenant = match ctx.tenant(&id).await {
        Ok(t) => t,
        Err(failure) => {
            return layout::page(
                &ctx,
                "Invoices",
                Nav::Tenants,
                flash.as_ref(),
                layout::failure_box(&failure.message),
            );
        }
    };
    let period = period_of(&params);
    let invoice = ctx
        .get::<InvoiceView>(&invoice_uri(&id, &period, "json"))
        .await;
    let download = |format: &str| {
        format!(
            "/console/tenants/{}/invoice?{}",
            seg(&id),
            query(&[("period", period.as_str()), ("format", format)])
        )
    };
    let body = html! {
        (tenant_header(&tenant, "invoices"))
        div.toolbar {
            form.inline method="get" action={"/console/tenants/" (seg(&id)) "/invoices"} {
                label { "Month " input type="month" name="period" value=(period); }
                button type="submit" { "Show" }
            }
        }
        @match &invoice {
            Err(failure) => (layout::failure_box(&failure.describe())),
            Ok(invoice) => {
                h2 { "Invoice " (invoice.period) }
                p.downloads {
                    a.button #download-csv href=(download("csv")) download { "Download CSV" }
                    " "
                    a.button #download-json href=(download("json")) download { "Download JSON" }
                }
                @if invoice.lines.is_empty() {
                    p.empty { "Nothing to bill in " (invoice.period) "." }
                }
                table #invoice {
                    thead { tr { th { "Model" } th.num { "Requests" } th.num { "Input tokens" } th.num { "Output tokens" } th.num { "Cost" } } }
                    tbody {
                        @for line in &invoice.lines {
                            tr { td { (line.model) } td.num { (layout::grouped(line.requests)) } td.num { (layout::grouped(line.input_tokens)) }
                                 td.num { (layout::grouped(line.output_tokens)) } td.num { (layout::usd(line.cost_usd)) } }
                        }
                    }
                    tfoot { tr { th { "Total" } td {} td {} td {} td.num #invoice-total data-usd=(invoice.total_usd) { (layout::usd(invoice.total_usd)) } } }
                }
            }
        }
    };
    layout::page(
        &ctx,
        &format!("Invoices · {}", tenant.name),
        Nav::Tenants,
        flash.as_ref(),
        body,
    )
}

/// `GET /console/tenants/{id}/invoice?period=&format=csv|json`: the admin API's document
/// as a download.
pub(crate) async fn download(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(params): Query<InvoiceQuery>,
) -> Response {
    let period = period_of(&params);
    let (format, extension) = match params.format.as_deref() {
        Some("csv") => ("csv", "csv"),
        _ => ("json", "json"),
    };
    let answer = ctx
        .console
        .api
        .call(
            &ctx.operator,
            Method::GET,
            &invoice_uri(&id, &period, format),
            None,
        )
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(failure) => {
            return layout::problem(failure.status, &failure.describe());
        }
    };
    let content_type = answer
        .headers
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        answer.body,
    )
        .into_response();
    // Tenant ids are `ten_` + base62 and periods `YYYY-MM` (the API checked both).
    let safe = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let name = if safe(&id) && safe(&period) {
        format!("attachment; filename=\"invoice-{id}-{period}.{extension}\"")
    } else {
        "attachment".to_owned()
    };
    if let Ok(value) = HeaderValue::from_str(&name) {
        response.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    response
}
