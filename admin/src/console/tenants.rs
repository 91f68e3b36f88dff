//! The tenants page: list and search, create, disable and enable, change plan.

use axum::extract::{Path, Query};
use axum::response::Response;
use http::Method;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use super::client::{ApiFailure, ListOf, query, seg};
use super::layout::{self, Nav};
use super::request::{Ctx, Submit, TenantView, safe_next};

/// Tenants per page.
const PAGE: usize = 50;

#[derive(Deserialize, Default)]
pub(crate) struct ListQuery {
    q: Option<String>,
    after: Option<String>,
}

/// A plan's name, from the plans list (for the plan pickers).
#[derive(Deserialize, Debug)]
pub(crate) struct PlanName {
    pub name: String,
}

/// Every plan's name (the first 100, which is more than any gateway defines).
pub(crate) async fn plan_names(ctx: &Ctx) -> Vec<String> {
    ctx.get::<ListOf<PlanName>>("/admin/v1/plans?limit=100")
        .await
        .map(|l| l.data.into_iter().map(|p| p.name).collect())
        .unwrap_or_default()
}

async fn find(
    ctx: &Ctx,
    q: Option<&str>,
    after: Option<&str>,
) -> Result<ListOf<TenantView>, ApiFailure> {
    if let Some(own) = &ctx.operator.tenant {
        // A tenant-scoped operator has one tenant to list.
        let tenant = ctx.tenant(own).await?;
        // The store's search rule: name contains `q` (ASCII case ignored), or id is `q`.
        let shown = after.is_none()
            && q.is_none_or(|q| {
                let name = tenant.name.to_ascii_lowercase();
                name.contains(&q.to_ascii_lowercase()) || tenant.id == q
            });
        return Ok(ListOf {
            data: if shown { vec![tenant] } else { Vec::new() },
            has_more: false,
        });
    }
    match q {
        Some(q) => {
            let page = ctx.console.store.search_tenants(q, PAGE, after).await?;
            Ok(ListOf {
                data: page
                    .data
                    .into_iter()
                    .map(|t| TenantView {
                        id: t.id,
                        name: t.name,
                        plan: t.plan,
                        created_at: t.created_at,
                        disabled: t.disabled,
                    })
                    .collect(),
                has_more: page.has_more,
            })
        }
        None => {
            let limit = PAGE.to_string();
            let mut pairs = vec![("limit", limit.as_str())];
            if let Some(after) = after {
                pairs.push(("after", after));
            }
            ctx.get(&format!("/admin/v1/tenants?{}", query(&pairs)))
                .await
        }
    }
}

/// `GET /console/tenants?q=&after=`.
pub(crate) async fn list(ctx: Ctx, Query(params): Query<ListQuery>) -> Response {
    let flash = ctx.take_flash();
    let q = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let after = params.after.as_deref().filter(|a| !a.is_empty());
    let found = find(&ctx, q, after).await;
    let plans = plan_names(&ctx).await;
    let why_global = ctx.cannot_write_global();
    let refill = |name: &str| {
        flash
            .as_ref()
            .filter(|f| f.error)
            .and_then(|f| f.value(name))
            .unwrap_or("")
            .to_owned()
    };
    let (name_value, plan_value) = (refill("name"), refill("plan"));
    let body = html! {
        h1 { "Tenants" }
        section.card {
            h2 { "New tenant" }
            form.inline #new-tenant method="post" action="/console/tenants" {
                (layout::csrf_field(&ctx))
                label { "Name " input type="text" name="name" required maxlength="200" value=(name_value); }
                label { "Plan "
                    select name="plan" {
                        @for plan in &plans {
                            option value=(plan) selected[plan.as_str() == plan_value || (plan_value.is_empty() && plan == "default")] { (plan) }
                        }
                    }
                }
                (layout::submit("Create tenant", "primary", why_global.as_deref()))
            }
        }
        form.search method="get" action="/console/tenants" role="search" {
            input type="search" name="q" value=[q] placeholder="Search by name or id" aria-label="Search tenants";
            button type="submit" { "Search" }
            @if q.is_some() { a href="/console/tenants" { "Clear" } }
        }
        @match &found {
            Err(failure) => (layout::failure_box(&failure.message)),
            Ok(page) => (tenant_table(&ctx, page, q, why_global.as_deref())),
        }
    };
    layout::page(&ctx, "Tenants", Nav::Tenants, flash.as_ref(), body)
}

