//! Prices: what a model costs, in exact micro-USD per 1M tokens (and per image).
//!
//! Two sources fill this table: operators (`PUT /admin/v1/prices/{model}`), and the
//! config's `prices:` through [`Store::seed_prices`] at start. Seeding only fills gaps, so
//! a price an operator set survives every restart with an older config.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{MicroUsd, Page, Store, StoreError};

/// The columns of a price row, in the order [`put`](Store::put_price) binds them.
const COLUMNS: &str = "model, input_micro_usd, output_micro_usd, cached_input_micro_usd, \
     image_micro_usd, per_audio_minute_micro_usd, per_1m_characters_micro_usd, \
     cache_write_micro_usd, cache_write_1h_micro_usd, batch_input_micro_usd, \
     batch_output_micro_usd, training_micro_usd";

/// Longest model name accepted (the same bound as a key's allowed models).
const MAX_MODEL_CHARS: usize = 256;

/// A model's price as the admin API shows it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct Price {
    /// The model name clients send (`gpt-4o-mini`, `meta-llama/Llama-3-8B`, `llama3:8b`).
    pub model: String,
    /// USD per 1M input (prompt) tokens that were not served from the provider's cache.
    pub input: MicroUsd,
    /// USD per 1M output (completion) tokens.
    pub output: MicroUsd,
    /// USD per 1M input tokens the provider reports as cached; `input` when not set.
    pub cached_input: MicroUsd,
    /// USD per 1M input tokens written to the provider's prompt cache with the 5-minute
    /// TTL; 1.25 × `input` when not set (Anthropic's published rule).
    pub cache_write: MicroUsd,
    /// USD per 1M input tokens written to the prompt cache with the 1-hour TTL; 2 ×
    /// `input` when not set.
    pub cache_write_1h: MicroUsd,
    /// USD per 1M input tokens of a batch's requests; `input` when not set.
    pub batch_input: MicroUsd,
    /// USD per 1M output tokens of a batch's requests; `output` when not set.
    pub batch_output: MicroUsd,
    /// USD per 1M tokens trained (fine-tuning's `trained_tokens`); `null` when not priced.
    pub training: Option<MicroUsd>,
    /// USD per generated image; `null` when the model is not priced per image.
    pub image: Option<MicroUsd>,
    /// USD per minute of audio transcribed or translated, when the upstream reports no
    /// tokens; `null` when not priced so.
    pub per_audio_minute: Option<MicroUsd>,
    /// USD per 1M characters of text spoken (`/v1/audio/speech`); `null` when not priced so.
    pub per_1m_characters: Option<MicroUsd>,
}

/// A price to set: the body of `PUT /admin/v1/prices/{model}`, or one of the config's
/// `prices:` entries. Amounts are USD per 1M tokens (per image for `image`).
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewPrice {
    pub input: MicroUsd,
    pub output: MicroUsd,
    /// Absent = the `input` price.
    #[serde(default)]
    pub cached_input: Option<MicroUsd>,
    /// Absent = 1.25 × `input`, resolved when read.
    #[serde(default)]
    pub cache_write: Option<MicroUsd>,
    /// Absent = 2 × `input`, resolved when read.
    #[serde(default)]
    pub cache_write_1h: Option<MicroUsd>,
    /// Absent = `input`, resolved when read.
    #[serde(default)]
    pub batch_input: Option<MicroUsd>,
    /// Absent = `output`, resolved when read.
    #[serde(default)]
    pub batch_output: Option<MicroUsd>,
    /// Absent = not priced.
    #[serde(default)]
    pub training: Option<MicroUsd>,
    #[serde(default)]
    pub image: Option<MicroUsd>,
    #[serde(default)]
    pub per_audio_minute: Option<MicroUsd>,
    #[serde(default)]
    pub per_1m_characters: Option<MicroUsd>,
}

/// `price` × `numerator` / `denominator`, rounded half-up to a micro-USD (per 1M tokens:
/// far below anything a provider bills).
fn times(price: MicroUsd, numerator: i64, denominator: i64) -> MicroUsd {
    let scaled = i128::from(price.micros()) * i128::from(numerator);
    let d = i128::from(denominator);
    MicroUsd::from_micros(i64::try_from((scaled + d / 2) / d).unwrap_or(i64::MAX))
        .unwrap_or(MicroUsd::ZERO)
}

