//! `/admin/v1/webhooks`: endpoints that receive budget and key events (global operators
//! only). The signing secret is in the create answer only. URLs are checked against SSRF
//! here ([`crate::webhooks::check_url`]) and again at every delivery.

use axum::extract::State;
use axum::{Extension, Json};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::ErrorBody;
use super::{AdminState, Caller, List, ListQuery};
use crate::error::ApiError;
use crate::store::{EVENT_TYPES, Webhook};
use crate::webhooks::WebhookPolicy;

/// Body of `POST /admin/v1/webhooks`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewWebhook {
    /// Where events are POSTed: http(s), a public address unless
    /// `webhooks.allow_private_targets`.
    url: String,
    /// Event types to receive; absent = all of `budget.threshold`, `budget.exhausted`,
    /// `key.expiring`, `key.revoked`.
    #[serde(default)]
    events: Option<Vec<String>>,
}

/// The create answer: the endpoint and its signing secret (shown this once).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct CreatedWebhook {
    #[serde(flatten)]
    webhook: Webhook,
    /// Signs every delivery (`tollgate-signature`); shown only here.
    secret: String,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no webhook with id {id:?}"))
}

/// Create a webhook endpoint.
#[utoipa::path(
    post,
    path = "/admin/v1/webhooks",
    operation_id = "create_webhook",
    tag = "webhooks",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "The endpoint, with its signing `secret` (shown once).", body = CreatedWebhook),
        (status = 400, description = "A bad or non-public `url`, or an unknown event type.", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    policy: Option<Extension<WebhookPolicy>>,
    ApiJson(body): ApiJson<NewWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    caller.require_global("manage webhooks")?;
    let allow_private = policy.is_some_and(|Extension(p)| p.allow_private_targets);
    if body.url.len() > 2048 {
        return Err(ApiError::invalid_request(
            "url is longer than 2048 characters",
            Some("url"),
        ));
    }
    crate::webhooks::check_url(&body.url, allow_private)
        .await
        .map_err(|e| ApiError::invalid_request(e.0, Some("url")))?;
    let events = match body.events {
        None => EVENT_TYPES.iter().map(|e| (*e).to_owned()).collect(),
        Some(list) => {
            if list.is_empty() {
                return Err(ApiError::invalid_request(
                    "events must name at least one event type",
                    Some("events"),
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for e in list {
                if !EVENT_TYPES.contains(&e.as_str()) {
                    return Err(ApiError::invalid_request(
                        format!(
                            "unknown event type {e:?}; known: {}",
                            EVENT_TYPES.join(", ")
                        ),
                        Some("events"),
                    ));
                }
                if !out.contains(&e) {
                    out.push(e);
                }
            }
            out
        }
    };
    let (webhook, secret) = state.store.create_webhook(&body.url, &events).await?;
    tracing::info!(webhook = %webhook.id, operator = %caller.0.subject, "webhook created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { webhook, secret }),
    ))
}

/// List webhook endpoints in id order.
#[utoipa::path(
    get,
    path = "/admin/v1/webhooks",
    operation_id = "list_webhooks",
    tag = "webhooks",
    params(ListQuery),
    responses((status = 200, description = "A page of endpoints.", body = List<Webhook>)),
)]
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<List<Webhook>>, ApiError> {
    caller.require_global("manage webhooks")?;
    let page = state
        .store
        .list_webhooks(query.limit()?, query.after())
        .await?;
    Ok(Json(page.into()))
}

/// Get a webhook endpoint (without its secret).
#[utoipa::path(
    get,
    path = "/admin/v1/webhooks/{id}",
    operation_id = "get_webhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id (`wh_...`).")),
    responses(
        (status = 200, description = "The endpoint.", body = Webhook),
        (status = 404, description = "No such endpoint.", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Webhook>, ApiError> {
    caller.require_global("manage webhooks")?;
    state
        .store
        .get_webhook(&id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

/// Delete a webhook endpoint; its undelivered events are dropped.
#[utoipa::path(
    delete,
    path = "/admin/v1/webhooks/{id}",
    operation_id = "delete_webhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id (`wh_...`).")),
    responses(
        (status = 200, description = "The deleted endpoint.", body = Webhook),
        (status = 404, description = "No such endpoint.", body = ErrorBody),
    ),
)]
pub(super) async fn delete(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Webhook>, ApiError> {
    caller.require_global("manage webhooks")?;
    let hook = state.store.delete_webhook(&id).await?;
    tracing::info!(webhook = %id, operator = %caller.0.subject, "webhook deleted");
    Ok(Json(hook))
}
