//! Command line: `tollgate serve | migrate`. Every flag also reads a `TOLLGATE_*`
//! variable; flags and variables override the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
}

/// Where the configuration comes from, shared by every subcommand.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// YAML config file. Without one, the embedded default runs (SQLite file ./tollgate.db).
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store URL: sqlite://FILE or postgres://... (overrides `database_url`).
    #[arg(long, env = "TOLLGATE_DATABASE_URL", hide_env_values = true)]
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
