//! The scale-out scenarios: 3 gateway replicas behind HAProxy (as a Kubernetes Service
//! would stand in front of them), on Postgres and a Redis Cluster, under a fixed-rate load
//! of plain and streaming requests, while something happens to one part:
//!
//! - [`rolling_restart`]: each replica in turn gets SIGTERM, drains, and starts again;
//! - [`redis_failover`]: the master holding a loaded tenant's slot is killed, its replica
//!   promoted (`fail_open` or `fail_closed`);
//! - [`postgres_restart`]: Postgres stops and starts again (`pg_ctl -m fast`).
//!
//! Every part is real and started here on free ports: the `tollgate` binary
//! (`$TOLLGATE_BIN`), `redis-server` nodes ([`crate::redis_cluster`]), `haproxy`, and for
//! the Postgres scenario a Postgres of its own (`scripts/lib/services.sh`); the upstream is
//! the mock. Each scenario returns a [`Report`]: what every request got (status, whether a
//! stream ended with `[DONE]`, latency), the ledger's records per request id, and what the
//! scenario measured. `tests/e2e/scaleout.rs` runs them short and asserts on the reports;
//! `bench/scale-out` runs them longer and prints the table.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: fail loudly"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::harness::{ADMIN_TOKEN, Gateway, Stopped, client};
use crate::redis_cluster::{self, RedisCluster};
use crate::upstream::MockUpstream;

/// `scripts/lib/services.sh` of this repository.
fn services_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/services.sh")
}

/// Runs `bash -c 'source services.sh; SCRIPT'` with `args` as `$1...`; stdout.
async fn services(script: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && {script}", services_sh().display()))
        .arg("services")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run bash");
    assert!(
        out.status.success(),
        "services.sh `{script}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A Postgres of a scenario's own (so it can be restarted without disturbing anything
/// else), in a `/tmp/tollgate-test.*` state folder removed when dropped.
pub struct PrivatePostgres {
    dir: String,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let dir = services(
            "d=$(svc_make_dir) && svc_pg_start \"$d\" && echo \"$d\"",
            &[],
        )
        .await;
        let dir = dir.lines().last().unwrap_or_default().to_owned();
        let port = std::fs::read_to_string(Path::new(&dir).join("pg/port")).expect("pg/port");
        PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", port.trim()),
            dir,
        }
    }

    /// `pg_ctl stop -m fast`: every connection is cut, new ones are refused.
    pub async fn stop(&self) {
        services("svc_pg_stop \"$1\"", &[&self.dir]).await;
    }

    /// Starts it again on the same port and data.
    pub async fn start_again(&self) {
        services("svc_pg_start_again \"$1\"", &[&self.dir]).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && svc_stop_all \"$1\"",
                services_sh().display()
            ))
            .arg("services")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether `haproxy` is installed (CI=true: a failure when not; `scripts/test` installs it).
pub fn haproxy_available() -> bool {
    let found = haproxy_bin().is_some();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !found && ci {
        panic!("haproxy is missing and CI=true: run the tests through scripts/test");
    }
    if !found {
        eprintln!("skipping: haproxy not installed (scripts/test installs it)");
    }
    found
}

fn haproxy_bin() -> Option<PathBuf> {
    for candidate in ["haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"] {
        let ok = std::process::Command::new(candidate)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(PathBuf::from(candidate));
        }
    }
    None
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// HAProxy in front of the replicas: round robin, an active health check on each
/// replica's `/readyz` (admin port) every 100 ms, out after 3 failures, back after 2
/// passes. Nothing is retried, not even a refused connection (`retries 0`): like a
/// Kubernetes Service, so a replica that closes its listener while still in rotation
/// shows up as failed requests.
pub struct Haproxy {
    child: Child,
    /// `http://127.0.0.1:PORT`: the front end.
    pub url: String,
    stats: String,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Balances over `backends` (data port, admin port), servers named `r0`, `r1`, ...
    pub async fn start(backends: &[(u16, u16)]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, stats_port) = (free_port(), free_port());
        let mut cfg = format!(
            "global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout check 2s
    retries 0
frontend fe
    bind 127.0.0.1:{port}
    default_backend gw
listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
backend gw
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 100ms fall 3 rise 2
"
        );
        for (i, (data, admin)) in backends.iter().enumerate() {
            cfg.push_str(&format!(
                "    server r{i} 127.0.0.1:{data} check port {admin}\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log");
        let child = Command::new(haproxy_bin().expect("haproxy installed"))
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn haproxy");
        let haproxy = Haproxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            stats: format!("http://127.0.0.1:{stats_port}/stats;csv"),
            _dir: dir,
        };
        for i in 0..backends.len() {
            haproxy.wait_state(i, true).await;
        }
        haproxy
    }

