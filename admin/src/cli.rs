//! The operator CLI (`tollgate tenants|keys|plans|prices|usage|invoices ...`), implemented
//! on the store.
//!
//! It talks to the database directly (the same `database_url` as the gateway), so it works
//! before any gateway runs and needs no admin token: whoever can read the config can run
//! it. Changes publish the same invalidations as the admin API; on Postgres every running
//! replica applies them at once, on SQLite (one process's store) a running gateway sees
//! them within `auth.cache_ttl_s`.
//!
//! Output is a table for people, or with `--json` the admin API's JSON for scripts
//! (`invoices --csv`: the admin API's CSV).

use std::io::Write;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::billing::{self, Period, UsageParams};
use crate::store::{
    MicroUsd, NewKey, NewPrice, PlanLimits, Store, StoreError, TenantUpdate, UsageGroupBy,
};

/// `tollgate tenants ...`
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant.
    Create {
        name: String,
        /// Plan (default: "default"); create it first with `tollgate plans set`.
        #[arg(long)]
        plan: Option<String>,
    },
    /// List tenants, in id order.
    List(PageArgs),
    /// Show a tenant and its keys.
    Show { id: String },
    /// Disable a tenant: its keys stop working (enable undoes it).
    Disable { id: String },
    /// Enable a disabled tenant.
    Enable { id: String },
}

/// `tollgate keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the plaintext is printed once.
    Create {
        /// Tenant id (ten_...).
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// Models the key may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        /// The key's own requests per minute (within its tenant's plan).
        #[arg(long)]
        rpm: Option<u32>,
        /// The key's own tokens per minute (within its tenant's plan).
        #[arg(long)]
        tpm: Option<u32>,
        /// The key's own requests in flight at once (within its tenant's plan).
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// The key's own USD per calendar month, e.g. 5.00 (within its tenant's plan).
        #[arg(long)]
        monthly_budget_usd: Option<String>,
        /// The key's own tokens per calendar month (within its tenant's plan).
        #[arg(long)]
        monthly_tokens: Option<u64>,
    },
    /// List keys, of one tenant or all.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke a key for good.
    Revoke { id: String },
    /// Give a key a new secret; the old one stops working at once.
    Rotate { id: String },
}

/// `tollgate plans ...`
#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Create or replace a plan. A limit not given is unlimited.
    Set {
        name: String,
        #[arg(long)]
        rpm: Option<u32>,
        #[arg(long)]
        tpm: Option<u32>,
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// USD per calendar month, e.g. 25.00.
        #[arg(long)]
        monthly_budget_usd: Option<String>,
        #[arg(long)]
        monthly_tokens: Option<u64>,
    },
    /// Show a plan.
    Show { name: String },
    /// List plans.
    List(PageArgs),
}

/// `tollgate prices ...`
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only obscure the clap definitions"
)]
pub enum PricesCommand {
    /// Set a model's price, in USD per 1M tokens.
    Set {
        model: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        /// Default: the input price.
        #[arg(long)]
        cached_input: Option<String>,
        /// USD per generated image.
        #[arg(long)]
        image: Option<String>,
        /// Prompt-cache writes, 5-minute TTL. Default: 1.25 × the input price.
        #[arg(long)]
        cache_write: Option<String>,
        /// Prompt-cache writes, 1-hour TTL. Default: 2 × the input price.
        #[arg(long)]
        cache_write_1h: Option<String>,
        /// Batch input tokens. Default: the input price.
        #[arg(long)]
        batch_input: Option<String>,
        /// Batch output tokens. Default: the output price.
        #[arg(long)]
        batch_output: Option<String>,
        /// Tokens trained by fine-tuning jobs. Default: not priced.
        #[arg(long)]
        training: Option<String>,
    },
    /// List prices.
    List(PageArgs),
}

