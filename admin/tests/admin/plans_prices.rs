//! Plans and prices, through the store and the API. Both backends.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_admin::store::{MicroUsd, NewPrice, PlanLimits, StoreError};

use crate::http::{admin, app, assert_error, keys_of};
use crate::support::{Db, on_both_backends};

on_both_backends!(
    default_plan_exists,
    plan_put_get_list,
    plan_invalid_input,
    plan_api,
    plan_api_bad_requests,
    price_put_get_list,
    unset_prices_follow_the_published_rules,
    price_seed_fills_gaps_only,
    price_api,
    price_api_bad_requests,
);

fn usd(text: &str) -> MicroUsd {
    text.parse().unwrap()
}

async fn default_plan_exists(db: Db) {
    let plan = db.store.get_plan("default").await.unwrap().unwrap();
    assert_eq!(plan.name, "default");
    assert_eq!(plan.limits, PlanLimits::default());
    assert_eq!(db.store.get_plan("nope").await.unwrap(), None);
}

async fn plan_put_get_list(db: Db) {
    let store = &db.store;
    let limits = PlanLimits {
        rpm: Some(600),
        tpm: Some(100_000),
        max_concurrent: Some(8),
        monthly_budget_usd: Some(usd("25.5")),
        monthly_tokens: Some(9_000_000_000),
    };
    let plan = store.put_plan("pro", limits.clone()).await.unwrap();
    assert_eq!(plan.name, "pro");
    assert_eq!(plan.limits, limits);
    assert_eq!(store.get_plan("pro").await.unwrap(), Some(plan));

    // PUT replaces everything: what is left out becomes unlimited.
    let replaced = store
        .put_plan(
            "pro",
            PlanLimits {
                rpm: Some(1),
                ..PlanLimits::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_plan("pro").await.unwrap().unwrap().limits,
        replaced.limits
    );
    assert_eq!(replaced.limits.tpm, None);
    assert_eq!(replaced.limits.monthly_budget_usd, None);

    // "default" can be given limits too.
    store
        .put_plan(
            "default",
            PlanLimits {
                max_concurrent: Some(2),
                ..PlanLimits::default()
            },
        )
        .await
        .unwrap();
    store
        .put_plan("basic", PlanLimits::default())
        .await
        .unwrap();

    let names = |page: &tollgate_admin::store::Page<tollgate_admin::store::Plan>| {
        page.data.iter().map(|p| p.name.clone()).collect::<Vec<_>>()
    };
    let all = store.list_plans(10, None).await.unwrap();
    assert_eq!(names(&all), ["basic", "default", "pro"]);
    assert!(!all.has_more);
    let first = store.list_plans(2, None).await.unwrap();
    assert_eq!(names(&first), ["basic", "default"]);
    assert!(first.has_more);
    let rest = store.list_plans(2, Some("default")).await.unwrap();
    assert_eq!(names(&rest), ["pro"]);
    assert!(!rest.has_more);
}

async fn plan_invalid_input(db: Db) {
    for name in ["", "has space", "a/b", &"p".repeat(65)] {
        match db.store.put_plan(name, PlanLimits::default()).await {
            Err(StoreError::Invalid { field: "name", .. }) => {}
            other => panic!("{name:?}: expected Invalid name, got {other:?}"),
        }
    }
    let too_many = PlanLimits {
        monthly_tokens: Some(u64::MAX),
        ..PlanLimits::default()
    };
    assert!(matches!(
        db.store.put_plan("big", too_many).await,
        Err(StoreError::Invalid {
            field: "monthly_tokens",
            ..
        })
    ));
    assert_eq!(db.store.get_plan("big").await.unwrap(), None);
}

async fn plan_api(db: Db) {
    let app = app(&db.store);
    let (status, plan) = admin(&app, Method::GET, "/admin/v1/plans/default", None).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        plan,
        json!({"name": "default", "rpm": null, "tpm": null, "max_concurrent": null,
               "monthly_budget_usd": null, "monthly_tokens": null, "alert_thresholds_pct": [80, 100]})
    );

    let body = r#"{"rpm":600,"tpm":100000,"max_concurrent":8,"monthly_budget_usd":"25","monthly_tokens":5000000}"#;
    let (status, pro) = admin(&app, Method::PUT, "/admin/v1/plans/pro", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{pro}");
    assert_eq!(
        pro,
        json!({"name": "pro", "rpm": 600, "tpm": 100000, "max_concurrent": 8,
               "monthly_budget_usd": "25.000000", "monthly_tokens": 5000000,
               "alert_thresholds_pct": [80, 100]})
    );
    assert_eq!(
        admin(&app, Method::GET, "/admin/v1/plans/pro", None).await,
        (StatusCode::OK, pro.clone())
    );
    // GET → edit → PUT: the object as GET returns it is accepted, its name included.
    let mut edited = pro.clone();
    edited["rpm"] = json!(700);
    let (status, plan) = admin(
        &app,
        Method::PUT,
        "/admin/v1/plans/pro",
        Some(&edited.to_string()),
    )
    .await;
    assert_eq!((status, plan), (StatusCode::OK, edited.clone()));
    // ... but not under another plan's name.
    let (status, error) = admin(
        &app,
        Method::PUT,
        "/admin/v1/plans/other",
        Some(&edited.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["param"], "name");
    let (status, _) = admin(
        &app,
        Method::PUT,
        "/admin/v1/plans/pro",
        Some(&pro.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Numbers are read exactly, from their JSON text.
    for (budget, shown) in [
        ("0.15", "0.150000"),
        ("1e-6", "0.000001"),
        ("12.5E1", "125.000000"),
        ("\"0.000001\"", "0.000001"),
        ("999999999999.999999", "999999999999.999999"),
        ("null", ""),
    ] {
        let (status, plan) = admin(
            &app,
            Method::PUT,
            "/admin/v1/plans/pro",
            Some(&format!(r#"{{"monthly_budget_usd":{budget}}}"#)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{budget}: {plan}");
        let expected = if shown.is_empty() {
            Value::Null
        } else {
            json!(shown)
        };
        assert_eq!(plan["monthly_budget_usd"], expected, "{budget}");
        assert_eq!(plan["rpm"], Value::Null, "PUT replaces");
    }

    // `60.0` is an integer to JSON Schema, and so here.
    let (status, plan) = admin(
        &app,
        Method::PUT,
        "/admin/v1/plans/pro",
        Some(r#"{"rpm":60.0,"monthly_tokens":1e6}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(
        (&plan["rpm"], &plan["monthly_tokens"]),
        (&json!(60), &json!(1_000_000))
    );

    let (status, list) = admin(&app, Method::GET, "/admin/v1/plans?limit=20.0", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys_of(&list), ["data", "has_more", "object"]);
    let names: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "pro"]);
    let (status, page) = admin(&app, Method::GET, "/admin/v1/plans?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["has_more"], true);

    let (status, body) = admin(&app, Method::GET, "/admin/v1/plans/gold", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "invalid_request_error", None);
}

async fn plan_api_bad_requests(db: Db) {
    let app = app(&db.store);
    for (path, body, param) in [
        ("/admin/v1/plans/pro", "", None),
        ("/admin/v1/plans/pro", "[]", None),
        ("/admin/v1/plans/pro", r#"{"rpm":-1}"#, Some("rpm")),
        ("/admin/v1/plans/pro", r#"{"rpm":1.5}"#, Some("rpm")),
        ("/admin/v1/plans/pro", r#"{"tpm":"5"}"#, Some("tpm")),
        (
            "/admin/v1/plans/pro",
            r#"{"max_concurrent":4294967296}"#,
            Some("max_concurrent"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_tokens":-5}"#,
            Some("monthly_tokens"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_tokens":18446744073709551615}"#,
            Some("monthly_tokens"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":-1}"#,
            Some("monthly_budget_usd"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":"-1"}"#,
            Some("monthly_budget_usd"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":0.1234567}"#,
            Some("monthly_budget_usd"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":"0.1234567"}"#,
            Some("monthly_budget_usd"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":0.10000000000000001}"#,
            Some("monthly_budget_usd"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":"ten"}"#,
            Some("monthly_budget_usd"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":true}"#,
            Some("monthly_budget_usd"),
        ),
        (
            "/admin/v1/plans/pro",
            r#"{"monthly_budget_usd":1e12}"#,
            Some("monthly_budget_usd"),
        ),
        ("/admin/v1/plans/pro", r#"{"budget":5}"#, Some("budget")),
        ("/admin/v1/plans/bad%20name", "{}", Some("name")),
        (
            "/admin/v1/plans/a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.0.1.2.3.4.5.6",
            "{}",
            Some("name"),
        ),
    ] {
        let (status, response) = admin(&app, Method::PUT, path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {response}");
        assert_error(&response, "invalid_request_error", param);
    }
    assert_eq!(db.store.get_plan("pro").await.unwrap(), None);
}

async fn price_put_get_list(db: Db) {
    let store = &db.store;
    let new = NewPrice {
        input: usd("0.15"),
        output: usd("0.6"),
        cached_input: None,
        image: None,
        per_audio_minute: None,
        per_1m_characters: None,
        ..NewPrice::default()
    };
    let price = store.put_price("gpt-4o-mini", new).await.unwrap();
    assert_eq!(price.input.micros(), 150_000);
    assert_eq!(price.output.micros(), 600_000);
    assert_eq!(
        price.cached_input, price.input,
        "cached input defaults to input"
    );
    assert_eq!(price.image, None);
    assert_eq!(store.get_price("gpt-4o-mini").await.unwrap(), Some(price));

    let image = store
        .put_price(
            "meta-llama/Llama-3:8b",
            NewPrice {
                input: usd("0"),
                output: usd("0"),
                cached_input: Some(usd("0")),
                image: Some(usd("0.04")),
                per_audio_minute: None,
                per_1m_characters: None,
                ..NewPrice::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(image.image, Some(usd("0.04")));
    assert_eq!(
        store.get_price("meta-llama/Llama-3:8b").await.unwrap(),
        Some(image)
    );
    assert_eq!(store.get_price("unknown").await.unwrap(), None);

    let list = store.list_prices(10, None).await.unwrap();
    let models: Vec<_> = list.data.iter().map(|p| p.model.as_str()).collect();
    assert_eq!(models, ["gpt-4o-mini", "meta-llama/Llama-3:8b"]);
    let rest = store.list_prices(10, Some("gpt-4o-mini")).await.unwrap();
    assert_eq!(rest.data.len(), 1);

    for model in ["", " ", "/lead", "a\u{7}b"] {
        match store
            .put_price(
                model,
                NewPrice {
                    input: usd("1"),
                    output: usd("1"),
                    cached_input: None,
                    image: None,
                    per_audio_minute: None,
                    per_1m_characters: None,
                    ..NewPrice::default()
                },
            )
            .await
        {
            Err(StoreError::Invalid { field: "model", .. }) => {}
            other => panic!("{model:?}: expected Invalid model, got {other:?}"),
        }
    }
}

async fn price_seed_fills_gaps_only(db: Db) {
    let store = &db.store;
    let price = |input: &str| NewPrice {
        input: usd(input),
        output: usd("1"),
        cached_input: None,
        image: None,
        per_audio_minute: None,
        per_1m_characters: None,
        ..NewPrice::default()
    };
    store.put_price("a", price("9")).await.unwrap();
    store
        .seed_prices(&[("a".into(), price("1")), ("b".into(), price("2"))])
        .await
        .unwrap();
    assert_eq!(store.get_price("a").await.unwrap().unwrap().input, usd("9"));
    assert_eq!(store.get_price("b").await.unwrap().unwrap().input, usd("2"));
    // A restart with the same config changes nothing.
    store
        .seed_prices(&[("b".into(), price("3"))])
        .await
        .unwrap();
    assert_eq!(store.get_price("b").await.unwrap().unwrap().input, usd("2"));
    store.seed_prices(&[]).await.unwrap();

    // All or nothing: one bad entry, none inserted.
    let error = store
        .seed_prices(&[("c".into(), price("1")), ("".into(), price("1"))])
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Invalid { .. }), "{error:?}");
    assert_eq!(store.get_price("c").await.unwrap(), None);
}

/// Prices an operator leaves out are derived when read (cache writes 1.25 × and 2 × input,
/// batches at input / output), so they follow a later change of `input`; set ones stay.
async fn unset_prices_follow_the_published_rules(db: Db) {
    let store = &db.store;
    let price = |input: &str| NewPrice {
        input: usd(input),
        output: usd("15"),
        ..NewPrice::default()
    };
    let p = store.put_price("claude", price("3")).await.unwrap();
    assert_eq!(
        (
            p.cache_write,
            p.cache_write_1h,
            p.batch_input,
            p.batch_output
        ),
        (usd("3.75"), usd("6"), usd("3"), usd("15"))
    );
    assert_eq!(p.training, None);
    assert_eq!(store.get_price("claude").await.unwrap(), Some(p));
    let p = store.put_price("claude", price("0.8")).await.unwrap();
    assert_eq!((p.cache_write, p.cache_write_1h), (usd("1"), usd("1.6")));
    assert_eq!(store.get_price("claude").await.unwrap(), Some(p));
    // Set explicitly: kept as set, zero included (a deliberate 0 is not "absent").
    let set = NewPrice {
        cache_write: Some(usd("0")),
        cache_write_1h: Some(usd("7")),
        batch_input: Some(usd("1.5")),
        batch_output: Some(usd("7.5")),
        training: Some(usd("25")),
        ..price("3")
    };
    let p = store.put_price("claude", set).await.unwrap();
    assert_eq!(
        (
            p.cache_write,
            p.cache_write_1h,
            p.batch_input,
            p.batch_output,
            p.training
        ),
        (usd("0"), usd("7"), usd("1.5"), usd("7.5"), Some(usd("25")))
    );
    assert_eq!(store.get_price("claude").await.unwrap(), Some(p));
}

async fn price_api(db: Db) {
    let app = app(&db.store);
    let (status, price) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/gpt-4o-mini",
        Some(r#"{"input":0.15,"output":"0.60","cached_input":0.075}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{price}");
    assert_eq!(
        price,
        json!({"model": "gpt-4o-mini", "input": "0.150000", "output": "0.600000",
               "cached_input": "0.075000", "cache_write": "0.187500",
               "cache_write_1h": "0.300000", "batch_input": "0.150000",
               "batch_output": "0.600000", "training": null, "image": null,
               "per_audio_minute": null, "per_1m_characters": null})
    );
    // Audio prices (issue 19): per minute and per 1M characters, stored and shown exactly.
    let (status, audio) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/whisper",
        Some(r#"{"input":0,"output":0,"per_audio_minute":"0.006","per_1m_characters":15}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{audio}");
    assert_eq!(
        (&audio["per_audio_minute"], &audio["per_1m_characters"]),
        (&json!("0.006000"), &json!("15.000000"))
    );
    assert_eq!(
        admin(&app, Method::GET, "/admin/v1/prices/whisper", None).await,
        (StatusCode::OK, audio)
    );
    assert_eq!(
        admin(&app, Method::GET, "/admin/v1/prices/gpt-4o-mini", None).await,
        (StatusCode::OK, price.clone())
    );
    // GET → edit → PUT: the object as GET returns it is accepted, its model included.
    let mut edited = price.clone();
    edited["output"] = json!("0.700000");
    let (status, again) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/gpt-4o-mini",
        Some(&edited.to_string()),
    )
    .await;
    assert_eq!((status, again), (StatusCode::OK, edited));
    let (status, error) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/other-model",
        Some(&price.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["param"], "model");
    let (status, _) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/gpt-4o-mini",
        Some(&price.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Model names with '/' and ':', raw or percent-encoded.
    let (status, llama) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/meta-llama/Llama-3:8b",
        Some(r#"{"input":"0","output":"0","image":0.04}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{llama}");
    assert_eq!(llama["model"], "meta-llama/Llama-3:8b");
    assert_eq!(llama["cached_input"], "0.000000");
    assert_eq!(llama["image"], "0.040000");
    for path in [
        "/admin/v1/prices/meta-llama/Llama-3:8b",
        "/admin/v1/prices/meta-llama%2FLlama-3%3A8b",
    ] {
        assert_eq!(
            admin(&app, Method::GET, path, None).await,
            (StatusCode::OK, llama.clone()),
            "{path}"
        );
    }

    let (status, list) = admin(&app, Method::GET, "/admin/v1/prices", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["object"], "list");
    // gpt-4o-mini, meta-llama/..., whisper (the audio price above), in name order.
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert_eq!(list["data"][1], llama);

    for path in ["/admin/v1/prices/unknown", "/admin/v1/prices/meta-llama"] {
        let (status, body) = admin(&app, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_error(&body, "invalid_request_error", None);
    }
}

async fn price_api_bad_requests(db: Db) {
    let app = app(&db.store);
    let path = "/admin/v1/prices/m";
    for (body, param) in [
        ("{}", Some("input")),
        (r#"{"input":1}"#, Some("output")),
        (r#"{"input":null,"output":1}"#, Some("input")),
        (r#"{"input":-0.5,"output":1}"#, Some("input")),
        (r#"{"input":1,"output":"1.0000001"}"#, Some("output")),
        (
            r#"{"input":1,"output":1,"cached_input":"x"}"#,
            Some("cached_input"),
        ),
        (r#"{"input":1,"output":1,"image":[1]}"#, Some("image")),
        (r#"{"input":1,"output":1,"video":1}"#, Some("video")),
        (r#"{"input":"1.","output":1}"#, Some("input")),
        (r#"{"input":" 1","output":1}"#, Some("input")),
    ] {
        let (status, response) = admin(&app, Method::PUT, path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_error(&response, "invalid_request_error", param);
    }
    let (status, response) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/%2Fabs",
        Some(r#"{"input":1,"output":1}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    assert_error(&response, "invalid_request_error", Some("model"));
    assert!(
        db.store
            .list_prices(10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );
}
