//! A tenant's spend for a month: cost and tokens per day, stacked by model or key, the
//! month's totals, and (for the current month) the plan's budget and what is left.

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use time::Duration;

use super::chart::{self, Series, Units};
use super::client::{ApiFailure, query, seg};
use super::keys::{KeyView, TenantLimitsView, tenant_header};
use super::layout::{self, Nav};
use super::request::Ctx;
use crate::billing::Period;
use crate::store::{DailyUsageRow, MicroUsd, UsageGroupBy};

/// Series drawn one by one; the rest of the month's models or keys are summed as "other".
const SERIES: usize = 7;

#[derive(Deserialize, Default)]
pub(crate) struct SpendQuery {
    month: Option<String>,
    split: Option<String>,
}

/// One model's (or key's) month.
#[derive(Default, Clone)]
struct Totals {
    requests: u64,
    input: u64,
    output: u64,
    cached: u64,
    cost: u64,
}

impl Totals {
    fn add(&mut self, row: &crate::store::UsageRow) {
        self.requests += row.requests;
        self.input += row.input_tokens;
        self.output += row.output_tokens;
        self.cached += row.cached_tokens;
        self.cost += u64::try_from(row.cost_usd.micros()).unwrap_or(0);
    }
}

fn micros(v: u64) -> String {
    layout::usd(
        MicroUsd::from_micros(i64::try_from(v).unwrap_or(i64::MAX)).unwrap_or(MicroUsd::ZERO),
    )
}

fn exact_usd(v: u64) -> String {
    MicroUsd::from_micros(i64::try_from(v).unwrap_or(i64::MAX))
        .unwrap_or(MicroUsd::ZERO)
        .to_string()
}

/// Every day of `period`, `YYYY-MM-DD`.
fn days_of(period: Period) -> Vec<String> {
    let mut days = Vec::with_capacity(31);
    let mut day = period.first_day();
    while day < period.end() && days.len() < 31 {
        days.push(format!(
            "{:04}-{:02}-{:02}",
            day.year(),
            u8::from(day.month()),
            day.day()
        ));
        day = day.saturating_add(Duration::days(1));
    }
    days
}

/// The chart's series: the [`SERIES`] largest groups by cost (then tokens), and "other".
fn series_of(
    rows: &[DailyUsageRow],
    days: &[String],
    names: &HashMap<String, String>,
) -> (Vec<Series>, Vec<Series>, Vec<Totals>) {
    let mut by_group: HashMap<&str, Totals> = HashMap::new();
    for row in rows {
        by_group
            .entry(row.usage.group.as_str())
            .or_default()
            .add(&row.usage);
    }
    let mut order: Vec<(&str, Totals)> = by_group.into_iter().collect();
    order.sort_by(|a, b| {
        (b.1.cost, b.1.input + b.1.output, a.0).cmp(&(a.1.cost, a.1.input + a.1.output, b.0))
    });
    let overflow = order.len() > SERIES + 1;
    let shown = if overflow { SERIES } else { order.len() };
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut labels = Vec::new();
    let mut totals = Vec::new();
    for (i, (group, t)) in order.iter().enumerate() {
        if i < shown {
            index.insert(group, i);
            labels.push(
                names
                    .get(*group)
                    .cloned()
                    .unwrap_or_else(|| (*group).to_owned()),
            );
            totals.push(t.clone());
        } else {
            index.insert(group, shown);
        }
    }
    if overflow {
        labels.push(format!("{} others", order.len() - shown));
        let mut rest = Totals::default();
        for (_, t) in &order[shown..] {
            rest.requests += t.requests;
            rest.input += t.input;
            rest.output += t.output;
            rest.cached += t.cached;
            rest.cost += t.cost;
        }
        totals.push(rest);
    }
    let day_index: HashMap<&str, usize> = days
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let mut cost: Vec<Series> = labels
        .iter()
        .map(|l| Series {
            label: l.clone(),
            values: vec![0; days.len()],
        })
        .collect();
    let mut tokens: Vec<Series> = labels
        .iter()
        .map(|l| Series {
            label: l.clone(),
            values: vec![0; days.len()],
        })
        .collect();
    for row in rows {
        let (Some(&s), Some(&d)) = (
            index.get(row.usage.group.as_str()),
            day_index.get(row.day.as_str()),
        ) else {
            continue;
        };
        cost[s].values[d] += u64::try_from(row.usage.cost_usd.micros()).unwrap_or(0);
        tokens[s].values[d] += row.usage.input_tokens + row.usage.output_tokens;
    }
    (cost, tokens, totals)
}