/// `tollgate usage`: usage summed per day, model or key (as `GET /admin/v1/usage`).
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this tenant (ten_...); default: every tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this key (its public id).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// First UTC day included, YYYY-MM-DD. Without --from and --to: the current month.
    #[arg(long)]
    pub from: Option<String>,
    /// First UTC day not included (exclusive end), YYYY-MM-DD.
    #[arg(long)]
    pub to: Option<String>,
    /// One row per day, model, key, end user or tag.
    #[arg(long, default_value = "day", value_parser = ["day", "model", "key", "user", "tag"])]
    pub group_by: String,
    /// Only this end user (the request's `user`, else its x-tollgate-user header).
    #[arg(long)]
    pub user: Option<String>,
    /// Only requests carrying this tag (x-tollgate-tags).
    #[arg(long)]
    pub tag: Option<String>,
    /// Print CSV: group,requests,input_tokens,output_tokens,cached_tokens,
    /// cache_write_tokens,reasoning_tokens,cost_usd.
    #[arg(long)]
    pub csv: bool,
}

/// `tollgate invoices`: a tenant's invoice for a month (as `GET /admin/v1/invoices`).
#[derive(Debug, Args)]
pub struct InvoicesArgs {
    /// The tenant billed (ten_...).
    #[arg(long)]
    pub tenant: String,
    /// The calendar month billed (UTC), YYYY-MM.
    #[arg(long)]
    pub period: String,
    /// Print CSV: model,requests,input_tokens,output_tokens,cached_tokens,
    /// cache_write_tokens,reasoning_tokens,cost_usd, then a `total` row.
    #[arg(long)]
    pub csv: bool,
}

/// Paging of list commands.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Most rows to show.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Show rows after this id (the last id of the previous page).
    #[arg(long)]
    pub after: Option<String>,
}

/// `tollgate webhooks ...`
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Create an endpoint; its signing secret is printed once.
    Create {
        url: String,
        /// Event types, comma-separated (default: all of budget.threshold,
        /// budget.exhausted, key.expiring, key.revoked).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Accept a loopback or private address (the gateways must set
        /// webhooks.allow_private_targets too, or deliveries are refused).
        #[arg(long)]
        allow_private_targets: bool,
    },
    /// List endpoints, in id order.
    List(PageArgs),
    /// Show an endpoint (never its secret).
    Show { id: String },
    /// Delete an endpoint; its undelivered events are dropped.
    Delete { id: String },
}

/// One CLI command on the store.
#[derive(Debug)]
pub enum Command {
    Tenants(TenantsCommand),
    Keys(KeysCommand),
    Plans(PlansCommand),
    Prices(PricesCommand),
    Usage(UsageArgs),
    Invoices(InvoicesArgs),
    Webhooks(WebhooksCommand),
}

/// Why a command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// Exit codes: 3 not found, 4 conflict, 65 invalid input, 69 store unavailable, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Store(StoreError::NotFound(_)) => 3,
            Self::Store(StoreError::Conflict(_)) => 4,
            Self::Store(StoreError::Invalid { .. }) | Self::Invalid { .. } => 65,
            Self::Store(StoreError::Unavailable(_)) => 69,
            Self::Store(_) | Self::Output(_) => 1,
        }
    }
}

/// Runs `command` on `store`, writing the result to `out`.
pub async fn run(
    store: &Store,
    command: Command,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut printer = Printer { json, out };
    match command {
        Command::Tenants(c) => tenants(store, c, &mut printer).await,
        Command::Keys(c) => keys(store, c, &mut printer).await,
        Command::Plans(c) => plans(store, c, &mut printer).await,
        Command::Prices(c) => prices(store, c, &mut printer).await,
        Command::Usage(args) => usage(store, args, &mut printer).await,
        Command::Invoices(args) => invoices(store, args, &mut printer).await,
        Command::Webhooks(c) => webhooks(store, c, &mut printer).await,
    }
}

