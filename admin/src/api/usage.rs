//! `GET /admin/v1/usage`: usage summed per day, model or key, from the ledger's daily
//! rollup ([`crate::billing`] parses the parameters).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use serde::Deserialize;

use super::extract::ApiQuery;
use super::openapi::ErrorBody;
use super::{AdminState, Caller, List};
use crate::billing::UsageParams;
use crate::error::ApiError;
use crate::store::{Page, UsageGroupBy, UsageRow};

/// `?tenant=&key=&model=&user=&tag=&from=&to=&group_by=&format=`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UsageQuery {
    /// Only this tenant's usage (`ten_...`). Without it: every tenant the operator may see
    /// (a tenant-scoped operator: its own).
    tenant: Option<String>,
    /// Only this key's usage (its public id).
    key: Option<String>,
    /// Only this model's usage (the model name clients send).
    model: Option<String>,
    /// First UTC day included, `YYYY-MM-DD`. Without `from` and `to`: the current month.
    #[param(value_type = Option<String>, format = Date)]
    from: Option<String>,
    /// First UTC day not included (the range's exclusive end), `YYYY-MM-DD`; not before
    /// `from`. Without it: no end.
    #[param(value_type = Option<String>, format = Date)]
    to: Option<String>,
    /// One row per `day` (default), `model`, `key`, end `user` or `tag`.
    #[param(value_type = Option<UsageGroupBy>, inline)]
    group_by: Option<String>,
    /// Only this end user's usage (the body's `user` / `safety_identifier`, else
    /// `x-tollgate-user`). Not with `tag` or `group_by=tag`.
    user: Option<String>,
    /// Only the usage of requests carrying this tag (`x-tollgate-tags`). Not with `user`
    /// or `group_by=user`.
    tag: Option<String>,
    /// `json` (default) or `csv` (header
    /// `group,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd`).
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// Usage summed per day, model or key.
///
/// Requests, tokens and exact cost per group, in `group` order; days are UTC. The range is
/// `from` (included) to `to` (excluded), the current month when neither is given.
#[utoipa::path(
    get,
    path = "/admin/v1/usage",
    operation_id = "get_usage",
    tag = "usage",
    params(UsageQuery),
    responses(
        (status = 200, description = "One row per group that has usage; `has_more` is always false.", content(
            (List<UsageRow> = "application/json"),
            (String = "text/csv", example = json!("group,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd\r\nalice,3,3000,1500,0,0,0,0.001350\r\n")),
        )),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Response, ApiError> {
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
    let params = UsageParams {
        tenant: query.tenant,
        key: query.key,
        model: query.model,
        from: query.from,
        to: query.to,
        group_by: query.group_by,
        user: query.user,
        tag: query.tag,
    };
    let (mut filter, group_by) = params.into_filter()?;
    // A tenant-scoped operator sees its own tenant's usage, whether it names it or not.
    if filter.tenant.is_none() {
        filter.tenant = caller.0.tenant.clone();
    }
    if let Some(tenant) = &filter.tenant {
        super::visible_tenant(&state, &caller, tenant).await?;
    }
    let rows = state.store.usage_summary(&filter, group_by).await?;
    if csv {
        return Ok((
            [(CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::billing::usage_csv(&rows),
        )
            .into_response());
    }
    let list: List<UsageRow> = Page {
        data: rows,
        has_more: false,
    }
    .into();
    Ok(Json(list).into_response())
}
