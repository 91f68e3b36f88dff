//! Secrets never leak, and nothing of the client's request but its body reaches an
//! upstream.
//!
//! The full run: a gateway at `TOLLGATE_LOG=trace` with JSON logs, an operator JWT and the
//! bootstrap token, a tenant key created and rotated, requests that succeed, fail (unknown,
//! rotated and misplaced credentials, upstream 401/500 that echo the upstream key) and
//! stream, over the openai, azure and anthropic providers, admin reads, `/metrics`, and the
//! CLI. Then every log line, all of stdout, the metrics text, every answer the clients got
//! and every admin answer (but the two that hand out a key) are searched for each secret:
//! the tenant keys and their secret parts, the upstream keys, the admin token, the JWT and
//! its signing secret.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate_tests::harness::{ADMIN_TOKEN, Backend, Gateway, tollgate_bin};
use tollgate_tests::upstream::{MockUpstream, bedrock, google};

use crate::on_both_stores;

on_both_stores!(no_secret_appears_in_logs_metrics_errors_or_admin_answers);

const OPENAI_KEY: &str = "sk-openai-LEAKCANARY-4f1c9e2a7b";
const AZURE_KEY: &str = "azure-LEAKCANARY-8d3b2c1a0f";
const ANTHROPIC_KEY: &str = "sk-ant-LEAKCANARY-6a5e4d3c2b";
const JWT_SECRET: &str = "jwt-LEAKCANARY-secret-of-at-least-32-bytes!";
const GEMINI_KEY: &str = "gemini-LEAKCANARY-1b2c3d4e5f";

fn config(upstream: &MockUpstream, vertex_credentials: &str) -> String {
    let base = upstream.base_url();
    let origin = format!("http://{}", upstream.addr());
    format!(
        "admin:
  bootstrap_token: '${{TEST_ADMIN_TOKEN}}'
  jwt: {{ hs256_secret: '{JWT_SECRET}', audience: tollgate }}
models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: {OPENAI_KEY}, name: openai-dep }} ]
  - name: azure-gpt
    deployments: [ {{ provider: azure, base_url: '{origin}', api_key: {AZURE_KEY}, deployment: dep, api_version: 2024-10-21, name: azure-dep }} ]
  - name: claude
    deployments: [ {{ provider: anthropic, base_url: '{base}', api_key: {ANTHROPIC_KEY}, model: claude-sonnet-4-5, name: anthropic-dep }} ]
  - name: text-embedding-3-small
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: {OPENAI_KEY} }} ]
  - name: gemini
    deployments: [ {{ provider: gemini, base_url: '{origin}/v1beta', api_key: {GEMINI_KEY}, model: gemini-2.5-flash }} ]
  - name: vertex
    deployments: [ {{ provider: vertex, base_url: '{origin}/v1', project: p, credentials_file: '{vertex_credentials}', model: gemini-2.5-pro }} ]
  - name: bedrock
    deployments: [ {{ provider: bedrock, base_url: '{origin}', region: us-east-1, access_key_id: {aws_id}, secret_access_key: '{aws_secret}', session_token: {aws_token}, model: 'anthropic.claude-3-5-sonnet-20240620-v1:0' }} ]
",
        aws_id = bedrock::ACCESS_KEY_ID,
        aws_secret = bedrock::SECRET_ACCESS_KEY,
        aws_token = bedrock::SESSION_TOKEN,
    )
}

/// The test service account with its token endpoint at `upstream`, written to `dir`.
fn vertex_credentials(upstream: &MockUpstream, dir: &std::path::Path) -> String {
    let mut account: Value = serde_json::from_str(google::SERVICE_ACCOUNT_JSON).unwrap();
    account["token_uri"] = json!(format!("http://{}/token", upstream.addr()));
    let path = dir.join("service-account.json");
    std::fs::write(&path, account.to_string()).unwrap();
    path.display().to_string()
}

fn jwt() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ops@example.com", "aud": "tollgate", "exp": exp, "role": "admin"}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Everything a client or an operator saw, to be searched.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    /// Sends `request`; records its status, headers and body; returns (status, body).
    async fn send(&mut self, what: &str, request: reqwest::RequestBuilder) -> (u16, String) {
        let r = request.send().await.expect("the gateway answers");
        let status = r.status().as_u16();
        let headers = format!("{:?}", r.headers());
        let body = match r.bytes().await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("<body cut: {e}>"),
        };
        self.add(format!("{what} (status {status}, headers)"), headers);
        self.add(format!("{what} (status {status}, body)"), body.clone());
        (status, body)
    }
}