async fn webhooks(
    store: &Store,
    command: WebhooksCommand,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    match command {
        WebhooksCommand::Create {
            url,
            events,
            allow_private_targets,
        } => {
            crate::webhooks::check_url(&url, allow_private_targets)
                .await
                .map_err(|e| CliError::Invalid {
                    field: "url",
                    message: e.0,
                })?;
            let events = if events.is_empty() {
                crate::store::EVENT_TYPES
                    .iter()
                    .map(|e| (*e).to_owned())
                    .collect()
            } else {
                if let Some(bad) = events
                    .iter()
                    .find(|e| !crate::store::EVENT_TYPES.contains(&e.as_str()))
                {
                    return Err(CliError::Invalid {
                        field: "events",
                        message: format!("unknown event type {bad:?}"),
                    });
                }
                events
            };
            let (hook, secret) = store.create_webhook(&url, &events).await?;
            if p.json {
                let mut value = serde_json::to_value(&hook).map_err(std::io::Error::other)?;
                if let Some(map) = value.as_object_mut() {
                    map.insert("secret".to_owned(), secret.into());
                }
                return p.write_json(&value);
            }
            p.webhooks(std::slice::from_ref(&hook))?;
            writeln!(p.out, "\nsecret (shown once, store it now): {secret}")?;
            Ok(())
        }
        WebhooksCommand::List(page) => {
            let page = store
                .list_webhooks(page.limit, page.after.as_deref())
                .await?;
            p.webhooks(&page.data)?;
            p.more(page.has_more, page.data.last().map(|w| w.id.as_str()))
        }
        WebhooksCommand::Show { id } => {
            let hook = store
                .get_webhook(&id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no webhook with id {id:?}")))?;
            p.one(hook, Printer::webhooks)
        }
        WebhooksCommand::Delete { id } => {
            let hook = store.delete_webhook(&id).await?;
            p.one(hook, Printer::webhooks)
        }
    }
}

async fn tenants(
    store: &Store,
    command: TenantsCommand,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    match command {
        TenantsCommand::Create { name, plan } => {
            let tenant = store.create_tenant(&name, plan.as_deref()).await?;
            p.one(tenant, Printer::tenants)
        }
        TenantsCommand::List(page) => {
            let page = store
                .list_tenants(page.limit, page.after.as_deref())
                .await?;
            p.tenants(&page.data)?;
            p.more(page.has_more, page.data.last().map(|t| t.id.as_str()))
        }
        TenantsCommand::Show { id } => {
            let tenant = store
                .get_tenant(&id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no tenant with id '{id}'")))?;
            let keys = store.list_keys(Some(&id), 100, None).await?;
            if p.json {
                #[derive(Serialize)]
                struct Shown<'a, K: Serialize> {
                    #[serde(flatten)]
                    tenant: &'a crate::store::Tenant,
                    keys: &'a [K],
                }
                return p.write_json(&Shown {
                    tenant: &tenant,
                    keys: &keys.data,
                });
            }
            p.tenants(std::slice::from_ref(&tenant))?;
            writeln!(p.out)?;
            p.keys(&keys.data)?;
            p.more(keys.has_more, keys.data.last().map(|k| k.id.as_str()))
        }
        TenantsCommand::Disable { id } => set_disabled(store, &id, true, p).await,
        TenantsCommand::Enable { id } => set_disabled(store, &id, false, p).await,
    }
}

async fn set_disabled(
    store: &Store,
    id: &str,
    disabled: bool,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    let update = TenantUpdate {
        disabled: Some(disabled),
        ..TenantUpdate::default()
    };
    let tenant = store.update_tenant(id, update).await?;
    p.one(tenant, Printer::tenants)
}

async fn keys(store: &Store, command: KeysCommand, p: &mut Printer<'_>) -> Result<(), CliError> {
    match command {
        KeysCommand::Create {
            tenant,
            name,
            models,
            expires_at,
            rpm,
            tpm,
            max_concurrent,
            monthly_budget_usd,
            monthly_tokens,
        } => {
            let new = NewKey {
                alert_thresholds_pct: None,
                name,
                models: (!models.is_empty()).then_some(models),
                expires_at,
                rpm,
                tpm,
                max_concurrent,
                monthly_budget_usd: monthly_budget_usd
                    .as_deref()
                    .map(|v| amount("monthly_budget_usd", v))
                    .transpose()?,
                monthly_tokens,
            };
            let created = store.create_key(&tenant, new).await?;
            if p.json {
                return p.write_json(&created);
            }
            p.keys(std::slice::from_ref(&created.info))?;
            writeln!(p.out, "\nkey (shown once, store it now): {}", created.key)?;
            Ok(())
        }
        KeysCommand::List { tenant, page } => {
            let page = store
                .list_keys(tenant.as_deref(), page.limit, page.after.as_deref())
                .await?;
            p.keys(&page.data)?;
            p.more(page.has_more, page.data.last().map(|k| k.id.as_str()))
        }
        KeysCommand::Revoke { id } => {
            let key = store.revoke_key(&id).await?;
            p.one(key, Printer::keys)
        }
        KeysCommand::Rotate { id } => {
            let created = store.rotate_key(&id).await?;
            if p.json {
                return p.write_json(&created);
            }
            p.keys(std::slice::from_ref(&created.info))?;
            writeln!(
                p.out,
                "\nnew key (shown once, store it now): {}",
                created.key
            )?;
            Ok(())
        }
    }
}

async fn plans(store: &Store, command: PlansCommand, p: &mut Printer<'_>) -> Result<(), CliError> {
    match command {
        PlansCommand::Set {
            name,
            rpm,
            tpm,
            max_concurrent,
            monthly_budget_usd,
            monthly_tokens,
        } => {
            let limits = PlanLimits {
                rpm,
                tpm,
                max_concurrent,
                monthly_budget_usd: monthly_budget_usd
                    .as_deref()
                    .map(|v| amount("monthly_budget_usd", v))
                    .transpose()?,
                monthly_tokens,
            };
            let plan = store.put_plan(&name, limits).await?;
            p.one(plan, Printer::plans)
        }
        PlansCommand::Show { name } => {
            let plan = store
                .get_plan(&name)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no plan named '{name}'")))?;
            p.one(plan, Printer::plans)
        }
        PlansCommand::List(page) => {
            let page = store.list_plans(page.limit, page.after.as_deref()).await?;
            p.plans(&page.data)?;
            p.more(page.has_more, page.data.last().map(|x| x.name.as_str()))
        }
    }
}

async fn prices(
    store: &Store,
    command: PricesCommand,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    match command {
        PricesCommand::Set {
            model,
            input,
            output,
            cached_input,
            image,
            cache_write,
            cache_write_1h,
            batch_input,
            batch_output,
            training,
        } => {
            let optional = |field: &'static str, v: Option<String>| {
                v.as_deref().map(|v| amount(field, v)).transpose()
            };
            let new = NewPrice {
                input: amount("input", &input)?,
                output: amount("output", &output)?,
                cached_input: optional("cached_input", cached_input)?,
                image: optional("image", image)?,
                cache_write: optional("cache_write", cache_write)?,
                cache_write_1h: optional("cache_write_1h", cache_write_1h)?,
                batch_input: optional("batch_input", batch_input)?,
                batch_output: optional("batch_output", batch_output)?,
                training: optional("training", training)?,
                // Audio prices are set through the admin API (`PUT /admin/v1/prices`).
                per_audio_minute: None,
                per_1m_characters: None,
            };
            let price = store.put_price(&model, new).await?;
            p.one(price, Printer::prices)
        }
        PricesCommand::List(page) => {
            let page = store.list_prices(page.limit, page.after.as_deref()).await?;
            p.prices(&page.data)?;
            p.more(page.has_more, page.data.last().map(|x| x.model.as_str()))
        }
    }
}

