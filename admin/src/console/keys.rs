//! A tenant's page: its plan, this month's spend against its limits, and its keys
//! (create with models, expiry and limits; the secret shown once; rotate; revoke).

use axum::extract::{Path, Query};
use axum::response::Response;
use http::Method;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{ListOf, query, seg};
use super::layout::{self, Nav};
use super::request::{Ctx, Form, Submit, TenantView, safe_next};
use super::session::{Flash, Secret};
use super::tenants::{disable_form, plan_names};
use crate::store::MicroUsd;

/// Keys per page.
const PAGE: usize = 100;

/// A key as the admin API shows it (never its secret).
#[derive(Deserialize, Debug)]
pub(crate) struct KeyView {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub prefix: String,
    #[serde(default)]
    pub models: Vec<String>,
    pub expires_at: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub monthly_budget_usd: Option<MicroUsd>,
    pub monthly_tokens: Option<u64>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked: bool,
}

/// The answer to a key creation or rotation: the only place the plaintext is.
#[derive(Deserialize)]
struct CreatedView {
    id: String,
    tenant: String,
    name: String,
    key: String,
}

/// A plan's limits.
#[derive(Deserialize, Debug, Default)]
pub(crate) struct LimitsView {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub monthly_budget_usd: Option<MicroUsd>,
    pub monthly_tokens: Option<u64>,
}

/// `GET /admin/v1/tenants/{id}/limits`: the plan's limits and this month's spend.
#[derive(Deserialize, Debug)]
pub(crate) struct TenantLimitsView {
    pub limits: LimitsView,
    pub period: String,
    pub spent_usd: MicroUsd,
    pub spent_tokens: u64,
    pub remaining_budget_usd: Option<MicroUsd>,
    pub remaining_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(crate) struct PageQuery {
    after: Option<String>,
}

/// The links between a tenant's pages.
pub(crate) fn tenant_header(t: &TenantView, current: &str) -> Markup {
    let base = format!("/console/tenants/{}", seg(&t.id));
    let tab = |path: &str, label: &str, name: &str| {
        html! {
            a href={(base) (path)} aria-current=[(current == name).then_some("page")] { (label) }
        }
    };
    html! {
        nav.crumbs { a href="/console/tenants" { "Tenants" } " › " span { (t.name) } }
        h1 {
            span #tenant-name { (t.name) }
            @if t.disabled { " " span.badge.off { "disabled" } }
        }
        p.meta { code { (t.id) } " · plan " b { (t.plan) } " · created " (layout::when(&t.created_at)) }
        nav.tabs {
            (tab("", "Keys", "keys"))
            (tab("/spend", "Spend", "spend"))
            (tab("/invoices", "Invoices", "invoices"))
        }
    }
}

/// This month's spend against the plan's budget and quota, and the plan's rates.
pub(crate) fn limits_cards(limits: &TenantLimitsView) -> Markup {
    let l = &limits.limits;
    html! {
        section.cards aria-label="This month against the plan's limits" {
            div.stat {
                span.label { "Spent in " (limits.period) }
                span.value #spent { (layout::usd(limits.spent_usd)) }
                span.sub {
                    @match (l.monthly_budget_usd, limits.remaining_budget_usd) {
                        (Some(budget), Some(left)) => { "of " (layout::usd(budget)) " budget · " b { (layout::usd(left)) } " left" }
                        _ => "no monthly budget",
                    }
                }
            }
            div.stat {
                span.label { "Tokens in " (limits.period) }
                span.value { (layout::grouped(limits.spent_tokens)) }
                span.sub {
                    @match (l.monthly_tokens, limits.remaining_tokens) {
                        (Some(quota), Some(left)) => { "of " (layout::grouped(quota)) " · " b { (layout::grouped(left)) } " left" }
                        _ => "no monthly token quota",
                    }
                }
            }
            div.stat {
                span.label { "Rate limits (per tenant)" }
                span.value.small {
                    @match l.rpm { Some(rpm) => { (layout::grouped(rpm.into())) " requests/min" }, None => "no request limit" }
                }
                span.sub {
                    @match l.tpm { Some(tpm) => { (layout::grouped(tpm.into())) " tokens/min" }, None => "no token limit" }
                    " · "
                    @match l.max_concurrent { Some(n) => { (n) " at once" }, None => "no concurrency limit" }
                }
            }
        }
    }
}

/// `GET /console/tenants/{id}`.
pub(crate) async fn tenant_page(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(params): Query<PageQuery>,
) -> Response {
    let flash = ctx.take_flash();
    let secret = ctx.take_secret().filter(|s| s.tenant == id);
    let tenant = match ctx.tenant(&id).await {
        Ok(t) => t,
        Err(failure) => {
            return layout::page(
                &ctx,
                "Tenant",
                Nav::Tenants,
                flash.as_ref(),
                layout::failure_box(&failure.message),
            );
        }
    };
    let limits = ctx
        .get::<TenantLimitsView>(&format!("/admin/v1/tenants/{}/limits", seg(&id)))
        .await;
    let limit = PAGE.to_string();
    let mut pairs = vec![("tenant", id.as_str()), ("limit", limit.as_str())];
    if let Some(after) = params.after.as_deref().filter(|a| !a.is_empty()) {
        pairs.push(("after", after));
    }
    let keys = ctx
        .get::<ListOf<KeyView>>(&format!("/admin/v1/keys?{}", query(&pairs)))
        .await;
    let plans = if ctx.operator.tenant.is_none() {
        plan_names(&ctx).await
    } else {
        Vec::new()
    };
    let here = format!("/console/tenants/{}", seg(&id));
    let why = ctx.cannot_write();
    let why_global = ctx.cannot_write_global();
    let body = html! {
        (tenant_header(&tenant, "keys"))
        @if let Some(secret) = &secret { (secret_box(secret)) }
        @match &limits {
            Ok(limits) => (limits_cards(limits)),
            Err(failure) => (layout::failure_box(&failure.message)),
        }
        section.card.row {
            form.inline method="post" action={(here) "/update"} {
                (layout::csrf_field(&ctx))
                input type="hidden" name="action" value="plan";
                label { "Plan "
                    select name="plan" disabled[why_global.is_some()] {
                        @if plans.is_empty() { option { (tenant.plan) } }
                        @for plan in &plans { option value=(plan) selected[*plan == tenant.plan] { (plan) } }
                    }
                }
                (layout::submit("Change plan", "", why_global.as_deref()))
            }
            (disable_form(&ctx, &tenant, &here, why_global.as_deref()))
        }
        section {
            h2 { "Keys" }
            @if let Some(why) = &why { p.why { (why) } }
            @match &keys {
                Err(failure) => (layout::failure_box(&failure.message)),
                Ok(page) => (key_table(&ctx, page, &here, why.as_deref())),
            }
        }
        (create_form(&ctx, &here, flash.as_ref(), why.as_deref()))
    };
    layout::page(&ctx, &tenant.name, Nav::Tenants, flash.as_ref(), body)
}

fn secret_box(secret: &Secret) -> Markup {
    html! {
        section #secret.secret role="alert" {
            h2 { @if secret.rotated { "Key rotated: copy its new secret now" } @else { "Key created: copy it now" } }
            p { "This is the only time the key is shown. Store it where your app reads its secrets; "
                "if it is lost, rotate the key to get a new one." }
            div.secret-row {
                code #secret-key data-key-id=(secret.key_id) { (secret.key) }
                button.copy type="button" data-copy="secret-key" { "Copy" }
            }
        }
    }
}