async fn no_secret_appears_in_logs_metrics_errors_or_admin_answers(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let env = [("TOLLGATE_LOG", "trace"), ("TOLLGATE_LOG_FORMAT", "json")];
    let dir = tempfile::tempdir().unwrap();
    let credentials = vertex_credentials(&upstream, dir.path());
    let Some(gw) = Gateway::start_with_env(backend, &config(&upstream, &credentials), &env).await
    else {
        return;
    };
    let token = jwt();
    let http = &gw.http;
    let admin = |method: Method, path: &str, bearer: &str| {
        http.request(method, format!("{}{path}", gw.admin_url))
            .bearer_auth(bearer)
    };
    let data = |path: &str, bearer: &str| {
        http.post(format!("{}/v1/{path}", gw.url))
            .bearer_auth(bearer)
    };
    let mut seen = Seen::default();

    // Operators: a tenant and a key through the JWT, then a rotation through the token.
    let (status, tenant) = seen
        .send(
            "create tenant",
            admin(Method::POST, "/admin/v1/tenants", &token).json(&json!({"name": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let tenant: Value = serde_json::from_str(&tenant).unwrap();
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    // The two answers that hand out a key are not searched (they must carry it once).
    let created: Value = admin(
        Method::POST,
        &format!("/admin/v1/tenants/{tenant_id}/keys"),
        &token,
    )
    .json(&json!({"name": "app"}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let old_key = created["key"].as_str().expect("plaintext key").to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let rotated: Value = admin(
        Method::POST,
        &format!("/admin/v1/keys/{key_id}/rotate"),
        ADMIN_TOKEN,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key = rotated["key"].as_str().expect("rotated key").to_owned();
    assert_ne!(key, old_key);

    // Data plane: successes and streams on every provider.
    let chat = |model: &str, stream: bool, extra: Value| {
        let mut body = json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hello there"}]});
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
            b.extend(extra);
        }
        body
    };
    for model in [
        "gpt-4o-mini",
        "azure-gpt",
        "claude",
        "gemini",
        "vertex",
        "bedrock",
    ] {
        for stream in [false, true] {
            let (status, body) = seen
                .send(
                    &format!("{model} stream={stream}"),
                    data("chat/completions", &key).json(&chat(model, stream, json!({}))),
                )
                .await;
            assert_eq!(status, 200, "{model}: {body}");
        }
    }
    let (status, _) = seen
        .send(
            "embeddings",
            data("embeddings", &key)
                .json(&json!({"model": "text-embedding-3-small", "input": "hi"})),
        )
        .await;
    assert_eq!(status, 200);

    // Failures: unknown, rotated-away and misplaced credentials.
    // The last character changed (to one it is not: a secret may end in `X`).
    let last = if key.ends_with('X') { 'Y' } else { 'X' };
    let bad_key = format!("{}{last}", &key[..key.len() - 1]);
    for (what, bearer) in [
        (
            "unknown key",
            "tg-AAAAAAAAAAAA-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        ),
        ("wrong secret", bad_key.as_str()),
        ("rotated key", old_key.as_str()),
        ("admin token on the data plane", ADMIN_TOKEN),
        ("JWT on the data plane", token.as_str()),
    ] {
        let (status, body) = seen
            .send(
                what,
                data("chat/completions", bearer).json(&chat("gpt-4o-mini", false, json!({}))),
            )
            .await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    for (what, bearer) in [
        ("tenant key on the admin plane", key.as_str()),
        ("rotated key on the admin plane", old_key.as_str()),
    ] {
        let (status, _) = seen
            .send(what, admin(Method::GET, "/admin/v1/tenants", bearer))
            .await;
        assert_eq!(status, 401, "{what}");
    }
    // Upstream errors whose bodies echo the credential the upstream got.
    let echo = |status: u16| json!({"mock": {"status": status, "echo_auth": true}});
    for (model, status) in [
        ("gpt-4o-mini", 401),
        ("gpt-4o-mini", 500),
        ("azure-gpt", 401),
        ("azure-gpt", 500),
    ] {
        for stream in [false, true] {
            let (got, body) = seen
                .send(
                    &format!("{model} upstream {status} echo stream={stream}"),
                    data("chat/completions", &key).json(&chat(model, stream, echo(status))),
                )
                .await;
            if status < 500 {
                assert_eq!(got, status, "{body}");
                assert!(
                    body.contains("[redacted]"),
                    "the echo is there, redacted: {body}"
                );
            } else {
                // A 5xx body is not relayed at all: the gateway's own 502.
                assert_eq!(got, 502, "{body}");
            }
        }
    }
    for status in [401, 500] {
        let system = format!("mock:{}", json!({"status": status, "echo_auth": true}));
        let body = json!({"model": "claude", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "hi"}]});
        let (got, answer) = seen
            .send(
                &format!("anthropic upstream {status} echo"),
                data("chat/completions", &key).json(&body),
            )
            .await;
        assert_eq!(got, if status < 500 { status } else { 502 }, "{answer}");
    }
    // The mock did get the upstream keys (so the echoes above carried them).
    let sent: HashSet<String> = upstream
        .requests()
        .iter()
        .flat_map(|r| r.headers.iter().map(|(_, v)| v.clone()))
        .collect();
    assert!(sent.contains(&format!("Bearer {OPENAI_KEY}")));
    assert!(sent.contains(AZURE_KEY) && sent.contains(ANTHROPIC_KEY));
    assert!(sent.contains(GEMINI_KEY) && sent.contains(bedrock::SESSION_TOKEN));
    // The Vertex access tokens the mock issued (and the gateway sent) are secrets too.
    let vertex_tokens: Vec<String> = sent
        .iter()
        .filter_map(|v| v.strip_prefix("Bearer ya29."))
        .map(|t| format!("ya29.{t}"))
        .collect();
    assert!(
        !vertex_tokens.is_empty(),
        "the vertex calls carried a token"
    );

    // Admin reads, with both kinds of operator credential.
    for bearer in [ADMIN_TOKEN, token.as_str()] {
        for path in [
            format!("/admin/v1/keys?tenant={tenant_id}"),
            format!("/admin/v1/keys/{key_id}"),
            "/admin/v1/tenants".to_owned(),
            format!("/admin/v1/tenants/{tenant_id}"),
            format!("/admin/v1/usage?tenant={tenant_id}&group_by=model"),
            format!("/admin/v1/usage?tenant={tenant_id}&key={key_id}&group_by=day"),
            "/admin/v1/plans/default".to_owned(),
            "/admin/openapi.json".to_owned(),
        ] {
            let (status, body) = seen
                .send(&format!("GET {path}"), admin(Method::GET, &path, bearer))
                .await;
            assert!(status == 200 || status == 404, "{path}: {status} {body}");
        }
    }
    for path in ["/readyz", "/healthz", "/metrics"] {
        let (status, body) = seen
            .send(path, http.get(format!("{}{path}", gw.admin_url)))
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = seen
        .send(
            "data-plane /metrics",
            http.get(format!("{}/metrics", gw.url)),
        )
        .await;
    assert_ne!(status, 200, "metrics belong to the admin plane");

    // The CLI, at trace level too.
    for args in [
        vec!["keys", "list", "--tenant", &tenant_id, "--json"],
        vec!["tenants", "show", &tenant_id, "--json"],
        vec!["tenants", "list", "--json"],
        vec!["usage", "--tenant", &tenant_id, "--json"],
    ] {
        let out = tokio::process::Command::new(tollgate_bin())
            .args(&args)
            .args(["--database-url", &gw.database_url])
            .env_remove("TOLLGATE_CONFIG")
            .env("TOLLGATE_LOG", "trace")
            .env("TOLLGATE_LOG_FORMAT", "json")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.add(
            format!("cli {args:?} stdout"),
            String::from_utf8_lossy(&out.stdout),
        );
        seen.add(
            format!("cli {args:?} stderr"),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    let stdout = gw.stdout();
    let stopped = gw.stop().await;
    let logs = stopped.logs;
    // hyper's server side has no logs (its tracing is behind an unstable cfg); the client
    // pool, reqwest and sqlx do, and they are on.
    let traces = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"TRACE\""))
        .count();
    assert!(
        traces >= 20,
        "trace logging was not on: {traces} TRACE lines"
    );
    seen.add("gateway logs (stderr)", logs.clone());
    seen.add("gateway stdout", stdout);

    let secret_part = |k: &str| k.rsplit_once('-').unwrap().1.to_owned();
    let jwt_signature = token.rsplit_once('.').unwrap().1.to_owned();
    let secrets = [
        ("tenant key", key.clone()),
        ("tenant key's secret", secret_part(&key)),
        ("rotated tenant key", old_key.clone()),
        ("rotated key's secret", secret_part(&old_key)),
        ("openai upstream key", OPENAI_KEY.to_owned()),
        ("azure upstream key", AZURE_KEY.to_owned()),
        ("anthropic upstream key", ANTHROPIC_KEY.to_owned()),
        ("admin token", ADMIN_TOKEN.to_owned()),
        ("operator JWT", token.clone()),
        ("operator JWT's signature", jwt_signature),
        ("JWT signing secret", JWT_SECRET.to_owned()),
        ("gemini upstream key", GEMINI_KEY.to_owned()),
        (
            "AWS secret access key",
            bedrock::SECRET_ACCESS_KEY.to_owned(),
        ),
        ("AWS session token", bedrock::SESSION_TOKEN.to_owned()),
        (
            "service account private key",
            // A line from the middle of the PEM.
            serde_json::from_str::<Value>(google::SERVICE_ACCOUNT_JSON).unwrap()["private_key"]
                .as_str()
                .unwrap()
                .lines()
                .nth(5)
                .unwrap()
                .to_owned(),
        ),
    ];
    let secrets: Vec<(&str, String)> = secrets
        .into_iter()
        .chain(
            vertex_tokens
                .into_iter()
                .map(|t| ("vertex access token", t)),
        )
        .collect();
    let mut hits = Vec::new();
    for (what, text) in &seen.0 {
        for (name, secret) in &secrets {
            if let Some(at) = text.find(secret.as_str()) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                let to = (at + secret.len() + 100).min(text.len());
                let to = (to..=text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(text.len());
                hits.push(format!("{name} in {what}: ...{}...", &text[from..to]));
            }
        }
    }
    let searched: usize = seen.0.iter().map(|(_, t)| t.len()).sum();
    println!(
        "searched {} texts, {searched} bytes ({} log lines, {traces} at TRACE) for {} secrets: {} hits",
        seen.0.len(),
        logs.lines().count(),
        secrets.len(),
        hits.len()
    );
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n\n"));
}