async fn usage(store: &Store, args: UsageArgs, p: &mut Printer<'_>) -> Result<(), CliError> {
    let params = UsageParams {
        tenant: args.tenant,
        key: args.key,
        model: args.model,
        from: args.from,
        to: args.to,
        group_by: Some(args.group_by),
        user: args.user,
        tag: args.tag,
    };
    if args.csv && p.json {
        return Err(CliError::Invalid {
            field: "csv",
            message: "--csv and --json exclude each other".to_owned(),
        });
    }
    let (filter, group_by) = params.into_filter()?;
    if let Some(tenant) = &filter.tenant {
        existing_tenant(store, tenant).await?;
    }
    let rows = store.usage_summary(&filter, group_by).await?;
    if args.csv {
        p.out.write_all(billing::usage_csv(&rows).as_bytes())?;
        return Ok(());
    }
    let group = match group_by {
        UsageGroupBy::Day => "day",
        UsageGroupBy::Model => "model",
        UsageGroupBy::Key => "key",
        UsageGroupBy::User => "user",
        UsageGroupBy::Tag => "tag",
    };
    p.rows(
        &rows,
        &[
            group,
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_usd",
        ],
        |r| {
            vec![
                r.group.clone(),
                r.requests.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                r.cached_tokens.to_string(),
                r.cache_write_tokens.to_string(),
                r.reasoning_tokens.to_string(),
                r.cost_usd.to_string(),
            ]
        },
    )
}

