//! `GET /admin/v1/usage`, `GET /admin/v1/invoices` and the `usage` / `invoices` CLI
//! commands: the numbers match the records exactly, JSON and CSV agree, operators see only
//! what they may, bad parameters are 400s that name the parameter. Both backends.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tollgate_admin::cli::{self, CliError, InvoicesArgs, UsageArgs};
use tollgate_admin::operator::Role;
use tollgate_admin::store::{Price, Usage, UsageRecord};
use tower::ServiceExt;

use crate::http::{
    TOKEN, admin, app, as_operator, assert_error, assert_status_code, call, keys_of, scoped, tenant,
};
use crate::support::{Db, on_both_backends};
use crate::usage::{ms, record};

on_both_backends!(
    usage_rows_sum_the_records,
    usage_defaults_to_the_current_month,
    invoice_json_and_csv_match_usage_and_records,
    usage_and_invoices_are_scoped_to_the_operator,
    bad_parameters_are_named,
    cli_matches_the_api,
);

/// Raw answer: status, content type, body text.
async fn get_raw(app: &Router, path: &str) -> (StatusCode, String, String, http::HeaderMap) {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
        headers,
    )
}

fn price() -> Price {
    Price {
        model: "any".into(),
        input: "0.15".parse().unwrap(),
        output: "0.60".parse().unwrap(),
        cached_input: "0.075".parse().unwrap(),
        cache_write: "0.1875".parse().unwrap(),
        cache_write_1h: "0.30".parse().unwrap(),
        batch_input: "0.075".parse().unwrap(),
        batch_output: "0.30".parse().unwrap(),
        training: None,
        image: Some("0.04".parse().unwrap()),
        per_audio_minute: None,
        per_1m_characters: None,
    }
}

/// A record priced the way the meter prices it: per record, rounded half-up once.
fn priced(
    id: &str,
    tenant: &str,
    key: &str,
    model: &str,
    at: i64,
    (input, output, cached, images): (u64, u64, u64, u32),
) -> UsageRecord {
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
        cached_tokens: cached,
        images,
        // A tenth of the uncached input written to the cache, a fifth of the output
        // reasoning: every column carries something.
        cache_write_tokens: (input - cached) / 10,
        reasoning_tokens: output / 5,
        ..Usage::default()
    };
    UsageRecord {
        input_tokens: input,
        output_tokens: output,
        cached_tokens: cached,
        images,
        cache_write_tokens: usage.cache_write_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        cost_micro_usd: price().cost(&usage).micros(),
        ..record(id, tenant, key, model, at)
    }
}

/// Two tenants' traffic in January and February 2024: many tiny requests (each rounds to
/// 1 micro-USD, though their summed tokens would price at 11 per 10), larger ones, cached
/// tokens, images, several keys and models.
fn traffic(a: &str, b: &str) -> Vec<UsageRecord> {
    let mut out = Vec::new();
    let jan = ms("2024-01-01T00:00:00Z");
    for i in 0..24_i64 {
        let at = jan + i * 36 * 3600 * 1000; // every 36 h: through January into February
        let key = if i % 2 == 0 { "key_a1" } else { "key_a2" };
        out.push(priced(
            &format!("tiny{i}"),
            a,
            key,
            "gpt-mini",
            at,
            (3, 1, 0, 0),
        ));
        out.push(priced(
            &format!("big{i}"),
            a,
            "key_a1",
            "claude/sonnet:4",
            at + 1000,
            (1234 + i as u64, 567, 200, 0),
        ));
    }
    out.push(priced(
        "img",
        a,
        "key_a2",
        "dall-e",
        jan + 5000,
        (0, 0, 0, 3),
    ));
    out.push(priced(
        "b1",
        b,
        "key_b",
        "gpt-mini",
        jan + 7000,
        (1000, 500, 0, 0),
    ));
    // The last millisecond of January and the first of February.
    out.push(priced(
        "edge1",
        a,
        "key_a1",
        "gpt-mini",
        ms("2024-01-31T23:59:59.999Z"),
        (10, 10, 0, 0),
    ));
    out.push(priced(
        "edge2",
        a,
        "key_a1",
        "gpt-mini",
        ms("2024-02-01T00:00:00Z"),
        (10, 10, 0, 0),
    ));
    out
}