    /// HAProxy's view of server `r{i}`: `UP`, `DOWN`, `UP 1/2`... (empty if unknown).
    pub async fn state(&self, i: usize) -> String {
        let Ok(response) = client().get(&self.stats).send().await else {
            return String::new();
        };
        let csv = response.text().await.unwrap_or_default();
        let name = format!("r{i}");
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"gw") && f.get(1) == Some(&name.as_str()))
            .and_then(|f| f.get(17).map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    /// Waits (up to 60 s) until HAProxy has server `r{i}` fully up (or down).
    pub async fn wait_state(&self, i: usize, up: bool) {
        let started = Instant::now();
        loop {
            let state = self.state(i).await;
            if (up && state == "UP") || (!up && state.starts_with("DOWN")) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "haproxy: r{i} is still {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the HAProxy process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// N gateway replicas on one store, each on fixed ports (a restart binds the same ones,
/// as a pod keeps its Service port) in its own folder (its spool survives a restart).
pub struct Replicas {
    pub gateways: Vec<Option<Gateway>>,
    stopped: Vec<Option<Stopped>>,
    ports: Vec<(u16, u16)>,
    database_url: String,
    config: String,
}

impl Replicas {
    /// Starts `n` replicas with `config` (YAML without listen addresses, store and admin
    /// token, which are added) on `database_url`.
    pub async fn start(n: usize, database_url: &str, config: &str) -> Replicas {
        let mut replicas = Replicas {
            gateways: Vec::new(),
            stopped: Vec::new(),
            ports: (0..n).map(|_| (free_port(), free_port())).collect(),
            database_url: database_url.to_owned(),
            config: config.to_owned(),
        };
        for i in 0..n {
            let dir = tempfile::tempdir().expect("temp dir");
            let gw = replicas.spawn(i, dir).await;
            replicas.gateways.push(Some(gw));
            replicas.stopped.push(None);
        }
        replicas
    }

    /// (data port, admin port) of every replica, for the load balancer.
    pub fn ports(&self) -> &[(u16, u16)] {
        &self.ports
    }

    async fn spawn(&self, i: usize, dir: tempfile::TempDir) -> Gateway {
        let (data, admin) = self.ports[i];
        let full = format!(
            "listen: 127.0.0.1:{data}\nadmin_listen: 127.0.0.1:{admin}\ndatabase_url: '{}'\nadmin: {{ bootstrap_token: '${{TEST_ADMIN_TOKEN}}' }}\n{}",
            self.database_url, self.config
        );
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, full).expect("write config");
        let args = [
            "serve".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ];
        let env = [("TEST_ADMIN_TOKEN", ADMIN_TOKEN)];
        // tokio binds with SO_REUSEADDR: the port a stopped replica held is free at once.
        match Gateway::spawn(dir, self.database_url.clone(), &args, &env).await {
            Ok(gw) => gw,
            Err(exited) => panic!("replica {i} did not start: {exited:?}"),
        }
    }

    /// SIGTERM to replica `i`; waits until it exited (delay, drain, flush).
    pub async fn stop(&mut self, i: usize) {
        let gw = self.gateways[i].take().expect("replica running");
        let stopped = gw.stop().await;
        self.stopped[i] = Some(stopped);
    }

    /// Starts replica `i` again in its folder, on its ports.
    pub async fn start_again(&mut self, i: usize) {
        let stopped = self.stopped[i].take().expect("replica stopped");
        let gw = self.spawn(i, stopped.dir).await;
        self.gateways[i] = Some(gw);
    }

    /// A running replica (for admin calls).
    pub fn any(&self) -> &Gateway {
        self.gateways
            .iter()
            .flatten()
            .next()
            .expect("a replica is running")
    }

    /// What every replica logged so far (running or stopped).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, gw) in self.gateways.iter().enumerate() {
            if let Some(gw) = gw {
                out.push_str(&format!("--- replica {i}\n{}\n", gw.logs()));
            }
        }
        out
    }
}

/// The load: `rate` requests per second through `url`, every `stream_every`-th one a
/// stream (`stream_options.include_usage`), keys taken in turn. Open loop: requests are
/// sent on schedule whether or not earlier ones answered.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub url: String,
    pub rate: f64,
    pub stream_every: usize,
    pub keys: Vec<String>,
    /// Content chunks per stream and the pause between them (a stream lasts about
    /// `chunks * chunk_delay_ms`).
    pub chunks: usize,
    pub chunk_delay_ms: u64,
    /// Upstream latency of a plain request.
    pub delay_ms: u64,
}

