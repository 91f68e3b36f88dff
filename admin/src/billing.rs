//! Usage reports and invoices, read from the ledger's daily rollup.
//!
//! Both the admin API (`GET /admin/v1/usage`, `GET /admin/v1/invoices`) and the CLI
//! (`tollgate usage`, `tollgate invoices`) parse their parameters here, so the two accept
//! the same input and answer the same numbers.
//!
//! Days and months are UTC calendar days and months of each record's `created_at_ms`. A
//! range is `from` (included) to `to` (excluded), so consecutive ranges never count a day
//! twice: `from=2026-01-01&to=2026-02-01` is January.
//!
//! An invoice's lines are the tenant's usage for the month per model, and its total is the
//! exact sum of the lines, which are exact sums of the records' costs (each record's cost
//! was rounded half-up to a micro-USD once, when it was metered).
//!
//! ```
//! use tollgate_admin::billing::{Period, parse_date};
//!
//! let period = Period::parse("period", "2026-02").unwrap();
//! assert_eq!(period.to_string(), "2026-02");
//! assert_eq!(period.first_day(), parse_date("from", "2026-02-01").unwrap());
//! assert!(Period::parse("period", "2026-13").is_err());
//! ```

use std::fmt::{self, Write as _};

use serde::Serialize;
use time::{Date, Month, OffsetDateTime};

use crate::store::{MicroUsd, Store, StoreError, UsageFilter, UsageGroupBy, UsageRow};

/// A `YYYY-MM-DD` date, strictly: four-digit year, two-digit month and day, a real day.
/// `field` names the parameter in the error.
pub fn parse_date(field: &'static str, value: &str) -> Result<Date, StoreError> {
    let invalid = || StoreError::Invalid {
        field,
        message: format!("{field} must be a date written YYYY-MM-DD, such as 2026-01-31"),
    };
    let bytes = value.as_bytes();
    if !value.is_ascii() || bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return Err(invalid());
    }
    let year = digits(&value[..4]).ok_or_else(invalid)?;
    let month = digits(&value[5..7]).ok_or_else(invalid)?;
    let day = digits(&value[8..]).ok_or_else(invalid)?;
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or_else(invalid)?;
    let year = i32::try_from(year).map_err(|_| invalid())?;
    let day = u8::try_from(day).map_err(|_| invalid())?;
    Date::from_calendar_date(year, month, day).map_err(|_| invalid())
}

/// ASCII digits only (no sign, no space) as a number.
fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A calendar month (UTC), written `YYYY-MM`: an invoice's period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    year: i32,
    month: Month,
}

impl Period {
    /// Parses `YYYY-MM` strictly; `field` names the parameter in the error.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, StoreError> {
        let invalid = || StoreError::Invalid {
            field,
            message: format!("{field} must be a month written YYYY-MM, such as 2026-01"),
        };
        let (year, month) = value.split_once('-').ok_or_else(invalid)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(invalid());
        }
        let year = digits(year)
            .and_then(|y| i32::try_from(y).ok())
            .ok_or_else(invalid)?;
        let month = digits(month)
            .and_then(|m| u8::try_from(m).ok())
            .and_then(|m| Month::try_from(m).ok())
            .ok_or_else(invalid)?;
        Ok(Self { year, month })
    }

    /// The month `date` is in.
    pub fn of(date: Date) -> Self {
        Self {
            year: date.year(),
            month: date.month(),
        }
    }

    /// The current month (UTC).
    pub fn current() -> Self {
        Self::of(OffsetDateTime::now_utc().date())
    }

    /// Its first day.
    pub fn first_day(self) -> Date {
        // Day 1 exists in every month of every year `Date` holds.
        Date::from_calendar_date(self.year, self.month, 1).unwrap_or(Date::MIN)
    }

    /// The first day of the next month (the exclusive end of this one).
    pub fn end(self) -> Date {
        let (year, month) = match self.month {
            Month::December => (self.year + 1, Month::January),
            m => (self.year, m.next()),
        };
        Date::from_calendar_date(year, month, 1).unwrap_or(Date::MAX)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, u8::from(self.month))
    }
}