async fn invoices(store: &Store, args: InvoicesArgs, p: &mut Printer<'_>) -> Result<(), CliError> {
    if args.csv && p.json {
        return Err(CliError::Invalid {
            field: "csv",
            message: "--csv and --json exclude each other".to_owned(),
        });
    }
    let period = Period::parse("period", &args.period)?;
    existing_tenant(store, &args.tenant).await?;
    let invoice = billing::invoice(store, &args.tenant, period).await?;
    if p.json {
        return p.write_json(&invoice);
    }
    if args.csv {
        p.out.write_all(invoice.to_csv().as_bytes())?;
        return Ok(());
    }
    writeln!(
        p.out,
        "invoice for tenant {} ({} UTC)\n",
        invoice.tenant, invoice.period
    )?;
    let mut lines = invoice.lines.clone();
    let sum = |f: fn(&billing::InvoiceLine) -> u64| {
        invoice.lines.iter().map(f).fold(0_u64, u64::saturating_add)
    };
    lines.push(billing::InvoiceLine {
        model: "TOTAL".to_owned(),
        requests: sum(|l| l.requests),
        input_tokens: sum(|l| l.input_tokens),
        output_tokens: sum(|l| l.output_tokens),
        cached_tokens: sum(|l| l.cached_tokens),
        cache_write_tokens: sum(|l| l.cache_write_tokens),
        reasoning_tokens: sum(|l| l.reasoning_tokens),
        cost_usd: invoice.total_usd,
    });
    p.rows(
        &lines,
        &[
            "model",
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost_usd",
        ],
        |l| {
            vec![
                l.model.clone(),
                l.requests.to_string(),
                l.input_tokens.to_string(),
                l.output_tokens.to_string(),
                l.cached_tokens.to_string(),
                l.cache_write_tokens.to_string(),
                l.reasoning_tokens.to_string(),
                l.cost_usd.to_string(),
            ]
        },
    )
}

/// An existing tenant's id, or a not-found error (exit 3) naming it.
async fn existing_tenant(store: &Store, id: &str) -> Result<(), CliError> {
    match store.get_tenant(id).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(format!("no tenant with id '{id}'")).into()),
    }
}

/// A USD amount from the command line, exactly (no float on the way).
fn amount(field: &'static str, value: &str) -> Result<MicroUsd, CliError> {
    value
        .parse()
        .map_err(|e: crate::store::AmountError| CliError::Invalid {
            field,
            message: e.to_string(),
        })
}

/// Writes rows as a table or as JSON.
struct Printer<'a> {
    json: bool,
    out: &'a mut dyn Write,
}