/// What one request got.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Index into [`LoadSpec::keys`].
    pub key: usize,
    pub stream: bool,
    /// When it was sent, since the load started.
    pub sent: Duration,
    /// Wall-clock Unix ms when it was sent.
    pub sent_unix_ms: i64,
    /// Until the body's end.
    pub latency: Duration,
    /// `None`: no HTTP answer at all (connection refused, reset, timeout).
    pub status: Option<u16>,
    /// `x-request-id` of the answer: the ledger's key.
    pub request_id: Option<String>,
    /// The whole answer arrived intact: a JSON completion, or a stream of JSON events
    /// ending with `data: [DONE]` and no error event.
    pub complete: bool,
    /// What went wrong, for the failure report.
    pub error: Option<String>,
}

impl Outcome {
    /// 2xx with the whole answer.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s)) && self.complete
    }
}

/// A running load; [`Load::finish`] stops it and returns every outcome.
pub struct Load {
    started: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Outcome>>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Load {
    pub fn start(spec: LoadSpec) -> Load {
        let started = Instant::now();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(256)
                .build()
                .expect("http client");
            let outcomes = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = tokio::task::JoinSet::new();
            let period = Duration::from_secs_f64(1.0 / spec.rate.max(0.1));
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0usize;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let key = n % spec.keys.len();
                let stream =
                    spec.stream_every > 0 && n % spec.stream_every == spec.stream_every - 1;
                n += 1;
                let (http, spec, outcomes) = (http.clone(), spec.clone(), outcomes.clone());
                tasks.spawn(async move {
                    let outcome = one_request(&http, &spec, key, stream, started).await;
                    outcomes.lock().expect("lock").push(outcome);
                });
                // Reap finished tasks so the set does not grow with the run.
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            let mut all = std::mem::take(&mut *outcomes.lock().expect("lock"));
            all.sort_by_key(|o| o.sent);
            all
        });
        Load {
            started,
            stop,
            task,
        }
    }

    /// Time since the load started (the clock of [`Outcome::sent`]).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops sending, waits for every request in flight, returns all outcomes.
    pub async fn finish(self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        self.task.await.expect("load task")
    }
}

async fn one_request(
    http: &reqwest::Client,
    spec: &LoadSpec,
    key: usize,
    stream: bool,
    started: Instant,
) -> Outcome {
    let sent = started.elapsed();
    let sent_unix_ms = unix_ms();
    let t0 = Instant::now();
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "scale-out"}],
        "max_tokens": 32,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        body["mock"] = json!({"chunks": spec.chunks, "chunk_delay_ms": spec.chunk_delay_ms});
    } else {
        body["mock"] = json!({"delay_ms": spec.delay_ms});
    }
    let mut outcome = Outcome {
        key,
        stream,
        sent,
        sent_unix_ms,
        latency: Duration::ZERO,
        status: None,
        request_id: None,
        complete: false,
        error: None,
    };
    let response = match http
        .post(format!("{}/v1/chat/completions", spec.url))
        .bearer_auth(&spec.keys[key])
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            outcome.error = Some(format!("request: {e}"));
            outcome.latency = t0.elapsed();
            return outcome;
        }
    };
    outcome.status = Some(response.status().as_u16());
    outcome.request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut bytes = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(c) => bytes.extend_from_slice(&c),
            Err(e) => {
                outcome.error = Some(format!("body: {e}"));
                break;
            }
        }
    }
    outcome.latency = t0.elapsed();
    let text = String::from_utf8_lossy(&bytes);
    if outcome.error.is_none() {
        outcome.complete = if stream {
            stream_complete(&text)
        } else {
            serde_json::from_str::<Value>(&text)
                .ok()
                .is_some_and(|v| v["choices"].is_array())
        };
        if !outcome.complete || !outcome.status.is_some_and(|s| (200..300).contains(&s)) {
            outcome.error = Some(text.chars().take(300).collect());
        }
    }
    outcome
}

/// A stream of JSON `data:` events, no error event, ending with `data: [DONE]`.
fn stream_complete(text: &str) -> bool {
    let events: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let Some((last, rest)) = events.split_last() else {
        return false;
    };
    *last == "data: [DONE]"
        && !rest.is_empty()
        && rest.iter().all(|e| {
            e.strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .is_some_and(|v| v.get("error").is_none())
        })
}