/// Key names for the key ids among `rows` (the largest first), for the legend.
async fn key_names(ctx: &Ctx, rows: &[DailyUsageRow]) -> HashMap<String, String> {
    let mut cost: HashMap<&str, i64> = HashMap::new();
    for row in rows {
        *cost.entry(row.usage.group.as_str()).or_default() += row.usage.cost_usd.micros();
    }
    let mut ids: Vec<(&str, i64)> = cost.into_iter().collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut names = HashMap::new();
    for (id, _) in ids.into_iter().take(SERIES + 1) {
        if let Ok(key) = ctx
            .get::<KeyView>(&format!("/admin/v1/keys/{}", seg(id)))
            .await
        {
            names.insert(id.to_owned(), format!("{} ({})", key.name, key.prefix));
        }
    }
    names
}

/// `GET /console/tenants/{id}/spend?month=YYYY-MM&split=model|key`.
pub(crate) async fn page(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(params): Query<SpendQuery>,
) -> Response {
    let flash = ctx.take_flash();
    let tenant = match ctx.tenant(&id).await {
        Ok(t) => t,
        Err(failure) => {
            return layout::page(
                &ctx,
                "Spend",
                Nav::Tenants,
                flash.as_ref(),
                layout::failure_box(&failure.message),
            );
        }
    };
    let current = Period::current();
    let (period, bad_month) = match params.month.as_deref().filter(|m| !m.is_empty()) {
        None => (current, None),
        Some(m) => match Period::parse("month", m) {
            Ok(p) => (p, None),
            Err(e) => (current, Some(ApiFailure::from(e).message)),
        },
    };
    let split = match params.split.as_deref() {
        Some("key") => UsageGroupBy::Key,
        _ => UsageGroupBy::Model,
    };
    // The tenant is visible to this operator (the API showed it): its usage is too.
    let rows = ctx
        .console
        .store
        .usage_by_day_split(&id, period.first_day(), period.end(), split)
        .await
        .map_err(ApiFailure::from);
    let limits = if period == current {
        Some(
            ctx.get::<TenantLimitsView>(&format!("/admin/v1/tenants/{}/limits", seg(&id)))
                .await,
        )
    } else {
        None
    };
    let names = match (&rows, split) {
        (Ok(rows), UsageGroupBy::Key) => key_names(&ctx, rows).await,
        _ => HashMap::new(),
    };
    let days = days_of(period);
    let base = format!("/console/tenants/{}/spend", seg(&id));
    let split_name = if split == UsageGroupBy::Key {
        "key"
    } else {
        "model"
    };
    let month = period.to_string();
    let link = |month: &str, split: &str| {
        format!("{base}?{}", query(&[("month", month), ("split", split)]))
    };
    let prev = Period::of(period.first_day().saturating_sub(Duration::days(1))).to_string();
    let next = Period::of(period.end()).to_string();
    let body = html! {
        (tenant_header(&tenant, "spend"))
        @if let Some(message) = &bad_month { (layout::failure_box(message)) }
        div.toolbar {
            form.inline method="get" action=(base) {
                label { "Month " input type="month" name="month" value=(month); }
                input type="hidden" name="split" value=(split_name);
                button type="submit" { "Show" }
            }
            a href=(link(&prev, split_name)) { "← " (prev) }
            @if period != current { a href=(link(&next, split_name)) { (next) " →" } }
            span.split { "Split by: "
                a href=(link(&month, "model")) aria-current=[(split == UsageGroupBy::Model).then_some("page")] { "model" }
                " · "
                a href=(link(&month, "key")) aria-current=[(split == UsageGroupBy::Key).then_some("page")] { "key" }
            }
        }
        @if let Some(Err(failure)) = &limits { (layout::failure_box(&failure.message)) }
        @match &rows {
            Err(failure) => (layout::failure_box(&failure.message)),
            Ok(rows) => (month_view(rows, &days, &names, &month, limits.as_ref().and_then(|l| l.as_ref().ok()))),
        }
    };
    layout::page(
        &ctx,
        &format!("Spend · {}", tenant.name),
        Nav::Tenants,
        flash.as_ref(),
        body,
    )
}

