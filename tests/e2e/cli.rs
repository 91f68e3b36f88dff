//! The operator CLI against the real store: the same objects as the admin API, tables or
//! JSON, distinct exit codes, and changes that a running gateway honours.

use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_tests::harness::{Backend, Gateway, tollgate_bin};
use tollgate_tests::upstream::MockUpstream;

use crate::{models_yaml, on_both_stores};

on_both_stores!(
    cli_manages_tenants_keys_plans_prices,
    cli_revocation_reaches_a_running_gateway,
    cli_manages_webhooks,
);

/// `tollgate ARGS --database-url URL`; returns (exit code, stdout, stderr).
async fn tollgate(url: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(tollgate_bin())
        .args(args)
        .args(["--database-url", url])
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .await
        .expect("run tollgate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = tollgate(url, &all).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

async fn cli_manages_tenants_keys_plans_prices(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = tollgate_tests::harness::database_url(backend, dir.path()).await else {
        return;
    };
    let (code, _, err) = tollgate(&url, &["migrate"]).await;
    assert_eq!(code, 0, "{err}");

    let plan = json(
        &url,
        &[
            "plans",
            "set",
            "pro",
            "--rpm",
            "600",
            "--monthly-budget-usd",
            "25.10",
        ],
    )
    .await;
    assert_eq!(plan["rpm"], 600);
    assert_eq!(plan["tpm"], Value::Null);
    assert_eq!(plan["monthly_budget_usd"], "25.100000");
    let tenant = json(&url, &["tenants", "create", "acme", "--plan", "pro"]).await;
    assert_eq!(tenant["plan"], "pro");
    let id = tenant["id"].as_str().unwrap();
    // A table for people.
    let (code, table, _) = tollgate(&url, &["tenants", "list"]).await;
    assert_eq!(code, 0);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(id) && table.contains("acme"), "{table}");

    let key = json(
        &url,
        &[
            "keys",
            "create",
            "--tenant",
            id,
            "--name",
            "ci",
            "--models",
            "gpt-4o-mini,dall-e-3",
            "--rpm",
            "60",
            "--max-concurrent",
            "3",
            "--monthly-budget-usd",
            "5.50",
            "--monthly-tokens",
            "100000",
        ],
    )
    .await;
    assert_eq!(
        (
            &key["max_concurrent"],
            &key["monthly_budget_usd"],
            &key["monthly_tokens"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!("5.500000"),
            &serde_json::json!(100000)
        )
    );
    let plaintext = key["key"].as_str().unwrap().to_owned();
    assert!(plaintext.starts_with("tg-"));
    assert_eq!(
        key["models"],
        serde_json::json!(["gpt-4o-mini", "dall-e-3"])
    );
    // The secret is printed once: not by list or show.
    let (_, listed, _) = tollgate(&url, &["keys", "list", "--tenant", id]).await;
    let (_, shown, _) = tollgate(&url, &["tenants", "show", id, "--json"]).await;
    assert!(!listed.contains(&plaintext) && !shown.contains(&plaintext[15..]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["keys"][0]["id"], key["id"]);

    let price = json(
        &url,
        &[
            "prices",
            "set",
            "gpt-4o-mini",
            "--input",
            "0.15",
            "--output",
            "0.6",
        ],
    )
    .await;
    assert_eq!(
        (price["input"].as_str(), price["output"].as_str()),
        (Some("0.150000"), Some("0.600000"))
    );
    assert_eq!(
        json(&url, &["prices", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let rotated = json(&url, &["keys", "rotate", key["id"].as_str().unwrap()]).await;
    assert_ne!(rotated["key"], key["key"]);
    let revoked = json(&url, &["keys", "revoke", key["id"].as_str().unwrap()]).await;
    assert_eq!(revoked["revoked"], true);
    let disabled = json(&url, &["tenants", "disable", id]).await;
    assert_eq!(disabled["disabled"], true);

    // Errors: message on stderr, a code per kind, nothing on stdout.
    for (args, want) in [
        (vec!["tenants", "create", "acme"], 4),
        (vec!["tenants", "show", "ten_nope"], 3),
        (vec!["keys", "revoke", "nope"], 3),
        (
            vec![
                "prices",
                "set",
                "m",
                "--input",
                "0.1234567",
                "--output",
                "1",
            ],
            65,
        ),
        (vec!["tenants", "create", "x", "--plan", "no-such-plan"], 65),
        (
            vec![
                "keys",
                "create",
                "--tenant",
                id,
                "--name",
                "k",
                "--expires-at",
                "tomorrow",
            ],
            65,
        ),
    ] {
        let (code, out, err) = tollgate(&url, &args).await;
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
        assert!(err.starts_with("tollgate: "), "{args:?}: {err}");
    }
}

async fn cli_revocation_reaches_a_running_gateway(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let config = format!(
        "auth: {{ cache_ttl_s: 1 }}\n{}",
        models_yaml(&upstream.base_url())
    );
    let Some(gw) = Gateway::start(backend, &config).await else {
        return;
    };
    let tenant = gw.create_tenant("acme").await;
    let key = gw
        .create_key(
            tenant["id"].as_str().unwrap(),
            serde_json::json!({"name": "k"}),
        )
        .await;
    let plaintext = key["key"].as_str().unwrap();
    assert_eq!(gw.probe_key(plaintext).await, 200);
    let (code, _, err) = tollgate(
        &gw.database_url,
        &["keys", "revoke", key["id"].as_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // Postgres: the NOTIFY reaches the gateway at once. SQLite: within cache_ttl_s.
    let limit = match backend {
        Backend::Postgres => Duration::from_secs(1),
        Backend::Sqlite => Duration::from_secs(2),
    };
    let started = Instant::now();
    while gw.probe_key(plaintext).await != 401 {
        assert!(
            started.elapsed() < limit,
            "revoked key still accepted after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cli_on_an_unreachable_store_exits_69() {
    let port = tollgate_tests::harness::closed_port();
    let (code, _, err) = tollgate(
        &format!("postgres://postgres@127.0.0.1:{port}/x"),
        &["tenants", "list"],
    )
    .await;
    assert_eq!(code, 69, "{err}");
}

/// `tollgate webhooks create|list|show|delete`: the secret once, SSRF refused (exit 65)
/// unless `--allow-private-targets`.
async fn cli_manages_webhooks(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = tollgate_tests::harness::database_url(backend, dir.path()).await else {
        return;
    };
    let (code, _, err) = tollgate(&url, &["migrate"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tollgate(&url, &["webhooks", "create", "http://127.0.0.1:9/hook"]).await;
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("url"), "{err}");
    let hook = json(
        &url,
        &[
            "webhooks",
            "create",
            "http://127.0.0.1:9/hook",
            "--events",
            "budget.threshold,key.revoked",
            "--allow-private-targets",
        ],
    )
    .await;
    assert!(
        hook["secret"].as_str().unwrap().starts_with("whsec_"),
        "{hook}"
    );
    assert_eq!(
        hook["events"],
        serde_json::json!(["budget.threshold", "key.revoked"])
    );
    let id = hook["id"].as_str().unwrap();
    let shown = json(&url, &["webhooks", "show", id]).await;
    assert!(shown.get("secret").is_none(), "{shown}");
    let (code, table, _) = tollgate(&url, &["webhooks", "list"]).await;
    assert_eq!(code, 0);
    assert!(table.starts_with("ID") && table.contains(id), "{table}");
    json(&url, &["webhooks", "delete", id]).await;
    let (code, _, _) = tollgate(&url, &["webhooks", "show", id]).await;
    assert_eq!(code, 3);
}