/// The ledger's records per request id, for every request id in `ids`, read once every
/// record of `ids` is there or `limit` passed (the spool flushes in batches and replays
/// after a store outage). Also returns the records whose request id is not in `ids`.
pub async fn ledger(
    database_url: &str,
    ids: &HashSet<String>,
    limit: Duration,
) -> (HashMap<String, i64>, Vec<String>) {
    use sqlx::Connection;
    let started = Instant::now();
    loop {
        let counts = match sqlx::PgConnection::connect(database_url).await {
            Ok(mut conn) => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT request_id, COUNT(*)::BIGINT FROM usage_records GROUP BY request_id",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                let _ = conn.close().await;
                rows.into_iter().collect::<HashMap<_, _>>()
            }
            Err(_) => HashMap::new(),
        };
        let all_in = ids.iter().all(|id| counts.contains_key(id));
        if all_in || started.elapsed() > limit {
            let extra = counts
                .keys()
                .filter(|id| !ids.contains(*id))
                .cloned()
                .collect();
            return (counts, extra);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sum of `cost_micro_usd` of `tenant`'s records.
pub async fn ledger_cost(database_url: &str, tenant: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect to the store");
    let (cost,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(cost_micro_usd), 0)::BIGINT FROM usage_records WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&mut conn)
    .await
    .expect("sum the ledger");
    cost
}

/// One row of the table.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub outcomes: Vec<Outcome>,
    /// When the event (restart, kill, outage) began and when everything was back, on the
    /// load's clock.
    pub event: (Duration, Duration),
    /// Records in the ledger per answered request id (only answered ids).
    pub records: HashMap<String, i64>,
    /// Ledger records whose request id no client got an answer for.
    pub unanswered_records: Vec<String>,
    /// Scenario-specific measurements, printed in the notes column.
    pub notes: BTreeMap<String, String>,
    /// The load's key whose 429s are expected (it has a small rpm on purpose).
    pub limited_key: Option<usize>,
}

impl Report {
    pub fn requests(&self) -> usize {
        self.outcomes.len()
    }

    /// Requests that did not get their whole 2xx answer (a 429 of the limited key is
    /// what it should get, not a failure).
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes
            .iter()
            .filter(|o| !o.ok())
            .filter(|o| !(o.status == Some(429) && Some(o.key) == self.limited_key))
            .collect()
    }

    /// The limited key's 2xx answers beyond its rpm, summed over the clock minutes
    /// (the limiter's windows) the run touched.
    pub fn over_admitted(&self, rpm: u32) -> (u64, u64) {
        let Some(key) = self.limited_key else {
            return (0, 0);
        };
        let mut per_minute: BTreeMap<i64, u64> = BTreeMap::new();
        for o in &self.outcomes {
            if o.key == key && o.ok() {
                *per_minute.entry(o.sent_unix_ms / 60_000).or_default() += 1;
            }
        }
        let over = per_minute
            .values()
            .map(|n| n.saturating_sub(u64::from(rpm)))
            .sum();
        (over, per_minute.values().sum())
    }

    /// Streams answered 2xx, and how many of them ended with `[DONE]` (a refused stream,
    /// 429 or 503, never started).
    pub fn streams(&self) -> (usize, usize) {
        let streams: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.stream && o.status.is_some_and(|s| (200..300).contains(&s)))
            .collect();
        (streams.len(), streams.iter().filter(|o| o.ok()).count())
    }

    /// Request ids of the 2xx answers: each must have exactly one ledger record.
    pub fn answered(&self) -> HashSet<String> {
        self.outcomes
            .iter()
            .filter(|o| o.status.is_some_and(|s| (200..300).contains(&s)))
            .filter_map(|o| o.request_id.clone())
            .collect()
    }

    /// Answered ids with no record, and ids with more than one.
    pub fn ledger_mismatches(&self) -> (Vec<String>, Vec<(String, i64)>) {
        let answered = self.answered();
        let missing = answered
            .iter()
            .filter(|id| !self.records.contains_key(*id))
            .cloned()
            .collect();
        let doubled = self
            .records
            .iter()
            .filter(|(id, n)| answered.contains(*id) && **n != 1)
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        (missing, doubled)
    }

    /// Total records of answered requests.
    pub fn record_count(&self) -> i64 {
        self.records.values().sum::<i64>() + self.unanswered_records.len() as i64
    }

    /// p99 latency (ms) of the requests sent during the event, and of the plain ones
    /// only (streams last by design).
    pub fn p99_event_ms(&self) -> (f64, f64) {
        let (from, to) = self.event;
        let during: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.sent >= from && o.sent <= to)
            .collect();
        let p99 = |mut v: Vec<f64>| {
            if v.is_empty() {
                return 0.0;
            }
            v.sort_by(|a, b| a.total_cmp(b));
            let i = ((v.len() as f64) * 0.99).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        };
        let all = during
            .iter()
            .map(|o| o.latency.as_secs_f64() * 1000.0)
            .collect();
        let plain = during
            .iter()
            .filter(|o| !o.stream)
            .map(|o| o.latency.as_secs_f64() * 1000.0)
            .collect();
        (p99(all), p99(plain))
    }

    /// p99 latency (ms) of the plain requests sent before the event: the baseline.
    pub fn p99_before_ms(&self) -> f64 {
        let mut v: Vec<f64> = self
            .outcomes
            .iter()
            .filter(|o| !o.stream && o.sent < self.event.0)
            .map(|o| o.latency.as_secs_f64() * 1000.0)
            .collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((v.len() as f64) * 0.99).ceil() as usize;
        v[i.clamp(1, v.len()) - 1]
    }

    /// A compact account of what failed, for an assertion message.
    pub fn describe_failures(&self) -> String {
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for o in self.failures() {
            let kind = format!(
                "{} {}: {}",
                if o.stream { "stream" } else { "plain" },
                o.status.map_or("no answer".to_owned(), |s| s.to_string()),
                o.error.clone().unwrap_or_default()
            );
            *by_kind.entry(kind).or_default() += 1;
        }
        by_kind
            .iter()
            .map(|(k, n)| format!("{n} x {k}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Everything a scenario runs on.
pub struct Stage {
    pub upstream: MockUpstream,
    pub cluster: RedisCluster,
    pub replicas: Replicas,
    pub haproxy: Haproxy,
    pub database_url: String,
}

/// How big a run is: the test's short form or the benchmark's.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Requests per second through the load balancer.
    pub rate: f64,
    /// Seconds of steady load before and after the event.
    pub settle_s: f64,
    /// How long Postgres stays down in [`postgres_restart`].
    pub outage_s: f64,
    /// Seconds a stopping replica keeps serving with `/readyz` at 503.
    pub shutdown_delay_s: f64,
    /// In [`redis_failover`], also load a key of the killed master's tenant with this rpm
    /// (above it: 429), to measure how much the replicas admit past it during the gap.
    pub limited_rpm: Option<u32>,
}

impl Size {
    /// The test command's form: a few seconds per scenario.
    pub const SHORT: Size = Size {
        rate: 25.0,
        settle_s: 1.5,
        outage_s: 2.0,
        shutdown_delay_s: 1.0,
        limited_rpm: None,
    };
    /// `bench/scale-out`'s default.
    pub const BENCH: Size = Size {
        rate: 100.0,
        settle_s: 5.0,
        outage_s: 5.0,
        shutdown_delay_s: 2.0,
        limited_rpm: Some(60),
    };
}

/// The replicas' config: the mock upstream, a Redis Cluster, limits that touch every
/// counter (rpm, tpm, concurrency, monthly budget: none binds the load), the cache on (the
/// load's requests are not deterministic, so they all reach the upstream; the failover's
/// probes are).
fn config(upstream: &MockUpstream, cluster: &RedisCluster, policy: &str, size: Size) -> String {
    let nodes = cluster
        .urls()
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "redis_cluster_nodes: [{nodes}]
limits: {{ redis_failure: {policy} }}
shutdown_delay_s: {delay}
shutdown_drain_s: 30
auth: {{ cache_ttl_s: 600 }}
cache: {{ enabled: true, ttl_s: 600 }}
meter: {{ flush_interval_ms: 200 }}
prices:
  gpt-4o-mini: {{ input: 0.15, output: 0.60 }}
models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream, model: gpt-4o-mini }} ]
",
        delay = size.shutdown_delay_s,
        base = upstream.base_url(),
    )
}

