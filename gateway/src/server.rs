//! Both listeners, start-up and graceful shutdown.
//!
//! Once both sockets are bound, `serve` prints one line per plane to stdout
//! (`tollgate: data plane listening on http://ADDR`, `https://` with `tls:`), so scripts
//! and tests that ask for port 0 learn the real address. `/readyz` stays 200 ("degraded")
//! through a store outage for as long as known keys are served without it ([`readyz`]). On SIGINT/SIGTERM
//! `/readyz` answers 503 at once while both planes keep serving for `shutdown_delay_s`
//! (load balancers' health checks take the replica out before it stops accepting), then it stops
//! accepting, lets requests in flight finish for up to `shutdown_drain_s` (default
//! [`DRAIN`]), then exits; what is still running then is cut by the meter's shutdown,
//! which records what each cut request delivered.
//!
//! Metering: before the listeners open, the usage spool is opened (what an earlier run
//! left in it is replayed to the store in the background). At shutdown, after the drain,
//! every record still queued is synced and the spool is flushed to the store for up to
//! [`FLUSH_GRACE`]; whatever the store cannot take by then waits in the spool.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::response::{IntoResponse, Response};

use tokio::net::TcpListener;
use tollgate_admin::api::AdminState;
use tollgate_admin::store::{Store, StoreError};

use crate::auth::Keys;
use crate::config::{Config, ConfigError, DEFAULT_DATABASE_URL};
use crate::meter::{Ledger, MeterError};
use crate::metrics;
use crate::providers::ProviderSet;
use crate::redis::{Redis, Target};
use crate::router::Models;
use crate::stack;

