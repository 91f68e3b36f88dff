//! The admin API's OpenAPI 3.1 document, served at `GET /admin/openapi.json`.
//!
//! Generated from the code: every handler carries a `#[utoipa::path]`, and [`split`]
//! registers each one with `utoipa_axum`, which adds the route and its documentation in
//! the same call. What the attributes would repeat on every operation (the error answers
//! any authenticated call can get, the bearer scheme) is added once, in [`finish`].

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use serde::Serialize;
use utoipa::OpenApi as _;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AdminState, cache, invoices, keys, limits, plans, prices, tenants, usage, webhooks};
use crate::error::ApiError;

/// Every error answer, in OpenAI's shape.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorBody {
    error: ErrorObject,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ErrorObject {
    /// Written for the reader; never an internal detail.
    message: String,
    /// `invalid_request_error`, `permission_error`, `server_error`, ...
    #[serde(rename = "type")]
    kind: String,
    /// The request field at fault (`name`, `models[0]`, `limit`), when there is one.
    #[schema(required = true)]
    param: Option<String>,
    /// Machine-readable: `invalid_api_key`, `permission_denied`, `not_found`, `conflict`,
    /// `method_not_allowed`, `service_unavailable`, ...
    #[schema(required = true)]
    code: Option<String>,
}

/// `GET /healthz`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "only its schema is used")]
pub(super) struct Health {
    #[schema(pattern = "^ok$")]
    status: String,
}

/// `GET /readyz`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "only its schema is used")]
pub(super) struct Readiness {
    /// `ready` or `unavailable`.
    status: String,
    /// `ok` or `unreachable`.
    store: String,
    /// Circuit state per deployment (the gateway reports it). Informational: an open
    /// circuit never makes the process unready.
    deployments: Option<Vec<super::DeploymentReadiness>>,
}

const PLAN_PATTERN: &str = r"^[A-Za-z0-9._-]{1,64}$";

/// A plan name (the store's rule, see `store::plans`).
pub(super) fn plan_name() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(PLAN_PATTERN))
        .description(Some(
            "The name of an existing plan (`default` always exists).",
        ))
        .into()
}

/// [`plan_name`], or `null` for `default`.
pub(super) fn nullable_plan_name() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(PLAN_PATTERN))
        .description(Some(
            "The name of an existing plan; absent or null = `default`.",
        ))
        .into()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        description = "Tenants, API keys, plans, prices, usage and invoices of a Tollgate \
            gateway. Every /admin/v1 call needs an operator token (`Authorization: Bearer <JWT or \
            bootstrap token>`); errors have OpenAI's shape. Lists page with `limit` and \
            `after`. USD amounts are exact decimal strings.",
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "tenants", description = "Who keys belong to, and which plan they share."),
        (name = "keys", description = "Data-plane API keys (`tg-...`); the plaintext is shown once."),
        (name = "plans", description = "Limits and monthly budgets; null = unlimited."),
        (name = "prices", description = "USD per 1M tokens (per image for `image`), per model."),
        (name = "usage", description = "Metered usage and monthly invoices, summed exactly from the usage ledger; days and months are UTC."),
        (name = "webhooks", description = "Endpoints that receive signed budget and key events."),
        (name = "probes", description = "Liveness, readiness and this document; no token needed."),
    ),
)]
struct ApiDoc;

/// The admin routes and their document, built together so neither can lack what the
/// other has.
pub(super) fn split() -> (axum::Router<AdminState>, OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(super::healthz))
        .routes(routes!(super::readyz))
        .routes(routes!(document))
        .routes(routes!(tenants::create, tenants::list))
        .routes(routes!(tenants::get, tenants::patch, tenants::delete))
        .routes(routes!(cache::purge))
        .routes(routes!(keys::create))
        .routes(routes!(keys::list))
        .routes(routes!(keys::get, keys::revoke))
        .routes(routes!(keys::rotate))
        .routes(routes!(limits::tenant))
        .routes(routes!(limits::key))
        .routes(routes!(plans::list))
        .routes(routes!(plans::get, plans::put))
        .routes(routes!(prices::list))
        .routes(routes!(prices::get, prices::put))
        .routes(routes!(usage::get))
        .routes(routes!(invoices::get))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::delete))
        .split_for_parts();
    finish(&mut doc);
    (router, doc)
}