/// The plan every scenario tenant is on: limits on every counter, none reached.
pub const PLAN: &str = "scaleout";

/// Starts the stage: mock upstream, a 3+3 Redis Cluster, 3 replicas on `database_url`,
/// HAProxy in front, and the plan.
pub async fn stage(database_url: &str, policy: &str, size: Size) -> Stage {
    let upstream = MockUpstream::start().await;
    upstream.set_record_limit(Some(0));
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .expect("cluster");
    let config = config(&upstream, &cluster, policy, size);
    let replicas = Replicas::start(3, database_url, &config).await;
    let haproxy = Haproxy::start(replicas.ports()).await;
    let (status, body) = replicas
        .any()
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/plans/{PLAN}"),
            Some(json!({
                "rpm": 1_000_000, "tpm": 1_000_000_000, "max_concurrent": 10_000,
                "monthly_budget_usd": "100000.00"
            })),
        )
        .await;
    assert_eq!(status, 200, "plan: {body}");
    Stage {
        upstream,
        cluster,
        replicas,
        haproxy,
        database_url: database_url.to_owned(),
    }
}

/// A tenant on [`PLAN`] whose hash tag lands on a master other than those in `avoid`
/// (when given), with one key; returns (tenant id, key).
pub async fn tenant_on(stage: &Stage, name: &str, master: Option<u16>) -> (String, String) {
    for attempt in 0..200 {
        let gw = stage.replicas.any();
        let tenant = gw
            .admin(
                reqwest::Method::POST,
                "/admin/v1/tenants",
                Some(json!({"name": format!("{name}-{attempt}"), "plan": PLAN})),
            )
            .await
            .1;
        let id = tenant["id"].as_str().expect("tenant id").to_owned();
        let slot = stage.cluster.slot(&format!("{{{id}}}"));
        let on = stage.cluster.master_of_slot(slot);
        if master.is_none_or(|m| m == on) {
            let key = gw.create_key(&id, json!({"name": "load"})).await["key"]
                .as_str()
                .expect("key")
                .to_owned();
            return (id, key);
        }
    }
    panic!("no tenant landed on master {master:?}")
}

