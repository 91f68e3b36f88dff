//! Money right to the token: every kind of token priced at its own rate through the real
//! binary, the OpenAI and Anthropic mocks, and both stores; the records, the usage API, the
//! invoice (JSON and CSV) and the unpriced-model counter agree to the micro-USD.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use tollgate_tests::harness::{ADMIN_TOKEN, Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::on_both_stores;

on_both_stores!(
    every_token_kind_is_priced_at_its_rate,
    spend_is_cut_by_user_and_tag,
);

/// One row of `usage_records`: (model, input, cached, cache writes, output, reasoning, cost).
type Counted = (String, i64, i64, i64, i64, i64, i64);

async fn records(database_url: &str) -> HashMap<String, Counted> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to the store");
    let rows = sqlx::query(
        "SELECT request_id, model, input_tokens, cached_tokens, cache_write_tokens, \
         output_tokens, reasoning_tokens, cost_micro_usd FROM usage_records",
    )
    .fetch_all(&pool)
    .await
    .expect("read usage_records");
    pool.close().await;
    rows.iter()
        .map(|r| {
            (
                r.get("request_id"),
                (
                    r.get("model"),
                    r.get("input_tokens"),
                    r.get("cached_tokens"),
                    r.get("cache_write_tokens"),
                    r.get("output_tokens"),
                    r.get("reasoning_tokens"),
                    r.get("cost_micro_usd"),
                ),
            )
        })
        .collect()
}

fn usd(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

async fn put(gw: &Gateway, path: &str, body: Value) -> Value {
    let (status, answer) = gw.admin(Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn chat(gw: &Gateway, key: &str, body: Value) -> reqwest::Response {
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A chat body for the Anthropic mock: its knobs ride in the system prompt.
fn anthropic(model: &str, knobs: Value) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": format!("mock:{knobs}")},
        {"role": "user", "content": "hello"},
    ]})
}

async fn every_token_kind_is_priced_at_its_rate(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let base = upstream.base_url();
    let config = format!(
        "models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream, name: mock-openai }} ]
  - name: free-chat
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream }} ]
  - name: claude
    deployments: [ {{ provider: anthropic, base_url: '{base}', api_key: sk-ant-upstream, model: claude-sonnet-4-5 }} ]
  - name: claude-set
    deployments: [ {{ provider: anthropic, base_url: '{base}', api_key: sk-ant-upstream, model: claude-sonnet-4-5 }} ]