/// The raw parameters of a usage report, as a query string or the CLI gives them. An empty
/// `tenant`, `key`, `model`, `user` or `tag` counts as absent (no filter); an empty date or `group_by` is
/// refused like any other malformed one.
#[derive(Clone, Debug, Default)]
pub struct UsageParams {
    pub tenant: Option<String>,
    pub key: Option<String>,
    pub model: Option<String>,
    /// First day included, `YYYY-MM-DD`.
    pub from: Option<String>,
    /// First day excluded, `YYYY-MM-DD`.
    pub to: Option<String>,
    /// `day` (default), `model`, `key`, `user` or `tag`.
    pub group_by: Option<String>,
    /// Only this end user.
    pub user: Option<String>,
    /// Only this tag.
    pub tag: Option<String>,
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl UsageParams {
    /// Checks the parameters and fills the defaults:
    /// - neither `from` nor `to`: the current month (UTC);
    /// - only `from`: from that day on; only `to`: everything before that day;
    /// - `from` after `to`: refused (400 naming `to`); equal: an empty range.
    ///
    /// Errors name the parameter at fault (`from`, `to`, `group_by`).
    pub fn into_filter(self) -> Result<(UsageFilter, UsageGroupBy), StoreError> {
        let group_by = match self.group_by {
            None => UsageGroupBy::default(),
            Some(g) => UsageGroupBy::parse(&g).ok_or_else(|| StoreError::Invalid {
                field: "group_by",
                message: "group_by must be one of day, model, key, user, tag".to_owned(),
            })?,
        };
        let from = self.from.map(|d| parse_date("from", &d)).transpose()?;
        let to = self.to.map(|d| parse_date("to", &d)).transpose()?;
        let (from, to) = match (from, to) {
            (None, None) => {
                let month = Period::current();
                (Some(month.first_day()), Some(month.end()))
            }
            (Some(from), Some(to)) if from > to => {
                return Err(StoreError::Invalid {
                    field: "to",
                    message: format!("to ({to}) must not be before from ({from})"),
                });
            }
            other => other,
        };
        let filter = UsageFilter {
            tenant: present(self.tenant),
            key: present(self.key),
            model: present(self.model),
            from,
            to,
            user: present(self.user),
            tag: present(self.tag),
        };
        Ok((filter, group_by))
    }
}

/// A tenant's bill for one month.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct Invoice {
    /// The tenant's id.
    pub tenant: String,
    /// The calendar month (UTC), `YYYY-MM`.
    #[schema(examples("2026-01"))]
    pub period: String,
    /// One line per model used in the period, in model-name order.
    pub lines: Vec<InvoiceLine>,
    /// The exact sum of the lines' `cost_usd`.
    pub total_usd: MicroUsd,
}

/// One model's usage in an invoice.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct InvoiceLine {
    pub model: String,
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
    /// The exact sum of the costs of this model's records in the period.
    pub cost_usd: MicroUsd,
}

impl From<UsageRow> for InvoiceLine {
    fn from(row: UsageRow) -> Self {
        InvoiceLine {
            model: row.group,
            requests: row.requests,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cached_tokens: row.cached_tokens,
            cache_write_tokens: row.cache_write_tokens,
            reasoning_tokens: row.reasoning_tokens,
            cost_usd: row.cost_usd,
        }
    }
}

/// The CSV columns of an invoice, in order.
pub const CSV_HEADER: &str = "model,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd";