/// Every replica caches `keys` (direct calls, not through the load balancer), so a store
/// outage finds them known everywhere.
async fn warm(stage: &Stage, keys: &[String]) {
    for gw in stage.replicas.gateways.iter().flatten() {
        for key in keys {
            assert_eq!(gw.probe_key(key).await, 200, "warm-up");
        }
    }
}

fn spec(stage: &Stage, keys: Vec<String>, size: Size) -> LoadSpec {
    LoadSpec {
        url: stage.haproxy.url.clone(),
        rate: size.rate,
        stream_every: 4,
        keys,
        chunks: 8,
        chunk_delay_ms: 60,
        delay_ms: 10,
    }
}

async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

/// Collects the load and the ledger into the report.
async fn report(
    stage: &Stage,
    scenario: &str,
    load: Load,
    event: (Duration, Duration),
    limited_key: Option<usize>,
) -> Report {
    let outcomes = load.finish().await;
    let mut report = Report {
        scenario: scenario.to_owned(),
        outcomes,
        event,
        limited_key,
        ..Report::default()
    };
    let answered = report.answered();
    let (counts, extra) = ledger(&stage.database_url, &answered, Duration::from_secs(60)).await;
    report.records = counts
        .into_iter()
        .filter(|(id, _)| answered.contains(id))
        .collect();
    report.unanswered_records = extra;
    report
}

/// Rolling restart: each replica in turn gets SIGTERM (its `/readyz` turns 503, HAProxy
/// takes it out, it stops accepting and drains), exits, starts again, and is back in
/// HAProxy before the next one goes.
pub async fn rolling_restart(database_url: &str, size: Size) -> Report {
    let mut stage = stage(database_url, "fail_open", size).await;
    let (_, key) = tenant_on(&stage, "rolling", None).await;
    let load = Load::start(spec(&stage, vec![key], size));
    sleep_s(size.settle_s).await;
    let from = load.now();
    let mut downtime = Vec::new();
    for i in 0..stage.replicas.gateways.len() {
        let t = Instant::now();
        stage.replicas.stop(i).await;
        stage.replicas.start_again(i).await;
        stage.haproxy.wait_state(i, true).await;
        downtime.push(t.elapsed().as_secs_f64());
    }
    let to = load.now();
    sleep_s(size.settle_s).await;
    let mut report = report(
        &stage,
        "rolling restart (3 replicas)",
        load,
        (from, to),
        None,
    )
    .await;
    report.notes.insert(
        "replica out for".to_owned(),
        downtime
            .iter()
            .map(|s| format!("{s:.1}s"))
            .collect::<Vec<_>>()
            .join("/"),
    );
    report
}

/// What a Redis failover scenario found besides the report.
pub struct Failover {
    pub report: Report,
    /// What the tenants got from the cache and idempotency keys while the master was
    /// gone (sent right after the kill, before the promotion).
    pub gap: GapProbes,
    /// (tenant, key) on the killed master and on a surviving one.
    pub hit: (String, String),
    pub spared: (String, String),
    pub stage: Stage,
}

/// Requests sent while a master is down, for a tenant on it and one on a survivor.
#[derive(Clone, Debug, Default)]
pub struct GapProbes {
    /// The surviving tenant: `x-tollgate-cache` of the second identical deterministic
    /// request, and whether the second request with the same `Idempotency-Key` was a
    /// replay.
    pub spared_cache: String,
    pub spared_replayed: bool,
    /// The statuses the failed master's tenant got for the same four requests.
    pub hit_statuses: Vec<u16>,
    /// Whether the slot still had no promoted master when the surviving tenant's probes
    /// were done.
    pub within_gap: bool,
}

/// Two identical deterministic requests, then two with one `Idempotency-Key`: (statuses,
/// second `x-tollgate-cache`, second replayed, request ids).
async fn cache_and_idempotency(url: &str, key: &str) -> (Vec<u16>, String, bool, Vec<String>) {
    let http = client();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let body = json!({
        "model": "gpt-4o-mini", "temperature": 0, "max_tokens": 8,
        "messages": [{"role": "user", "content": format!("probe {tag}")}],
    });
    let (mut statuses, mut cache, mut replayed, mut ids) =
        (Vec::new(), String::new(), false, Vec::new());
    for i in 0..4 {
        let mut request = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body);
        if i >= 2 {
            request = request.header("idempotency-key", format!("idem-{tag}"));
        }
        let response = request.send().await.expect("probe");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        ids.push(header("x-request-id"));
        if i == 1 {
            cache = header("x-tollgate-cache");
        }
        if i == 3 {
            replayed = header("idempotent-replayed") == "true";
        }
        statuses.push(response.status().as_u16());
        let _ = response.bytes().await;
    }
    (statuses, cache, replayed, ids)
}

