//! `tollgate`: args → config → tracing → run.
//!
//! Exit codes: 64 for a bad configuration (the message names the field), 69 when the store
//! is unreachable at start, 1 for anything else.

use std::process::ExitCode;

use clap::Parser;
use tollgate_admin::cli as admin_cli;
use tollgate_admin::store::StoreError;

use tollgate_gateway::cli::{Cli, Command, HealthcheckArgs, OperatorArgs, ServeArgs, StoreArgs};
use tollgate_gateway::config::{Config, ConfigError, Secret};
use tollgate_gateway::server::{self, ServeError, Startup};

/// See the workspace's `Cargo.toml` for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CONFIG: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs its requests; the other commands only what went wrong.
    init_tracing(match cli.command {
        Command::Serve(_) => "info,sqlx=warn",
        #[cfg(feature = "local")]
        Command::Worker(_) => "info",
        _ => "warn",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // reqwest is built without a default TLS provider (the aws-lc C build); use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (args, command) = match cli.command {
        Command::Serve(args) => return exit(runtime.block_on(run_serve(args))),
        Command::Migrate(args) => return exit(runtime.block_on(run_migrate(args))),
        Command::Tenants { store, command } => (store, admin_cli::Command::Tenants(command)),
        Command::Keys { store, command } => (store, admin_cli::Command::Keys(command)),
        Command::Plans { store, command } => (store, admin_cli::Command::Plans(command)),
        Command::Prices { store, command } => (store, admin_cli::Command::Prices(command)),
        Command::Webhooks { store, command } => (store, admin_cli::Command::Webhooks(command)),
        Command::Usage { store, args } => (store, admin_cli::Command::Usage(args)),
        Command::Invoices { store, args } => (store, admin_cli::Command::Invoices(args)),
        Command::CheckConfig(args) => return check_config(&args),
        Command::Healthcheck(args) => return runtime.block_on(healthcheck(args)),
        #[cfg(feature = "local")]
        Command::Worker(args) => return runtime.block_on(run_worker(args)),
    };
    runtime.block_on(run_operator(args, command))
}

/// Runs an operator subcommand on the store; errors go to stderr with their exit code.
async fn run_operator(args: OperatorArgs, command: admin_cli::Command) -> ExitCode {
    let config = match load_config(&args.store).and_then(Config::validate) {
        Ok(config) => config,
        Err(e) => return exit(Err(e.into())),
    };
    let store = match server::open_store(&config).await {
        Ok(store) => store,
        Err(e) => return exit(Err(e)),
    };
    let mut out = std::io::stdout().lock();
    let result = admin_cli::run(&store, command, args.json, &mut out).await;
    store.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `tollgate check-config`: the same loading and validation `serve` does, then a summary.
fn check_config(args: &StoreArgs) -> ExitCode {
    match load_config(args).and_then(Config::validate) {
        Ok(config) => {
            println!(
                "config ok: {} model(s), store {}",
                config.models.len(),
                config
                    .database_url
                    .expose()
                    .split_once(':')
                    .map_or("?", |(scheme, _)| scheme)
            );
            ExitCode::SUCCESS
        }
        Err(e) => exit(Err(e.into())),
    }
}

/// `tollgate healthcheck`: GET the URL, succeed on 200.
async fn healthcheck(args: HealthcheckArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs_f64(args.timeout_s.clamp(0.1, 60.0));
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("tollgate: healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&args.url).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!(
                "tollgate: healthcheck: {} answered {}",
                args.url,
                response.status()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tollgate: healthcheck: {}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}

fn exit(result: Result<(), ServeError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::from(match e {
                ServeError::Config(_) => EXIT_CONFIG,
                ServeError::Store(StoreError::Unavailable(_)) => EXIT_UNAVAILABLE,
                _ => 1,
            })
        }
    }
}

/// `tollgate worker`: exit 64 for a bad model folder or address, like a bad config.
#[cfg(feature = "local")]
async fn run_worker(args: tollgate_gateway::cli::WorkerArgs) -> ExitCode {
    use tollgate_gateway::local::worker;
    match worker::run(
        &args.model,
        &args.listen,
        args.name,
        args.queue_size,
        args.stream_buffer,
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs go to stderr: human-readable by default, one JSON object per line with
/// `TOLLGATE_LOG_FORMAT=json` (for log shippers). `TOLLGATE_LOG` filters (`info`, `debug`...).
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Reads the config file (or the embedded default) and applies overrides.
fn load_config(args: &StoreArgs) -> Result<Config, ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    let mut config = match &args.config {
        Some(path) => Config::load(path, &env)?,
        None => Config::default(),
    };
    if let Some(url) = &args.database_url {
        config.database_url = Secret::new(url.clone());
    }
    Ok(config)
}

async fn run_serve(args: ServeArgs) -> Result<(), ServeError> {
    let mut config = load_config(&args.store)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin_listen) = args.admin_listen {
        config.admin_listen = admin_listen;
    }
    if let Some(token) = args.admin_token.filter(|t| !t.is_empty()) {
        config.admin.bootstrap_token = Some(Secret::new(token));
    }
    let mut config = config.validate()?;
    let generated_token = config.admin.bootstrap_token.is_none();
    if generated_token {
        // Without any token the admin plane could not be used at all; a fresh random one
        // per run is printed once on stdout (never logged).
        config.admin.bootstrap_token = Some(Secret::new(format!(
            "tga-{}",
            uuid::Uuid::new_v4().simple()
        )));
    }
    let startup = Startup {
        embedded: args.store.config.is_none(),
        generated_token,
    };
    let result = server::serve(config, startup).await;
    // The spans of the last requests were queued while the server drained: send them.
    tollgate_gateway::otlp::shutdown(tollgate_gateway::otlp::FLUSH_GRACE).await;
    result
}

async fn run_migrate(args: StoreArgs) -> Result<(), ServeError> {
    let config = load_config(&args)?.validate()?;
    server::open_store(&config).await?;
    println!("tollgate: migrations applied");
    Ok(())
}
