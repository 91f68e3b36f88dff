//! Several replicas on one Postgres: a revocation through one reaches the others within a
//! second, and a store outage does not take known keys down.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_tests::db;
use tollgate_tests::harness::{Backend, Gateway, database_url};
use tollgate_tests::tcp_proxy::TcpProxy;
use tollgate_tests::upstream::MockUpstream;

use crate::models_yaml;

/// Polls `probe` until it returns `want` or `limit` passes; returns how long it took.
async fn within(limit: Duration, want: u16, mut probe: impl AsyncFnMut() -> u16) -> Duration {
    let started = Instant::now();
    loop {
        let got = probe().await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still {got} (wanted {want}) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_another_replica_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = database_url(Backend::Postgres, dir.path()).await else {
        return;
    };
    let upstream = MockUpstream::start().await;
    // A long cache TTL, so only the invalidation feed can explain a fast refusal.
    let config = format!(
        "auth: {{ cache_ttl_s: 600 }}\n{}",
        models_yaml(&upstream.base_url())
    );
    let a = Gateway::start_on(&url, &config).await;
    let b = Gateway::start_on(&url, &config).await;

    let tenant = a.create_tenant("acme").await;
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let revoked = a.create_key(&tenant_id, json!({"name": "to-revoke"})).await;
    let rotated = a.create_key(&tenant_id, json!({"name": "to-rotate"})).await;
    let other = a
        .create_key(&tenant_id, json!({"name": "tenant-wide"}))
        .await;
    let plain = |k: &Value| k["key"].as_str().unwrap().to_owned();
    for key in [&revoked, &rotated, &other] {
        // Cached on B now.
        assert_eq!(b.probe_key(&plain(key)).await, 200);
    }

    let (status, body) = a
        .admin(
            Method::DELETE,
            &format!("/admin/v1/keys/{}", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let took = within(Duration::from_secs(1), 401, async || {
        b.probe_key(&plain(&revoked)).await
    })
    .await;
    eprintln!("revocation reached replica B after {took:?}");

    let (status, body) = a
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{}/rotate", rotated["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new_key = body["key"].as_str().unwrap().to_owned();
    within(Duration::from_secs(1), 401, async || {
        b.probe_key(&plain(&rotated)).await
    })
    .await;
    assert_eq!(b.probe_key(&new_key).await, 200);

    let (status, body) = a
        .admin(
            Method::PATCH,
            &format!("/admin/v1/tenants/{tenant_id}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    within(Duration::from_secs(1), 401, async || {
        b.probe_key(&plain(&other)).await
    })
    .await;
    within(Duration::from_secs(1), 401, async || {
        b.probe_key(&new_key).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_survive_a_store_outage() {
    let Some(direct) = db::fresh_postgres().await else {
        return;
    };
    // The gateway reaches Postgres only through a proxy the test can cut.
    let mut url = reqwest::Url::parse(&direct).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let target = tokio::net::lookup_host(target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr().port())).unwrap();

    let upstream = MockUpstream::start().await;
    let config = format!(
        "auth: {{ cache_ttl_s: 0.2, stale_if_store_down_s: 60 }}\n{}",
        models_yaml(&upstream.base_url())
    );
    let gw = Gateway::start_on(url.as_str(), &config).await;
    let mut known = Vec::new();
    for _ in 0..3 {
        let key = gw.tenant_key(&[]).await;
        assert_eq!(gw.probe_key(&key).await, 200);
        known.push(key);
    }
    let tenant = gw.create_tenant("late").await;
    let unknown = gw
        .create_key(
            tenant["id"].as_str().unwrap(),
            json!({"name": "never used"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();

    proxy.cut();
    // Past the cache TTL: every known key now needs the store, which is gone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Load while the store is away: 4 workers, each 40 chat calls with known keys.
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let key = known[worker % known.len()].clone();
        let http = gw.http.clone();
        let url = format!("{}/v1/chat/completions", gw.url);
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let status = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                statuses.push(status);
            }
            statuses
        }));
    }
    for worker in workers {
        let statuses = worker.await.unwrap();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "known keys failed during the outage: {statuses:?}"
        );
    }
    let took = started.elapsed();
    eprintln!("160 requests with known keys during the outage took {took:?}");
    // One failed lookup (at most the store's 3 s acquire timeout) marks the store down;
    // the rest are served from the cache without waiting on it again.
    assert!(
        took < Duration::from_secs(8),
        "the outage stalled requests: {took:?}"
    );
    assert!(
        gw.logs()
            .contains("serving a known key from the auth cache"),
        "the requests did not take the store-down path"
    );
    // An unknown key cannot be checked: 503 with retry-after, never a wrong 401.
    let response = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // Still ready, degraded: it serves known keys, and a load balancer that took every
    // replica of a shared store out at once would serve nothing (see server::readyz).
    let ready = gw
        .http
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["store"], "unreachable", "{ready}");

    proxy.restore();
    within(Duration::from_secs(10), 200, async || {
        gw.probe_key(&unknown).await
    })
    .await;
    let ready = gw
        .http
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
