//! What reaches an upstream: the client's body (with `model` replaced) and the provider's
//! own credential, nothing else of the client's request (no `x-forwarded-*`, `forwarded`,
//! cookies, the client's `authorization`, proxy credentials or hop-by-hop headers). And
//! where it goes: only to the configured `base_url` (SSRF), whatever the request names as
//! a base URL or host in its body, its headers or its request target.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::{MockUpstream, RecordedRequest};

const OPENAI_KEY: &str = "sk-forwarding-openai";
const AZURE_KEY: &str = "forwarding-azure";
const ANTHROPIC_KEY: &str = "sk-ant-forwarding";

async fn start() -> Option<(MockUpstream, Gateway, String)> {
    let upstream = MockUpstream::start().await;
    let base = upstream.base_url();
    let origin = format!("http://{}", upstream.addr());
    let config = format!(
        "models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: {OPENAI_KEY} }} ]
  - name: azure-gpt
    deployments: [ {{ provider: azure, base_url: '{origin}', api_key: {AZURE_KEY}, deployment: dep, api_version: 2024-10-21 }} ]
  - name: claude
    deployments: [ {{ provider: anthropic, base_url: '{base}', api_key: {ANTHROPIC_KEY}, model: claude-sonnet-4-5 }} ]
"
    );
    let gw = Gateway::start(Backend::Sqlite, &config).await?;
    let key = gw.tenant_key(&[]).await;
    Some((upstream, gw, key))
}

/// One HTTP/1.1 request written by hand (so any header and request target can be sent);
/// returns the status and the body.
async fn raw(
    gw: &Gateway,
    target: &str,
    headers: &[(&str, String)],
    body: &Value,
) -> (u16, String) {
    let addr = gw.url.trim_start_matches("http://");
    let body = body.to_string();
    let mut head = format!("POST {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// Headers an upstream request may carry: framing, the provider's own credential and
/// version, and trace context.
const ALLOWED: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "accept",
    "authorization",
    "api-key",
    "x-api-key",
    "anthropic-version",
    "traceparent",
    "tracestate",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_body_and_the_provider_credential_reach_the_upstream() {
    let Some((upstream, gw, key)) = start().await else {
        return;
    };
    let hostile = [
        ("Authorization", format!("Bearer {key}")),
        ("X-Forwarded-For", "10.0.0.66".to_owned()),
        ("X-Forwarded-Host", "evil.example".to_owned()),
        ("X-Forwarded-Proto", "https".to_owned()),
        ("X-Forwarded-Port", "8443".to_owned()),
        (
            "Forwarded",
            "for=10.0.0.66;host=evil.example;proto=https".to_owned(),
        ),
        ("X-Real-IP", "10.0.0.66".to_owned()),
        ("Cookie", "session=cookie-canary-1234".to_owned()),
        ("Proxy-Authorization", "Basic cHJveHk6Y2FuYXJ5".to_owned()),
        ("Connection", "close, x-hop-canary".to_owned()),
        ("X-Hop-Canary", "hop-canary".to_owned()),
        ("Keep-Alive", "timeout=5".to_owned()),
        ("OpenAI-Organization", "org-canary".to_owned()),
        ("X-Custom-Canary", "custom-canary".to_owned()),
    ];
    let mut runs = 0;
    for model in ["gpt-4o-mini", "azure-gpt", "claude"] {
        for stream in [false, true] {
            upstream.clear();
            let (status, body) =
                raw(&gw, "/v1/chat/completions", &hostile, &chat(model, stream)).await;
            assert_eq!(status, 200, "{model} stream={stream}: {body}");
            let got: Vec<RecordedRequest> = upstream.requests();
            assert_eq!(got.len(), 1, "{got:?}");
            let sent = &got[0];
            for (name, value) in &sent.headers {
                assert!(
                    ALLOWED.contains(&name.as_str()),
                    "{model}: header '{name}: {value}' reached the upstream"
                );
                for canary in ["10.0.0.66", "evil.example", "canary", key.as_str()] {
                    assert!(
                        !value.contains(canary),
                        "{model}: '{name}: {value}' carries the client's '{canary}'"
                    );
                }
            }
            let credential = match model {
                "gpt-4o-mini" => ("authorization", format!("Bearer {OPENAI_KEY}")),
                "azure-gpt" => ("api-key", AZURE_KEY.to_owned()),
                _ => ("x-api-key", ANTHROPIC_KEY.to_owned()),
            };
            assert_eq!(
                sent.header(credential.0),
                Some(credential.1.as_str()),
                "{sent:?}"
            );
            if model != "gpt-4o-mini" {
                assert_eq!(sent.header("authorization"), None, "{sent:?}");
            }
            assert_eq!(
                sent.header("host"),
                Some(upstream.addr().to_string().as_str())
            );
            runs += 1;
            println!(
                "{model} stream={stream}: upstream got {:?}",
                sent.headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(runs, 6);
}

/// A TCP listener standing for the attacker's target; counts connections.
async fn attacker() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_fields_naming_a_host_do_not_move_the_upstream() {
    let Some((upstream, gw, key)) = start().await else {
        return;
    };
    let (evil, hits) = attacker().await;
    let evil_url = format!("http://{evil}/v1");
    let auth = ("Authorization", format!("Bearer {key}"));
    let mut body = chat("gpt-4o-mini", false);
    for field in [
        "base_url",
        "api_base",
        "azure_endpoint",
        "endpoint",
        "url",
        "host",
        "upstream",
        "proxy",
    ] {
        body[field] = json!(evil_url);
    }
    body["extra_headers"] = json!({"host": evil});
    let headers = vec![
        auth.clone(),
        ("Host", evil.clone()),
        ("X-Upstream-Url", evil_url.clone()),
        ("X-Base-Url", evil_url.clone()),
        ("X-Forwarded-Host", evil.clone()),
        ("Forwarded", format!("host={evil}")),
        ("X-Original-URL", format!("{evil_url}/chat/completions")),
        ("X-Rewrite-URL", format!("{evil_url}/chat/completions")),
    ];
    let targets = [
        "/v1/chat/completions".to_owned(),
        // Absolute form, as sent to a proxy.
        format!("http://{evil}/v1/chat/completions"),
    ];
    let mut served = 0;
    for target in &targets {
        for stream in [false, true] {
            body["stream"] = json!(stream);
            upstream.clear();
            let (status, answer) = raw(&gw, target, &headers, &body).await;
            assert_eq!(status, 200, "{target}: {answer}");
            assert_eq!(
                upstream.requests().len(),
                1,
                "the configured upstream served it"
            );
            served += 1;
        }
    }
    // Passing the same through the Azure and Anthropic providers.
    for model in ["azure-gpt", "claude"] {
        body["model"] = json!(model);
        body["stream"] = json!(false);
        // Anthropic refuses no unknown field: they are dropped in translation.
        let (status, answer) = raw(&gw, "/v1/chat/completions", &headers, &body).await;
        assert_eq!(status, 200, "{model}: {answer}");
        served += 1;
    }
    // A model named by URL is just an unknown model.
    body["model"] = json!(evil_url);
    let (status, answer) = raw(&gw, "/v1/chat/completions", &headers, &body).await;
    assert_eq!(status, 404, "{answer}");
    let error: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = hits.load(Ordering::SeqCst);
    println!(
        "{served} requests naming {evil} served by the configured upstream; attacker saw {n} connections"
    );
    assert_eq!(n, 0, "the gateway connected to the address a request named");
}
