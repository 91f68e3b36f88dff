//! Every error the gateway makes is OpenAI-shaped with the right status; upstream errors
//! pass through with their own status and body; nothing internal leaks.

use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::{assert_error_shape, models_yaml, on_both_stores, setup};

on_both_stores!(
    bad_requests_name_the_field,
    unknown_paths_and_methods,
    upstream_errors_pass_through,
    upstream_failures_are_502_and_504,
    oversized_bodies_are_413,
);

async fn post(gw: &Gateway, key: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = gw
        .http
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn bad_requests_name_the_field(backend: Backend) {
    let Some((upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let cases: [(&str, &str, Option<&str>); 8] = [
        ("/v1/chat/completions", "{not json", None),
        ("/v1/chat/completions", "[1,2]", None),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini"}"#,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":"hi"}"#,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user"}],"max_tokens":"many"}"#,
            Some("max_tokens"),
        ),
        (
            "/v1/embeddings",
            r#"{"model":"text-embedding-3-small"}"#,
            Some("input"),
        ),
        (
            "/v1/images/generations",
            r#"{"model":"dall-e-3","prompt":5}"#,
            Some("prompt"),
        ),
    ];
    for (path, body, param) in cases {
        let (status, answer) = post(&gw, &key, path, body.to_owned()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = assert_error_shape(&answer);
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"].as_str(), param, "{body}: {answer}");
    }
    let invalid_utf8 = vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'];
    let (status, answer) = post(&gw, &key, "/v1/chat/completions", invalid_utf8).await;
    assert_eq!(status, 400);
    assert_error_shape(&answer);
    assert!(upstream.requests().is_empty());
}

async fn unknown_paths_and_methods(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let response = gw
        .http
        .get(format!("{}/v1/nope", gw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_error_shape(&response.json().await.unwrap());
    let response = gw
        .http
        .get(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_error_shape(&response.json().await.unwrap());
}

/// An upstream's 4xx reaches the client as the upstream sent it (the client needs "context
/// length exceeded"); a 5xx becomes the gateway's own 502 / 503 in OpenAI's shape, with
/// the request id, and the upstream's body stays in the operator's log.
async fn upstream_errors_pass_through(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let body = |status: u16| {
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
               "mock": {"status": status, "headers": {"retry-after": "7"},
                        "error": {"error": {"message": format!("upstream says {status}"), "type": "upstream_type", "param": null, "code": "upstream_code"}}}})
    };
    for status in [400, 429] {
        let response = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body(status))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["x-tollgate-deployment"], "mock-primary");
        if status == 429 {
            assert_eq!(response.headers()["retry-after"], "7");
        }
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["error"]["message"],
            format!("upstream says {status}")
        );
        assert_eq!(answer["error"]["code"], "upstream_code");
    }
    for (status, ours, code) in [
        (500, 502, "upstream_error"),
        (503, 503, "upstream_overloaded"),
    ] {
        let response = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body(status))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), ours);
        assert_eq!(response.headers()["x-tollgate-deployment"], "mock-primary");
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        if status == 503 {
            assert_eq!(
                response.headers()["retry-after"],
                "7",
                "the upstream's wait is kept"
            );
        }
        let answer: Value = response.json().await.unwrap();
        let error = assert_error_shape(&answer);
        assert_eq!(error["code"], code, "{answer}");
        assert_eq!(error["type"], "server_error");
        let message = error["message"].as_str().unwrap();
        assert!(!message.contains("upstream says"), "not relayed: {message}");
        assert!(
            message.contains("mock-primary") && message.contains(&request_id),
            "{message}"
        );
    }
    // A stream the upstream refuses comes back as the upstream's JSON error, not SSE.
    let mut streamed = body(429);
    streamed["stream"] = json!(true);
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "upstream_code");
}

async fn upstream_failures_are_502_and_504(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let chat = |model: &str, mock: Value| json!({"model": model, "messages": [{"role": "user", "content": "x"}], "mock": mock});
    let (status, answer) = post(
        &gw,
        &key,
        "/v1/chat/completions",
        chat("dead-model", json!({})).to_string(),
    )
    .await;
    assert_eq!(status, 502, "{answer}");
    let error = assert_error_shape(&answer);
    assert_eq!(error["type"], "server_error");
    let text = answer.to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("sk-dead-secret"),
        "internal detail leaked: {text}"
    );

    let started = std::time::Instant::now();
    let slow = chat("slow-model", json!({"delay_ms": 3000}));
    let (status, answer) = post(&gw, &key, "/v1/chat/completions", slow.to_string()).await;
    assert_eq!(status, 504, "{answer}");
    assert_error_shape(&answer);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2500),
        "timeout not applied"
    );
    let logs = gw.logs();
    assert!(
        !logs.contains("sk-dead-secret") && !logs.contains("sk-upstream-secret"),
        "upstream key in logs"
    );
}

async fn oversized_bodies_are_413(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let config = format!("max_body_mb: 1\n{}", models_yaml(&upstream.base_url()));
    let Some(gw) = Gateway::start(backend, &config).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let limit = 1024 * 1024;
    let head = |framing: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n{framing}\r\n"
        )
    };
    // A Content-Length over the limit is refused before a byte of the body is sent.
    let (status, body) = raw_http(
        &gw.url,
        head(&format!("content-length: {}\r\n", limit + 10)).into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_error_shape(&serde_json::from_str(&body).unwrap());
    // Chunked, no length: refused once what was read passes the limit. The one chunk that
    // crosses it is all that is sent, so the gateway has read everything when it answers.
    let mut request = head("transfer-encoding: chunked\r\n").into_bytes();
    let chunk = vec![b'x'; limit + 10];
    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
    request.extend_from_slice(&chunk);
    request.extend_from_slice(b"\r\n");
    let (status, body) = raw_http(&gw.url, request).await;
    assert_eq!(status, 413, "{body}");
    assert_error_shape(&serde_json::from_str(&body).unwrap());
    assert!(upstream.requests().is_empty());
    // Just under the limit still works.
    let fits = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1000 * 1024)
    );
    let (status, _) = post(&gw, &key, "/v1/chat/completions", fits).await;
    assert_eq!(status, 200);
}

/// Writes `request` on a fresh connection to `url` and reads one response; returns its
/// status and body (the gateway closes the connection after an error like 413).
async fn raw_http(url: &str, request: Vec<u8>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no complete response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
