//! `scale-out`: runs the scale-out scenarios (`tollgate_tests::scaleout`) at benchmark
//! size and prints the table `bench/scale-out` shows. Each scenario gets a Postgres of its
//! own (scripts/lib/services.sh), a fresh 3+3 Redis Cluster, 3 replicas of `$TOLLGATE_BIN`
//! and HAProxy, all on free ports and stopped at its end.
//!
//! Exit status 1 when a scenario broke what it promises (a failed request, a stream without
//! `[DONE]`, a ledger record missing or doubled, counters not exact after a failover).

use std::fmt::Write as _;

use clap::Parser;
use tollgate_tests::redis_cluster;
use tollgate_tests::scaleout::{self, PrivatePostgres, Report, Size};

#[derive(Parser, Debug)]
#[command(name = "scale-out")]
struct Args {
    /// Requests per second through the load balancer (a quarter are streams).
    #[arg(long, default_value_t = Size::BENCH.rate)]
    rate: f64,
    /// Seconds of steady load before and after each event.
    #[arg(long, default_value_t = Size::BENCH.settle_s)]
    settle: f64,
    /// Seconds Postgres stays down.
    #[arg(long, default_value_t = Size::BENCH.outage_s)]
    outage: f64,
    /// `shutdown_delay_s` of the replicas.
    #[arg(long, default_value_t = Size::BENCH.shutdown_delay_s)]
    delay: f64,
    /// rpm of the limited key in the failover scenarios (0: no limited key).
    #[arg(long, default_value_t = 60)]
    limited_rpm: u32,
    /// Scenarios to run (default all): rolling, failover-open, failover-closed, postgres.
    #[arg(long = "only", value_delimiter = ',')]
    only: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if !redis_cluster::available() || !scaleout::haproxy_available() {
        eprintln!(
            "scale-out: redis-server, redis-cli and haproxy are needed (bench/scale-out installs them)"
        );
        return std::process::ExitCode::FAILURE;
    }
    let size = Size {
        rate: args.rate,
        settle_s: args.settle,
        outage_s: args.outage,
        shutdown_delay_s: args.delay,
        limited_rpm: (args.limited_rpm > 0).then_some(args.limited_rpm),
    };
    let all = ["rolling", "failover-open", "failover-closed", "postgres"];
    for name in &args.only {
        if !all.contains(&name.as_str()) {
            eprintln!("scale-out: unknown scenario {name:?} (one of {all:?})");
            return std::process::ExitCode::FAILURE;
        }
    }
    let selected: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s))
        .collect();
    let mut rows = Vec::new();
    let mut broken = Vec::new();
    for scenario in selected {
        eprintln!("[scale-out] {scenario}: starting");
        let (report, problems) = match scenario {
            "rolling" => {
                let pg = PrivatePostgres::start().await;
                let report = scaleout::rolling_restart(&pg.url, size).await;
                let problems = clean(&report, false);
                (report, problems)
            }
            "failover-open" | "failover-closed" => {
                let policy = if scenario == "failover-open" {
                    "fail_open"
                } else {
                    "fail_closed"
                };
                let pg = PrivatePostgres::start().await;
                let mut run = scaleout::redis_failover(&pg.url, policy, size).await;
                let mut problems = clean(&run.report, policy == "fail_closed");
                let gap = &run.gap;
                if !(gap.within_gap && gap.spared_cache == "hit" && gap.spared_replayed) {
                    problems.push(format!(
                        "cache or idempotency on a surviving slot during the gap: {gap:?}"
                    ));
                }
                let mut exact = Vec::new();
                for (tenant, _) in [&run.hit, &run.spared] {
                    let (in_flight, rcost, rtok, cost) =
                        scaleout::settled_counters(&run.stage.cluster, tenant).await;
                    let ledger = scaleout::ledger_cost(&run.stage.database_url, tenant).await;
                    let ok = in_flight <= 0 && rcost == 0 && rtok == 0 && cost == ledger;
                    exact.push(ok);
                    if !ok {
                        problems.push(format!(
                            "{tenant}: in flight {in_flight}, reserved {rcost}/{rtok}, redis spend {cost} vs ledger {ledger}"
                        ));
                    }
                }
                let admitted = scaleout::exact_rpm(&run.stage, &run.hit.0, 10).await;
                if admitted != 10 {
                    problems.push(format!("rpm 10 after the failover admitted {admitted}"));
                }
                run.report.notes.insert(
                    "after failover".to_owned(),
                    format!(
                        "redis spend = ledger, nothing in flight or reserved: {}; new key rpm 10 admitted {admitted} of 20",
                        if exact.iter().all(|e| *e) { "yes" } else { "NO" }
                    ),
                );
                drop(run.stage);
                drop(pg);
                (run.report, problems)
            }
            _ => {
                let report = scaleout::postgres_restart(size).await;
                let problems = clean(&report, false);
                (report, problems)
            }
        };
        eprintln!(
            "[scale-out] {scenario}: {} requests, {} failed",
            report.requests(),
            report.failures().len()
        );
        for p in &problems {
            eprintln!("[scale-out] {scenario}: PROBLEM: {p}");
        }
        if !problems.is_empty() {
            broken.push(scenario);
        }
        rows.push(report);
    }
    print!("{}", table(&rows, size));
    if broken.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("scale-out: broken promises in {broken:?}");
        std::process::ExitCode::FAILURE
    }
}

