//! Passthrough: files, fine-tuning jobs and batches forwarded to the configured upstream,
//! scoped per tenant (the mock keeps every object in one account, as OpenAI would), metered
//! once per request.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::on_both_stores;

fn config(upstream: &str) -> String {
    format!(
        "max_body_mb: 1
passthrough:
  deployment: {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret, name: openai-files }}
"
    )
}

/// A tenant and one key: (tenant id, key).
async fn tenant(gw: &Gateway, name: &str) -> (String, String) {
    let tenant = gw.create_tenant(name).await;
    let id = tenant["id"].as_str().unwrap().to_owned();
    let key = gw.create_key(&id, json!({"name": "k"})).await;
    (id, key["key"].as_str().unwrap().to_owned())
}

const BOUNDARY: &str = "tollgate-test-boundary-7d1f";

fn multipart(purpose: &str, filename: &str, content: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload(gw: &Gateway, key: &str, content: &[u8]) -> reqwest::Response {
    gw.http
        .post(format!("{}/v1/files", gw.url))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart("fine-tune", "train.jsonl", content))
        .send()
        .await
        .unwrap()
}

async fn call(
    gw: &Gateway,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = gw
        .http
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

on_both_stores!(
    objects_are_scoped_per_tenant_and_metered,
    creating_batches_and_jobs_goes_through_the_quota,
    a_completed_batch_is_charged_once_per_line,
    work_nobody_reads_is_charged_by_the_poll,
);

async fn objects_are_scoped_per_tenant_and_metered(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let Some(gw) = Gateway::start(backend, &config(&upstream.base_url())).await else {
        return;
    };
    let (a_id, a) = tenant(&gw, "tenant-a").await;
    let (_, b) = tenant(&gw, "tenant-b").await;

    // Upload: streamed through intact (every byte value), created as tenant A's.
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let response = upload(&gw, &a, &content).await;
    assert_eq!(response.status().as_u16(), 200, "{:?}", response.headers());
    assert_eq!(response.headers()["x-tollgate-deployment"], "openai-files");
    let file: Value = response.json().await.unwrap();
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], content.len());
    let file_a = file["id"].as_str().unwrap().to_owned();
    let seen = upstream.requests();
    let sent = seen.last().unwrap();
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer sk-upstream-secret")
    );
    let b_file: Value = upload(&gw, &b, b"{}\n").await.json().await.unwrap();
    let file_b = b_file["id"].as_str().unwrap().to_owned();

    let downloaded = gw
        .http
        .get(format!("{}/v1/files/{file_a}/content", gw.url))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status().as_u16(), 200);
    assert_eq!(
        downloaded.bytes().await.unwrap().as_ref(),
        content.as_slice()
    );

    // Lists: each tenant sees its own file only.
    let (status, list) = call(&gw, &a, Method::GET, "/v1/files", None).await;
    assert_eq!((status, ids(&list)), (200, vec![file_a.clone()]), "{list}");
    let (_, list) = call(&gw, &b, Method::GET, "/v1/files", None).await;
    assert_eq!(ids(&list), vec![file_b.clone()]);
    assert_eq!(list["first_id"], json!(file_b));

    // Another tenant's object is a 404, exactly like one that does not exist.
    for (method, path) in [
        (Method::GET, format!("/v1/files/{file_a}")),
        (Method::GET, format!("/v1/files/{file_a}/content")),
        (Method::DELETE, format!("/v1/files/{file_a}")),
        (Method::GET, "/v1/files/file-nope".to_owned()),
    ] {
        let (status, body) = call(&gw, &b, method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    // B cannot fine-tune or batch on A's file either.
    let (status, body) = call(
        &gw,
        &b,
        Method::POST,
        "/v1/fine_tuning/jobs",
        Some(json!({"model": "gpt-4o-mini", "training_file": file_a})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["param"], "training_file");
    let (status, _) = call(
        &gw,
        &b,
        Method::POST,
        "/v1/batches",
        Some(json!({"input_file_id": file_a,
        "endpoint": "/v1/chat/completions", "completion_window": "24h"})),
    )
    .await;
    assert_eq!(status, 404);

    // Fine-tuning jobs: create, list, get, events, cancel; B sees none of it.
    let (status, job) = call(
        &gw,
        &a,
        Method::POST,
        "/v1/fine_tuning/jobs",
        Some(json!({"model": "gpt-4o-mini", "training_file": file_a})),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let (_, list) = call(&gw, &a, Method::GET, "/v1/fine_tuning/jobs", None).await;
    assert_eq!(ids(&list), vec![job_id.clone()]);
    let (_, list) = call(&gw, &b, Method::GET, "/v1/fine_tuning/jobs", None).await;
    assert!(ids(&list).is_empty(), "{list}");
    let (status, events) = call(
        &gw,
        &a,
        Method::GET,
        &format!("/v1/fine_tuning/jobs/{job_id}/events"),
        None,
    )
    .await;
    assert_eq!((status, events["object"].clone()), (200, json!("list")));
    for path in [
        format!("/v1/fine_tuning/jobs/{job_id}"),
        format!("/v1/fine_tuning/jobs/{job_id}/events"),
    ] {
        assert_eq!(
            call(&gw, &b, Method::GET, &path, None).await.0,
            404,
            "{path}"
        );
    }
    let cancel = format!("/v1/fine_tuning/jobs/{job_id}/cancel");
    assert_eq!(call(&gw, &b, Method::POST, &cancel, None).await.0, 404);
    let (status, job) = call(&gw, &a, Method::POST, &cancel, None).await;
    assert_eq!((status, job["status"].clone()), (200, json!("cancelled")));

    // Batches: create, list, get, cancel.
    let (status, batch) = call(
        &gw,
        &a,
        Method::POST,
        "/v1/batches",
        Some(json!({"input_file_id": file_a,
        "endpoint": "/v1/chat/completions", "completion_window": "24h"})),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let (_, list) = call(&gw, &a, Method::GET, "/v1/batches", None).await;
    assert_eq!(ids(&list), vec![batch_id.clone()]);
    let (_, list) = call(&gw, &b, Method::GET, "/v1/batches", None).await;
    assert!(ids(&list).is_empty());
    assert_eq!(
        list["last_id"],
        Value::Null,
        "never another tenant's id: {list}"
    );
    assert_eq!(
        call(
            &gw,
            &b,
            Method::GET,
            &format!("/v1/batches/{batch_id}"),
            None
        )
        .await
        .0,
        404
    );
    let (status, batch) = call(
        &gw,
        &a,
        Method::POST,
        &format!("/v1/batches/{batch_id}/cancel"),
        None,
    )
    .await;
    assert_eq!(
        (status, batch["status"].clone()),
        (200, json!("cancelling"))
    );

    // Delete: A's own file goes; then it is gone for A too.
    let (status, deleted) = call(
        &gw,
        &a,
        Method::DELETE,
        &format!("/v1/files/{file_a}"),
        None,
    )
    .await;
    assert_eq!((status, deleted["deleted"].clone()), (200, json!(true)));
    assert_eq!(
        call(&gw, &a, Method::GET, &format!("/v1/files/{file_a}"), None)
            .await
            .0,
        404
    );

    // Metered: one record per forwarded request of A, cost 0; refusals are not recorded.
    // A's forwarded requests: upload, content, file list, job create, job list, events,
    // job cancel, batch create, batch list, batch cancel, delete, get after delete = 12.
    let usage = wait_usage(&gw, &a_id, 12).await;
    assert_eq!(usage["cost_usd"], "0.000000", "{usage}");
    assert_eq!(usage["input_tokens"], 0);
}

/// Tenant `tenant`'s usage row for model `passthrough`, once it counts `n` requests.
async fn wait_usage(gw: &Gateway, tenant: &str, n: u64) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = gw
            .admin(
                Method::GET,
                &format!("/admin/v1/usage?tenant={tenant}&group_by=model"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let row = body["data"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["group"] == "passthrough"))
            .cloned();
        if let Some(row) = &row
            && row["requests"].as_u64() >= Some(n)
        {
            assert_eq!(row["requests"].as_u64(), Some(n), "{row}");
            return row.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "usage so far: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_max_body_mb_are_refused_and_unconfigured_passthrough_is_404() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::start(Backend::Sqlite, &config(&upstream.base_url()))
        .await
        .unwrap();
    let (_, key) = tenant(&gw, "big").await;
    let response = upload(&gw, &key, &vec![b'x'; 1024 * 1024 + 1]).await;
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(upstream.requests().iter().all(|r| r.path != "/v1/files"));
    // No key, no passthrough. On a new connection: the 413 left the upload unread, so the
    // server closes the one it came on, and a pooled reuse of it races that close.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/files", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let plain = Gateway::start(Backend::Sqlite, "").await.unwrap();
    let (_, key) = tenant(&plain, "none").await;
    let (status, body) = call(&plain, &key, Method::GET, "/v1/files", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("passthrough"),
        "{body}"
    );
}

/// Creating a batch or a fine-tuning job is a call like any other for the limits: rpm
/// counts it, and a spent monthly budget refuses it (429 `insufficient_quota`).
async fn creating_batches_and_jobs_goes_through_the_quota(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let base = upstream.base_url();
    let config = format!(
        "{}models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream-secret }} ]
",
        config(&base)
    );
    let Some(gw) = Gateway::start(backend, &config).await else {
        return;
    };
    let (status, price) = gw
        .admin(
            Method::PUT,
            "/admin/v1/prices/gpt-4o-mini",
            Some(json!({"input": "0.15", "output": "0.60"})),
        )
        .await;
    assert_eq!(status, 200, "{price}");
    let tenant = gw.create_tenant("quota").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = |body: Value| {
        let gw = &gw;
        let tenant = tenant.clone();
        async move {
            gw.create_key(&tenant, body).await["key"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let file: Value = upload(&gw, &key(json!({"name": "uploader"})).await, b"{}\n")
        .await
        .json()
        .await
        .unwrap();
    let file = file["id"].as_str().unwrap().to_owned();
    let batch = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                       "completion_window": "24h"});
    let job = json!({"model": "gpt-4o-mini", "training_file": file});

    // rpm: two creations pass, the third is refused.
    let limited = key(json!({"name": "rpm", "rpm": 2})).await;
    for body in [&batch, &job] {
        let path = if body.get("training_file").is_some() {
            "/v1/fine_tuning/jobs"
        } else {
            "/v1/batches"
        };
        let (status, answer) = call(&gw, &limited, Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = call(
        &gw,
        &limited,
        Method::POST,
        "/v1/batches",
        Some(batch.clone()),
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limit_exceeded", "{answer}");

    // Budget: one chat spends it (1000 in × 0.15 + 10 out × 0.60 = 156 µUSD against 100),
    // then neither a batch nor a job may be created.
    let spender = key(json!({"name": "budget", "monthly_budget_usd": "0.0001"})).await;
    let chat = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&spender)
        .json(
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 10, "mock": {"prompt_tokens": 1000, "chunks": 10}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    chat.text().await.unwrap();
    for (path, body) in [("/v1/batches", &batch), ("/v1/fine_tuning/jobs", &job)] {
        let (status, answer) = call(&gw, &spender, Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, 429, "{path}: {answer}");
        assert_eq!(
            answer["error"]["code"], "insufficient_quota",
            "{path}: {answer}"
        );
    }
}

/// The batch lines recorded in the ledger: request id → (model, input, cached, output, cost).
async fn batch_records(
    database_url: &str,
) -> std::collections::BTreeMap<String, (String, i64, i64, i64, i64)> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT request_id, model, input_tokens, cached_tokens, output_tokens, cost_micro_usd \
         FROM usage_records WHERE request_id LIKE 'batch:%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| {
            (
                r.get("request_id"),
                (
                    r.get("model"),
                    r.get("input_tokens"),
                    r.get("cached_tokens"),
                    r.get("output_tokens"),
                    r.get("cost_micro_usd"),
                ),
            )
        })
        .collect()
}

/// A batch is charged when a read finds it completed: one record per output line at the
/// batch prices, once per (batch, line) however often it is read, after a restart and from
/// a second replica.
async fn a_completed_batch_is_charged_once_per_line(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let config = config(&upstream.base_url());
    let Some(gw) = Gateway::start(backend, &config).await else {
        return;
    };
    for (model, price) in [
        (
            "gpt-4o-mini",
            json!({"input": "0.15", "output": "0.60", "cached_input": "0.075",
                   "batch_input": "0.075", "batch_output": "0.30", "training": "3"}),
        ),
        // Batch prices left to the rule: input and output.
        ("gpt-4.1", json!({"input": "2", "output": "8"})),
    ] {
        let (status, answer) = gw
            .admin(
                Method::PUT,
                &format!("/admin/v1/prices/{model}"),
                Some(price),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let (tenant, key) = tenant(&gw, "batcher").await;
    let line = |id: &str, model: &str, mock: Value| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": model, "messages": [{"role": "user", "content": "hi"}], "mock": mock}})
        .to_string()
    };
    let input = [
        line(
            "a",
            "gpt-4o-mini",
            json!({"prompt_tokens": 1000, "cached_tokens": 200, "completion_tokens": 100}),
        ),
        line(
            "b",
            "gpt-4o-mini",
            json!({"prompt_tokens": 10000, "completion_tokens": 1000}),
        ),
        line(
            "c",
            "gpt-4.1",
            json!({"prompt_tokens": 500, "completion_tokens": 50}),
        ),
    ]
    .join("\n");
    let file: Value = upload(&gw, &key, input.as_bytes())
        .await
        .json()
        .await
        .unwrap();
    let (status, batch) = call(
        &gw,
        &key,
        Method::POST,
        "/v1/batches",
        Some(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"mock": "complete"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/batches/{id}");
    let (status, read) = call(&gw, &key, Method::GET, &path, None).await;
    assert_eq!(
        (status, &read["status"]),
        (200, &json!("completed")),
        "{read}"
    );

    // 800 × 0.075 + 200 × 0.075 (cached) + 100 × 0.30; 10000 × 0.075 + 1000 × 0.30;
    // 500 × 2 + 50 × 8 (per 1M tokens).
    let want: std::collections::BTreeMap<String, (String, i64, i64, i64, i64)> = [
        ("a", ("gpt-4o-mini", 1000, 200, 100, 60 + 15 + 30)),
        ("b", ("gpt-4o-mini", 10000, 0, 1000, 750 + 300)),
        ("c", ("gpt-4.1", 500, 0, 50, 1000 + 400)),
    ]
    .into_iter()
    .map(|(line, (m, i, c, o, cost))| (format!("batch:{id}:{line}"), (m.to_owned(), i, c, o, cost)))
    .collect();
    assert_eq!(batch_records(&gw.database_url).await, want);

    // Read again, from a second replica on the same store, and after a restart: no more.
    let (status, _) = call(&gw, &key, Method::GET, &path, None).await;
    assert_eq!(status, 200);
    let replica = Gateway::start_on(&gw.database_url, &config).await;
    let (status, _) = call(&replica, &key, Method::GET, &path, None).await;
    assert_eq!(status, 200);
    replica.stop().await;
    let database_url = gw.database_url.clone();
    let stopped = gw.stop().await;
    let gw = Gateway::restart(stopped, &database_url, &config).await;
    let (status, _) = call(&gw, &key, Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(batch_records(&gw.database_url).await, want);

    // The tenant's usage by model includes the batch's cost.
    let (status, usage) = gw
        .admin(
            Method::GET,
            &format!("/admin/v1/usage?tenant={tenant}&group_by=model"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{usage}");
    let cost_of = |model: &str| {
        usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == model)
            .map(|r| r["cost_usd"].clone())
    };
    assert_eq!(cost_of("gpt-4o-mini"), Some(json!("0.001155")), "{usage}");
    assert_eq!(cost_of("gpt-4.1"), Some(json!("0.001400")), "{usage}");

    // A fine-tuning job that succeeded: its trained tokens at the training price, once.
    let (status, job) = call(
        &gw,
        &key,
        Method::POST,
        "/v1/fine_tuning/jobs",
        Some(json!({"model": "gpt-4o-mini", "training_file": file["id"],
                    "metadata": {"mock": "complete", "trained_tokens": "123457"}})),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    let path = format!("/v1/fine_tuning/jobs/{}", job["id"].as_str().unwrap());
    for _ in 0..2 {
        let (status, read) = call(&gw, &key, Method::GET, &path, None).await;
        assert_eq!(
            (status, &read["status"]),
            (200, &json!("succeeded")),
            "{read}"
        );
    }
    use sqlx::Row;
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&gw.database_url)
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT model, input_tokens, cost_micro_usd FROM usage_records \
         WHERE request_id LIKE 'fine_tuning:%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    // 123,457 tokens × 3 USD per 1M = 0.370371 USD.
    let got: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.get("model"),
                r.get("input_tokens"),
                r.get("cost_micro_usd"),
            )
        })
        .collect();
    assert_eq!(got, [("gpt-4o-mini".to_owned(), 123_457, 370_371)]);
}

/// A batch and a job nobody reads back are charged by the gateway's poll, once.
async fn work_nobody_reads_is_charged_by_the_poll(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let config = format!(
        "max_body_mb: 1
passthrough:
  deployment: {{ provider: openai, base_url: '{}', api_key: sk-upstream-secret, name: openai-files }}
  poll_s: 1
",
        upstream.base_url()
    );
    let Some(gw) = Gateway::start(backend, &config).await else {
        return;
    };
    let (status, answer) = gw
        .admin(
            Method::PUT,
            "/admin/v1/prices/gpt-4o-mini",
            Some(
                json!({"input": "0.15", "output": "0.60", "batch_input": "0.075",
                        "batch_output": "0.30", "training": "3"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, key) = tenant(&gw, "polled").await;
    let line = json!({"custom_id": "only", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [], "mock": {"prompt_tokens": 2000, "completion_tokens": 100}}});
    let file: Value = upload(&gw, &key, line.to_string().as_bytes())
        .await
        .json()
        .await
        .unwrap();
    let (status, batch) = call(
        &gw,
        &key,
        Method::POST,
        "/v1/batches",
        Some(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"mock": "complete"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let (status, job) = call(
        &gw,
        &key,
        Method::POST,
        "/v1/fine_tuning/jobs",
        Some(json!({"model": "gpt-4o-mini", "training_file": file["id"],
                    "metadata": {"mock": "complete", "trained_tokens": "1000"}})),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    // 2000 × 0.075 + 100 × 0.30 = 180 µUSD; 1000 trained × 3 = 3000 µUSD.
    let want: std::collections::BTreeMap<String, i64> = [
        (format!("batch:{}:only", batch["id"].as_str().unwrap()), 180),
        (format!("fine_tuning:{}", job["id"].as_str().unwrap()), 3000),
    ]
    .into_iter()
    .collect();
    let started = Instant::now();
    let got = loop {
        let got: std::collections::BTreeMap<String, i64> = charged(&gw.database_url).await;
        if got.len() >= 2 || started.elapsed() > Duration::from_secs(15) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(got, want);
    // Marked charged: later polls leave them alone (and the ledger would not double them).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(charged(&gw.database_url).await, want);
    use sqlx::Row;
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&gw.database_url)
        .await
        .unwrap();
    let uncharged: i64 = sqlx::query(
        "SELECT COUNT(*) FROM passthrough_objects WHERE kind <> 'file' AND charged_at IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    pool.close().await;
    assert_eq!(uncharged, 0);
}

/// Batch and job records: request id → cost.
async fn charged(database_url: &str) -> std::collections::BTreeMap<String, i64> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT request_id, cost_micro_usd FROM usage_records \
         WHERE request_id LIKE 'batch:%' OR request_id LIKE 'fine_tuning:%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get("request_id"), r.get("cost_micro_usd")))
        .collect()
}
