//! Usage records: one per request that reached the cache or an upstream, written by the
//! gateway's meter (through its local spool) and read by usage queries and invoices.
//!
//! This file holds the shared shape ([`UsageRecord`]) and the one cost rule
//! ([`Price::cost`]); the tables, the idempotent batch insert ([`Store::insert_usage`]),
//! retention ([`Store::prune_usage`]) and the reads of the daily rollup live in
//! [`ledger`](super::ledger).

use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Row};
use time::Date;

use super::ledger::MS_PER_DAY;
use super::{MicroUsd, Price, Store, StoreError};

/// One metered request. Serialized as one JSON line in the gateway's spool, so fields are
/// only ever added (with `#[serde(default)]`), never renamed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The request id (`x-request-id`): the idempotency key of the ledger.
    pub request_id: String,
    pub tenant_id: String,
    pub key_id: String,
    /// The client-facing model name (prices are per client-facing model).
    pub model: String,
    /// The deployment that served (`x-tollgate-deployment`); `cache` for a cache hit.
    pub deployment: String,
    /// `chat_completions`, `completions`, `embeddings`, `images_generations`, `moderations`.
    pub endpoint: String,
    /// HTTP status the client got (a stream cut midway keeps its 200).
    pub status: u16,
    /// Prompt tokens, cached ones included (as OpenAI reports them).
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `input_tokens` the provider served from its prompt cache.
    pub cached_tokens: u64,
    /// The part of `input_tokens` the provider wrote to its prompt cache (Anthropic's
    /// `cache_creation_input_tokens`, both TTLs), priced at `cache_write` / `cache_write_1h`.
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// The part of `output_tokens` the model spent reasoning
    /// (`completion_tokens_details.reasoning_tokens`); priced as output.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Images generated.
    #[serde(default)]
    pub images: u32,
    /// What this request costs, in integer micro-USD ([`Price::cost`]).
    pub cost_micro_usd: i64,
    /// Answered from the gateway's response cache.
    #[serde(default)]
    pub cache_hit: bool,
    /// Whether the token counts come from the upstream's `usage` (else a tokenizer).
    #[serde(default)]
    pub usage_reported: bool,
    /// The client went away before the response ended.
    #[serde(default)]
    pub client_disconnected: bool,
    /// Time from the request to the response's last byte, ms.
    pub latency_ms: u64,
    /// Time to the first streamed content byte, ms (streams only).
    #[serde(default)]
    pub ttft_ms: Option<u64>,
    /// When the request started, unix milliseconds (UTC). Usage days and invoice months
    /// are taken from this.
    pub created_at_ms: i64,
    /// The end user the request was made for (the body's `user` / `safety_identifier`,
    /// else `x-tollgate-user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    /// The request's tags (`x-tollgate-tags`), distinct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Token and image counts to price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones and cache writes included.
    pub input_tokens: u64,
    /// Completion tokens, reasoning ones included.
    pub output_tokens: u64,
    /// The cached part of `input_tokens`, priced at `cached_input`.
    pub cached_tokens: u64,
    /// The part of `input_tokens` written to the provider's prompt cache (both TTLs),
    /// priced at `cache_write`, except its 1-hour part.
    pub cache_write_tokens: u64,
    /// The part of `cache_write_tokens` written with a 1-hour TTL, priced at
    /// `cache_write_1h`.
    pub cache_write_1h_tokens: u64,
    /// The part of `output_tokens` spent reasoning: recorded, priced as output.
    pub reasoning_tokens: u64,
    pub images: u32,
}

/// Input token counts by the rate each is priced at; they add up to `input_tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InputSplit {
    plain: u64,
    cached: u64,
    write_5m: u64,
    write_1h: u64,
}

impl Usage {
    /// Splits `input_tokens` by rate. A confused upstream (more cached or written tokens
    /// than input) never makes a negative count: reads come first, then writes, each
    /// capped by what is left.
    fn input_split(&self) -> InputSplit {
        let cached = self.cached_tokens.min(self.input_tokens);
        let left = self.input_tokens - cached;
        let write = self.cache_write_tokens.min(left);
        let write_1h = self.cache_write_1h_tokens.min(write);
        InputSplit {
            plain: left - write,
            cached,
            write_5m: write - write_1h,
            write_1h,
        }
    }
}

