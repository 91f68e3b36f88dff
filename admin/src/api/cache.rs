//! `DELETE /admin/v1/tenants/{id}/cache`: drops a tenant's cached answers.
//!
//! The cache lives in the data plane, which this crate must not depend on; the gateway
//! hands its purge function to the admin router as a [`CachePurgeHook`] request extension
//! (`router(...).layer(Extension(hook))`), so [`super::AdminState`] and everything that
//! builds it stay as they are. Without the hook (the admin router on its own) the endpoint
//! answers 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;

use super::extract::ApiPath;
use super::openapi::ErrorBody;
use super::{AdminState, Caller, visible_tenant};
use crate::error::ApiError;

/// What the host (the gateway) does to purge a tenant's cache.
pub trait CachePurge: Send + Sync {
    /// Makes every cached answer of `tenant` unreachable; `Err` carries a message safe to
    /// show (the store behind the cache is down).
    fn purge<'a>(
        &'a self,
        tenant: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The hook as a request extension of the admin router.
#[derive(Clone)]
pub struct CachePurgeHook(pub Arc<dyn CachePurge>);

/// The answer of a purge.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Purged {
    /// The tenant's id.
    tenant: String,
    /// Always true: every entry cached before this call is gone, on every replica.
    purged: bool,
}

/// Drop every cached answer of this tenant (in process, or in Redis for every replica).
#[utoipa::path(
    delete,
    path = "/admin/v1/tenants/{id}/cache",
    operation_id = "purge_tenant_cache",
    tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id (`ten_...`).")),
    responses(
        (status = 200, description = "The tenant's cache is empty.", body = Purged),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
        (status = 503, description = "The cache store is unreachable, or this process has no cache.", body = ErrorBody),
    ),
)]
pub(super) async fn purge(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    hook: Option<Extension<CachePurgeHook>>,
) -> Result<Json<Purged>, ApiError> {
    let tenant = visible_tenant(&state, &caller, &id).await?;
    let Some(Extension(CachePurgeHook(hook))) = hook else {
        return Err(ApiError::unavailable(
            "this process serves no response cache",
        ));
    };
    hook.purge(&tenant.id)
        .await
        .map_err(ApiError::unavailable)?;
    tracing::info!(tenant = %tenant.id, operator = %caller.0.subject, "tenant cache purged");
    Ok(Json(Purged {
        tenant: tenant.id,
        purged: true,
    }))
}