/// The month's totals, charts, legend and per-day table; `limits` (the current month
/// only) adds the budget and token quota left.
fn month_view(
    rows: &[DailyUsageRow],
    days: &[String],
    names: &HashMap<String, String>,
    month: &str,
    limits: Option<&TenantLimitsView>,
) -> Markup {
    let (cost, tokens, totals) = series_of(rows, days, names);
    let mut all = Totals::default();
    let mut per_day: Vec<Totals> = vec![Totals::default(); days.len()];
    let day_index: HashMap<&str, usize> = days
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    for row in rows {
        all.add(&row.usage);
        if let Some(&d) = day_index.get(row.day.as_str()) {
            per_day[d].add(&row.usage);
        }
    }
    let detail: Vec<String> = totals
        .iter()
        .map(|t| {
            format!(
                "{} · {} tokens · {} requests",
                micros(t.cost),
                layout::grouped(t.input + t.output),
                layout::grouped(t.requests)
            )
        })
        .collect();
    html! {
        section.cards aria-label="Month totals" {
            div.stat {
                span.label { "Cost in " (month) }
                span.value #month-cost data-usd=(exact_usd(all.cost)) { (micros(all.cost)) }
                @if let Some(l) = limits {
                    span.sub #budget {
                        @match (l.limits.monthly_budget_usd, l.remaining_budget_usd) {
                            (Some(budget), Some(left)) => { "of " (layout::usd(budget)) " budget · " b { (layout::usd(left)) } " left" }
                            _ => "no monthly budget",
                        }
                    }
                }
            }
            div.stat {
                span.label { "Tokens (input + output)" }
                span.value { (layout::grouped(all.input + all.output)) }
                @if let Some(l) = limits {
                    span.sub {
                        @match (l.limits.monthly_tokens, l.remaining_tokens) {
                            (Some(quota), Some(left)) => { "of " (layout::grouped(quota)) " · " b { (layout::grouped(left)) } " left" }
                            _ => "no monthly token quota",
                        }
                    }
                }
            }
            div.stat { span.label { "Requests" } span.value { (layout::grouped(all.requests)) } }
            div.stat { span.label { "Input tokens" } span.value { (layout::grouped(all.input)) } span.sub { (layout::grouped(all.cached)) " cached" } }
            div.stat { span.label { "Output tokens" } span.value { (layout::grouped(all.output)) } }
        }
        @if rows.is_empty() {
            p.empty { "No usage recorded in " (month) "." }
        } @else {
            (chart::stacked("cost-chart", &format!("Cost per day, {month} (UTC)"), days, &cost, &Units { exact: exact_usd, axis: layout::usd_short }))
            (chart::stacked("tokens-chart", &format!("Tokens per day (input + output), {month}"), days, &tokens, &Units { exact: |v| v.to_string(), axis: layout::compact }))
            (chart::legend(&cost, &detail))
            details.per-day {
                summary { "Per day" }
                table {
                    thead { tr { th { "Day" } th.num { "Requests" } th.num { "Input" } th.num { "Output" } th.num { "Cost" } } }
                    tbody {
                        @for (day, t) in days.iter().zip(&per_day) {
                            @if t.requests > 0 {
                                tr { td { (day) } td.num { (layout::grouped(t.requests)) } td.num { (layout::grouped(t.input)) } td.num { (layout::grouped(t.output)) } td.num { (micros(t.cost)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::store::UsageRow;

    fn row(day: &str, group: &str, cost: i64, tokens: u64) -> DailyUsageRow {
        DailyUsageRow {
            day: day.into(),
            usage: UsageRow {
                group: group.into(),
                requests: 1,
                input_tokens: tokens,
                output_tokens: 0,
                cached_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
                cost_usd: MicroUsd::from_micros(cost).unwrap(),
            },
        }
    }

    #[test]
    fn months_have_all_their_days() {
        assert_eq!(days_of(Period::parse("p", "2026-02").unwrap()).len(), 28);
        assert_eq!(days_of(Period::parse("p", "2028-02").unwrap()).len(), 29);
        let dec = days_of(Period::parse("p", "2026-12").unwrap());
        assert_eq!(
            (dec[0].as_str(), dec[30].as_str()),
            ("2026-12-01", "2026-12-31")
        );
    }

    #[test]
    fn the_largest_groups_get_series_and_the_rest_is_other() {
        let days = days_of(Period::parse("p", "2026-12").unwrap());
        let mut rows: Vec<DailyUsageRow> = (0..10)
            .map(|i| row("2026-12-03", &format!("m{i}"), i * 10, 1))
            .collect();
        rows.push(row("2026-12-04", "m9", 5, 1));
        let (cost, tokens, totals) = series_of(&rows, &days, &HashMap::new());
        assert_eq!(cost.len(), SERIES + 1);
        assert_eq!(cost[0].label, "m9");
        assert_eq!(cost[0].values[2], 90);
        assert_eq!(cost[0].values[3], 5);
        assert_eq!(cost[SERIES].label, "3 others");
        assert_eq!(cost[SERIES].values[2], 10 + 20, "m0, m1 and m2");
        assert_eq!(tokens[SERIES].values[2], 3);
        assert_eq!(totals[0].cost, 95);
        let sum: u64 = cost.iter().map(|s| s.values.iter().sum::<u64>()).sum();
        assert_eq!(
            sum,
            (0..10).map(|i| i * 10).sum::<u64>() + 5,
            "nothing lost"
        );
        // Eight groups fit without an "other".
        let (cost, _, _) = series_of(&rows[..8], &days, &HashMap::new());
        assert_eq!(cost.len(), 8);
    }
}