/// Sums of records by `group`, as usage rows (JSON).
fn expected_rows(
    records: &[UsageRecord],
    keep: impl Fn(&UsageRecord) -> bool,
    group: impl Fn(&UsageRecord) -> String,
) -> Vec<Value> {
    let mut sums: BTreeMap<String, [i64; 7]> = BTreeMap::new();
    for r in records.iter().filter(|r| keep(r)) {
        let s = sums.entry(group(r)).or_default();
        s[0] += 1;
        s[1] += r.input_tokens as i64;
        s[2] += r.output_tokens as i64;
        s[3] += r.cached_tokens as i64;
        s[4] += r.cost_micro_usd;
        s[5] += r.cache_write_tokens as i64;
        s[6] += r.reasoning_tokens as i64;
    }
    sums.into_iter()
        .map(|(g, s)| {
            json!({"group": g, "requests": s[0], "input_tokens": s[1], "output_tokens": s[2],
                   "cached_tokens": s[3], "cache_write_tokens": s[5],
                   "reasoning_tokens": s[6], "cost_usd": usd(s[4])})
        })
        .collect()
}

fn usd(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn day_of(r: &UsageRecord) -> String {
    let t = OffsetDateTime::from_unix_timestamp(r.created_at_ms / 1000).unwrap();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

fn in_january(r: &UsageRecord) -> bool {
    (ms("2024-01-01T00:00:00Z")..ms("2024-02-01T00:00:00Z")).contains(&r.created_at_ms)
}

/// Creates tenants a and b, inserts their traffic; returns (app, a, b, records).
async fn fixture(db: &Db) -> (Router, String, String, Vec<UsageRecord>) {
    let app = app(&db.store);
    let a = tenant(&app, "a").await;
    let b = tenant(&app, "b").await;
    let records = traffic(&a, &b);
    assert_eq!(
        db.store.insert_usage(&records).await.unwrap(),
        records.len() as u64
    );
    (app, a, b, records)
}

async fn usage(app: &Router, query: &str) -> Vec<Value> {
    let (status, body) = admin(app, Method::GET, &format!("/admin/v1/usage?{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["has_more"], false);
    let data = body["data"].as_array().unwrap().clone();
    for row in &data {
        assert_eq!(
            keys_of(row),
            [
                "cache_write_tokens",
                "cached_tokens",
                "cost_usd",
                "group",
                "input_tokens",
                "output_tokens",
                "reasoning_tokens",
                "requests"
            ]
        );
    }
    data
}

async fn usage_rows_sum_the_records(db: Db) {
    let (app, a, b, records) = fixture(&db).await;
    let jan = "from=2024-01-01&to=2024-02-01";

    let by_model = usage(&app, &format!("tenant={a}&{jan}&group_by=model")).await;
    let expected = expected_rows(
        &records,
        |r| r.tenant_id == a && in_january(r),
        |r| r.model.clone(),
    );
    assert_eq!(by_model, expected);
    // Per-record rounding: 3 in + 1 out = 1.05 micro-USD, recorded as 1, summed exactly.
    let mini = by_model.iter().find(|r| r["group"] == "gpt-mini").unwrap();
    let tiny = records
        .iter()
        .filter(|r| r.request_id.starts_with("tiny") && in_january(r))
        .count();
    assert_eq!(mini["cost_usd"], usd(tiny as i64 + 8));

    let by_day = usage(&app, &format!("tenant={a}&{jan}")).await;
    assert_eq!(
        by_day,
        expected_rows(&records, |r| r.tenant_id == a && in_january(r), day_of)
    );
    assert_eq!(by_day[0]["group"], "2024-01-01");
    assert_eq!(by_day.last().unwrap()["group"], "2024-01-31");

    let by_key = usage(&app, &format!("tenant={a}&{jan}&group_by=key")).await;
    assert_eq!(
        by_key,
        expected_rows(
            &records,
            |r| r.tenant_id == a && in_january(r),
            |r| r.key_id.clone()
        )
    );

    // Filters combine; a global operator without `tenant` sees every tenant.
    let everyone = usage(&app, "from=2024-01-01&group_by=model").await;
    assert_eq!(
        everyone,
        expected_rows(&records, |_| true, |r| r.model.clone())
    );
    let one = usage(
        &app,
        "from=2024-01-01&key=key_a2&model=gpt-mini&group_by=day",
    )
    .await;
    assert_eq!(
        one,
        expected_rows(
            &records,
            |r| r.key_id == "key_a2" && r.model == "gpt-mini",
            day_of
        )
    );
    let model_with_slash =
        usage(&app, "to=2030-01-01&model=claude%2Fsonnet%3A4&group_by=key").await;
    assert_eq!(
        model_with_slash,
        expected_rows(
            &records,
            |r| r.model == "claude/sonnet:4",
            |r| r.key_id.clone()
        )
    );
    let b_only = usage(&app, &format!("tenant={b}&from=2024-01-01&group_by=model")).await;
    assert_eq!(
        b_only,
        expected_rows(&records, |r| r.tenant_id == b, |r| r.model.clone())
    );
    // Nothing in range: an empty list.
    assert!(
        usage(&app, "from=2023-01-01&to=2023-12-31")
            .await
            .is_empty()
    );
    assert!(
        usage(&app, "from=2024-01-05&to=2024-01-05")
            .await
            .is_empty()
    );
}

async fn usage_defaults_to_the_current_month(db: Db) {
    let app = app(&db.store);
    let a = tenant(&app, "a").await;
    let now = OffsetDateTime::now_utc();
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap();
    let earlier = now_ms - 40 * 24 * 3600 * 1000; // always an earlier month
    db.store
        .insert_usage(&[
            priced("now", &a, "k", "m", now_ms, (100, 100, 0, 0)),
            priced("before", &a, "k", "m", earlier, (100, 100, 0, 0)),
        ])
        .await
        .unwrap();
    let rows = usage(&app, "").await;
    let today = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["group"], today);
    assert_eq!(rows[0]["requests"], 1);
    // `from` alone: no end; `to` alone: no start.
    assert_eq!(
        usage(&app, "from=2000-01-01&group_by=model").await[0]["requests"],
        2
    );
    assert_eq!(
        usage(&app, "to=9999-12-31&group_by=model").await[0]["requests"],
        2
    );
}

async fn invoice_json_and_csv_match_usage_and_records(db: Db) {
    let (app, a, _, records) = fixture(&db).await;
    let (status, invoice) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/invoices?tenant={a}&period=2024-01"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{invoice}");
    assert_eq!(
        keys_of(&invoice),
        ["lines", "period", "tenant", "total_usd"]
    );
    assert_eq!(invoice["tenant"], a.as_str());
    assert_eq!(invoice["period"], "2024-01");

    // Lines = the usage query per model for the month, token columns and all.
    let usage_rows = usage(
        &app,
        &format!("tenant={a}&from=2024-01-01&to=2024-02-01&group_by=model"),
    )
    .await;
    let lines = invoice["lines"].as_array().unwrap();
    assert_eq!(lines.len(), usage_rows.len());
    for (line, row) in lines.iter().zip(&usage_rows) {
        assert_eq!(
            keys_of(line),
            [
                "cache_write_tokens",
                "cached_tokens",
                "cost_usd",
                "input_tokens",
                "model",
                "output_tokens",
                "reasoning_tokens",
                "requests"
            ]
        );
        assert_eq!(line["model"], row["group"]);
        for field in [
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_usd",
        ] {
            assert_eq!(line[field], row[field], "{field}");
        }
    }
    // Total = the sum of the lines = the sum of the per-record costs.
    let january: Vec<&UsageRecord> = records
        .iter()
        .filter(|r| r.tenant_id == a && in_january(r))
        .collect();
    let record_total: i64 = january.iter().map(|r| r.cost_micro_usd).sum();
    assert_eq!(invoice["total_usd"], usd(record_total));
    let line_total: i64 = lines
        .iter()
        .map(|l| {
            let (w, f) = l["cost_usd"].as_str().unwrap().split_once('.').unwrap();
            w.parse::<i64>().unwrap() * 1_000_000 + f.parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(line_total, record_total);
    // Pricing the summed tokens instead would give another (wrong) number: the tiny
    // requests cost 1 micro-USD each, 1.05 before rounding.
    let tiny: Vec<&&UsageRecord> = january
        .iter()
        .filter(|r| r.request_id.starts_with("tiny"))
        .collect();
    let summed = Usage {
        input_tokens: tiny.iter().map(|r| r.input_tokens).sum(),
        output_tokens: tiny.iter().map(|r| r.output_tokens).sum(),
        ..Usage::default()
    };
    let per_record: i64 = tiny.iter().map(|r| r.cost_micro_usd).sum();
    assert_eq!(per_record, tiny.len() as i64);
    assert!(price().cost(&summed).micros() > per_record);

    // CSV: the same lines and total.
    let (status, content_type, csv, headers) = get_raw(
        &app,
        &format!("/admin/v1/invoices?tenant={a}&period=2024-01&format=csv"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{csv}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let disposition = headers
        .get(header::CONTENT_DISPOSITION)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        disposition,
        format!("attachment; filename=\"invoice-{a}-2024-01.csv\"")
    );
    let mut expected = String::from(
        "model,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd\r\n",
    );
    let columns = [
        "requests",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ];
    let mut totals = [0_u64; 6];
    for line in lines {
        expected.push_str(line["model"].as_str().unwrap());
        for (total, column) in totals.iter_mut().zip(columns) {
            let n = line[column].as_u64().unwrap();
            *total += n;
            expected.push_str(&format!(",{n}"));
        }
        expected.push_str(&format!(",{}\r\n", line["cost_usd"].as_str().unwrap()));
    }
    expected.push_str("total");
    for n in totals {
        expected.push_str(&format!(",{n}"));
    }
    expected.push_str(&format!(",{}\r\n", invoice["total_usd"].as_str().unwrap()));
    let requests = totals[0];
    assert_eq!(csv, expected);
    assert_eq!(requests, january.len() as u64);

    // format=json is the default; a month without usage is an empty invoice.
    let (_, same) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/invoices?tenant={a}&period=2024-01&format=json"),
        None,
    )
    .await;
    assert_eq!(same, invoice);
    let (status, empty) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/invoices?tenant={a}&period=2023-12"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        empty,
        json!({"tenant": a, "period": "2023-12", "lines": [], "total_usd": "0.000000"})
    );
    let (_, _, empty_csv, _) = get_raw(
        &app,
        &format!("/admin/v1/invoices?tenant={a}&period=2023-12&format=csv"),
    )
    .await;
    assert_eq!(
        empty_csv,
        "model,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd\r\ntotal,0,0,0,0,0,0,0.000000\r\n"
    );
    // February holds the edge record and the tail of the 36-hour series.
    let (_, feb) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/invoices?tenant={a}&period=2024-02"),
        None,
    )
    .await;
    let feb_total: i64 = records
        .iter()
        .filter(|r| r.tenant_id == a && !in_january(r))
        .map(|r| r.cost_micro_usd)
        .sum();
    assert_eq!(feb["total_usd"], usd(feb_total));
}

async fn usage_and_invoices_are_scoped_to_the_operator(db: Db) {
    let (_, a, b, records) = fixture(&db).await;
    for role in [Role::Admin, Role::Viewer] {
        let op = as_operator(&db.store, scoped(role, &a));
        // Without `tenant`: its own tenant's usage only.
        let (status, own) = call(
            &op,
            Method::GET,
            "/admin/v1/usage?from=2024-01-01&group_by=model",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{own}");
        assert_eq!(
            own["data"].as_array().unwrap(),
            &expected_rows(&records, |r| r.tenant_id == a, |r| r.model.clone())
        );
        let (status, _) = call(
            &op,
            Method::GET,
            &format!("/admin/v1/usage?tenant={a}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // Another tenant: 404, word for word the answer for one that does not exist.
        let unknown = "ten_nobodyhere00000";
        for path in [
            format!("/admin/v1/usage?tenant={b}"),
            format!("/admin/v1/usage?tenant={b}&group_by=key"),
            format!("/admin/v1/invoices?tenant={b}&period=2024-01"),
            format!("/admin/v1/invoices?tenant={b}&period=2024-01&format=csv"),
        ] {
            let hidden = call(&op, Method::GET, &path, None).await;
            assert_status_code(&hidden, StatusCode::NOT_FOUND, "not_found");
            let missing = call(&op, Method::GET, &path.replace(&b, unknown), None).await;
            assert_status_code(&missing, StatusCode::NOT_FOUND, "not_found");
            assert_eq!(
                hidden.1["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(&b, "X"),
                missing.1["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(unknown, "X"),
            );
            assert!(!hidden.1.to_string().contains("gpt-mini"));
        }
        // A filter on another tenant's key shows nothing of it.
        let (_, other_key) = call(
            &op,
            Method::GET,
            "/admin/v1/usage?from=2024-01-01&key=key_b",
            None,
        )
        .await;
        assert_eq!(other_key["data"], json!([]));
        let (status, invoice) = call(
            &op,
            Method::GET,
            &format!("/admin/v1/invoices?tenant={a}&period=2024-01"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{invoice}");
        assert_eq!(invoice["tenant"], a.as_str());
    }
    // A global operator naming an unknown tenant: 404 too.
    let app = app(&db.store);
    for path in [
        "/admin/v1/usage?tenant=ten_nobodyhere00000",
        "/admin/v1/invoices?tenant=ten_nobodyhere00000&period=2024-01",
    ] {
        let response = admin(&app, Method::GET, path, None).await;
        assert_status_code(&response, StatusCode::NOT_FOUND, "not_found");
    }
}

async fn bad_parameters_are_named(db: Db) {
    let app = app(&db.store);
    let a = tenant(&app, "a").await;
    let cases: Vec<(String, Option<&str>)> = vec![
        ("/admin/v1/usage?from=2024-13-01".into(), Some("from")),
        ("/admin/v1/usage?from=2024-02-30".into(), Some("from")),
        ("/admin/v1/usage?from=yesterday".into(), Some("from")),
        ("/admin/v1/usage?from=2024-1-01".into(), Some("from")),
        ("/admin/v1/usage?to=2024-01-01T00:00:00Z".into(), Some("to")),
        (
            "/admin/v1/usage?from=2024-02-01&to=2024-01-01".into(),
            Some("to"),
        ),
        ("/admin/v1/usage?group_by=week".into(), Some("group_by")),
        ("/admin/v1/usage?group_by=DAY".into(), Some("group_by")),
        ("/admin/v1/usage?group_by=".into(), Some("group_by")),
        ("/admin/v1/usage?to=".into(), Some("to")),
        ("/admin/v1/usage?from=".into(), Some("from")),
        (
            "/admin/v1/usage?from=2024-01-01&from=2024-01-02".into(),
            None,
        ),
        ("/admin/v1/invoices?period=2024-01".into(), Some("tenant")),
        (
            "/admin/v1/invoices?tenant=&period=2024-01".into(),
            Some("tenant"),
        ),
        (format!("/admin/v1/invoices?tenant={a}"), Some("period")),
        (
            format!("/admin/v1/invoices?tenant={a}&period=2024-1"),
            Some("period"),
        ),
        (
            format!("/admin/v1/invoices?tenant={a}&period=2024-13"),
            Some("period"),
        ),
        (
            format!("/admin/v1/invoices?tenant={a}&period=2024-01-01"),
            Some("period"),
        ),
        (
            format!("/admin/v1/invoices?tenant={a}&period=2024-01&format=xml"),
            Some("format"),
        ),
        (
            format!("/admin/v1/invoices?tenant={a}&period=2024-01&format="),
            Some("format"),
        ),
        ("/admin/v1/invoices".into(), Some("tenant")),
    ];
    for (path, param) in cases {
        let (status, body) = admin(&app, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let error = assert_error(&body, "invalid_request_error", param);
        if let Some(param) = param {
            assert!(
                error["message"].as_str().unwrap().contains(param),
                "{path}: {error}"
            );
        }
    }
}

/// Runs a CLI command; returns its stdout.
async fn run_cli(db: &Db, command: cli::Command, json: bool) -> Result<String, CliError> {
    let mut out = Vec::new();
    cli::run(&db.store, command, json, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn usage_args(
    tenant: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    group_by: &str,
) -> UsageArgs {
    UsageArgs {
        tenant: tenant.map(str::to_owned),
        key: None,
        model: None,
        from: from.map(str::to_owned),
        to: to.map(str::to_owned),
        group_by: group_by.to_owned(),
        user: None,
        tag: None,
        csv: false,
    }
}

fn invoice_args(tenant: &str, period: &str, csv: bool) -> InvoicesArgs {
    InvoicesArgs {
        tenant: tenant.to_owned(),
        period: period.to_owned(),
        csv,
    }
}

async fn cli_matches_the_api(db: Db) {
    let (app, a, _, _) = fixture(&db).await;
    let range = (Some("2024-01-01"), Some("2024-03-01"));
    for group in ["day", "model", "key"] {
        let out = run_cli(
            &db,
            cli::Command::Usage(usage_args(Some(&a), range.0, range.1, group)),
            true,
        )
        .await
        .unwrap();
        let cli_rows: Value = serde_json::from_str(&out).unwrap();
        let api_rows = usage(
            &app,
            &format!("tenant={a}&from=2024-01-01&to=2024-03-01&group_by={group}"),
        )
        .await;
        assert_eq!(cli_rows, Value::Array(api_rows), "{group}");
    }
    let table = run_cli(
        &db,
        cli::Command::Usage(usage_args(None, range.0, range.1, "model")),
        false,
    )
    .await
    .unwrap();
    assert!(table.starts_with("MODEL"), "{table}");
    assert!(
        table.contains("COST_USD") && table.contains("claude/sonnet:4"),
        "{table}"
    );

    let (_, api_invoice) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/invoices?tenant={a}&period=2024-01"),
        None,
    )
    .await;
    let out = run_cli(
        &db,
        cli::Command::Invoices(invoice_args(&a, "2024-01", false)),
        true,
    )
    .await
    .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), api_invoice);
    let csv = run_cli(
        &db,
        cli::Command::Invoices(invoice_args(&a, "2024-01", true)),
        false,
    )
    .await
    .unwrap();
    let (_, _, api_csv, _) = get_raw(
        &app,
        &format!("/admin/v1/invoices?tenant={a}&period=2024-01&format=csv"),
    )
    .await;
    assert_eq!(csv, api_csv);
    let table = run_cli(
        &db,
        cli::Command::Invoices(invoice_args(&a, "2024-01", false)),
        false,
    )
    .await
    .unwrap();
    let total_line = table.lines().last().unwrap();
    assert!(total_line.starts_with("TOTAL"), "{table}");
    assert!(
        total_line.ends_with(api_invoice["total_usd"].as_str().unwrap()),
        "{table}"
    );

    // Errors: their exit codes name the kind.
    let bad_date = run_cli(
        &db,
        cli::Command::Usage(usage_args(None, Some("2024-1-1"), None, "day")),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(bad_date.exit_code(), 65);
    assert!(bad_date.to_string().contains("from"), "{bad_date}");
    let bad_period = run_cli(
        &db,
        cli::Command::Invoices(invoice_args(&a, "January", false)),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(bad_period.exit_code(), 65);
    let unknown = run_cli(
        &db,
        cli::Command::Invoices(invoice_args("ten_nobody", "2024-01", false)),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.exit_code(), 3);
    let unknown = run_cli(
        &db,
        cli::Command::Usage(usage_args(Some("ten_nobody"), None, None, "day")),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.exit_code(), 3);
    let both = run_cli(
        &db,
        cli::Command::Invoices(invoice_args(&a, "2024-01", true)),
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(both.exit_code(), 65);
}
