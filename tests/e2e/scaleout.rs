//! Scale-out, short form of `bench/scale-out` (the scenarios are in
//! `tests/src/scaleout.rs`): 3 replicas behind HAProxy on Postgres and a 3+3 Redis
//! Cluster, a fixed-rate load of plain and streaming requests, and one part restarted or
//! killed under it. Asserted: what every request got, that the ledger has exactly one
//! record per answered request and none for anything else, and the limiter's counters
//! after a Redis failover. Never timings.

use std::time::Duration;

use tollgate_tests::db;
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::redis_cluster;
use tollgate_tests::scaleout::{self, Report, Size};
use tollgate_tests::upstream::MockUpstream;

use crate::models_yaml;

/// Whether the scenario's programs are installed (with CI=true they must be).
fn tools() -> bool {
    redis_cluster::available() && scaleout::haproxy_available()
}

/// Every request answered 2xx with its whole answer, streams ended with `[DONE]`, and the
/// ledger holds exactly one record per answer and nothing else.
fn assert_clean(report: &Report) {
    eprintln!("{}: {} requests", report.scenario, report.requests());
    assert!(
        report.requests() >= 40,
        "too little load: {}",
        report.requests()
    );
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{}: {} of {} requests failed:\n{}",
        report.scenario,
        failures.len(),
        report.requests(),
        report.describe_failures()
    );
    assert_ledger(report);
    let (streams, complete) = report.streams();
    assert!(streams >= 10, "too few streams: {streams}");
    assert_eq!(streams, complete, "a stream did not end with [DONE]");
}