/// Default of `shutdown_drain_s`: how long shutdown waits for requests in flight (long
/// streams) before cutting them.
pub const DRAIN: Duration = Duration::from_secs(30);
/// How long shutdown keeps flushing usage records to the store after the drain.
pub const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("meter: {0}")]
    Meter(#[from] MeterError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// How `serve` was started, for the start-up message.
pub struct Startup {
    /// No config file: the embedded default.
    pub embedded: bool,
    /// The admin token was generated for this run (none configured).
    pub generated_token: bool,
}

/// Connects the store and applies its migrations.
pub async fn open_store(config: &Config) -> Result<Store, ServeError> {
    let store = Store::connect(config.database_url.expose()).await?;
    store.migrate().await?;
    Ok(store)
}

/// Runs both planes until a shutdown signal.
pub async fn serve(config: Config, startup: Startup) -> Result<(), ServeError> {
    let data_addr = config.listen_addr()?;
    let admin_addr = config.admin_listen_addr()?;
    let data_tls = config.tls.as_ref().map(|t| t.acceptor("tls")).transpose()?;
    let admin_tls = config
        .admin
        .tls
        .as_ref()
        .map(|t| t.acceptor("admin.tls"))
        .transpose()?;
    let drain = Duration::from_secs_f64(config.shutdown_drain_s.clamp(0.0, 3600.0));
    let delay = Duration::from_secs_f64(config.shutdown_delay_s.clamp(0.0, 3600.0));
    let store = open_store(&config).await?;
    if !config.prices.is_empty() {
        let prices: Vec<_> = config
            .prices
            .iter()
            .map(|(m, p)| (m.clone(), p.clone()))
            .collect();
        store.seed_prices(&prices).await?;
    }
    let providers = ProviderSet::new()
        .map_err(|e| ServeError::Other(format!("http client: {e}")))?
        .with_max_upstream_body(config.max_upstream_body_bytes());
    // Local models load before the routes that use them; a bad folder is a config error.
    #[cfg(feature = "local")]
    {
        let local: Vec<(String, &str, &crate::providers::config::DeploymentConfig)> = config
            .models
            .iter()
            .enumerate()
            .flat_map(|(m, model)| {
                model.deployments.iter().enumerate().map(move |(i, d)| {
                    (
                        format!("models[{m}].deployments[{i}]"),
                        model.name.as_str(),
                        d,
                    )
                })
            })
            .filter(|(_, _, d)| d.provider == crate::providers::config::ProviderKind::Local)
            .collect();
        crate::local::preload(local.iter().map(|(at, model, d)| crate::local::LocalModel {
            at,
            model,
            path: d.path.as_deref(),
            queue_size: d.queue_size,
            stream_buffer: d.stream_buffer,
        }))?;
    }
    let models = Arc::new(
        Models::from_config(&config.models, &config.breaker, &providers)
            .map_err(ServeError::Other)?,
    );
    for section in config.inert_sections() {
        tracing::warn!(
            section,
            "config section is accepted but not acted on by this build yet"
        );
    }

    let registry = prometheus::Registry::new();
    #[cfg(feature = "local")]
    crate::local::register_metrics(&registry)
        .map_err(|e| ServeError::Other(format!("metrics: {e}")))?;
    let (ledger, meter_tasks) =
        Ledger::start(store.clone(), &config.spool_dir, &config.meter, &registry).await?;
    crate::router::metrics::CircuitMetrics::register(models.clone(), &registry)
        .map_err(|e| ServeError::Other(format!("metrics: {e}")))?;
    let models_for_ready = models.clone();

    if let Some(days) = config.meter.retention_days {
        tokio::spawn(prune_usage_daily(store.clone(), days));
    }
    let keys = Keys::new(store.clone(), &config.auth);
    tokio::spawn(keys.clone().run_background());
    let cluster_nodes: Option<Vec<&str>> = config
        .redis_cluster_nodes
        .as_ref()
        .map(|nodes| nodes.iter().map(|n| n.expose()).collect());
    let redis = Target::from_config(
        config.redis_url.as_ref().map(|u| u.expose()),
        cluster_nodes.as_deref(),
    )
    .and_then(|target| target.map(|t| Redis::start_on(t, &registry)).transpose())
    .map_err(ServeError::Other)?;
    let cache_policies = config
        .models
        .iter()
        .filter_map(|m| m.cache.clone().map(|c| (m.name.clone(), c)))
        .collect();
    let cache = crate::cache::Cache::new(
        &config.cache,
        cache_policies,
        models.upstream_models(),
        config.request_timeout_s,
        redis.clone(),
        &registry,
    )
    .map_err(|e| ServeError::Other(format!("metrics: {e}")))?;
    let purge_hook = tollgate_admin::api::CachePurgeHook(Arc::new(cache.clone()));
    let passthrough = match &config.passthrough {
        Some(p) => {
            let passthrough =
                crate::passthrough::Passthrough::new(&p.deployment, &providers, store.clone())
                    .map_err(ServeError::Other)?;
            // Batches and fine-tuning jobs nobody reads back are charged by this poll
            // (at the meter's prices).
            passthrough.set_prices(ledger.prices());
            if p.poll_s > 0 {
                tokio::spawn(passthrough.clone().poll(Duration::from_secs(p.poll_s)));
            }
            Some(passthrough)
        }
        None => None,
    };
    // Plans and spend come from the store; reservations are priced like the meter prices.
    let quota = crate::quota::Quota::new(
        &config.limits,
        keys.store(),
        ledger.prices(),
        redis.clone(),
        &registry,
    );
    let data = stack::app(
        &stack::EdgeSettings {
            max_body: usize::try_from(config.max_body_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
            request_timeout: Duration::from_secs(config.request_timeout_s),
            max_in_flight: config.max_in_flight,
            otlp: config.otlp.clone(),
        },
        stack::Parts {
            keys,
            models,
            ledger,
            quota,
            cache,
            passthrough,
            registry: registry.clone(),
            responses: config.responses.clone(),
        },
    )
    .map_err(|e| ServeError::Other(format!("metrics: {e}")))?;
    let bootstrap_token = config
        .admin
        .bootstrap_token
        .as_ref()
        .map(|t| t.expose().to_owned());
    let token_for_banner = bootstrap_token.clone();
    let auth = tollgate_admin::operator::OperatorAuth::with_jwt(
        bootstrap_token,
        config.admin.jwt.as_ref(),
    )
    .map_err(ServeError::Other)?;
    let auth = Arc::new(auth);
    // Budget and key events, from the store's outbox (one replica at a time).
    tokio::spawn(crate::webhooks::run(store.clone(), config.webhooks.clone()));
    let admin = tollgate_admin::api::router(AdminState {
        store,
        auth,
        readiness: Some(Arc::new(crate::router::metrics::CircuitReadiness(
            models_for_ready,
        ))),
    })
    .merge(metrics::router(registry))
    // `DELETE /admin/v1/tenants/{id}/cache` reaches the data plane's cache through this.
    .layer(axum::Extension(purge_hook))
    // Webhook URLs are checked against SSRF at creation under the same rule as delivery.
    .layer(axum::Extension(tollgate_admin::webhooks::WebhookPolicy {
        allow_private_targets: config.webhooks.allow_private_targets,
    }));
    let readiness = Arc::new(Readiness {
        stopping: AtomicBool::new(false),
        // The store answered at start (migrations); the window counts from there.
        store_ok_ms: AtomicU64::new(1),
        since: std::time::Instant::now(),
        stale_for: Duration::from_secs_f64(config.auth.stale_if_store_down_s),
    });
    let admin = admin.layer(axum::middleware::from_fn_with_state(
        readiness.clone(),
        readyz,
    ));

    let data_listener = bind(data_addr).await?;
    let admin_listener = bind(admin_addr).await?;
    let data_local = local(&data_listener)?;
    let admin_local = local(&admin_listener)?;
    banner(
        &Plane(&data_local, data_tls.is_some()),
        &Plane(&admin_local, admin_tls.is_some()),
        &startup,
        token_for_banner.as_deref(),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let data_server = crate::listener::serve(data_listener, data, data_tls, stop_rx.clone());
    let admin_server = crate::listener::serve(admin_listener, admin, admin_tls, stop_rx);
    let mut servers = tokio::spawn(async move { tokio::try_join!(data_server, admin_server) });

    let result = tokio::select! {
        result = &mut servers => finish(result),
        () = shutdown_signal() => {
            readiness.stopping.store(true, Ordering::Relaxed);
            if !delay.is_zero() {
                tracing::info!(
                    seconds = delay.as_secs_f64(),
                    "shutting down: /readyz answers 503; still serving until load balancers stop sending"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    // A second signal skips the wait.
                    () = shutdown_signal() => {}
                }
            }
            tracing::info!("shutting down: draining requests in flight");
            let _ = stop_tx.send(true);
            // A stream cut at the drain deadline is counted by the tokenizer: load its
            // tables now, not when the meter gives cut requests their few seconds.
            crate::meter::usage::preload_tokenizers();
            match tokio::time::timeout(drain, &mut servers).await {
                Ok(result) => finish(result),
                Err(_) => {
                    tracing::warn!(
                        seconds = drain.as_secs_f64(),
                        "drain timed out; cutting the requests still in flight"
                    );
                    // Ends the wait for the drain only: connections still open live on
                    // until the meter's shutdown below cuts what they are serving (a
                    // stream ends in error, a call waiting on its upstream gets 503) and
                    // records what each delivered.
                    servers.abort();
                    let _ = (&mut servers).await;
                    Ok(())
                }
            }
        }
    };
    meter_tasks.shutdown(FLUSH_GRACE).await;
    result
}

/// What `/readyz` answers besides the admin plane's store check.
struct Readiness {
    /// From the shutdown signal on: 503, whatever the store says.
    stopping: AtomicBool,
    /// When the store last answered (a readiness check, or the start), in ms since `since`.
    store_ok_ms: AtomicU64,
    since: std::time::Instant,
    /// `auth.stale_if_store_down_s`: how long known keys are served without the store.
    stale_for: Duration,
}

/// `/readyz`: 503 from the shutdown signal on (the listeners still serve during
/// `shutdown_delay_s`, but a load balancer must stop sending). Otherwise the admin plane's
/// answer (ready when the store answers), except that a store outage does not make a
/// replica that reached the store within `auth.stale_if_store_down_s` unready: it keeps
/// serving known keys from its caches, and every replica shares the one store, so all of
/// them would turn unready together and the load balancer would drop all traffic (as
/// with open circuits, see the admin plane's `readyz`). It answers 200 with
/// `"status": "degraded"` then; past that window (its cached keys are gone) 503 again.
async fn readyz(
    axum::extract::State(readiness): axum::extract::State<Arc<Readiness>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() != "/readyz" {
        return next.run(request).await;
    }
    if readiness.stopping.load(Ordering::Relaxed) {
        return (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable", "reason": "shutting down"})),
        )
            .into_response();
    }
    let response = next.run(request).await;
    let now_ms = u64::try_from(readiness.since.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    if response.status().is_success() {
        readiness.store_ok_ms.store(now_ms, Ordering::Relaxed);
        return response;
    }
    let last_ok = readiness.store_ok_ms.load(Ordering::Relaxed);
    let recent = Duration::from_millis(now_ms.saturating_sub(last_ok)) < readiness.stale_for;
    if response.status() != http::StatusCode::SERVICE_UNAVAILABLE || !recent {
        return response;
    }
    let Ok(body) = axum::body::to_bytes(response.into_body(), 1 << 20).await else {
        return http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let mut body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    body["status"] = serde_json::json!("degraded");
    (http::StatusCode::OK, axum::Json(body)).into_response()
}

fn finish(
    result: Result<Result<((), ()), std::io::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Other(format!("server error: {e}"))),
        Err(e) => Err(ServeError::Other(format!("server task failed: {e}"))),
    }
}

/// Raw-row retention (`meter.retention_days`): prunes usage records older than that, at
/// start and then once a day. Every replica does it; the store makes that safe, and the
/// rollups behind usage queries and invoices are kept.
async fn prune_usage_daily(store: Store, days: u32) {
    const DAY_MS: i64 = 86_400_000;
    let mut ticker = tokio::time::interval(Duration::from_secs(86_400));
    loop {
        ticker.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let cutoff = now_ms.saturating_sub(i64::from(days).saturating_mul(DAY_MS));
        match store.prune_usage(cutoff).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, days, "pruned raw usage records past retention"),
            Err(e) => {
                tracing::warn!(error = %e, "usage retention: prune failed; retrying tomorrow")
            }
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

fn local(listener: &TcpListener) -> Result<std::net::SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|e| ServeError::Other(format!("local address: {e}")))
}

/// A listener's address and whether it speaks TLS, shown as its base URL.
struct Plane<'a>(&'a std::net::SocketAddr, bool);

impl std::fmt::Display for Plane<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.1 { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.0)
    }
}