/// Redis master failover: tenant A's slot is on the master that is killed (SIGKILL) mid
/// load; tenant B's on another. Returns with the stage still up, for the caller's checks
/// of the counters after the failover ([`redis_counters`], [`exact_rpm`]).
pub async fn redis_failover(database_url: &str, policy: &str, size: Size) -> Failover {
    let mut stage = stage(database_url, policy, size).await;
    let victim = stage.cluster.masters()[0];
    let hit = tenant_on(&stage, "hit", Some(victim)).await;
    let spared_master = stage.cluster.masters()[1];
    let spared = tenant_on(&stage, "spared", Some(spared_master)).await;
    let mut keys = vec![hit.1.clone(), spared.1.clone()];
    if let Some(rpm) = size.limited_rpm {
        let limited = stage
            .replicas
            .any()
            .create_key(&hit.0, json!({"name": "limited", "rpm": rpm}))
            .await;
        keys.push(limited["key"].as_str().expect("key").to_owned());
    }
    let load = Load::start(spec(&stage, keys, size));
    sleep_s(size.settle_s).await;
    let from = load.now();
    let slot = stage.cluster.slot(&format!("{{{}}}", hit.0));
    stage.cluster.kill(victim);
    // Right away, while the slot has no master: cache and idempotency on both tenants.
    let url = stage.haproxy.url.clone();
    // Up to three tries: the first call after a node dies may meet the cluster client
    // refreshing its slot map (one failed or late Redis call is fail_open's to absorb);
    // what must hold is that the surviving slots serve cache and idempotency in the gap.
    let (mut spared_cache, mut spared_replayed, mut spared_ids) =
        (String::new(), false, Vec::new());
    for _ in 0..3 {
        let (_, cache, replayed, ids) = cache_and_idempotency(&url, &spared.1).await;
        spared_ids.extend(ids);
        (spared_cache, spared_replayed) = (cache, replayed);
        if spared_cache == "hit" && spared_replayed {
            break;
        }
    }
    let within_gap = {
        let cluster = &stage.cluster;
        tokio::task::block_in_place(|| cluster.owner(slot).is_none_or(|o| o == victim))
    };
    let (hit_statuses, _, _, hit_ids) = cache_and_idempotency(&url, &hit.1).await;
    let gap = GapProbes {
        spared_cache,
        spared_replayed,
        hit_statuses,
        within_gap,
    };
    let probe_ids: HashSet<String> = spared_ids.into_iter().chain(hit_ids).collect();
    let promoted = {
        let cluster = &stage.cluster;
        tokio::task::block_in_place(|| cluster.wait_failover(slot, victim))
    };
    let to = load.now();
    // Twice as long after: the replicas must be seen serving the tenant again (its slot
    // is skipped for a second after each failed call).
    sleep_s(size.settle_s * 2.0).await;
    let limited_key = size.limited_rpm.map(|_| 2);
    let mut report = report(
        &stage,
        &format!("redis master failover ({policy})"),
        load,
        (from, to),
        limited_key,
    )
    .await;
    // The probes' own records (cache hits are metered, replays are not) are not the load's.
    report
        .unanswered_records
        .retain(|id| !probe_ids.contains(id));
    report.notes.insert(
        "during the gap".to_owned(),
        format!(
            "surviving tenant: cache {}, idempotent replay {}; failed master's tenant: {:?}",
            gap.spared_cache,
            if gap.spared_replayed { "yes" } else { "NO" },
            gap.hit_statuses
        ),
    );
    if let Some(rpm) = size.limited_rpm {
        let (over, admitted) = report.over_admitted(rpm);
        report.notes.insert(
            "over-admitted".to_owned(),
            format!("{over} of {admitted} admitted (key rpm {rpm}, 3 replicas)"),
        );
    }
    report.notes.insert(
        "failover took".to_owned(),
        format!("{:.1}s", (to - from).as_secs_f64()),
    );
    let refused: Vec<&Outcome> = report
        .outcomes
        .iter()
        .filter(|o| o.status == Some(503))
        .collect();
    report
        .notes
        .insert("503s".to_owned(), refused.len().to_string());
    report
        .notes
        .insert("promoted".to_owned(), format!("127.0.0.1:{promoted}"));
    Failover {
        report,
        gap,
        hit,
        spared,
        stage,
    }
}