impl Price {
    /// The cost of `usage`: tokens × USD per 1M tokens, summed exactly and rounded half-up
    /// once to whole micro-USD, plus images × the per-image price. Saturates instead of
    /// overflowing (no real request comes near).
    pub fn cost(&self, usage: &Usage) -> MicroUsd {
        let split = usage.input_split();
        // micro-USD per 1M tokens × tokens = micro-USD × 1e6, exact in i128.
        let at = |tokens: u64, price: MicroUsd| i128::from(tokens) * i128::from(price.micros());
        let scaled = at(split.plain, self.input)
            + at(split.cached, self.cached_input)
            + at(split.write_5m, self.cache_write)
            + at(split.write_1h, self.cache_write_1h)
            + at(usage.output_tokens, self.output);
        let tokens = (scaled + 500_000) / 1_000_000;
        let images = i128::from(usage.images) * i128::from(self.image.map_or(0, MicroUsd::micros));
        let total = i64::try_from(tokens + images).unwrap_or(i64::MAX);
        MicroUsd::from_micros(total).unwrap_or(MicroUsd::ZERO)
    }
}

impl Price {
    /// The cost of one request of a batch: as [`Price::cost`], with uncached input at
    /// `batch_input` and output at `batch_output` (cached input and cache writes keep
    /// their own prices).
    pub fn batch_cost(&self, usage: &Usage) -> MicroUsd {
        Price {
            input: self.batch_input,
            output: self.batch_output,
            ..self.clone()
        }
        .cost(usage)
    }
}

impl Price {
    /// The cost of audio priced without tokens: `audio_ms` milliseconds at
    /// `per_audio_minute`, plus `characters` at `per_1m_characters`, summed exactly and
    /// rounded half-up once. A price without the field counts 0 for that part.
    pub fn audio_cost(&self, audio_ms: u64, characters: u64) -> MicroUsd {
        // In units of 1 / (60 000 × 1 000 000) micro-USD, so both parts add exactly.
        let scale = 60_000i128 * 1_000_000;
        let scaled = i128::from(audio_ms)
            * i128::from(self.per_audio_minute.map_or(0, MicroUsd::micros))
            * 1_000_000
            + i128::from(characters)
                * i128::from(self.per_1m_characters.map_or(0, MicroUsd::micros))
                * 60_000;
        let total = i64::try_from((scaled + scale / 2) / scale).unwrap_or(i64::MAX);
        MicroUsd::from_micros(total).unwrap_or(MicroUsd::ZERO)
    }
}

// === reads: the daily rollup ===

/// Julian day number of 1970-01-01: unix day numbers (the rollup's `day`) are Julian day
/// numbers minus this.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// A date as the rollup's `day`: days since 1970-01-01.
fn unix_day(date: Date) -> i64 {
    i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY
}

/// The rollup's `day` as `YYYY-MM-DD`.
fn day_text(day: i64) -> Result<String, StoreError> {
    let date = i32::try_from(day + UNIX_EPOCH_JULIAN_DAY)
        .ok()
        .and_then(|julian| Date::from_julian_day(julian).ok())
        .ok_or_else(|| StoreError::corrupt(format!("stored day {day} is out of range")))?;
    Ok(format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    ))
}

/// What usage rows sum over: one row per day, model or key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroupBy {
    /// One row per UTC day (`group` = `YYYY-MM-DD`).
    #[default]
    Day,
    /// One row per model (`group` = the client-facing model name).
    Model,
    /// One row per API key (`group` = the key's public id).
    Key,
    /// One row per end user (`group` = the id; `""` for requests without one).
    User,
    /// One row per tag (`group` = the tag; `""` for untagged requests). A request with
    /// several tags counts in each of their rows.
    Tag,
}

impl UsageGroupBy {
    /// From its query-string spelling (`day`, `model`, `key`).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "day" => Some(Self::Day),
            "model" => Some(Self::Model),
            "key" => Some(Self::Key),
            "user" => Some(Self::User),
            "tag" => Some(Self::Tag),
            _ => None,
        }
    }

    /// The rollup column grouped on: a fixed name, never input.
    fn column(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Model => "model",
            Self::Key => "key_id",
            Self::User => "end_user",
            Self::Tag => "tag",
        }
    }
}

