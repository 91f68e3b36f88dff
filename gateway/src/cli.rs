//! Command line: `tollgate serve | migrate | tenants | keys | plans | prices | usage |
//! invoices`. Every flag also reads a `TOLLGATE_*` variable; flags and variables override
//! the config file. The operator subcommands are defined and implemented in
//! `tollgate_admin::cli`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tollgate_admin::cli::{
    InvoicesArgs, KeysCommand, PlansCommand, PricesCommand, TenantsCommand, UsageArgs,
    WebhooksCommand,
};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "OpenAI-compatible LLM API gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: the data plane (/v1) and the admin plane (/admin/v1, /healthz, /readyz).
    Serve(ServeArgs),
    /// Apply the store's migrations and exit (`serve` also applies them at start).
    Migrate(StoreArgs),
    /// Manage tenants in the store.
    Tenants {
        #[command(flatten)]
        store: OperatorArgs,
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Manage data-plane keys.
    Keys {
        #[command(flatten)]
        store: OperatorArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage plans (limits and budgets).
    Plans {
        #[command(flatten)]
        store: OperatorArgs,
        #[command(subcommand)]
        command: PlansCommand,
    },
    /// Manage webhook endpoints (budget and key events).
    Webhooks {
        #[command(flatten)]
        store: OperatorArgs,
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Manage model prices.
    Prices {
        #[command(flatten)]
        store: OperatorArgs,
        #[command(subcommand)]
        command: PricesCommand,
    },
    /// Show usage per day, model or key (default: this month, per day).
    Usage {
        #[command(flatten)]
        store: OperatorArgs,
        #[command(flatten)]
        args: UsageArgs,
    },
    /// Show a tenant's invoice for a month (table, --json or --csv).
    Invoices {
        #[command(flatten)]
        store: OperatorArgs,
        #[command(flatten)]
        args: InvoicesArgs,
    },
    /// Validate the config file and exit: 0 when valid, 64 naming the bad field. Reads the
    /// environment like `serve`; touches no store.
    CheckConfig(StoreArgs),
    /// Probe a running gateway's `/healthz` (exit 0 when it answers 200): the container
    /// image's HEALTHCHECK, which has no curl.
    Healthcheck(HealthcheckArgs),
    /// Serve one local model (a Hugging Face style folder) as a standalone OpenAI-compatible
    /// server, for gateways to route to with `provider: openai`.
    #[cfg(feature = "local")]
    Worker(WorkerArgs),
}

#[cfg(feature = "local")]
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The model folder: config.json, tokenizer.json, *.safetensors.
    #[arg(long, env = "TOLLGATE_WORKER_MODEL")]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_WORKER_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// The model id in /v1/models (default: the folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Requests that may wait for the model; beyond it the worker answers 429 at once.
    #[arg(long, default_value_t = 64)]
    pub queue_size: usize,
    /// Events one request may have waiting for its client; a client that far behind is
    /// cut, so the model never waits on it.
    #[arg(long, default_value_t = 1024)]
    pub stream_buffer: usize,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The URL to probe.
    #[arg(
        long,
        env = "TOLLGATE_HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:8081/healthz"
    )]
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 2.0)]
    pub timeout_s: f64,
}

/// Store selection and output format of the operator subcommands.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON (the admin API's shapes) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Where the configuration comes from, shared by every subcommand.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// YAML config file. Without one, the embedded default runs (SQLite file ./tollgate.db).
    #[arg(long, env = "TOLLGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Store URL: sqlite://FILE or postgres://... (overrides `database_url`).
    #[arg(
        long,
        env = "TOLLGATE_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Data-plane address (overrides `listen`).
    #[arg(long, env = "TOLLGATE_LISTEN")]
    pub listen: Option<String>,
    /// Admin-plane address (overrides `admin_listen`).
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Admin bootstrap token (overrides `admin.bootstrap_token`).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}
