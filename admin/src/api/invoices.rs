//! `GET /admin/v1/invoices`: a tenant's bill for one month, as JSON or CSV
//! ([`crate::billing`]).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use serde::Deserialize;

use super::extract::ApiQuery;
use super::openapi::ErrorBody;
use super::{AdminState, Caller};
use crate::billing::{self, Invoice, Period};
use crate::error::ApiError;

/// `?tenant=&period=&format=`. Both `tenant` and `period` are required; they are
/// `Option`s here so that a missing one is a 400 that names it.
#[derive(Deserialize)]
pub(super) struct InvoiceQuery {
    tenant: Option<String>,
    period: Option<String>,
    format: Option<String>,
}

fn required(param: &'static str, value: Option<String>) -> Result<String, ApiError> {
    value.filter(|v| !v.is_empty()).ok_or_else(|| {
        ApiError::invalid_request(
            format!("the query parameter {param} is required"),
            Some(param),
        )
    })
}

/// A tenant's invoice for a month, as JSON or CSV.
///
/// The calendar month is UTC. One line per model with its requests, tokens and exact cost,
/// and the total, the exact sum of the lines. With `format=csv`:
/// `text/csv` with the header
/// `model,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd`, one
/// row per line, and a last row whose first cell is `total` (the column sums; its
/// `cost_usd` is `total_usd`).
#[utoipa::path(
    get,
    path = "/admin/v1/invoices",
    operation_id = "get_invoice",
    tag = "usage",
    params(
        ("tenant" = String, Query, description = "The tenant billed (`ten_...`).", min_length = 1),
        ("period" = String, Query, description = "The calendar month billed (UTC), `YYYY-MM`.", pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`.", pattern = "^(json|csv)$"),
    ),
    responses(
        (status = 200, description = "The invoice.", content(
            (Invoice = "application/json"),
            (String = "text/csv", example = json!("model,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd\r\ngpt-4o-mini,3,3000,1500,0,0,0,0.001350\r\ntotal,3,3000,1500,0,0,0,0.001350\r\n")),
        )),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<InvoiceQuery>,
) -> Result<Response, ApiError> {
    let tenant = required("tenant", query.tenant)?;
    let period = Period::parse("period", &required("period", query.period)?)?;
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "format must be json or csv",
                Some("format"),
            ));
        }
    };
    super::visible_tenant(&state, &caller, &tenant).await?;
    let invoice = billing::invoice(&state.store, &tenant, period).await?;
    if !csv {
        return Ok(Json(invoice).into_response());
    }
    Ok(csv_response(&invoice))
}

fn csv_response(invoice: &Invoice) -> Response {
    let mut response = (
        [(CONTENT_TYPE, "text/csv; charset=utf-8")],
        invoice.to_csv(),
    )
        .into_response();
    // Tenant ids are `ten_` + base62 and periods digits; anything else just goes unnamed.
    let name = format!(
        "attachment; filename=\"invoice-{}-{}.csv\"",
        invoice.tenant, invoice.period
    );
    if invoice
        .tenant
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && let Ok(value) = HeaderValue::from_str(&name)
    {
        response.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    response
}
