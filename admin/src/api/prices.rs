//! `/admin/v1/prices`: list, get, and set (`PUT`) what a model costs.
//!
//! Model names may hold `/` and `:` (`meta-llama/Llama-3-8B`, `llama3:8b`), so the route is
//! a wildcard, `/admin/v1/prices/{*model}`: both `a/b` and `a%2Fb` reach the same price.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::ErrorBody;
use super::{AdminState, Caller, List, ListQuery};
use crate::error::ApiError;
use crate::store::{MicroUsd, NewPrice, Price, exact_json};

/// Body of `PUT /admin/v1/prices/{model}`: USD per 1M tokens (per image for `image`),
/// each a decimal string or a JSON number with at most 6 decimals. The object a `GET`
/// returns is accepted as it is (its `model` must then be the URL's), so a read-edit-write
/// round trip works.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PriceBody {
    /// The model, as `GET` shows it; if present, the one in the URL.
    #[serde(default)]
    model: Option<String>,
    /// USD per 1M input tokens.
    #[serde(deserialize_with = "exact_json::required")]
    #[schema(schema_with = input_schema)]
    input: MicroUsd,
    /// USD per 1M output tokens.
    #[serde(deserialize_with = "exact_json::required")]
    #[schema(schema_with = output_schema)]
    output: MicroUsd,
    /// USD per 1M cached input tokens; absent or `null` = the `input` price.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = cached_input_schema)]
    cached_input: Option<MicroUsd>,
    /// USD per 1M input tokens written to the prompt cache (5-minute TTL); absent or `null`
    /// = 1.25 × `input`.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = cache_write_schema)]
    cache_write: Option<MicroUsd>,
    /// USD per 1M input tokens written to the prompt cache (1-hour TTL); absent or `null` =
    /// 2 × `input`.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = cache_write_1h_schema)]
    cache_write_1h: Option<MicroUsd>,
    /// USD per 1M input tokens of batch requests; absent or `null` = `input`.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = batch_input_schema)]
    batch_input: Option<MicroUsd>,
    /// USD per 1M output tokens of batch requests; absent or `null` = `output`.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = batch_output_schema)]
    batch_output: Option<MicroUsd>,
    /// USD per 1M tokens trained by fine-tuning jobs; absent or `null` = not priced.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = training_schema)]
    training: Option<MicroUsd>,
    /// USD per generated image; absent or `null` = not priced per image.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = image_schema)]
    image: Option<MicroUsd>,
    /// USD per minute of audio (transcriptions, translations) when the upstream reports no
    /// tokens; absent or `null` = not priced so.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = per_audio_minute_schema)]
    per_audio_minute: Option<MicroUsd>,
    /// USD per 1M characters spoken (`/v1/audio/speech`); absent or `null` = not priced so.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = per_1m_characters_schema)]
    per_1m_characters: Option<MicroUsd>,
}

fn cache_write_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per 1M input tokens written to the prompt cache (5-minute TTL); absent or null = 1.25 x input.",
        true,
    )
}
fn cache_write_1h_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per 1M input tokens written to the prompt cache (1-hour TTL); absent or null = 2 x input.",
        true,
    )
}
fn batch_input_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per 1M input tokens of batch requests; absent or null = the input price.",
        true,
    )
}
fn batch_output_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per 1M output tokens of batch requests; absent or null = the output price.",
        true,
    )
}
fn training_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per 1M tokens trained (fine-tuning); absent or null = not priced.",
        true,
    )
}
fn per_audio_minute_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per minute of audio; absent or null = not priced per minute.",
        true,
    )
}
fn per_1m_characters_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per 1M characters spoken; absent or null = not priced per character.",
        true,
    )
}

// The field docs above, for the document (a `schema_with` replaces the doc comment).
fn input_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema("USD per 1M input tokens.", false)
}

fn output_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema("USD per 1M output tokens.", false)
}

fn cached_input_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per 1M cached input tokens; absent or null = the input price.",
        true,
    )
}

fn image_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD per generated image; absent or null = not priced per image.",
        true,
    )
}

/// List prices in model-name order.
#[utoipa::path(
    get,
    path = "/admin/v1/prices",
    operation_id = "list_prices",
    tag = "prices",
    params(ListQuery),
    responses((status = 200, description = "A page of prices.", body = List<Price>)),
)]
pub(super) async fn list(
    State(state): State<AdminState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<List<Price>>, ApiError> {
    let page = state
        .store
        .list_prices(query.limit()?, query.after())
        .await?;
    Ok(Json(page.into()))
}

/// Get a model's price.
#[utoipa::path(
    get,
    path = "/admin/v1/prices/{*model}",
    operation_id = "get_price",
    tag = "prices",
    params(("model" = String, Path, description = "The model name; may contain `/` and `:`.", max_length = 256, pattern = r"^[^\s/\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$")),
    responses(
        (status = 200, description = "The price.", body = Price),
        (status = 404, description = "The model has no price.", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    State(state): State<AdminState>,
    _caller: Caller,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<Price>, ApiError> {
    match state.store.get_price(&model).await? {
        Some(price) => Ok(Json(price)),
        None => Err(ApiError::not_found(format!("no price for model {model:?}"))),
    }
}

/// Set a model's price, replacing any earlier one (global operators only). A price set
/// here wins over the config's `prices:` across restarts.
#[utoipa::path(
    put,
    path = "/admin/v1/prices/{*model}",
    operation_id = "put_price",
    tag = "prices",
    params(("model" = String, Path, description = "The model name; may contain `/` and `:`, not start with `/` or white space.", max_length = 256, pattern = r"^[^\s/\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$")),
    request_body = PriceBody,
    responses((status = 200, description = "The price as stored.", body = Price)),
)]
pub(super) async fn put(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiJson(body): ApiJson<PriceBody>,
) -> Result<Json<Price>, ApiError> {
    caller.require_global("change prices")?;
    if let Some(named) = body.model.as_deref()
        && named != model
    {
        return Err(ApiError::invalid_request(
            format!("'model' in the body ({named:?}) is not the model in the URL ({model:?})."),
            Some("model"),
        ));
    }
    let new = NewPrice {
        input: body.input,
        output: body.output,
        cached_input: body.cached_input,
        cache_write: body.cache_write,
        cache_write_1h: body.cache_write_1h,
        batch_input: body.batch_input,
        batch_output: body.batch_output,
        training: body.training,
        image: body.image,
        per_audio_minute: body.per_audio_minute,
        per_1m_characters: body.per_1m_characters,
    };
    let price = state.store.put_price(&model, new).await?;
    tracing::info!(model = %model, operator = %caller.0.subject, "price set");
    Ok(Json(price))
}
