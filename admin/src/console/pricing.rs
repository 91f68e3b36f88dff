//! Plans (limits and budgets) and prices (USD per 1M tokens): list, edit, create.
//!
//! Both are flat JSON objects that the admin API replaces whole (`PUT`). The forms show
//! the fields the console knows, plus any other field the API returns (a field a newer
//! gateway added), and a save sends the stored object back with the edited fields
//! changed, so a field the console does not know is kept, not reset.

use axum::extract::Query;
use axum::response::Response;
use http::Method;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client::{ApiFailure, ListOf, query, seg};
use super::layout::{self, Nav};
use super::request::{Ctx, Form, Submit};

/// How a field is typed in and sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    /// A whole number (`rpm`); empty = null (unlimited).
    Integer,
    /// USD as a decimal string (`"0.15"`); empty = null.
    Usd,
}

/// Plans or prices.
struct Kind {
    title: &'static str,
    noun: &'static str,
    nav: Nav,
    /// The object's identifying field: `name` or `model`.
    id: &'static str,
    id_label: &'static str,
    api: &'static str,
    page: &'static str,
    /// What `null` means in the list.
    null_means: &'static str,
    known: &'static [(&'static str, &'static str, Field)],
}

const PLANS: Kind = Kind {
    title: "Plans",
    noun: "plan",
    nav: Nav::Plans,
    id: "name",
    id_label: "Name",
    api: "/admin/v1/plans",
    page: "/console/plans",
    null_means: "unlimited",
    known: &[
        ("rpm", "Requests per minute", Field::Integer),
        ("tpm", "Tokens per minute", Field::Integer),
        ("max_concurrent", "Concurrent requests", Field::Integer),
        ("monthly_budget_usd", "Monthly budget (USD)", Field::Usd),
        ("monthly_tokens", "Monthly tokens", Field::Integer),
    ],
};

const PRICES: Kind = Kind {
    title: "Prices",
    noun: "price",
    nav: Nav::Prices,
    id: "model",
    id_label: "Model",
    api: "/admin/v1/prices",
    page: "/console/prices",
    null_means: "—",
    known: &[
        ("input", "Input (USD per 1M tokens)", Field::Usd),
        ("output", "Output (USD per 1M tokens)", Field::Usd),
        (
            "cached_input",
            "Cached input (USD per 1M tokens)",
            Field::Usd,
        ),
        ("image", "Image (USD per image)", Field::Usd),
    ],
};

type Object = Map<String, Value>;

/// The fields to show for `objects`: the known ones, then any other the API returned.
fn columns(kind: &Kind, objects: &[Object]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = kind
        .known
        .iter()
        .map(|(name, label, _)| ((*name).to_owned(), (*label).to_owned()))
        .collect();
    for object in objects {
        for name in object.keys() {
            if name != kind.id && !out.iter().any(|(n, _)| n == name) {
                out.push((name.clone(), name.clone()));
            }
        }
    }
    out
}

/// A field's value as text: for the list and to fill a form in.
fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| text(Some(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

/// A form field as the JSON the API expects: by the console's knowledge of the field,
/// else like the value it replaces. Text that is not what the field takes is sent as it
/// is, so the API refuses it with a message naming the field.
fn value_of(kind: &Kind, name: &str, typed: &str, old: Option<&Value>) -> Value {
    if typed.is_empty() {
        return Value::Null;
    }
    let integer = |t: &str| t.parse::<i64>().map_or_else(|_| json!(t), |n| json!(n));
    match kind
        .known
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, f)| *f)
    {
        Some(Field::Integer) => integer(typed),
        Some(Field::Usd) => json!(typed),
        None => match old {
            Some(Value::Array(_)) => Value::Array(
                typed
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        serde_json::from_str::<serde_json::Number>(t)
                            .map_or_else(|_| json!(t), Value::Number)
                    })
                    .collect(),
            ),
            Some(Value::Bool(_)) => typed
                .parse::<bool>()
                .map_or_else(|_| json!(typed), Value::Bool),
            Some(Value::String(_)) => json!(typed),
            _ => serde_json::from_str::<serde_json::Number>(typed)
                .map_or_else(|_| json!(typed), Value::Number),
        },
    }
}

