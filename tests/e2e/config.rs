//! Start-up: the embedded default, `migrate`, and bad configs refused with the field named.

use std::time::Duration;

use tollgate_tests::harness::{Backend, Gateway, tollgate_bin};

use crate::on_both_stores;

on_both_stores!(migrate_then_serve, config_prices_seed_the_store_once);

/// Runs `tollgate ARGS` to completion in `dir`; returns (exit code, stdout, stderr).
async fn run(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(tollgate_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("tollgate did not exit")
        .expect("run tollgate");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "models:\n  - name: a\n    deployments: [ { provider: openai, base_url: 'http://x/v1' } ]\n  - name: b\n    deployments: [ { provider: openai, model: m } ]\n",
            "models[1].deployments[0].base_url: missing",
        ),
        ("listen: [1]\n", "listen: invalid type"),
        (
            "admin: { bootstrap_token: '${TG_TEST_UNSET_VAR}' }\n",
            "admin.bootstrap_token: environment variable TG_TEST_UNSET_VAR is not set",
        ),
        ("cache_size: 3\n", "cache_size: unknown field"),
        ("models: [ {", "invalid YAML"),
    ];
    for (yaml, expected) in cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (code, _out, err) = run(
            dir.path(),
            &["serve", "--config", path.to_str().unwrap()],
            &[],
        )
        .await;
        assert_eq!(code, Some(64), "{yaml}: {err}");
        assert!(
            err.contains(expected),
            "{yaml}: expected '{expected}' in: {err}"
        );
    }
    let (code, _out, err) = run(
        dir.path(),
        &["serve", "--config", "/nonexistent/tollgate.yaml"],
        &[],
    )
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("/nonexistent/tollgate.yaml"), "{err}");
}

#[tokio::test]
async fn embedded_default_serves_and_explains_first_steps() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    let cwd = dir.path().to_path_buf();
    let gw = Gateway::spawn(dir, "sqlite://tollgate.db".to_owned(), &args, &[])
        .await
        .expect("embedded default starts");
    assert!(
        cwd.join("tollgate.db").exists(),
        "the SQLite file is made in the working directory"
    );
    let stdout = gw.wait_stdout("/admin/v1/tenants").await;
    // A token was generated for this run; it works on the admin plane.
    let token = stdout
        .split("this run's token is ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("generated token printed")
        .to_owned();
    let ready = gw
        .http
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let created = gw
        .http
        .post(format!("{}/admin/v1/tenants", gw.admin_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(
        !gw.logs().contains(&token),
        "the admin token must not be logged"
    );
}

async fn migrate_then_serve(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = tollgate_tests::harness::database_url(backend, dir.path()).await else {
        return;
    };
    let (code, out, err) = run(dir.path(), &["migrate", "--database-url", &url], &[]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    // Twice is fine: migrations are idempotent.
    let (code, out, err) = run(dir.path(), &["migrate"], &[("TOLLGATE_DATABASE_URL", &url)]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--database-url",
        &url,
    ]
    .map(String::from)
    .to_vec();
    let gw = Gateway::spawn(dir, url, &args, &[("TOLLGATE_ADMIN_TOKEN", "tok-123")])
        .await
        .expect("serve starts on a migrated store");
    let health = gw
        .http
        .get(format!("{}/healthz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let tenants = gw
        .http
        .get(format!("{}/admin/v1/tenants", gw.admin_url))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(tenants.status(), 200);
    let body: serde_json::Value = tenants.json().await.unwrap();
    assert_eq!(body["object"], "list");
}

#[tokio::test]
async fn unreachable_store_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let port = tollgate_tests::harness::closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nothing");
    let (code, _out, err) = run(dir.path(), &["migrate", "--database-url", &url], &[]).await;
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("store"), "{err}");
}

async fn config_prices_seed_the_store_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = tollgate_tests::harness::database_url(backend, dir.path()).await else {
        return;
    };
    let config = "prices:\n  gpt-4o-mini: { input: 0.15, output: '0.60', cached_input: 0.075 }\n  dall-e-3: { input: 0, output: 0, image: 0.04 }\n";
    let gw = Gateway::start_on(&url, config).await;
    let (status, price) = gw
        .admin(reqwest::Method::GET, "/admin/v1/prices/gpt-4o-mini", None)
        .await;
    assert_eq!(status, 200, "{price}");
    assert_eq!(price["input"], "0.150000");
    assert_eq!(price["output"], "0.600000");
    assert_eq!(price["cached_input"], "0.075000");
    let (_, image) = gw
        .admin(reqwest::Method::GET, "/admin/v1/prices/dall-e-3", None)
        .await;
    assert_eq!(image["image"], "0.040000");
    // An operator's price wins over the config's across a restart.
    let (status, _) = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/v1/prices/gpt-4o-mini",
            Some(serde_json::json!({"input": "0.20", "output": "0.80"})),
        )
        .await;
    assert_eq!(status, 200);
    gw.kill().await;
    let gw = Gateway::start_on(&url, config).await;
    let (_, price) = gw
        .admin(reqwest::Method::GET, "/admin/v1/prices/gpt-4o-mini", None)
        .await;
    assert_eq!(price["input"], "0.200000");
}