/// The published rules for the prices an operator did not set: (cache_write,
/// cache_write_1h, batch_input, batch_output).
fn derived(
    input: MicroUsd,
    output: MicroUsd,
    set: [Option<MicroUsd>; 4],
) -> (MicroUsd, MicroUsd, MicroUsd, MicroUsd) {
    let [cache_write, cache_write_1h, batch_input, batch_output] = set;
    (
        cache_write.unwrap_or_else(|| times(input, 5, 4)),
        cache_write_1h.unwrap_or_else(|| times(input, 2, 1)),
        batch_input.unwrap_or(input),
        batch_output.unwrap_or(output),
    )
}

impl Price {
    fn new(model: &str, new: &NewPrice) -> Self {
        let (cache_write, cache_write_1h, batch_input, batch_output) = derived(
            new.input,
            new.output,
            [
                new.cache_write,
                new.cache_write_1h,
                new.batch_input,
                new.batch_output,
            ],
        );
        Price {
            model: model.to_owned(),
            input: new.input,
            output: new.output,
            cached_input: new.cached_input.unwrap_or(new.input),
            cache_write,
            cache_write_1h,
            batch_input,
            batch_output,
            training: new.training,
            image: new.image,
            per_audio_minute: new.per_audio_minute,
            per_1m_characters: new.per_1m_characters,
        }
    }

    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let amount = |column: &'static str, value: i64| {
            MicroUsd::from_micros(value)
                .ok_or_else(|| StoreError::corrupt(format!("negative {column} stored: {value}")))
        };
        let optional =
            |field: &'static str, column: &str| -> Result<Option<MicroUsd>, StoreError> {
                row.try_get::<Option<i64>, _>(column)?
                    .map(|v| amount(field, v))
                    .transpose()
            };
        let input = amount("input", row.try_get("input_micro_usd")?)?;
        let output = amount("output", row.try_get("output_micro_usd")?)?;
        let (cache_write, cache_write_1h, batch_input, batch_output) = derived(
            input,
            output,
            [
                optional("cache_write", "cache_write_micro_usd")?,
                optional("cache_write_1h", "cache_write_1h_micro_usd")?,
                optional("batch_input", "batch_input_micro_usd")?,
                optional("batch_output", "batch_output_micro_usd")?,
            ],
        );
        Ok(Price {
            model: row.try_get("model")?,
            input,
            output,
            cached_input: amount("cached_input", row.try_get("cached_input_micro_usd")?)?,
            cache_write,
            cache_write_1h,
            batch_input,
            batch_output,
            training: optional("training", "training_micro_usd")?,
            image: optional("image", "image_micro_usd")?,
            per_audio_minute: optional("per_audio_minute", "per_audio_minute_micro_usd")?,
            per_1m_characters: optional("per_1m_characters", "per_1m_characters_micro_usd")?,
        })
    }
}

/// A model name as a price's key: 1 to 256 characters, no control characters, and not
/// starting with white space or `/` (it could not be addressed as
/// `/admin/v1/prices/{model}`). The OpenAPI document states the same rule as a pattern
/// (`api::prices`); keep the two in step.
fn validate_model(field: &'static str, model: &str) -> Result<(), StoreError> {
    let bad_start = model
        .chars()
        .next()
        .is_none_or(|c| c.is_whitespace() || c == '/');
    if bad_start || model.chars().count() > MAX_MODEL_CHARS || model.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            format!(
                "{field} must be a model name of 1 to {MAX_MODEL_CHARS} characters, without control characters, not starting with white space or '/'"
            ),
        ));
    }
    Ok(())
}

/// The insert of one price row, binding [`COLUMNS`] in order ([`bind_price`]).
const INSERT: &str = "INSERT INTO prices (model, input_micro_usd, output_micro_usd, \
     cached_input_micro_usd, image_micro_usd, per_audio_minute_micro_usd, \
     per_1m_characters_micro_usd, cache_write_micro_usd, cache_write_1h_micro_usd, \
     batch_input_micro_usd, batch_output_micro_usd, training_micro_usd) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Binds a price row. Prices derived by rule are stored as NULL (the rule is applied when
