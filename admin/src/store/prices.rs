//! Prices: what a model costs, in exact micro-USD per 1M tokens (and per image).
//!
//! Two sources fill this table: operators (`PUT /admin/v1/prices/{model}`), and the
//! config's `prices:` through [`Store::seed_prices`] at start. Seeding only fills gaps, so
//! a price an operator set survives every restart with an older config.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{MicroUsd, Page, Store, StoreError};

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
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewPrice {
    pub input: MicroUsd,
    pub output: MicroUsd,
    /// Absent = the `input` price.
    #[serde(default)]
    pub cached_input: Option<MicroUsd>,
    #[serde(default)]
    pub image: Option<MicroUsd>,
    #[serde(default)]
    pub per_audio_minute: Option<MicroUsd>,
    #[serde(default)]
    pub per_1m_characters: Option<MicroUsd>,
}

impl Price {
    fn new(model: &str, new: &NewPrice) -> Self {
        Price {
            model: model.to_owned(),
            input: new.input,
            output: new.output,
            cached_input: new.cached_input.unwrap_or(new.input),
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
        Ok(Price {
            model: row.try_get("model")?,
            input: amount("input", row.try_get("input_micro_usd")?)?,
            output: amount("output", row.try_get("output_micro_usd")?)?,
            cached_input: amount("cached_input", row.try_get("cached_input_micro_usd")?)?,
            image: row
                .try_get::<Option<i64>, _>("image_micro_usd")?
                .map(|v| amount("image", v))
                .transpose()?,
            per_audio_minute: row
                .try_get::<Option<i64>, _>("per_audio_minute_micro_usd")?
                .map(|v| amount("per_audio_minute", v))
                .transpose()?,
            per_1m_characters: row
                .try_get::<Option<i64>, _>("per_1m_characters_micro_usd")?
                .map(|v| amount("per_1m_characters", v))
                .transpose()?,
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

impl Store {
    /// The price of `model`, or `None` when it has none.
    pub async fn get_price(&self, model: &str) -> Result<Option<Price>, StoreError> {
        sqlx::query(
            "SELECT model, input_micro_usd, output_micro_usd, cached_input_micro_usd, image_micro_usd, \
             per_audio_minute_micro_usd, per_1m_characters_micro_usd \
             FROM prices WHERE model = $1",
        )
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
        let rows = sqlx::query(
            "SELECT model, input_micro_usd, output_micro_usd, cached_input_micro_usd, image_micro_usd, \
             per_audio_minute_micro_usd, per_1m_characters_micro_usd \
             FROM prices WHERE model > $1 ORDER BY model LIMIT $2",
        )
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
        sqlx::query(
            "INSERT INTO prices (model, input_micro_usd, output_micro_usd, cached_input_micro_usd, image_micro_usd, \
               per_audio_minute_micro_usd, per_1m_characters_micro_usd) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (model) DO UPDATE SET input_micro_usd = excluded.input_micro_usd, \
               output_micro_usd = excluded.output_micro_usd, \
               cached_input_micro_usd = excluded.cached_input_micro_usd, \
               image_micro_usd = excluded.image_micro_usd, \
               per_audio_minute_micro_usd = excluded.per_audio_minute_micro_usd, \
               per_1m_characters_micro_usd = excluded.per_1m_characters_micro_usd",
        )
        .bind(&price.model)
        .bind(price.input.micros())
        .bind(price.output.micros())
        .bind(price.cached_input.micros())
        .bind(price.image.map(MicroUsd::micros))
        .bind(price.per_audio_minute.map(MicroUsd::micros))
        .bind(price.per_1m_characters.map(MicroUsd::micros))
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
            let price = Price::new(model, new);
            sqlx::query(
                "INSERT INTO prices (model, input_micro_usd, output_micro_usd, cached_input_micro_usd, image_micro_usd, \
                   per_audio_minute_micro_usd, per_1m_characters_micro_usd) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model) DO NOTHING",
            )
            .bind(&price.model)
            .bind(price.input.micros())
            .bind(price.output.micros())
            .bind(price.cached_input.micros())
            .bind(price.image.map(MicroUsd::micros))
            .bind(price.per_audio_minute.map(MicroUsd::micros))
            .bind(price.per_1m_characters.map(MicroUsd::micros))
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