/// One record per 2xx answer; no record for anything that was not answered 2xx.
fn assert_ledger(report: &Report) {
    let (missing, doubled) = report.ledger_mismatches();
    assert!(
        missing.is_empty(),
        "{}: {} answered requests have no ledger record, e.g. {:?}",
        report.scenario,
        missing.len(),
        missing.first()
    );
    assert!(doubled.is_empty(), "recorded more than once: {doubled:?}");
    assert!(
        report.unanswered_records.is_empty(),
        "records without a 2xx answer: {:?}",
        report.unanswered_records
    );
    assert_eq!(report.records.len(), report.answered().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_is_unready_while_it_still_serves() {
    let upstream = MockUpstream::start().await;
    let config = format!("shutdown_delay_s: 3\n{}", models_yaml(&upstream.base_url()));
    let Some(gw) = Gateway::start(Backend::Sqlite, &config).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let ready = |gw: &Gateway| {
        let http = gw.http.clone();
        let url = format!("{}/readyz", gw.admin_url);
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(ready(&gw).await.unwrap(), 200);
    let pid = gw.pid().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    // Unready first...
    let mut status = 0;
    for _ in 0..200 {
        status = ready(&gw).await.unwrap_or(0);
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 503, "/readyz never turned 503 after SIGTERM");
    // ...while both listeners still serve: a new connection gets a real answer.
    let fresh = tollgate_tests::harness::client();
    let answer = fresh
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("the data plane still accepts during the delay");
    assert_eq!(answer.status(), 200);
    let (code, stopped) = gw.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{}", stopped.logs);
    assert!(
        stopped.logs.contains("/readyz answers 503"),
        "{}",
        stopped.logs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_a_load_balancer_loses_no_request() {
    let Some(url) = db::fresh_postgres().await else {
        return;
    };
    if !tools() {
        return;
    }
    let report = scaleout::rolling_restart(&url, Size::SHORT).await;
    assert_clean(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_failover_fail_open_serves_everything_and_counts_exactly() {
    let Some(url) = db::fresh_postgres().await else {
        return;
    };
    if !tools() {
        return;
    }
    let run = scaleout::redis_failover(&url, "fail_open", Size::SHORT).await;
    assert_clean(&run.report);
    assert_gap(&run.gap, &[200]);
    assert_counters_exact(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_failover_fail_closed_refuses_only_the_gap() {
    let Some(url) = db::fresh_postgres().await else {
        return;
    };
    if !tools() {
        return;
    }
    let run = scaleout::redis_failover(&url, "fail_closed", Size::SHORT).await;
    let report = &run.report;
    eprintln!("{}: {} requests", report.scenario, report.requests());
    let (kill, _) = report.event;
    let mut refused = 0;
    for o in &report.outcomes {
        if o.ok() {
            continue;
        }
        // Only the limiter's own 503, only for the tenant whose slot lost its master,
        // only after the kill.
        assert_eq!(o.status, Some(503), "{o:?}");
        assert!(
            o.error
                .as_deref()
                .is_some_and(|e| e.contains("Rate limits cannot be checked")),
            "a 503 that is not the limiter's: {o:?}"
        );
        assert_eq!(
            o.key, 0,
            "a tenant on a surviving master was refused: {o:?}"
        );
        assert!(o.sent >= kill, "refused before the kill: {o:?}");
        refused += 1;
    }
    // Once the promoted replica answers, it stays that way: nothing after the last 503
    // is refused, and requests of that tenant were served after it.
    let last_refusal = report
        .outcomes
        .iter()
        .filter(|o| o.status == Some(503))
        .map(|o| o.sent)
        .max();
    if let Some(last) = last_refusal {
        let served_after = report
            .outcomes
            .iter()
            .filter(|o| o.key == 0 && o.sent > last && o.ok())
            .count();
        assert!(
            served_after >= 5,
            "the tenant never recovered after {last:?}"
        );
    }
    eprintln!("fail_closed: {refused} requests refused during the failover");
    assert_gap(&run.gap, &[200, 503]);
    assert_ledger(report);
    assert_counters_exact(&run).await;
}

/// While the master was gone: the surviving tenant's cache answered a hit and its
/// idempotency key a replay; the failed master's tenant got one of `hit_statuses`.
fn assert_gap(gap: &scaleout::GapProbes, hit_statuses: &[u16]) {
    assert!(
        gap.within_gap,
        "the probes ran after the promotion: they show nothing about the gap"
    );
    assert_eq!(
        gap.spared_cache, "hit",
        "cache on a surviving slot: {gap:?}"
    );
    assert!(
        gap.spared_replayed,
        "idempotency on a surviving slot: {gap:?}"
    );
    assert!(
        gap.hit_statuses.iter().all(|s| hit_statuses.contains(s)),
        "the failed master's tenant: {gap:?}"
    );
}

/// After the load: both tenants' counters hold nothing in flight and nothing reserved,
/// their month's spend in Redis equals the ledger's, and a new key's rpm admits exactly
/// its limit across the replicas.
async fn assert_counters_exact(run: &scaleout::Failover) {
    for (tenant, _) in [&run.hit, &run.spared] {
        let (in_flight, rcost, rtok, cost) =
            scaleout::settled_counters(&run.stage.cluster, tenant).await;
        assert!(
            in_flight <= 0,
            "{tenant}: {in_flight} requests still in flight"
        );
        assert_eq!((rcost, rtok), (0, 0), "{tenant}: reservations leaked");
        let ledger = scaleout::ledger_cost(&run.stage.database_url, tenant).await;
        assert!(ledger > 0);
        assert_eq!(cost, ledger, "{tenant}: redis month spend vs the ledger");
    }
    let admitted = scaleout::exact_rpm(&run.stage, &run.hit.0, 6).await;
    assert_eq!(admitted, 6, "rpm 6 after the failover admitted {admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_keeps_keys_ledger_and_revocation() {
    // Needs a Postgres of its own to restart; still fails without one in CI.
    if db::service_url(db::POSTGRES_ENV).is_none() || !tools() {
        return;
    }
    let report = scaleout::postgres_restart(Size::SHORT).await;
    assert_clean(&report);
    eprintln!("{:?}", report.notes);
}