/// read), so the row says what the operator set.
fn bind_price<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    model: &'q str,
    new: &NewPrice,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let micros = |v: Option<MicroUsd>| v.map(MicroUsd::micros);
    query
        .bind(model)
        .bind(new.input.micros())
        .bind(new.output.micros())
        .bind(new.cached_input.unwrap_or(new.input).micros())
        .bind(micros(new.image))
        .bind(micros(new.per_audio_minute))
        .bind(micros(new.per_1m_characters))
        .bind(micros(new.cache_write))
        .bind(micros(new.cache_write_1h))
        .bind(micros(new.batch_input))
        .bind(micros(new.batch_output))
        .bind(micros(new.training))
}

impl Store {
    /// The price of `model`, or `None` when it has none.
    pub async fn get_price(&self, model: &str) -> Result<Option<Price>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM prices WHERE model = $1");
        // A constant column list and a placeholder only.
        sqlx::query(AssertSqlSafe(sql))
            .bind(model)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(Price::from_row)
            .transpose()
    }

    /// Up to `limit` prices with model names after `after`, in name order.
    pub async fn list_prices(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<Price>, StoreError> {
        let fetch = super::fetch_limit("limit", limit)?;
        let sql = format!("SELECT {COLUMNS} FROM prices WHERE model > $1 ORDER BY model LIMIT $2");
        // A constant column list and placeholders only.
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(super::cursor(after))
            .bind(fetch)
            .fetch_all(self.pool())
            .await?;
        let prices = rows
            .iter()
            .map(Price::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::into_page(prices, limit))
    }

    /// Sets `model`'s price, replacing any earlier one (an operator's word is final).
    pub async fn put_price(&self, model: &str, new: NewPrice) -> Result<Price, StoreError> {
        validate_model("model", model)?;
        let price = Price::new(model, &new);
        let sql = format!(
            "{INSERT} ON CONFLICT (model) DO UPDATE SET input_micro_usd = excluded.input_micro_usd, \
               output_micro_usd = excluded.output_micro_usd, \
               cached_input_micro_usd = excluded.cached_input_micro_usd, \
               image_micro_usd = excluded.image_micro_usd, \
               per_audio_minute_micro_usd = excluded.per_audio_minute_micro_usd, \
               per_1m_characters_micro_usd = excluded.per_1m_characters_micro_usd, \
               cache_write_micro_usd = excluded.cache_write_micro_usd, \
               cache_write_1h_micro_usd = excluded.cache_write_1h_micro_usd, \
               batch_input_micro_usd = excluded.batch_input_micro_usd, \
               batch_output_micro_usd = excluded.batch_output_micro_usd, \
               training_micro_usd = excluded.training_micro_usd"
        );
        // Constant text and placeholders only.
        bind_price(sqlx::query(AssertSqlSafe(sql)), model, &new)
            .execute(self.pool())
            .await?;
        Ok(price)
    }

    /// Inserts the config's prices for models that have none yet, all or nothing. Models
    /// that already have a price keep it: an operator may have changed it since, and the
    /// store, not the config file, is where prices live.
    pub async fn seed_prices(&self, prices: &[(String, NewPrice)]) -> Result<(), StoreError> {
        for (model, _) in prices {
            validate_model("prices", model)?;
        }
        let mut tx = self.pool().begin().await?;
        for (model, new) in prices {
            let sql = format!("{INSERT} ON CONFLICT (model) DO NOTHING");
            // Constant text and placeholders only.
            bind_price(sqlx::query(AssertSqlSafe(sql)), model, new)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        let ok = |m: &str| validate_model("model", m).is_ok();
        assert!(ok("gpt-4o-mini"));
        assert!(ok("meta-llama/Llama-3-8B"));
        assert!(ok("llama3:8b"));
        assert!(!ok(""));
        assert!(!ok(" "));
        assert!(!ok(" gpt"));
        assert!(ok("gpt 4"));
        assert!(!ok("/abs"));
        assert!(!ok("a\nb"));
        assert!(!ok(&"m".repeat(MAX_MODEL_CHARS + 1)));
    }
}
