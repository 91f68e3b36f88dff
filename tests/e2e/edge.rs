//! The edge server itself: HTTPS on the listeners (HTTP/1.1 and HTTP/2 by ALPN, stalled and
//! plaintext handshakes), the `tollgate worker`'s listener limits, and graceful shutdown on
//! SIGTERM (stop accepting, finish what is in flight up to `shutdown_drain_s`, cut the
//! rest, and leave every request's usage record in the ledger).

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tollgate_tests::harness::{Backend, Gateway, tollgate_bin};
use tollgate_tests::upstream::MockUpstream;

use crate::models_yaml;

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// Writes a certificate and its key into `dir`; returns the `tls:` YAML value and the
/// certificate PEM (for the client to trust).
fn tls_files(dir: &Path) -> (String, String) {
    let (cert, key) = self_signed();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    (
        format!(
            "{{ cert_file: '{}', key_file: '{}' }}",
            cert_file.display(),
            key_file.display()
        ),
        cert,
    )
}

/// A client that trusts `cert_pem` only; `http1`: refuse HTTP/2 in ALPN.
fn https_client(cert_pem: &str, http1: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()]);
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

fn host_port(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_owned()
}

/// Reads until the server closes the connection (or `limit` passes); returns the bytes
/// and how long the server took to close it (`None`: still open at `limit`).
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (out, Some(started.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

fn chat(stream: bool, mock: Value) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
           "stream": stream, "mock": mock})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_http2_and_shrugs_off_bad_handshakes() {
    const STALLED: usize = 200;
    let upstream = MockUpstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (tls, cert_pem) = tls_files(certs.path());
    let config = format!("tls: {tls}\n{}", models_yaml(&upstream.base_url()));
    // The listener's debug lines on, to see that failed handshakes are logged at that level.
    let env = [("TOLLGATE_LOG", "info,tollgate_gateway::listener=debug")];
    let Some(gw) = Gateway::start_with_env(Backend::Sqlite, &config, &env).await else {
        return;
    };
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    // The admin plane has no `admin.tls` here: still plain HTTP.
    assert!(gw.admin_url.starts_with("http://"), "{}", gw.admin_url);
    let key = gw.tenant_key(&[]).await;

    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let client = https_client(&cert_pem, http1);
        let r = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&chat(false, json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        // A stream over the same protocol ends with [DONE].
        let r = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&chat(true, json!({"chunks": 5})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    }
    let client = https_client(&cert_pem, false);

    // Plain HTTP to the TLS port: refused at the handshake, the connection closed at once.
    let mut tcp = TcpStream::connect(host_port(&gw.url)).await.unwrap();
    tcp.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed_after) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let closed_after = closed_after.expect("plaintext connection left open");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    eprintln!("plaintext HTTP on the TLS port: closed after {closed_after:?}");
    let plain = tollgate_tests::harness::client()
        .get(format!("{}/v1/models", gw.url.replacen("https", "http", 1)))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // Connections that open a handshake and stall (half a ClientHello, or nothing).
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let mut tcp = TcpStream::connect(host_port(&gw.url)).await.unwrap();
        if i % 2 == 0 {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        stalled.push(tcp);
    }
    let started = Instant::now();
    // Meanwhile HTTPS clients are served.
    for _ in 0..20 {
        let r = client
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut cut = Vec::with_capacity(STALLED);
    for tcp in &mut stalled {
        let left = Duration::from_secs(20).saturating_sub(started.elapsed());
        let (_, closed) = read_until_closed(tcp, left).await;
        cut.push(
            closed
                .map(|_| started.elapsed())
                .expect("stalled handshake never cut"),
        );
    }
    cut.sort();
    eprintln!(
        "{STALLED} stalled handshakes cut after {:?} (first) .. {:?} (last)",
        cut[0],
        cut[STALLED - 1]
    );
    assert!(
        cut[0] >= Duration::from_secs(9),
        "cut too early: {:?}",
        cut[0]
    );
    assert!(
        cut[STALLED - 1] <= Duration::from_secs(15),
        "{:?}",
        cut[STALLED - 1]
    );

    // Still serving, and the bad handshakes were logged at debug level only.
    let r = client
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logs = gw.logs();
    let handshake_lines = |level: &str| {
        logs.lines()
            .filter(|l| l.contains(level) && (l.contains("TLS") || l.contains("rustls")))
            .count()
    };
    assert_eq!(handshake_lines("ERROR"), 0, "{logs}");
    assert_eq!(handshake_lines("WARN"), 0, "{logs}");
    assert_eq!(handshake_lines("INFO"), 0, "{logs}");
    assert!(handshake_lines("DEBUG") > STALLED, "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_plane_serves_tls_when_configured() {
    let certs = tempfile::tempdir().unwrap();
    let (tls, cert_pem) = tls_files(certs.path());
    let config = format!("admin: {{ bootstrap_token: '${{TEST_ADMIN_TOKEN}}', tls: {tls} }}\n");
    let Some(gw) = Gateway::start(Backend::Sqlite, &config).await else {
        return;
    };
    assert!(gw.admin_url.starts_with("https://"), "{}", gw.admin_url);
    assert!(gw.url.starts_with("http://"), "{}", gw.url);
    let r = https_client(&cert_pem, false)
        .get(format!("{}/healthz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn bad_tls_files_exit_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cert = write("cert.pem", &cert);
    let key = write("key.pem", &key);
    let other_key = write("other-key.pem", &other_key);
    let garbage = write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    let missing = dir.path().join("missing.pem").display().to_string();
    let cases = [
        (
            format!("tls: {{ cert_file: '{missing}', key_file: '{key}' }}"),
            "tls.cert_file: cannot read",
        ),
        (
            format!("tls: {{ cert_file: '{garbage}', key_file: '{key}' }}"),
            "tls.cert_file:",
        ),
        (
            format!("tls: {{ cert_file: '{key}', key_file: '{key}' }}"),
            "tls.cert_file:",
        ),
        (
            format!("tls: {{ cert_file: '{cert}', key_file: '{cert}' }}"),
            "tls.key_file:",
        ),
        (
            format!("tls: {{ cert_file: '{cert}', key_file: '{other_key}' }}"),
            "tls.key_file: does not fit",
        ),
        (
            format!("tls: {{ cert_file: '{cert}' }}"),
            "tls.key_file: missing",
        ),
        (
            format!("admin: {{ tls: {{ cert_file: '{cert}', key_file: '{missing}' }} }}"),
            "admin.tls.key_file: cannot read",
        ),
        (
            "shutdown_drain_s: -1".to_owned(),
            "shutdown_drain_s: must be between",
        ),
    ];
    for (yaml, expected) in cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, format!("{yaml}\n")).unwrap();
        let output = tokio::process::Command::new(tollgate_bin())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .current_dir(dir.path())
            .env_remove("TOLLGATE_CONFIG")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{yaml}: {err}");
        assert!(
            err.contains(expected),
            "{yaml}: expected '{expected}' in: {err}"
        );
        assert!(!err.contains("PRIVATE KEY"), "key material echoed: {err}");
    }
}

/// `tollgate worker` on the tiny Llama (written by tests/models/make_tiny_llama.py, standard
/// library only) answers an oversized head with 431, as the gateway does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_has_the_gateway_s_listener_limits() {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/make_tiny_llama.py");
    let python = std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let made = tokio::process::Command::new(python)
        .arg(&script)
        .arg(dir.path())
        .status()
        .await;
    if !made.is_ok_and(|s| s.success()) {
        assert!(!in_ci, "python3 could not run {}", script.display());
        eprintln!("skipping: python3 could not run {}", script.display());
        return;
    }
    let mut child = tokio::process::Command::new(tollgate_bin())
        .args(["worker", "--model"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--name", "tiny"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, url)) = line.split_once(" on http://") {
                return url.trim_end_matches("/v1").to_owned();
            }
        }
        panic!("the worker exited before listening");
    })
    .await
    .expect("the worker did not start");

    let mut tcp = TcpStream::connect(&url).await.unwrap();
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    tcp.write_all(big.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(closed.is_some());
    // Normal requests are still served.
    let r = tollgate_tests::harness::client()
        .get(format!("http://{url}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // SIGTERM: the listener's drain, then exit 0.
    let pid = child.id().unwrap().to_string();
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the worker did not exit on SIGTERM")
        .unwrap();
    eprintln!("worker exited {:?} after SIGTERM", signalled.elapsed());
    assert_eq!(status.code(), Some(0));
}

/// (request id, status, output tokens, client_disconnected) of every usage record.
async fn ledger(database_url: &str) -> Vec<(String, i64, i64, bool)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT request_id, status, output_tokens, \
         CAST(client_disconnected AS BIGINT) AS disconnected FROM usage_records",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| {
            (
                r.get("request_id"),
                r.get("status"),
                r.get("output_tokens"),
                r.get::<i64, _>("disconnected") != 0,
            )
        })
        .collect()
}

