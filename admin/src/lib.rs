//! Tollgate control plane: the store (SQLite or Postgres), tenants, keys, and the admin
//! REST API. The data plane (`tollgate-gateway`) depends on this crate, never the reverse.
//!
//! - [`keys`]: the `tg-<public_id>-<secret>` format, generation and constant-time checks.
//! - [`store`]: one API over SQLite and Postgres (sqlx `Any`), migrations included.
//! - [`billing`]: usage reports and invoices from the usage ledger.
//! - [`api`]: the admin router (`/healthz`, `/readyz`, `/admin/v1/*`).
//! - [`console`]: the operator console's web pages (`/console/`), merged into that router.
//! - [`operator`]: who may call the admin API.
//! - [`error`]: the OpenAI error shape both planes answer with.

pub mod api;
pub mod billing;
pub mod cli;
pub mod console;
pub mod error;
pub mod keys;
pub mod operator;
pub mod store;
pub mod webhooks;