/// What the report breaks of the scenario's promises. `refusals_ok`: 503s from the limiter
/// are expected (fail_closed during the gap).
fn clean(report: &Report, refusals_ok: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let failures: Vec<_> = report
        .failures()
        .into_iter()
        .filter(|o| {
            !(refusals_ok
                && o.status == Some(503)
                && o.error
                    .as_deref()
                    .is_some_and(|e| e.contains("Rate limits cannot be checked")))
        })
        .collect();
    if !failures.is_empty() {
        problems.push(format!(
            "{} requests failed:\n{}",
            failures.len(),
            report.describe_failures()
        ));
    }
    let (missing, doubled) = report.ledger_mismatches();
    if !missing.is_empty() || !doubled.is_empty() || !report.unanswered_records.is_empty() {
        problems.push(format!(
            "ledger: {} answers without a record, {} recorded twice, {} records without an answer",
            missing.len(),
            doubled.len(),
            report.unanswered_records.len()
        ));
    }
    problems
}

fn table(rows: &[Report], size: Size) -> String {
    let mut out = String::new();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "\nscale-out, {date}, {cores} cores: {} req/s through HAProxy (1 in 4 a stream of 8 chunks x 60 ms), \
         3 replicas, Redis Cluster 3 masters + 3 replicas (cluster-node-timeout 1000 ms), shutdown_delay_s {}\n",
        size.rate, size.shutdown_delay_s
    );
    let _ = writeln!(
        out,
        "| scenario | requests | 2xx | failed | 503 (limiter) | 429 (limited key) | 2xx streams with [DONE] | p99 ms before | p99 ms during event (plain) | ledger records / 2xx answers |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ok = r.outcomes.iter().filter(|o| o.ok()).count();
        let refused = r
            .outcomes
            .iter()
            .filter(|o| {
                o.status == Some(503)
                    && o.error
                        .as_deref()
                        .is_some_and(|e| e.contains("Rate limits cannot be checked"))
            })
            .count();
        let limited = r.outcomes.iter().filter(|o| o.status == Some(429)).count();
        let failed = r.failures().len() - refused;
        let (streams, complete) = r.streams();
        let (p99_all, p99_plain) = r.p99_event_ms();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}/{} | {:.0} | {:.0} ({:.0}) | {} / {} |",
            r.scenario,
            r.requests(),
            ok,
            failed,
            refused,
            limited,
            complete,
            streams,
            r.p99_before_ms(),
            p99_all,
            p99_plain,
            r.record_count(),
            r.answered().len(),
        );
    }
    let _ = writeln!(out);
    for r in rows {
        let notes: Vec<String> = r
            .notes
            .iter()
            .filter(|(k, _)| k.as_str() != "revocation_ms")
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let (from, to) = r.event;
        let _ = writeln!(
            out,
            "- {}: event {:.1} s ({}).",
            r.scenario,
            (to - from).as_secs_f64(),
            notes.join("; ")
        );
    }
    out
}