/// The start-up message on stdout: where both planes listen and, on the embedded default,
/// how to make the first tenant and key.
fn banner(data: &Plane<'_>, admin: &Plane<'_>, startup: &Startup, token: Option<&str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tollgate: data plane listening on {data}");
    let _ = writeln!(out, "tollgate: admin plane listening on {admin}");
    let _ = writeln!(
        out,
        "tollgate: console at {admin}{}",
        tollgate_admin::console::PATH
    );
    if startup.generated_token
        && let Some(token) = token
    {
        let _ = writeln!(
            out,
            "tollgate: no admin token configured; this run's token is {token}\n\
             tollgate: set TOLLGATE_ADMIN_TOKEN (or admin.bootstrap_token) to choose your own"
        );
    }
    if startup.embedded {
        let token = if startup.generated_token {
            token.unwrap_or("$TOLLGATE_ADMIN_TOKEN")
        } else {
            "$TOLLGATE_ADMIN_TOKEN"
        };
        let _ = writeln!(
            out,
            "tollgate: embedded default (store {DEFAULT_DATABASE_URL} unless overridden). Create a tenant and a key:\n  \
             curl -s -X POST {admin}/admin/v1/tenants -H \"Authorization: Bearer {token}\" -H 'Content-Type: application/json' -d '{{\"name\":\"acme\"}}'\n  \
             curl -s -X POST {admin}/admin/v1/tenants/<tenant id>/keys -H \"Authorization: Bearer {token}\" -H 'Content-Type: application/json' -d '{{\"name\":\"dev\"}}'\n\
             tollgate: then call {data}/v1 with the key; add models with --config (see README.md)"
        );
    }
    let _ = out.flush();
}

pub use crate::listener::shutdown_signal;