async fn list_page(ctx: Ctx, kind: &Kind) -> Response {
    let flash = ctx.take_flash();
    let objects = ctx
        .get::<ListOf<Object>>(&format!("{}?limit=100", kind.api))
        .await;
    let why = ctx.cannot_write_global();
    let body = html! {
        h1 { (kind.title) }
        @match &objects {
            Err(failure) => (layout::failure_box(&failure.message)),
            Ok(list) => {
                @let cols = columns(kind, &list.data);
                @if list.data.is_empty() {
                    p.empty { "No " (kind.noun) "s yet." }
                } @else {
                    table #(kind.noun) {
                        thead { tr {
                            th { (kind.id_label) }
                            @for (_, label) in &cols { th.num { (label) } }
                            th { span.sr { "Actions" } }
                        } }
                        tbody {
                            @for object in &list.data {
                                @let id = text(object.get(kind.id));
                                tr {
                                    td { code { (id) } }
                                    @for (name, _) in &cols {
                                        @let shown = text(object.get(name));
                                        td.num { @if shown.is_empty() { span.null { (kind.null_means) } } @else { (shown) } }
                                    }
                                    td.actions { a href={(kind.page) "/edit?" (query(&[(kind.id, id.as_str())]))} { "Edit" } }
                                }
                            }
                        }
                    }
                    @if list.has_more { p.hint { "Showing the first 100." } }
                }
                (edit_form(&ctx, kind, None, &cols, flash.as_ref().filter(|f| f.error).map(|f| f.form.as_slice()), why.as_deref()))
            }
        }
    };
    layout::page(&ctx, kind.title, kind.nav, flash.as_ref(), body)
}

/// The form for a new object (`object` = `None`) or for changing `object`, filled with
/// `refill` (a refused form) or the object's values.
fn edit_form(
    ctx: &Ctx,
    kind: &Kind,
    object: Option<&Object>,
    cols: &[(String, String)],
    refill: Option<&[(String, String)]>,
    why: Option<&str>,
) -> Markup {
    let value = |name: &str| -> String {
        match refill {
            Some(form) => form
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            None => text(object.and_then(|o| o.get(name))),
        }
    };
    let id = object.map(|o| text(o.get(kind.id)));
    html! {
        section.card #edit {
            h2 { @match &id { Some(id) => { "Change " (kind.noun) " " code { (id) } }, None => { "New " (kind.noun) } } }
            form.grid method="post" action=(kind.page) {
                (layout::csrf_field(ctx))
                @match &id {
                    Some(id) => { input type="hidden" name=(kind.id) value=(id); }
                    None => { label { (kind.id_label) input type="text" name=(kind.id) required value=(value(kind.id)); } }
                }
                @for (name, label) in cols {
                    label { (label) input type="text" name=(name) value=(value(name)) placeholder=(kind.null_means); }
                }
                p.hint.wide { "Empty fields are " (kind.null_means) "." }
                div.wide { (layout::submit("Save", "primary", why)) }
            }
        }
    }
}

async fn edit_page(ctx: Ctx, kind: &Kind, id: &str) -> Response {
    let flash = ctx.take_flash();
    let object = ctx
        .get::<Object>(&format!("{}/{}", kind.api, seg(id)))
        .await;
    let why = ctx.cannot_write_global();
    let body = html! {
        nav.crumbs { a href=(kind.page) { (kind.title) } " › " (id) }
        @match &object {
            Err(failure) => (layout::failure_box(&failure.message)),
            Ok(object) => {
                @let cols = columns(kind, std::slice::from_ref(object));
                (edit_form(&ctx, kind, Some(object), &cols, flash.as_ref().filter(|f| f.error).map(|f| f.form.as_slice()), why.as_deref()))
            }
        }
    };
    layout::page(&ctx, kind.title, kind.nav, flash.as_ref(), body)
}

