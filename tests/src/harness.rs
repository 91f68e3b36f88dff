//! Runs the real `tollgate` binary for a test: a temp folder with its config, port 0 for
//! both planes (the binary prints the addresses it got), stderr kept in a log file, and the
//! process killed when the [`Gateway`] is dropped.
//!
//! The binary is `$TOLLGATE_BIN`, or `target/debug/tollgate` of this workspace
//! (`scripts/test` builds it first).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::db;

/// The bootstrap admin token every harness gateway uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-7f3a";

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The `tollgate` binary under test.
pub fn tollgate_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TOLLGATE_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/tollgate");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p tollgate-gateway) or run scripts/test",
        bin.display()
    );
    bin
}

/// A store URL for `backend`: a fresh Postgres database, or a SQLite file in `dir`.
/// `None` when the backend is not available outside CI (the test then skips).
pub async fn database_url(backend: Backend, dir: &Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}", dir.join("tollgate.db").display())),
        Backend::Postgres => db::fresh_postgres().await,
    }
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT` of the data plane.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin plane.
    pub admin_url: String,
    pub database_url: String,
    pub dir: tempfile::TempDir,
    /// Everything the process printed after the listen lines (stdout), for assertions.
    stdout_tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

/// What a started process printed before it exited, when it did not come up.
#[derive(Debug)]
pub struct Exited {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Gateway {
    /// Starts the gateway with `config` (YAML; `listen`, `admin_listen`, `database_url`
    /// and the admin token are added). `None` when `backend` is unavailable outside CI.
    pub async fn start(backend: Backend, config: &str) -> Option<Gateway> {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = database_url(backend, dir.path()).await?;
        Some(Self::start_in(dir, database_url, config).await)
    }

    /// Like [`Gateway::start`], with extra environment variables for the process.
    pub async fn start_with_env(
        backend: Backend,
        config: &str,
        env: &[(&str, &str)],
    ) -> Option<Gateway> {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = database_url(backend, dir.path()).await?;
        Some(Self::start_in_with(dir, database_url, config, env).await)
    }

    /// Starts a gateway on an existing store, e.g. a second replica on the same Postgres.
    pub async fn start_on(database_url: &str, config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, database_url.to_owned(), config).await
    }

    async fn start_in(dir: tempfile::TempDir, database_url: String, config: &str) -> Gateway {
        Self::start_in_with(dir, database_url, config, &[]).await
    }

    async fn start_in_with(
        dir: tempfile::TempDir,
        database_url: String,
        config: &str,
        extra_env: &[(&str, &str)],
    ) -> Gateway {
        // A test that configures `admin:` itself keeps `${TEST_ADMIN_TOKEN}` as the token.
        let admin = if config.lines().any(|l| l.starts_with("admin:")) {
            ""
        } else {
            "admin: { bootstrap_token: '${TEST_ADMIN_TOKEN}' }\n"
        };
        let full = format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ndatabase_url: '{database_url}'\n{admin}{config}"
        );
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, full).expect("write config");
        let args = vec![
            "serve".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ];
        let mut env = vec![("TEST_ADMIN_TOKEN", ADMIN_TOKEN)];
        env.extend_from_slice(extra_env);
        match Self::spawn(dir, database_url, &args, &env).await {
            Ok(gw) => gw,
            Err(exited) => panic!("gateway did not start: {exited:?}"),
        }
    }

    /// Spawns `tollgate ARGS` in `dir` and waits for both listen lines. On failure returns
    /// what the process printed.
    pub async fn spawn(
        dir: tempfile::TempDir,
        database_url: String,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Gateway, Exited> {
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(tollgate_bin());
        cmd.args(args)
            .current_dir(dir.path())
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .env_remove("TOLLGATE_CONFIG")
            .env_remove("TOLLGATE_DATABASE_URL")
            .env_remove("TOLLGATE_LISTEN")
            .env_remove("TOLLGATE_ADMIN_LISTEN")
            .env("TOLLGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tollgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut admin_url = None;
        let mut seen = Vec::new();
        let wait = tokio::time::timeout(Duration::from_secs(30), async {
            while url.is_none() || admin_url.is_none() {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(u) = line.strip_prefix("tollgate: data plane listening on ") {
                            url = Some(u.to_owned());
                        } else if let Some(u) =
                            line.strip_prefix("tollgate: admin plane listening on ")
                        {
                            admin_url = Some(u.to_owned());
                        }
                        seen.push(line);
                    }
                    _ => return false,
                }
            }
            true
        })
        .await;
        if wait != Ok(true) {
            let _ = child.start_kill();
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            let code = status.ok().and_then(Result::ok).and_then(|s| s.code());
            return Err(Exited {
                code,
                stdout: seen.join("\n"),
                stderr: std::fs::read_to_string(&log_path).unwrap_or_default(),
            });
        }
        let stdout_tail = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let tail = stdout_tail.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tail.lock().expect("lock").push(line);
            }
        });
        Ok(Gateway {
            child,
            url: url.expect("url"),
            admin_url: admin_url.expect("admin url"),
            database_url,
            dir,
            stdout_tail,
            http: client(),
        })
    }

    /// What the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout_tail.lock().expect("lock").join("\n")
    }

    /// Waits (up to 10 s) until stdout contains `needle`; returns all of stdout.
    pub async fn wait_stdout(&self, needle: &str) -> String {
        for _ in 0..200 {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("'{needle}' never appeared on stdout: {}", self.stdout());
    }

    /// What the process logged on stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// `POST /admin/v1/tenants` with the bootstrap token; returns the tenant object.
    pub async fn create_tenant(&self, name: &str) -> Value {
        self.admin_post("/admin/v1/tenants", json!({"name": name}))
            .await
    }

    /// `POST /admin/v1/tenants/{id}/keys`; returns the key object (with the plaintext `key`).
    pub async fn create_key(&self, tenant_id: &str, body: Value) -> Value {
        self.admin_post(&format!("/admin/v1/tenants/{tenant_id}/keys"), body)
            .await
    }

    /// A new tenant with one key allowed `models` (all when empty); returns the plaintext key.
    pub async fn tenant_key(&self, models: &[&str]) -> String {
        let tenant = self
            .create_tenant(&format!("t-{}", uuid::Uuid::new_v4().simple()))
            .await;
        let id = tenant["id"].as_str().expect("tenant id");
        let mut body = json!({"name": "test key"});
        if !models.is_empty() {
            body["models"] = json!(models);
        }
        let key = self.create_key(id, body).await;
        key["key"].as_str().expect("plaintext key").to_owned()
    }

    /// Any admin call with the bootstrap token; returns (status, JSON body or Null).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/models` with `key`; returns the status (a cheap authenticated call).
    pub async fn probe_key(&self, key: &str) -> u16 {
        self.http
            .get(format!("{}/v1/models", self.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("data-plane request")
            .status()
            .as_u16()
    }

    async fn admin_post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.admin_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin request");
        let status = response.status();
        let value: Value = response.json().await.expect("admin json");
        assert_eq!(status.as_u16(), 201, "POST {path}: {value}");
        value
    }

    /// Stops the process with SIGKILL and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// `kill -9`: no drain, no final flush. Keeps the folder (config, SQLite file, spool)
    /// so the gateway can be started again on it with [`Gateway::restart`].
    pub async fn crash(mut self) -> Stopped {
        let _ = self.child.kill().await;
        self.into_stopped()
    }

    /// SIGTERM, then waits (up to 60 s) for the process to drain and exit. Keeps the
    /// folder like [`Gateway::crash`].
    pub async fn stop(mut self) -> Stopped {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(_) => {}
            Err(_) => panic!(
                "gateway did not exit within 60 s of SIGTERM:\n{}",
                self.logs()
            ),
        }
        self.into_stopped()
    }

    /// The process id, for a test that signals the process itself.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("gateway still running")
    }

    /// Waits up to `limit` for the process to exit (after a signal the test sent); returns
    /// its exit code and what is left of it. Panics with its logs when it does not exit.
    pub async fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Stopped) {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the gateway"),
            Err(_) => panic!("gateway did not exit within {limit:?}:\n{}", self.logs()),
        };
        (status.code(), self.into_stopped())
    }

    fn into_stopped(self) -> Stopped {
        let logs = self.logs();
        Stopped {
            dir: self.dir,
            database_url: self.database_url,
            logs,
        }
    }

    /// Starts a gateway again in a stopped one's folder (same spool, same SQLite file),
    /// with `config`, on `database_url` (the same store, maybe by another route).
    pub async fn restart(stopped: Stopped, database_url: &str, config: &str) -> Gateway {
        Self::start_in(stopped.dir, database_url.to_owned(), config).await
    }
}

/// What is left of a stopped gateway: its folder and its store.
pub struct Stopped {
    pub dir: tempfile::TempDir,
    pub database_url: String,
    /// What it logged before it stopped.
    pub logs: String,
}

/// A plain HTTP client for tests (no retries, no proxy).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