impl Invoice {
    /// The invoice as CSV (RFC 4180, CRLF line ends): the header [`CSV_HEADER`], one row
    /// per line, and a last row whose first cell is `total` with the sums of every column
    /// (`cost_usd` = `total_usd`). Amounts are decimal strings with six decimals, exactly
    /// as in JSON. A cell that a spreadsheet would run as a formula (starting with `=`,
    /// `+`, `-`, `@`, tab or CR) is prefixed with `'`.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{CSV_HEADER}\r\n");
        // The count columns, in CSV order, and their totals.
        let counts = |l: &InvoiceLine| {
            [
                l.requests,
                l.input_tokens,
                l.output_tokens,
                l.cached_tokens,
                l.cache_write_tokens,
                l.reasoning_tokens,
            ]
        };
        let mut totals = [0_u64; 6];
        for line in &self.lines {
            let _ = write!(out, "{}", csv_cell(&line.model));
            for (total, n) in totals.iter_mut().zip(counts(line)) {
                *total = total.saturating_add(n);
                let _ = write!(out, ",{n}");
            }
            let _ = write!(out, ",{}\r\n", line.cost_usd);
        }
        let _ = write!(out, "total");
        for n in totals {
            let _ = write!(out, ",{n}");
        }
        let _ = write!(out, ",{}\r\n", self.total_usd);
        out
    }
}

/// The CSV columns of a usage report, in order.
pub const USAGE_CSV_HEADER: &str = "group,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd";

/// Usage rows as CSV (RFC 4180, CRLF line ends): [`USAGE_CSV_HEADER`], then one line per
/// row, amounts as in JSON, cells defused as in [`Invoice::to_csv`].
pub fn usage_csv(rows: &[UsageRow]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{USAGE_CSV_HEADER}\r\n");
    for r in rows {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{}\r\n",
            csv_cell(&r.group),
            r.requests,
            r.input_tokens,
            r.output_tokens,
            r.cached_tokens,
            r.cache_write_tokens,
            r.reasoning_tokens,
            r.cost_usd
        );
    }
    out
}

/// One CSV cell: quoted when it holds a comma, quote or line break (quotes doubled), and
/// defused when a spreadsheet would read it as a formula.
fn csv_cell(value: &str) -> String {
    let mut cell = String::with_capacity(value.len() + 2);
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        cell.push('\'');
    }
    cell.push_str(value);
    if cell.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// `tenant`'s invoice for `period`: its usage in the month per model, from the rollup.