/// Which usage to sum. `None` fields do not filter. Days are UTC calendar days.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub tenant: Option<String>,
    /// A key's public id.
    pub key: Option<String>,
    pub model: Option<String>,
    /// The first day included.
    pub from: Option<Date>,
    /// The first day *not* included (exclusive end).
    pub to: Option<Date>,
    /// An end user's id.
    pub user: Option<String>,
    /// A tag.
    pub tag: Option<String>,
}

impl UsageFilter {
    /// The rollup that answers a query by `group_by` with this filter: the per-tag one
    /// (which keeps the end user too) when tags are grouped or filtered, the per-user one
    /// when only users are, the platform-wide one (per day and model) when nothing
    /// narrower than a model is asked for, else `usage_daily`.
    fn table(&self, group_by: UsageGroupBy) -> &'static str {
        let users = self.user.is_some() || group_by == UsageGroupBy::User;
        let tags = self.tag.is_some() || group_by == UsageGroupBy::Tag;
        match (users, tags) {
            (_, true) => "usage_daily_tags",
            (true, false) => "usage_daily_users",
            (false, false)
                if self.tenant.is_none()
                    && self.key.is_none()
                    && matches!(group_by, UsageGroupBy::Day | UsageGroupBy::Model) =>
            {
                "usage_daily_models"
            }
            (false, false) => "usage_daily",
        }
    }
}

/// One row of a usage report: the sums of every record in its group.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct UsageRow {
    /// What the row sums over: a UTC day (`YYYY-MM-DD`), a model name or a key id.
    #[schema(examples("2026-01-15"))]
    pub group: String,
    #[schema(minimum = 0)]
    pub requests: u64,
    /// Prompt tokens, cached ones included.
    #[schema(minimum = 0)]
    pub input_tokens: u64,
    #[schema(minimum = 0)]
    pub output_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    #[schema(minimum = 0)]
    pub cached_tokens: u64,
    /// The part of `input_tokens` written to the provider's prompt cache.
    #[schema(minimum = 0)]
    pub cache_write_tokens: u64,
    /// The part of `output_tokens` the model spent reasoning.
    #[schema(minimum = 0)]
    pub reasoning_tokens: u64,
    /// The exact sum of the records' costs (each rounded to a micro-USD when recorded).
    pub cost_usd: MicroUsd,
}

/// One day of one model's (or key's) usage: [`Store::usage_by_day_split`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyUsageRow {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// `group` is the model name or the key's public id.
    pub usage: UsageRow,
}

/// The sums a usage query selects, named as [`UsageRow::from_sums`] reads them.
const SUMS: &str = "CAST(SUM(requests) AS BIGINT) AS requests, \
     CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
     CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
     CAST(SUM(cached_tokens) AS BIGINT) AS cached_tokens, \
     CAST(SUM(cache_write_tokens) AS BIGINT) AS cache_write_tokens, \
     CAST(SUM(reasoning_tokens) AS BIGINT) AS reasoning_tokens, \
     CAST(SUM(cost_micro_usd) AS BIGINT) AS cost_micro_usd";

impl UsageRow {
    /// A row of `group` from the [`SUMS`] columns of `row`.
    fn from_sums(group: String, row: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        let count = |column: &'static str| -> Result<u64, StoreError> {
            non_negative(column, row.try_get(column)?)
        };
        let cost: i64 = row.try_get("cost_micro_usd")?;
        Ok(UsageRow {
            group,
            requests: count("requests")?,
            input_tokens: count("input_tokens")?,
            output_tokens: count("output_tokens")?,
            cached_tokens: count("cached_tokens")?,
            cache_write_tokens: count("cache_write_tokens")?,
            reasoning_tokens: count("reasoning_tokens")?,
            cost_usd: MicroUsd::from_micros(cost)
                .ok_or_else(|| StoreError::corrupt(format!("negative cost sum: {cost}")))?,
        })
    }
}

/// A stored sum as a count; a negative one means the table was changed by hand.
fn non_negative(column: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("negative {column} sum: {value}")))
}