"
    );
    let Some(gw) = Gateway::start(backend, &config).await else {
        return;
    };
    put(
        &gw,
        "/admin/v1/prices/gpt-4o-mini",
        json!({"input": "0.15", "output": "0.60", "cached_input": "0.075"}),
    )
    .await;
    // Claude Sonnet: cache writes left to the published rule (3.75 and 6 per 1M).
    let claude = put(
        &gw,
        "/admin/v1/prices/claude",
        json!({"input": "3", "output": "15", "cached_input": "0.30"}),
    )
    .await;
    assert_eq!(
        (&claude["cache_write"], &claude["cache_write_1h"]),
        (&json!("3.750000"), &json!("6.000000"))
    );
    // The object GET returns goes back through PUT as it is, with writes set explicitly.
    let (_, mut set) = gw.admin(Method::GET, "/admin/v1/prices/claude", None).await;
    set["model"] = json!("claude-set");
    set["cache_write"] = json!("4");
    set["cache_write_1h"] = json!("7");
    let stored = put(&gw, "/admin/v1/prices/claude-set", set.clone()).await;
    set["cache_write"] = json!("4.000000");
    set["cache_write_1h"] = json!("7.000000");
    assert_eq!(stored, set);

    let tenant = gw.create_tenant("money").await;
    let tenant = tenant["id"].as_str().unwrap().to_owned();
    let key = gw.create_key(&tenant, json!({"name": "k"})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // request id → (model, input, cached, writes, output, reasoning, cost)
    let mut want: HashMap<String, Counted> = HashMap::new();
    let mut expect = |id: String, model: &str, counts: [i64; 5], cost: i64| {
        let [input, cached, writes, output, reasoning] = counts;
        want.insert(
            id,
            (
                model.to_owned(),
                input,
                cached,
                writes,
                output,
                reasoning,
                cost,
            ),
        );
    };

    // OpenAI: 1000 prompt tokens, 400 of them cached; 20 visible + 30 reasoning output.
    // 600 × 0.15 + 400 × 0.075 + 50 × 0.60 (per 1M) = 90 + 30 + 30 µUSD.
    let r = chat(
        &gw,
        &key,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
               "mock": {"prompt_tokens": 1000, "cached_tokens": 400, "chunks": 20,
                        "reasoning_tokens": 30}}),
    )
    .await;
    assert_eq!(r.headers()["x-tollgate-cost-usd"], usd(150).as_str());
    expect(request_id(&r), "gpt-4o-mini", [1000, 400, 0, 50, 30], 150);

    // Anthropic, writes split by TTL: 1000 plain, 2000 read, 3000 written of which 1000
    // for an hour, 10 out. 1000 × 3 + 2000 × 0.30 + 2000 × 3.75 + 1000 × 6 + 10 × 15.
    let split = json!({"prompt_tokens": 1000, "cached_tokens": 2000,
                       "cache_creation_tokens": 3000, "cache_creation_1h_tokens": 1000,
                       "chunks": 10});
    let cost = 3_000 + 600 + 7_500 + 6_000 + 150;
    let r = chat(&gw, &key, anthropic("claude", split.clone())).await;
    assert_eq!(r.headers()["x-tollgate-cost-usd"], usd(cost).as_str());
    let id = request_id(&r);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["usage"]["prompt_tokens_details"],
        json!({"cached_tokens": 2000, "cache_write_tokens": 3000, "cache_write_1h_tokens": 1000})
    );
    assert_eq!(body["usage"]["prompt_tokens"], 6000);
    expect(id, "claude", [6000, 2000, 3000, 10, 0], cost);

    // The same as a stream with include_usage: the final usage carries the same cost.
    let mut streamed = anthropic("claude", split.clone());
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = chat(&gw, &key, streamed).await;
    let id = request_id(&r);
    let text = r.text().await.unwrap();
    let usage: Value = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|c| c["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk: {text}"))["usage"]
        .clone();
    assert_eq!(usage["cost_usd"], usd(cost), "{usage}");
    expect(id, "claude", [6000, 2000, 3000, 10, 0], cost);

    // Anthropic without the split: every write at the 5-minute rate.
    // 100 × 3 + 1000 × 3.75 + 10 × 15.
    let r = chat(
        &gw,
        &key,
        anthropic(
            "claude",
            json!({"prompt_tokens": 100, "cache_creation_tokens": 1000, "chunks": 10}),
        ),
    )
    .await;
    let cost = 300 + 3_750 + 150;
    assert_eq!(r.headers()["x-tollgate-cost-usd"], usd(cost).as_str());
    expect(request_id(&r), "claude", [1100, 0, 1000, 10, 0], cost);

    // Explicit write prices: 1000 × 3 + 2000 × 0.30 + 2000 × 4 + 1000 × 7 + 10 × 15.
    let r = chat(&gw, &key, anthropic("claude-set", split)).await;
    let cost = 3_000 + 600 + 8_000 + 7_000 + 150;
    assert_eq!(r.headers()["x-tollgate-cost-usd"], usd(cost).as_str());
    expect(
        request_id(&r),
        "claude-set",
        [6000, 2000, 3000, 10, 0],
        cost,
    );

    // No price: recorded at 0, and counted.
    for _ in 0..2 {
        let r = chat(
            &gw,
            &key,
            json!({"model": "free-chat", "messages": [{"role": "user", "content": "hi"}],
                   "mock": {"prompt_tokens": 10, "chunks": 3}}),
        )
        .await;
        assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.000000");
        expect(request_id(&r), "free-chat", [10, 0, 0, 3, 0], 0);
    }

    // The records.
    let started = Instant::now();
    let got = loop {
        let got = records(&gw.database_url).await;
        if got.len() >= want.len() || started.elapsed() > Duration::from_secs(20) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got, want);

    // The usage API per model, and the invoice (JSON and CSV), sum the same columns.
    let mut per_model: HashMap<&str, [i64; 7]> = HashMap::new();
    for (model, input, cached, writes, output, reasoning, cost) in want.values() {
        let sums = per_model.entry(model.as_str()).or_default();
        for (sum, n) in sums
            .iter_mut()
            .zip([1, *input, *output, *cached, *writes, *reasoning, *cost])
        {
            *sum += n;
        }
    }
    let (status, usage) = gw
        .admin(
            Method::GET,
            &format!("/admin/v1/usage?tenant={tenant}&group_by=model"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{usage}");
    let rows = usage["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{usage}"));
    assert_eq!(rows.len(), per_model.len(), "{usage}");
    for row in rows {
        let s = per_model[row["group"].as_str().unwrap()];
        assert_eq!(
            (
                &row["requests"],
                &row["input_tokens"],
                &row["output_tokens"],
                &row["cached_tokens"],
                &row["cache_write_tokens"],
                &row["reasoning_tokens"],
                &row["cost_usd"],
            ),
            (
                &json!(s[0]),
                &json!(s[1]),
                &json!(s[2]),
                &json!(s[3]),
                &json!(s[4]),
                &json!(s[5]),
                &json!(usd(s[6])),
            ),
            "{row}"
        );
    }
    let period = time::OffsetDateTime::now_utc();
    let period = format!("{:04}-{:02}", period.year(), u8::from(period.month()));
    let (status, invoice) = gw
        .admin(
            Method::GET,
            &format!("/admin/v1/invoices?tenant={tenant}&period={period}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{invoice}");
    let total: i64 = want.values().map(|r| r.6).sum();
    assert_eq!(invoice["total_usd"], usd(total));
    let claude = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["model"] == "claude")
        .unwrap();
    let s = per_model["claude"];
    assert_eq!(
        (
            &claude["cached_tokens"],
            &claude["cache_write_tokens"],
            &claude["reasoning_tokens"],
            &claude["cost_usd"]
        ),
        (&json!(s[3]), &json!(s[4]), &json!(0), &json!(usd(s[6])))
    );
    let csv = gw
        .http
        .get(format!(
            "{}/admin/v1/invoices?tenant={tenant}&period={period}&format=csv",
            gw.admin_url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "model,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd"
        )
    );
    let s = per_model["gpt-4o-mini"];
    assert!(
        csv.contains(&format!(
            "gpt-4o-mini,{},{},{},{},{},{},{}\r\n",
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            s[5],
            usd(s[6])
        )),
        "{csv}"
    );

    // The unpriced model is counted (by model; never by tenant, key or user).
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_unpriced_requests_total{model=\"free-chat\"} 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tollgate_unpriced_requests_total{model=\"claude\"}"),
        "priced models are not counted"
    );
    assert!(
        gw.logs()
            .matches("model has no price")
            .filter(|_| true)
            .count()
            >= 1,
        "a warning names the unpriced model"
    );
}