async fn save(ctx: Ctx, form: Form, kind: &Kind) -> Response {
    let id = form.get(kind.id).to_owned();
    let item = format!("{}/{}", kind.api, seg(&id));
    let back = if id.is_empty() {
        kind.page.to_owned()
    } else {
        format!("{}/edit?{}", kind.page, query(&[(kind.id, id.as_str())]))
    };
    if id.is_empty() {
        let failure = ApiFailure {
            status: http::StatusCode::BAD_REQUEST,
            message: format!("{} is required", kind.id),
            param: Some(kind.id.to_owned()),
        };
        return ctx.refused(&back, &failure, &form);
    }
    // The stored object, to keep the fields the form does not show; none for a new one.
    let mut body: Object = match ctx.get::<Object>(&item).await {
        Ok(object) => object,
        Err(failure) if failure.status == http::StatusCode::NOT_FOUND => Object::new(),
        Err(failure) => return ctx.refused(&back, &failure, &form),
    };
    let existed = !body.is_empty();
    body.remove(kind.id);
    let cols = columns(kind, std::slice::from_ref(&body));
    for (name, _) in &cols {
        let old = body.get(name).cloned();
        let typed = form.get(name);
        if typed.is_empty() && old.is_none() && !kind.known.iter().any(|(n, _, _)| n == name) {
            continue;
        }
        body.insert(name.clone(), value_of(kind, name, typed, old.as_ref()));
    }
    let back = if existed { back } else { kind.page.to_owned() };
    match ctx
        .send::<Object>(Method::PUT, &item, Some(&Value::Object(body)))
        .await
    {
        Ok(_) => ctx.done(
            kind.page,
            format!(
                "The {} {id:?} is saved: gateways use it within a second.",
                kind.noun
            ),
        ),
        Err(failure) => ctx.refused(&back, &failure, &form),
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct EditQuery {
    name: Option<String>,
    model: Option<String>,
}

/// `GET /console/plans`.
pub(crate) async fn plans(ctx: Ctx) -> Response {
    list_page(ctx, &PLANS).await
}

/// `GET /console/prices`.
pub(crate) async fn prices(ctx: Ctx) -> Response {
    list_page(ctx, &PRICES).await
}

/// `GET /console/plans/edit?name=`.
pub(crate) async fn edit_plan(ctx: Ctx, Query(q): Query<EditQuery>) -> Response {
    edit_page(ctx, &PLANS, q.name.as_deref().unwrap_or("")).await
}

/// `GET /console/prices/edit?model=`.
pub(crate) async fn edit_price(ctx: Ctx, Query(q): Query<EditQuery>) -> Response {
    edit_page(ctx, &PRICES, q.model.as_deref().unwrap_or("")).await
}

/// `POST /console/plans`: create or change a plan.
pub(crate) async fn save_plan(Submit { ctx, form }: Submit) -> Response {
    save(ctx, form, &PLANS).await
}

/// `POST /console/prices`: create or change a price.
pub(crate) async fn save_price(Submit { ctx, form }: Submit) -> Response {
    save(ctx, form, &PRICES).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_text_becomes_the_fields_json() {
        assert_eq!(value_of(&PLANS, "rpm", "600", None), json!(600));
        assert_eq!(value_of(&PLANS, "rpm", "", Some(&json!(5))), Value::Null);
        assert_eq!(value_of(&PLANS, "rpm", "lots", None), json!("lots"));
        assert_eq!(
            value_of(&PLANS, "monthly_budget_usd", "250", None),
            json!("250")
        );
        assert_eq!(value_of(&PRICES, "input", "0.15", None), json!("0.15"));
        // A field the console does not know keeps its kind.
        assert_eq!(
            value_of(
                &PLANS,
                "alert_thresholds_pct",
                "50, 80,100",
                Some(&json!([80, 100]))
            ),
            json!([50, 80, 100])
        );
        assert_eq!(
            value_of(&PRICES, "cache_write", "3.75", Some(&json!("3.750000"))),
            json!("3.75")
        );
        assert_eq!(
            value_of(&PLANS, "flag", "true", Some(&json!(false))),
            json!(true)
        );
        assert_eq!(value_of(&PLANS, "n", "7", Some(&Value::Null)), json!(7));
    }

    #[test]
    fn unknown_fields_are_shown_too() {
        let object: Object =
            serde_json::from_value(json!({"name":"p","rpm":1,"alert_thresholds_pct":[80]}))
                .unwrap_or_default();
        let cols = columns(&PLANS, &[object]);
        assert_eq!(cols.len(), PLANS.known.len() + 1);
        assert_eq!(
            cols.last().map(|c| c.0.as_str()),
            Some("alert_thresholds_pct")
        );
        assert_eq!(text(Some(&json!([80, 100]))), "80, 100");
    }
}