fn key_limits(k: &KeyView) -> String {
    let mut parts = Vec::new();
    if let Some(v) = k.rpm {
        parts.push(format!("{} rpm", layout::grouped(v.into())));
    }
    if let Some(v) = k.tpm {
        parts.push(format!("{} tpm", layout::grouped(v.into())));
    }
    if let Some(v) = k.max_concurrent {
        parts.push(format!("{v} concurrent"));
    }
    if let Some(v) = k.monthly_budget_usd {
        parts.push(format!("{}/month", layout::usd(v)));
    }
    if let Some(v) = k.monthly_tokens {
        parts.push(format!("{} tokens/month", layout::grouped(v)));
    }
    if parts.is_empty() {
        "the plan's".to_owned()
    } else {
        parts.join(" · ")
    }
}

fn key_table(ctx: &Ctx, page: &ListOf<KeyView>, here: &str, why: Option<&str>) -> Markup {
    let next = page
        .data
        .last()
        .filter(|_| page.has_more)
        .map(|last| format!("{here}?{}", query(&[("after", last.id.as_str())])));
    html! {
        @if page.data.is_empty() {
            p.empty { "No keys yet." }
        } @else {
            table #keys {
                thead { tr {
                    th { "Name" } th { "Prefix" } th { "Models" } th { "Expires" } th { "Limits" }
                    th { "Created" } th { "Last used" } th { "Status" } th { span.sr { "Actions" } }
                } }
                tbody {
                    @for k in &page.data {
                        tr.revoked[k.revoked] data-key-id=(k.id) {
                            td.key-name { (k.name) }
                            td { code { (k.prefix) } }
                            td { @if k.models.is_empty() { "all" } @else { (k.models.join(", ")) } }
                            td { @match &k.expires_at { Some(t) => (layout::when(t)), None => "never" } }
                            td { (key_limits(k)) }
                            td { (layout::when(&k.created_at)) }
                            td { @match &k.last_used_at { Some(t) => (layout::when(t)), None => "never" } }
                            td { @if k.revoked { span.badge.off { "revoked" } } @else { span.badge.on { "active" } } }
                            td.actions {
                                @if !k.revoked {
                                    form.inline method="post" action={"/console/keys/" (seg(&k.id)) "/rotate"}
                                        data-confirm={"Rotate key “" (k.name) "”? Its current secret stops working at once."} {
                                        (layout::csrf_field(ctx))
                                        input type="hidden" name="back" value=(here);
                                        (layout::small_submit("Rotate", "", why))
                                    }
                                    form.inline method="post" action={"/console/keys/" (seg(&k.id)) "/revoke"}
                                        data-confirm={"Revoke key “" (k.name) "”? This cannot be undone."} {
                                        (layout::csrf_field(ctx))
                                        input type="hidden" name="back" value=(here);
                                        (layout::small_submit("Revoke", "danger", why))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next { p.pager { a href=(next) { "Next page →" } } }
        }
    }
}

fn create_form(ctx: &Ctx, here: &str, flash: Option<&Flash>, why: Option<&str>) -> Markup {
    let refill = |name: &str| -> String {
        flash
            .filter(|f| f.error)
            .and_then(|f| f.value(name))
            .unwrap_or("")
            .to_owned()
    };
    let checked: Vec<&str> = flash
        .filter(|f| f.error)
        .map(|f| {
            f.form
                .iter()
                .filter(|(k, _)| k == "models")
                .map(|(_, v)| v.as_str())
                .collect()
        })
        .unwrap_or_default();
    let models = ctx.console.models();
    html! {
        section.card #new-key {
            h2 { "New key" }
            form.grid method="post" action={(here) "/keys"} {
                (layout::csrf_field(ctx))
                label { "Name" input type="text" name="name" required maxlength="200" value=(refill("name")); }
                fieldset.models {
                    legend { "Models " span.hint { "(none ticked and none typed: all models)" } }
                    @for model in &models {
                        label.check { input type="checkbox" name="models" value=(model) checked[checked.contains(&model.as_str())]; " " (model) }
                    }
                    label { "Other models or patterns, comma-separated"
                        input type="text" name="models_other" placeholder="e.g. openai/*" value=(refill("models_other")); }
                }
                label { "Expires (UTC) " span.hint { "empty: never" }
                    input type="datetime-local" name="expires_at" value=(refill("expires_at")); }
                label { "Requests per minute" input type="number" min="0" name="rpm" value=(refill("rpm")); }
                label { "Tokens per minute" input type="number" min="0" name="tpm" value=(refill("tpm")); }
                label { "Concurrent requests" input type="number" min="0" name="max_concurrent" value=(refill("max_concurrent")); }
                label { "Monthly budget (USD)" input type="text" inputmode="decimal" name="monthly_budget_usd" placeholder="e.g. 20.00" value=(refill("monthly_budget_usd")); }
                label { "Monthly tokens" input type="number" min="0" name="monthly_tokens" value=(refill("monthly_tokens")); }
                p.hint.wide { "Empty limits leave the key to its tenant's plan; a key's limit may not exceed the plan's." }
                div.wide { (layout::submit("Create key", "primary", why)) }
            }
        }
    }
}

/// A form number: a JSON integer when it is one, else the text as typed (the API then
/// refuses it and names the field).
fn integer_or_text(value: &str) -> Value {
    value
        .parse::<u64>()
        .map_or_else(|_| json!(value), |n| json!(n))
}

/// `datetime-local`'s `2027-01-31T00:00` (read as UTC) as RFC 3339; anything else as typed.
fn rfc3339(value: &str) -> String {
    let b = value.as_bytes();
    let local = b.len() >= 16
        && b.get(10) == Some(&b'T')
        && !value.ends_with('Z')
        && !value[10..].contains(['+', '-']);
    match (local, value.len()) {
        (true, 16) => format!("{value}:00Z"),
        (true, _) => format!("{value}Z"),
        (false, _) => value.to_owned(),
    }
}

/// The admin API's body for a key created from `form`.
fn new_key_body(form: &Form) -> Value {
    let mut body = json!({"name": form.get("name")});
    let mut models: Vec<&str> = form.all("models").collect();
    models.extend(
        form.get("models_other")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty()),
    );
    if !models.is_empty() {
        body["models"] = json!(models);
    }
    if let Some(expiry) = form.opt("expires_at") {
        body["expires_at"] = json!(rfc3339(expiry));
    }
    for field in ["rpm", "tpm", "max_concurrent", "monthly_tokens"] {
        if let Some(value) = form.opt(field) {
            body[field] = integer_or_text(value);
        }
    }
    if let Some(budget) = form.opt("monthly_budget_usd") {
        body["monthly_budget_usd"] = json!(budget);
    }
    body
}

/// `POST /console/tenants/{id}/keys`.
pub(crate) async fn create(Path(id): Path<String>, Submit { ctx, form }: Submit) -> Response {
    let here = format!("/console/tenants/{}", seg(&id));
    let uri = format!("/admin/v1/tenants/{}/keys", seg(&id));
    match ctx
        .send::<CreatedView>(Method::POST, &uri, Some(&new_key_body(&form)))
        .await
    {
        Ok(created) => {
            ctx.keep_secret(Secret {
                tenant: created.tenant,
                key_id: created.id,
                key: created.key,
                rotated: false,
            });
            ctx.done(&here, format!("Key “{}” created.", created.name))
        }
        Err(failure) => ctx.refused(&format!("{here}#new-key"), &failure, &form),
    }
}

fn back(form: &Form) -> String {
    form.opt("back")
        .filter(|b| safe_next(b))
        .unwrap_or("/console/tenants")
        .to_owned()
}

/// `POST /console/keys/{id}/revoke`.
pub(crate) async fn revoke(Path(id): Path<String>, Submit { ctx, form }: Submit) -> Response {
    match ctx
        .send::<KeyView>(
            Method::DELETE,
            &format!("/admin/v1/keys/{}", seg(&id)),
            None,
        )
        .await
    {
        Ok(key) => ctx.done(
            &format!("/console/tenants/{}", seg(&key.tenant)),
            format!(
                "Key “{}” revoked: every gateway refuses it within a second.",
                key.name
            ),
        ),
        Err(failure) => ctx.refused(&back(&form), &failure, &Form::default()),
    }
}

/// `POST /console/keys/{id}/rotate`.
pub(crate) async fn rotate(Path(id): Path<String>, Submit { ctx, form }: Submit) -> Response {
    match ctx
        .send::<CreatedView>(
            Method::POST,
            &format!("/admin/v1/keys/{}/rotate", seg(&id)),
            None,
        )
        .await
    {
        Ok(rotated) => {
            let here = format!("/console/tenants/{}", seg(&rotated.tenant));
            ctx.keep_secret(Secret {
                tenant: rotated.tenant,
                key_id: rotated.id,
                key: rotated.key,
                rotated: true,
            });
            ctx.done(
                &here,
                format!(
                    "Key “{}” rotated: its old secret no longer works.",
                    rotated.name
                ),
            )
        }
        Err(failure) => ctx.refused(&back(&form), &failure, &Form::default()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_is_read_as_utc() {
        assert_eq!(rfc3339("2027-01-31T00:00"), "2027-01-31T00:00:00Z");
        assert_eq!(rfc3339("2027-01-31T00:00:30"), "2027-01-31T00:00:30Z");
        assert_eq!(rfc3339("2027-01-31T00:00:00Z"), "2027-01-31T00:00:00Z");
        assert_eq!(
            rfc3339("2027-01-31T00:00:00+02:00"),
            "2027-01-31T00:00:00+02:00"
        );
        assert_eq!(rfc3339("tomorrow"), "tomorrow");
    }

    #[test]
    fn the_key_form_becomes_the_api_body() {
        let form = Form::parse(
            b"name=ci&models=gpt-4o-mini&models_other=openai%2F*%2C+&rpm=60&tpm=x&monthly_budget_usd=20.5&expires_at=",
        )
        .unwrap();
        assert_eq!(
            new_key_body(&form),
            json!({"name":"ci","models":["gpt-4o-mini","openai/*"],"rpm":60,"tpm":"x","monthly_budget_usd":"20.5"})
        );
        let bare = Form::parse(b"name=a").unwrap();
        assert_eq!(new_key_body(&bare), json!({"name":"a"}));
    }
}