/// A tenant's limiter counters in Redis after the load: (requests in flight, reserved
/// cost, reserved tokens, month's cost), read on the master now serving its slot.
pub fn redis_counters(cluster: &RedisCluster, tenant: &str) -> (i64, i64, i64, i64) {
    let slot = cluster.slot(&format!("{{{tenant}}}"));
    let master = cluster.master_of_slot(slot);
    let num = |s: String| s.trim().parse::<i64>().unwrap_or(0);
    let in_flight = num(redis_cluster::cli(
        master,
        &["GET", &format!("tg:q:{{{tenant}}}:t:c")],
    ));
    let month = redis_cluster::cli(
        master,
        &["--scan", "--pattern", &format!("tg:q:{{{tenant}}}:t:m:*")],
    );
    let month = month.lines().next().unwrap_or_default().to_owned();
    let field = |f: &str| num(redis_cluster::cli(master, &["HGET", &month, f]));
    (in_flight, field("rcost"), field("rtok"), field("cost"))
}

/// Waits until `tenant`'s counters are quiet: nothing in flight or reserved (settlements
/// of the last requests may still be retrying). Returns the last reading.
pub async fn settled_counters(cluster: &RedisCluster, tenant: &str) -> (i64, i64, i64, i64) {
    let started = Instant::now();
    loop {
        let c = tokio::task::block_in_place(|| redis_counters(cluster, tenant));
        if (c.0 <= 0 && c.1 == 0 && c.2 == 0) || started.elapsed() > Duration::from_secs(20) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new key of `tenant` with `rpm`, then `2 * rpm` requests through the load balancer
/// (round robin over the replicas) inside one clock minute: how many were admitted. A
/// shared counter admits exactly `rpm`.
pub async fn exact_rpm(stage: &Stage, tenant: &str, rpm: u32) -> usize {
    let gw = stage.replicas.any();
    let key = gw
        .create_key(tenant, json!({"name": "exact", "rpm": rpm}))
        .await["key"]
        .as_str()
        .expect("key")
        .to_owned();
    // Not across a minute boundary: the windows are clock minutes.
    let into_minute = unix_ms() % 60_000;
    if into_minute > 45_000 {
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(60_500 - into_minute).unwrap_or(0),
        ))
        .await;
    }
    let http = client();
    let mut admitted = 0;
    for _ in 0..rpm * 2 {
        let status = http
            .post(format!("{}/v1/chat/completions", stage.haproxy.url))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}))
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        assert!(status == 200 || status == 429, "status {status}");
        if status == 200 {
            admitted += 1;
        }
    }
    admitted
}

/// Postgres restart: Postgres stops (`pg_ctl -m fast`) under load and starts again after
/// `outage_s`. Then a key cached on every replica is revoked through one replica, and the
/// time until the other two refuse it is measured from the store's return.
pub async fn postgres_restart(size: Size) -> Report {
    let pg = PrivatePostgres::start().await;
    let stage = stage(&pg.url, "fail_open", size).await;
    let (tenant, key) = tenant_on(&stage, "pg", None).await;
    let gw = stage.replicas.any();
    let doomed = gw.create_key(&tenant, json!({"name": "doomed"})).await;
    let doomed_id = doomed["id"].as_str().expect("id").to_owned();
    let doomed_key = doomed["key"].as_str().expect("key").to_owned();
    warm(&stage, &[key.clone(), doomed_key.clone()]).await;
    let load = Load::start(spec(&stage, vec![key], size));
    sleep_s(size.settle_s).await;
    let from = load.now();
    pg.stop().await;
    sleep_s(size.outage_s).await;
    pg.start_again().await;
    let back = Instant::now();
    let to = load.now();
    // Revoke through replica 0 as soon as the store takes writes again.
    let replicas: Vec<&Gateway> = stage.replicas.gateways.iter().flatten().collect();
    loop {
        let (status, _) = replicas[0]
            .admin(
                reqwest::Method::DELETE,
                &format!("/admin/v1/keys/{doomed_id}"),
                None,
            )
            .await;
        if status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the store never took the revocation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revoked_at = back.elapsed();
    let mut reached = Vec::new();
    for other in &replicas[1..] {
        loop {
            if other.probe_key(&doomed_key).await == 401 {
                reached.push(back.elapsed());
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "the revocation never reached a replica after the store came back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sleep_s(size.settle_s).await;
    let mut report = report(&stage, "postgres restart", load, (from, to), None).await;
    report.notes.insert(
        "store down".to_owned(),
        format!("{:.1}s", (to - from).as_secs_f64()),
    );
    report.notes.insert(
        "revoked at".to_owned(),
        format!("+{:.2}s", revoked_at.as_secs_f64()),
    );
    let last = reached.iter().max().copied().unwrap_or_default();
    report.notes.insert(
        "revocation on all replicas".to_owned(),
        format!("+{:.2}s after the store's return", last.as_secs_f64()),
    );
    report.notes.insert(
        "revocation_ms".to_owned(),
        format!("{}", (last - revoked_at).as_millis()),
    );
    drop(stage);
    drop(pg);
    report
}