/// `GET /admin/v1/usage?{query}`'s rows as (group, requests, cost).
async fn usage_rows(gw: &Gateway, query: &str) -> Vec<(String, u64, String)> {
    let (status, body) = gw
        .admin(Method::GET, &format!("/admin/v1/usage?{query}"), None)
        .await;
    assert_eq!(status, 200, "{query}: {body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_owned(),
                r["requests"].as_u64().unwrap(),
                r["cost_usd"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn spend_is_cut_by_user_and_tag(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let base = upstream.base_url();
    let config = format!(
        "models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream }} ]
"
    );
    let Some(gw) = Gateway::start(backend, &config).await else {
        return;
    };
    put(
        &gw,
        "/admin/v1/prices/gpt-4o-mini",
        json!({"input": "0.15", "output": "0.60"}),
    )
    .await;
    let tenant = gw.create_tenant("attribution").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = gw.create_key(&tenant, json!({"name": "k"})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Each request: 100 in × 0.15 + 10 out × 0.60 = 21 µUSD.
    let send = |user_body: Option<&str>, headers: &[(&str, &str)], stream: bool| {
        let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                              "mock": {"prompt_tokens": 100, "chunks": 10}});
        if let Some(user) = user_body {
            body["user"] = json!(user);
        }
        if stream {
            body["stream"] = json!(true);
        }
        let mut request = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    let ok = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    };
    ok(
        send(Some("alice"), &[("x-tollgate-tags", "search,beta")], false)
            .await
            .unwrap(),
    )
    .await;
    ok(send(
        None,
        &[("x-tollgate-user", "bob"), ("x-tollgate-tags", "search")],
        false,
    )
    .await
    .unwrap())
    .await;
    // The body's user wins over the header's.
    ok(send(Some("alice"), &[("x-tollgate-user", "bob")], false)
        .await
        .unwrap())
    .await;
    ok(send(None, &[], false).await.unwrap()).await;
    ok(send(
        None,
        &[("x-tollgate-user", "carol"), ("x-tollgate-tags", "stream")],
        true,
    )
    .await
    .unwrap())
    .await;
    // Bad tags: 400 naming the header, and nothing recorded.
    let eleven = (0..11)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    for bad in ["a b", eleven.as_str(), "ok,,x"] {
        let r = send(None, &[("x-tollgate-tags", bad)], false)
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["param"], "x-tollgate-tags", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    let cost = |n: i64| usd(21 * n);
    let started = Instant::now();
    let by_user = loop {
        let rows = usage_rows(&gw, &format!("tenant={tenant}&group_by=user")).await;
        if rows.iter().map(|r| r.1).sum::<u64>() >= 5 || started.elapsed() > Duration::from_secs(20)
        {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = |g: &str, n: i64| (g.to_owned(), n as u64, cost(n));
    assert_eq!(
        by_user,
        [row("", 1), row("alice", 2), row("bob", 1), row("carol", 1)]
    );
    assert_eq!(
        usage_rows(&gw, &format!("tenant={tenant}&group_by=tag")).await,
        [
            row("", 2),
            row("beta", 1),
            row("search", 2),
            row("stream", 1)
        ]
    );
    assert_eq!(
        usage_rows(&gw, &format!("tenant={tenant}&group_by=model&user=alice")).await,
        [row("gpt-4o-mini", 2)]
    );
    assert_eq!(
        usage_rows(&gw, &format!("tenant={tenant}&group_by=day&tag=search")).await[0].1,
        2
    );
    // The plain per-model report still counts every request once.
    assert_eq!(
        usage_rows(&gw, &format!("tenant={tenant}&group_by=model")).await,
        [row("gpt-4o-mini", 5)]
    );
    // Users and tags together: a tag's spend by user, a user's by tag, one user's tag.
    assert_eq!(
        usage_rows(&gw, &format!("tenant={tenant}&group_by=user&tag=search")).await,
        [row("alice", 1), row("bob", 1)]
    );
    assert_eq!(
        usage_rows(&gw, &format!("tenant={tenant}&group_by=tag&user=alice")).await,
        [row("", 1), row("beta", 1), row("search", 1)]
    );
    assert_eq!(
        usage_rows(
            &gw,
            &format!("tenant={tenant}&group_by=model&user=bob&tag=search")
        )
        .await,
        [row("gpt-4o-mini", 1)]
    );
    let csv = gw
        .http
        .get(format!(
            "{}/admin/v1/usage?tenant={tenant}&group_by=tag&format=csv",
            gw.admin_url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(
        csv.text().await.unwrap(),
        format!(
            "group,requests,input_tokens,output_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,cost_usd\r\n\
             ,2,200,20,0,0,0,{c2}\r\nbeta,1,100,10,0,0,0,{c1}\r\nsearch,2,200,20,0,0,0,{c2}\r\n\
             stream,1,100,10,0,0,0,{c1}\r\n",
            c1 = cost(1),
            c2 = cost(2)
        )
    );

    // Users and tags are ledger columns, never metric labels.
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for value in ["alice", "bob", "carol", "search", "beta"] {
        assert!(!metrics.contains(value), "{value} in the metrics");
    }
}