/// The admin API's OpenAPI 3.1 document, as `GET /admin/openapi.json` serves it.
pub fn openapi() -> OpenApi {
    split().1
}

/// The document's JSON, made once on first request.
static DOCUMENT: OnceLock<Result<Bytes, String>> = OnceLock::new();

/// This document: the admin API in OpenAPI 3.1.
#[utoipa::path(
    get,
    path = "/admin/openapi.json",
    operation_id = "openapi_document",
    tag = "probes",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object, content_type = "application/json")),
)]
async fn document() -> Response {
    let json = DOCUMENT.get_or_init(|| {
        serde_json::to_vec(&openapi())
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    });
    match json {
        Ok(bytes) => ([(CONTENT_TYPE, "application/json")], bytes.clone()).into_response(),
        Err(error) => {
            tracing::error!(%error, "the OpenAPI document does not serialize");
            ApiError::internal().into_response()
        }
    }
}

/// Standard error answers, by status: component name and when they happen.
const ERRORS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Invalid input: a body, path or query parameter that does not parse or is out of range; `param` names it.",
    ),
    (
        401,
        "Unauthorized",
        "No operator token, or an invalid or expired one (`code`: `invalid_api_key`).",
    ),
    (
        403,
        "Forbidden",
        "Authenticated but not allowed: a viewer token writing, or a tenant-scoped token doing what only a global operator may (`code`: `permission_denied`).",
    ),
    (
        404,
        "NotFound",
        "The object does not exist, or belongs to a tenant this operator may not see.",
    ),
    (
        405,
        "MethodNotAllowed",
        "The path exists, but not with this method.",
    ),
    (409, "Conflict", "The change clashes with what is stored."),
    (413, "PayloadTooLarge", "The request body is too large."),
    (
        500,
        "InternalError",
        "An unexpected failure; the details are in the gateway's log only.",
    ),
    (
        503,
        "Unavailable",
        "The store cannot be reached right now; retry after `Retry-After` seconds.",
    ),
];

/// Adds what every operation shares: the bearer scheme, the error responses as
/// components, and references to those an operation can answer (beyond the ones its own
/// attribute lists); and gives the prices wildcard route its OpenAPI path name.
fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".to_owned(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An operator JWT (role `admin` or `viewer`, optional `tenant`), or the bootstrap admin token.",
                ))
                .build(),
        )),
    );
    for (status, name, description) in ERRORS {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        let mut response = ResponseBuilder::new()
            .description(*description)
            .content("application/json", content);
        if *status == 503 {
            response = response.header(
                "retry-after",
                HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    ))
                    .description(Some("Seconds to wait before retrying."))
                    .build(),
            );
        }
        components
            .responses
            .insert((*name).to_owned(), RefOr::T(response.build()));
    }

    // axum's catch-all `{*model}` is OpenAPI's `{model}` (clients percent-encode a `/`
    // inside it; the route takes either form).
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();

    let open = vec![SecurityRequirement::default()];
    for item in doc.paths.paths.values_mut() {
        for method in [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Delete,
        ] {
            let Some(operation) = operation_mut(item, &method) else {
                continue;
            };
            if operation.security.as_ref() == Some(&open) {
                continue;
            }
            let mut statuses = vec![400, 401, 405, 500, 503];
            if method != HttpMethod::Get {
                statuses.push(403);
            }
            if operation.request_body.is_some() {
                statuses.push(413);
            }
            add_errors(operation, &statuses);
        }
    }
}

fn operation_mut<'a>(
    item: &'a mut utoipa::openapi::PathItem,
    method: &HttpMethod,
) -> Option<&'a mut Operation> {
    match method {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        _ => None,
    }
}

/// References the standard error responses for `statuses`, keeping any the operation
/// describes itself (a more specific 404 or 409).
fn add_errors(operation: &mut Operation, statuses: &[u16]) {
    for (status, name, _) in ERRORS {
        if statuses.contains(status) {
            operation
                .responses
                .responses
                .entry(status.to_string())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
        }
    }
}