impl Store {
    /// Usage summed per day, model or key from the daily rollup, in `group` order. Exact:
    /// the rollup holds the sums of the records, costs included, to the micro-USD.
    pub async fn usage_summary(
        &self,
        filter: &UsageFilter,
        group_by: UsageGroupBy,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let column = group_by.column();
        let table = filter.table(group_by);
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.tenant.is_some() {
            conditions.push(format!("tenant_id = {}", next()));
        }
        if filter.key.is_some() {
            conditions.push(format!("key_id = {}", next()));
        }
        if filter.model.is_some() {
            conditions.push(format!("model = {}", next()));
        }
        if filter.user.is_some() {
            conditions.push(format!("end_user = {}", next()));
        }
        if filter.tag.is_some() {
            conditions.push(format!("tag = {}", next()));
        }
        if filter.from.is_some() {
            conditions.push(format!("day >= {}", next()));
        }
        if filter.to.is_some() {
            conditions.push(format!("day < {}", next()));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        // Fixed column names (from `UsageGroupBy`) and numbered placeholders only: every
        // value is bound.
        let sql = format!(
            "SELECT {column} AS grp, {SUMS} FROM {table}{filter_sql} GROUP BY {column} ORDER BY {column}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in [
            &filter.tenant,
            &filter.key,
            &filter.model,
            &filter.user,
            &filter.tag,
        ]
        .into_iter()
        .flatten()
        {
            query = query.bind(value.as_str());
        }
        for date in [filter.from, filter.to].into_iter().flatten() {
            query = query.bind(unix_day(date));
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| {
                let group = match group_by {
                    UsageGroupBy::Day => day_text(row.try_get("grp")?)?,
                    _ => row.try_get("grp")?,
                };
                UsageRow::from_sums(group, row)
            })
            .collect()
    }

    /// A tenant's usage per day and per model or key over `[from, to)`, in day then group
    /// order: what the console's spend chart stacks. One pass over the tenant's rollup rows
    /// of the range (the same rows [`Store::usage_summary`] reads for `group_by=day`).
    /// `split` must be [`UsageGroupBy::Model`] or [`UsageGroupBy::Key`]; `Day` is refused.
    pub async fn usage_by_day_split(
        &self,
        tenant_id: &str,
        from: Date,
        to: Date,
        split: UsageGroupBy,
    ) -> Result<Vec<DailyUsageRow>, StoreError> {
        if !matches!(split, UsageGroupBy::Model | UsageGroupBy::Key) {
            return Err(StoreError::invalid("split", "split must be model or key"));
        }
        let column = split.column();
        // A fixed column name (from `UsageGroupBy`) and placeholders only.
        let sql = format!(
            "SELECT day, {column} AS grp, {SUMS} \
             FROM usage_daily WHERE tenant_id = $1 AND day >= $2 AND day < $3 \
             GROUP BY day, {column} ORDER BY day, {column}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(unix_day(from))
            .bind(unix_day(to))
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DailyUsageRow {
                    day: day_text(row.try_get("day")?)?,
                    usage: UsageRow::from_sums(row.try_get("grp")?, row)?,
                })
            })
            .collect()
    }

    /// What a tenant (or one of its keys) has spent since `since_ms` (unix ms): cost in
    /// micro-USD and tokens (input + output), for budgets.
    ///
    /// Read from the daily rollup, so at day granularity: it counts every record of the
    /// UTC day that contains `since_ms` and of every day after it. For a monthly budget
    /// pass the month's first millisecond, where the two agree exactly. Records still in a
    /// gateway's spool are not counted until they are flushed.
    pub async fn spend_since(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        since_ms: i64,
    ) -> Result<(i64, u64), StoreError> {
        let day = since_ms.div_euclid(MS_PER_DAY);
        let query = match key_id {
            None => sqlx::query(
                "SELECT CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) AS cost, \
                 CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS tokens \
                 FROM usage_daily WHERE tenant_id = $1 AND day >= $2",
            ),
            Some(_) => sqlx::query(
                "SELECT CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) AS cost, \
                 CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS tokens \
                 FROM usage_daily WHERE tenant_id = $1 AND day >= $2 AND key_id = $3",
            ),
        };
        let mut query = query.bind(tenant_id).bind(day);
        if let Some(key) = key_id {
            query = query.bind(key);
        }
        let row = query.fetch_one(self.pool()).await?;
        let cost: i64 = row.try_get("cost")?;
        let tokens = non_negative("tokens", row.try_get("tokens")?)?;
        Ok((cost, tokens))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn price(input: &str, output: &str, cached: &str, image: Option<&str>) -> Price {
        Price {
            model: "m".into(),
            input: input.parse().unwrap(),
            output: output.parse().unwrap(),
            cached_input: cached.parse().unwrap(),
            cache_write: "0".parse().unwrap(),
            cache_write_1h: "0".parse().unwrap(),
            batch_input: "0".parse().unwrap(),
            batch_output: "0".parse().unwrap(),
            training: None,
            image: image.map(|i| i.parse().unwrap()),
            per_audio_minute: None,
            per_1m_characters: None,
        }
    }

    #[test]
    fn every_input_kind_is_priced_at_its_rate() {
        // Claude Sonnet's published prices: 3 in, 15 out, 0.30 cache read, 3.75 / 6 writes.
        let p = Price {
            cache_write: "3.75".parse().unwrap(),
            cache_write_1h: "6".parse().unwrap(),
            ..price("3", "15", "0.30", None)
        };
        // 10 000 input: 2 000 read, 3 000 written (1 000 of them for an hour), 5 000 plain.
        let u = Usage {
            input_tokens: 10_000,
            cached_tokens: 2_000,
            cache_write_tokens: 3_000,
            cache_write_1h_tokens: 1_000,
            output_tokens: 400,
            reasoning_tokens: 100,
            images: 0,
        };
        // 5000 × 3 + 2000 × 0.30 + 2000 × 3.75 + 1000 × 6 + 400 × 15 (per 1M tokens).
        assert_eq!(p.cost(&u).micros(), 15_000 + 600 + 7_500 + 6_000 + 6_000);
        // A confused upstream: more writes than input left after reads are capped.
        let u = Usage {
            input_tokens: 10,
            cached_tokens: 4,
            cache_write_tokens: 50,
            cache_write_1h_tokens: 70,
            ..Usage::default()
        };
        let capped = Usage {
            input_tokens: 10,
            cached_tokens: 4,
            cache_write_tokens: 6,
            cache_write_1h_tokens: 6,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u), p.cost(&capped));
    }

    #[test]
    fn audio_is_priced_per_minute_and_per_character_exactly() {
        let p = Price {
            per_audio_minute: Some("0.006".parse().unwrap()),
            per_1m_characters: Some("15".parse().unwrap()),
            ..price("0", "0", "0", None)
        };
        // 2 s at 0.006 USD / minute = 200 µUSD; 11 characters at 15 USD / 1M = 165 µUSD.
        assert_eq!(p.audio_cost(2_000, 0).micros(), 200);
        assert_eq!(p.audio_cost(0, 11).micros(), 165);
        assert_eq!(p.audio_cost(2_000, 11).micros(), 365);
        // 1 ms is 0.1 µUSD: rounded once, half up.
        assert_eq!(p.audio_cost(1, 0).micros(), 0);
        assert_eq!(p.audio_cost(5, 0).micros(), 1);
        let none = price("1", "1", "1", None);
        assert_eq!(none.audio_cost(60_000, 1_000_000).micros(), 0);
    }

    #[test]
    fn cost_is_exact_and_rounds_half_up_once() {
        let p = price("0.15", "0.60", "0.075", None);
        // 1000 in × 0.15/1M = 150 µUSD; 500 out × 0.60/1M = 300 µUSD.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u).micros(), 450);
        // 3 in × 0.15 = 0.45 µUSD, 1 out × 0.60 = 0.6: summed 1.05 → 1 (rounded once, not 0 + 1).
        let u = Usage {
            input_tokens: 3,
            output_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u).micros(), 1);
        // Exactly half rounds up: 10 in × 0.05 = 0.5 µUSD → 1.
        let half = price("0.05", "0", "0.05", None);
        assert_eq!(
            half.cost(&Usage {
                input_tokens: 10,
                ..Usage::default()
            })
            .micros(),
            1
        );
        assert_eq!(
            half.cost(&Usage {
                input_tokens: 9,
                ..Usage::default()
            })
            .micros(),
            0
        );
        // Cached tokens are part of input and priced at cached_input.
        let u = Usage {
            input_tokens: 1000,
            cached_tokens: 400,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u).micros(), 90 + 30);
        // More cached than input (a confused upstream) never makes a negative count.
        let u = Usage {
            input_tokens: 10,
            cached_tokens: 50,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u).micros(), 1);
        // Images.
        let img = price("0", "0", "0", Some("0.04"));
        assert_eq!(
            img.cost(&Usage {
                images: 3,
                ..Usage::default()
            })
            .micros(),
            120_000
        );
    }
}