fn tenant_table(
    ctx: &Ctx,
    page: &ListOf<TenantView>,
    q: Option<&str>,
    why: Option<&str>,
) -> Markup {
    let next = page.data.last().filter(|_| page.has_more).map(|last| {
        let mut pairs = vec![("after", last.id.as_str())];
        if let Some(q) = q {
            pairs.push(("q", q));
        }
        format!("/console/tenants?{}", query(&pairs))
    });
    html! {
        @if page.data.is_empty() {
            p.empty { @if q.is_some() { "No tenant matches." } @else { "No tenants yet: create the first one above." } }
        } @else {
            table #tenants {
                thead { tr { th { "Name" } th { "Id" } th { "Plan" } th { "Created" } th { "Status" } th { span.sr { "Actions" } } } }
                tbody {
                    @for t in &page.data {
                        tr.disabled[t.disabled] {
                            td { a.tenant-name href={"/console/tenants/" (seg(&t.id))} { (t.name) } }
                            td { code { (t.id) } }
                            td { (t.plan) }
                            td { (layout::when(&t.created_at)) }
                            td { @if t.disabled { span.badge.off { "disabled" } } @else { span.badge.on { "active" } } }
                            td.actions {
                                (disable_form(ctx, t, "/console/tenants", why))
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next { p.pager { a href=(next) { "Next page →" } } }
        }
    }
}

/// The disable (or enable) button of a tenant, coming back to `back` afterwards.
pub(crate) fn disable_form(ctx: &Ctx, t: &TenantView, back: &str, why: Option<&str>) -> Markup {
    let (action, label, confirm) = if t.disabled {
        ("enable", "Enable", None)
    } else {
        (
            "disable",
            "Disable",
            Some(format!(
                "Disable tenant “{}”? Its keys are refused until it is enabled again.",
                t.name
            )),
        )
    };
    html! {
        form.inline method="post" action={"/console/tenants/" (seg(&t.id)) "/update"} data-confirm=[confirm] {
            (layout::csrf_field(ctx))
            input type="hidden" name="action" value=(action);
            input type="hidden" name="back" value=(back);
            (layout::small_submit(label, "", why))
        }
    }
}

/// `POST /console/tenants`: create.
pub(crate) async fn create(Submit { ctx, form }: Submit) -> Response {
    let mut body = json!({"name": form.get("name")});
    if let Some(plan) = form.opt("plan") {
        body["plan"] = json!(plan);
    }
    match ctx
        .send::<TenantView>(Method::POST, "/admin/v1/tenants", Some(&body))
        .await
    {
        Ok(t) => ctx.done(
            &format!("/console/tenants/{}", seg(&t.id)),
            format!("Tenant “{}” created. Create its first key below.", t.name),
        ),
        Err(failure) => ctx.refused("/console/tenants", &failure, &form),
    }
}

/// `POST /console/tenants/{id}/update`: `action` = `disable`, `enable` or `plan` (with
/// `plan`).
pub(crate) async fn update(Path(id): Path<String>, Submit { ctx, form }: Submit) -> Response {
    let tenant_page = format!("/console/tenants/{}", seg(&id));
    let back = form
        .opt("back")
        .filter(|b| safe_next(b))
        .unwrap_or(&tenant_page)
        .to_owned();
    let (body, done) = match form.get("action") {
        "disable" => (json!({"disabled": true}), "disabled: its keys are refused"),
        "enable" => (json!({"disabled": false}), "enabled"),
        "plan" => (json!({"plan": form.get("plan")}), "moved to the new plan"),
        _ => {
            return ctx.refused(
                &back,
                &ApiFailure {
                    status: http::StatusCode::BAD_REQUEST,
                    message: "unknown action".to_owned(),
                    param: None,
                },
                &form,
            );
        }
    };
    match ctx
        .send::<TenantView>(
            Method::PATCH,
            &format!("/admin/v1/tenants/{}", seg(&id)),
            Some(&body),
        )
        .await
    {
        Ok(t) => ctx.done(&back, format!("Tenant “{}” {done}.", t.name)),
        Err(failure) => ctx.refused(&back, &failure, &form),
    }
}