impl Printer<'_> {
    fn write_json(&mut self, value: &impl Serialize) -> Result<(), CliError> {
        serde_json::to_writer_pretty(&mut *self.out, value).map_err(std::io::Error::other)?;
        writeln!(self.out)?;
        Ok(())
    }

    /// One object: as JSON (the admin API's object) or as a one-row table.
    fn one<T: Serialize>(
        &mut self,
        item: T,
        table: fn(&mut Self, &[T]) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        if self.json {
            return self.write_json(&item);
        }
        table(self, std::slice::from_ref(&item))
    }

    /// A list as JSON (the admin API's array) or as a table of `columns`.
    fn rows<T: Serialize>(
        &mut self,
        items: &[T],
        columns: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) -> Result<(), CliError> {
        if self.json {
            return self.write_json(&items);
        }
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        writeln!(
            self.out,
            "{}",
            line(columns.iter().map(|c| c.to_uppercase()).collect())
        )?;
        for r in rows {
            writeln!(self.out, "{}", line(r))?;
        }
        Ok(())
    }

    /// Tells a person how to get the next page (JSON callers page with --after themselves).
    fn more(&mut self, has_more: bool, last: Option<&str>) -> Result<(), CliError> {
        if has_more
            && !self.json
            && let Some(last) = last
        {
            writeln!(self.out, "(more: --after {last})")?;
        }
        Ok(())
    }

    fn webhooks(&mut self, items: &[crate::store::Webhook]) -> Result<(), CliError> {
        self.rows(
            items,
            &["id", "url", "events", "disabled", "created_at"],
            |w| {
                vec![
                    w.id.clone(),
                    w.url.clone(),
                    w.events.join(","),
                    w.disabled.to_string(),
                    w.created_at.clone(),
                ]
            },
        )
    }

    fn tenants(&mut self, items: &[crate::store::Tenant]) -> Result<(), CliError> {
        self.rows(
            items,
            &["id", "name", "plan", "disabled", "created_at"],
            |t| {
                vec![
                    t.id.clone(),
                    t.name.clone(),
                    t.plan.clone(),
                    t.disabled.to_string(),
                    t.created_at.clone(),
                ]
            },
        )
    }

    fn keys(&mut self, items: &[crate::store::KeyInfo]) -> Result<(), CliError> {
        self.rows(
            items,
            &[
                "id",
                "tenant",
                "name",
                "prefix",
                "models",
                "expires_at",
                "revoked",
            ],
            |k| {
                vec![
                    k.id.clone(),
                    k.tenant.clone(),
                    k.name.clone(),
                    k.prefix.clone(),
                    if k.models.is_empty() {
                        "*".to_owned()
                    } else {
                        k.models.join(",")
                    },
                    k.expires_at.clone().unwrap_or_else(|| "-".to_owned()),
                    k.revoked.to_string(),
                ]
            },
        )
    }

    fn plans(&mut self, items: &[crate::store::Plan]) -> Result<(), CliError> {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "unlimited".to_owned());
        self.rows(
            items,
            &[
                "name",
                "rpm",
                "tpm",
                "max_concurrent",
                "monthly_budget_usd",
                "monthly_tokens",
            ],
            |x| {
                let l = &x.limits;
                vec![
                    x.name.clone(),
                    opt(l.rpm.map(|v| v.to_string())),
                    opt(l.tpm.map(|v| v.to_string())),
                    opt(l.max_concurrent.map(|v| v.to_string())),
                    opt(l.monthly_budget_usd.map(|v| v.to_string())),
                    opt(l.monthly_tokens.map(|v| v.to_string())),
                ]
            },
        )
    }

    fn prices(&mut self, items: &[crate::store::Price]) -> Result<(), CliError> {
        self.rows(
            items,
            &[
                "model",
                "input",
                "output",
                "cached_input",
                "cache_write",
                "cache_write_1h",
                "batch_input",
                "batch_output",
                "training",
                "image",
            ],
            |x| {
                let or_dash =
                    |v: Option<MicroUsd>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                vec![
                    x.model.clone(),
                    x.input.to_string(),
                    x.output.to_string(),
                    x.cached_input.to_string(),
                    x.cache_write.to_string(),
                    x.cache_write_1h.to_string(),
                    x.batch_input.to_string(),
                    x.batch_output.to_string(),
                    or_dash(x.training),
                    or_dash(x.image),
                ]
            },
        )
    }
}