/// How a stream read to its end went: (request id, events received, ended with `[DONE]`,
/// ended by an error).
async fn read_stream(response: reqwest::Response) -> (String, usize, bool, bool) {
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let done = text.ends_with("data: [DONE]\n\n");
    (id, text.matches("\n\n").count(), done, failed)
}

/// Waits until connecting to `addr` is refused; returns how long that took.
async fn refused_after(addr: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return started.elapsed();
            }
            _ => {}
        }
        assert!(started.elapsed() < limit, "still accepting after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sigterm(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_records_them() {
    let upstream = MockUpstream::start().await;
    let Some(gw) = Gateway::start(Backend::Postgres, &models_yaml(&upstream.base_url())).await
    else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let post = |body: Value| {
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    // A stream of 20 events 100 ms apart (~2 s), and a plain request answered after 1.5 s.
    let stream = post(chat(true, json!({"chunks": 20, "chunk_delay_ms": 100})))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let stream = tokio::spawn(read_stream(stream));
    let plain = tokio::spawn(post(chat(false, json!({"delay_ms": 1500}))));
    while upstream.requests().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let signalled = Instant::now();
    sigterm(&gw);
    let refused = refused_after(&host_port(&gw.url), Duration::from_secs(2)).await;
    refused_after(&host_port(&gw.admin_url), Duration::from_secs(2)).await;

    let (stream_id, events, done, failed) = stream.await.unwrap();
    assert!(done && !failed, "stream cut: {events} events");
    let plain = plain.await.unwrap().unwrap();
    assert_eq!(plain.status(), 200);
    let plain_id = plain.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");

    let database_url = gw.database_url.clone();
    let (code, stopped) = gw.wait_exit(Duration::from_secs(10)).await;
    let exited = signalled.elapsed();
    eprintln!("SIGTERM: new connections refused after {refused:?}; exited after {exited:?}");
    assert_eq!(code, Some(0), "{}", stopped.logs);
    // Before the 30 s drain deadline: it exits once the last request is done, not when
    // the deadline passes.
    assert!(exited < Duration::from_secs(30), "{exited:?}");

    let records = ledger(&database_url).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for (id, output) in [(&stream_id, 20), (&plain_id, -1)] {
        let r = records
            .iter()
            .find(|r| &r.0 == id)
            .unwrap_or_else(|| panic!("no record for {id}: {records:?}"));
        assert_eq!(r.1, 200, "{r:?}");
        assert!(!r.3, "{r:?}");
        if output >= 0 {
            assert_eq!(r.2, output, "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_drain_deadline_is_cut_and_recorded() {
    const DRAIN_S: u64 = 3;
    let upstream = MockUpstream::start().await;
    let config = format!(
        "shutdown_drain_s: {DRAIN_S}\n{}",
        models_yaml(&upstream.base_url())
    );
    let Some(gw) = Gateway::start(Backend::Postgres, &config).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    // 200 events 100 ms apart: ~20 s, far past the drain deadline.
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&chat(true, json!({"chunks": 200, "chunk_delay_ms": 100})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stream = tokio::spawn(read_stream(r));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    sigterm(&gw);
    let (id, events, done, failed) = stream.await.unwrap();
    let cut = signalled.elapsed();
    eprintln!("stream cut {cut:?} after SIGTERM, {events} events delivered");
    assert!(!done, "the stream was not cut");
    assert!(
        failed,
        "the cut must show as a broken stream, not a clean end"
    );
    assert!(events > 5 && events < 150, "{events}");
    assert!(cut >= Duration::from_secs(DRAIN_S), "{cut:?}");

    let database_url = gw.database_url.clone();
    let (code, stopped) = gw.wait_exit(Duration::from_secs(15)).await;
    let exited = signalled.elapsed();
    eprintln!("exited {exited:?} after SIGTERM (drain deadline {DRAIN_S} s)");
    assert_eq!(code, Some(0), "{}", stopped.logs);
    // After the drain, the meter's settle grace (5 s) and flush grace (5 s) at most.
    assert!(exited < Duration::from_secs(DRAIN_S + 15), "{exited:?}");
    assert!(stopped.logs.contains("drain timed out"), "{}", stopped.logs);

    let records = ledger(&database_url).await;
    assert_eq!(records.len(), 1, "{records:?}\n{}", stopped.logs);
    let (record_id, status, output, _) = &records[0];
    assert_eq!(record_id, &id);
    assert_eq!(*status, 200);
    // What was delivered, not the 200 chunks the upstream would have sent.
    assert!(*output > 0 && *output < 150, "{:?}", records[0]);
}

/// `Content-Length` with `Transfer-Encoding: chunked`, in either order: hyper reads the
/// body by its chunked framing only and closes the connection after the one answer, so
/// the request hidden after the chunked body is never read (RFC 9112 §6.1 allows this in
/// place of a 400). Authenticated, so the answer comes from the handler, not from auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_read_chunked_and_closes_the_connection() {
    let upstream = MockUpstream::start().await;
    let Some(gw) = Gateway::start(Backend::Sqlite, &models_yaml(&upstream.base_url())).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let hidden = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    for te_first in [false, true] {
        let (first, second) = (
            format!("Content-Length: {}\r\n", chunked.len() + hidden.len()),
            "Transfer-Encoding: chunked\r\n".to_owned(),
        );
        let (first, second) = if te_first {
            (second, first)
        } else {
            (first, second)
        };
        let raw = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\n{first}{second}\r\n{chunked}{hidden}"
        );
        let mut tcp = TcpStream::connect(host_port(&gw.url)).await.unwrap();
        tcp.write_all(raw.as_bytes()).await.unwrap();
        let (answer, closed) = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            closed.is_some(),
            "te_first={te_first}: connection kept open"
        );
        // The chat request, framed by its chunks, was answered...
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "te_first={te_first}: {answer}"
        );
        assert!(
            answer.contains("chat.completion"),
            "te_first={te_first}: {answer}"
        );
        // ...and nothing else was.
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert!(!answer.contains("\"object\":\"list\""), "{answer}");
    }
}