/// The tenant is not checked here (callers decide whether an unknown one is an error).
pub async fn invoice(store: &Store, tenant: &str, period: Period) -> Result<Invoice, StoreError> {
    let filter = UsageFilter {
        tenant: Some(tenant.to_owned()),
        from: Some(period.first_day()),
        to: Some(period.end()),
        ..UsageFilter::default()
    };
    let rows = store.usage_summary(&filter, UsageGroupBy::Model).await?;
    let mut total: i64 = 0;
    for row in &rows {
        total = total
            .checked_add(row.cost_usd.micros())
            .ok_or_else(|| StoreError::Other("invoice total overflows".into()))?;
    }
    Ok(Invoice {
        tenant: tenant.to_owned(),
        period: period.to_string(),
        lines: rows.into_iter().map(InvoiceLine::from).collect(),
        total_usd: MicroUsd::from_micros(total).unwrap_or(MicroUsd::ZERO),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn dates_are_strict() {
        assert_eq!(
            parse_date("from", "2026-01-31").unwrap(),
            date!(2026 - 01 - 31)
        );
        assert_eq!(
            parse_date("from", "2024-02-29").unwrap(),
            date!(2024 - 02 - 29)
        );
        for bad in [
            "",
            "2026-1-31",
            "2026-01-32",
            "2025-02-29",
            "2026-13-01",
            "2026-00-10",
            "26-01-31",
            "2026/01/31",
            "+026-01-31",
            "2026-01-31T00:00:00Z",
            " 2026-01-31",
            "2026-01-3x",
            "２０２６-01-31",
        ] {
            let error = parse_date("from", bad).unwrap_err();
            assert!(
                matches!(error, StoreError::Invalid { field: "from", .. }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn periods() {
        let p = Period::parse("period", "2025-12").unwrap();
        assert_eq!(p.to_string(), "2025-12");
        assert_eq!(p.first_day(), date!(2025 - 12 - 01));
        assert_eq!(p.end(), date!(2026 - 01 - 01));
        assert_eq!(
            Period::parse("period", "2024-02").unwrap().end(),
            date!(2024 - 03 - 01)
        );
        assert_eq!(Period::of(date!(2026 - 03 - 31)).to_string(), "2026-03");
        for bad in [
            "",
            "2025",
            "2025-1",
            "2025-13",
            "2025-00",
            "2025-012",
            "2025/01",
            "-025-01",
            "2025-01-01",
        ] {
            let error = Period::parse("period", bad).unwrap_err();
            assert!(
                matches!(
                    error,
                    StoreError::Invalid {
                        field: "period",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn usage_params_defaults_and_errors() {
        let (filter, group) = UsageParams::default().into_filter().unwrap();
        let month = Period::current();
        assert_eq!(filter.from, Some(month.first_day()));
        assert_eq!(filter.to, Some(month.end()));
        assert_eq!(group, UsageGroupBy::Day);

        let params = UsageParams {
            tenant: Some(String::new()),
            from: Some("2026-01-05".into()),
            group_by: Some("model".into()),
            ..UsageParams::default()
        };
        let (filter, group) = params.into_filter().unwrap();
        assert_eq!(filter.tenant, None);
        assert_eq!(filter.from, Some(date!(2026 - 01 - 05)));
        assert_eq!(filter.to, None);
        assert_eq!(group, UsageGroupBy::Model);

        let field = |params: UsageParams| match params.into_filter().unwrap_err() {
            StoreError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        let p = |from: &str, to: &str, g: &str| UsageParams {
            from: Some(from.into()),
            to: Some(to.into()),
            group_by: Some(g.into()),
            ..UsageParams::default()
        };
        assert_eq!(field(p("2026-02-01", "2026-01-01", "day")), "to");
        assert_eq!(field(p("x", "2026-01-01", "day")), "from");
        assert_eq!(field(p("2026-01-01", "2026-02-30", "day")), "to");
        assert_eq!(field(p("2026-01-01", "2026-02-01", "week")), "group_by");
        assert_eq!(field(p("2026-01-01", "2026-02-01", "")), "group_by");
        assert_eq!(field(p("", "2026-02-01", "day")), "from");
        assert_eq!(field(p("2026-01-01", "", "day")), "to");
        assert!(p("2026-01-01", "2026-01-01", "key").into_filter().is_ok());
    }

    #[test]
    fn csv_has_header_lines_and_total() {
        let micros = |m: i64| MicroUsd::from_micros(m).unwrap();
        let invoice = Invoice {
            tenant: "ten_x".into(),
            period: "2026-01".into(),
            lines: vec![
                InvoiceLine {
                    model: "a,b".into(),
                    requests: 2,
                    input_tokens: 10,
                    output_tokens: 5,
                    cached_tokens: 4,
                    cache_write_tokens: 3,
                    reasoning_tokens: 2,
                    cost_usd: micros(450),
                },
                InvoiceLine {
                    model: "=cmd\"x".into(),
                    requests: 1,
                    input_tokens: 1,
                    output_tokens: 0,
                    cached_tokens: 0,
                    cache_write_tokens: 1,
                    reasoning_tokens: 0,
                    cost_usd: micros(1_000_001),
                },
            ],
            total_usd: micros(1_000_451),
        };
        assert_eq!(
            invoice.to_csv(),
            "model,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd\r\n\
             \"a,b\",2,10,5,4,3,2,0.000450\r\n\
             \"'=cmd\"\"x\",1,1,0,0,1,0,1.000001\r\n\
             total,3,11,5,4,4,2,1.000451\r\n"
        );
    }
}
