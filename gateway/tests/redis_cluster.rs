//! Every Redis script the gateway runs, run against a real Redis Cluster through the shared
//! handle (`redis_cluster_nodes`), with the engines' own call sites: the limiter's
//! reserve / seed / extend / settle and the cache's lookup and idempotency claim. A script
//! whose keys spanned two slots would fail here with CROSSSLOT; one that touched a key of
//! another tenant's slot would leave it on another node. Then the tenant's slot is moved
//! to another master under the scripts (ASK while it migrates, MOVED after).
//!
//! The cluster is real `redis-server` processes on free ports (`tests/src/redis_cluster.rs`,
//! included by path), stopped when the test ends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

#[path = "../../tests/src/redis_cluster.rs"]
mod redis_cluster;

use std::time::Duration;

use bytes::Bytes;
use redis_cluster::RedisCluster;
use tollgate_gateway::cache::store::{Claim, Store};
use tollgate_gateway::quota::engine::{Ask, Decision, Scope, ScopeLimits, Taken, now_ms};
use tollgate_gateway::quota::redis::RedisEngine;
use tollgate_gateway::redis::{Redis, Target};

/// The scripts this test runs, by the constant that holds each (file, name). The test
/// fails when the source has a `Script::new` this list does not name, so a new script
/// cannot skip the cluster check.
const SCRIPTS: &[(&str, &str)] = &[
    ("src/quota/redis.rs", "RESERVE"),
    ("src/quota/redis.rs", "SETTLE"),
    ("src/quota/redis.rs", "SEED"),
    ("src/quota/redis.rs", "EXTEND"),
    ("src/cache/store.rs", "LOOKUP"),
    ("src/cache/store.rs", "CLAIM"),
];

async fn handle(cluster: &RedisCluster) -> Redis {
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let redis = Redis::start_on(
        Target::cluster(&nodes).unwrap(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    assert!(
        redis.connected_within(Duration::from_secs(10)).await,
        "the handle never connected to the cluster"
    );
    redis
}

fn limited() -> ScopeLimits {
    ScopeLimits {
        rpm: Some(1000),
        tpm: Some(1_000_000),
        concurrent: Some(100),
        budget: Some(1_000_000_000),
        monthly_tokens: Some(1_000_000_000),
    }
}

/// A reservation at `now_ms`. Tests pass the start of the current minute, so two asks
/// share one window and its keys live for the whole minute (their TTL counts from it).
fn ask(tenant: &str, now_ms: i64) -> Ask {
    Ask {
        tenant: tenant.to_owned(),
        key: "key_1".to_owned(),
        limits: [limited(), limited()],
        tokens: 100,
        cost: 7,
        now_ms,
    }
}

/// Reserves until admitted, seeding each scope the script asks for (as the limiter does).
async fn admit(engine: &RedisEngine, ask: &Ask) -> [u64; 2] {
    for _ in 0..3 {
        match engine.reserve(ask).await.unwrap() {
            Decision::Admit(counts) => return counts.requests,
            Decision::Unseeded(scope) => engine.seed(ask, scope, 0, 0).await.unwrap(),
            other => panic!("refused: {other:?}"),
        }
    }
    panic!("never admitted")
}

/// Every `Script::new(NAME)` in the gateway's sources, as (file, NAME).
fn scripts_in_source() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let file = path.strip_prefix(root).unwrap().display().to_string();
                for (i, pattern) in text.match_indices("Script::new(") {
                    let rest = &text[i + pattern.len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    out.push((file.clone(), name));
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(&root.join("src"), root, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_runs_on_a_cluster_and_survives_resharding() {
    let mut listed: Vec<(String, String)> = SCRIPTS
        .iter()
        .map(|(f, n)| ((*f).to_owned(), (*n).to_owned()))
        .collect();
    listed.sort();
    assert_eq!(
        scripts_in_source(),
        listed,
        "a Redis script is not run by this test: add it to SCRIPTS and run it below"
    );
    if !redis_cluster::available() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap();
    let redis = handle(&cluster).await;
    let tenant = "ten_cluster_scripts";
    let slot = cluster.slot(&format!("{{{tenant}}}"));
    let home = cluster.master_of_slot(slot);

    // The limiter: RESERVE (unseeded, then admitted), SEED, EXTEND, SETTLE.
    let engine = RedisEngine::new(redis.clone());
    let minute = now_ms() / 60_000 * 60_000;
    let first = ask(tenant, minute);
    assert_eq!(admit(&engine, &first).await, [1, 1]);
    let taken = Taken::of(&first);
    assert!(engine.extend(&taken, &first.limits, 50, 3).await.unwrap());
    engine.settle(&taken, 120, 9).await.unwrap();
    // The month hashes hold exactly what was settled (seeded at 0).
    let month_key = |scope: Scope| match scope {
        Scope::Tenant => format!("tg:q:{{{tenant}}}:t:m:{}", first.month().0),
        Scope::Key => format!("tg:q:{{{tenant}}}:k:key_1:m:{}", first.month().0),
    };
    for scope in [Scope::Tenant, Scope::Key] {
        let fields = redis_cluster::cli(home, &["HGETALL", &month_key(scope)]);
        let fields: Vec<&str> = fields.lines().collect();
        let get = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == name)
                .map(|kv| kv[1].to_owned())
        };
        assert_eq!(get("cost").as_deref(), Some("9"), "{fields:?}");
        assert_eq!(get("tokens").as_deref(), Some("120"), "{fields:?}");
        // EXTEND reserved 50 tokens / 3 micro-USD more; SETTLE gave back what the `Taken`
        // names (the first reservation), so the extension is still reserved.
        assert_eq!(get("rtok").as_deref(), Some("50"), "{fields:?}");
        assert_eq!(get("rcost").as_deref(), Some("3"), "{fields:?}");
    }

    // The cache: LOOKUP (miss, hit), SET, INCR (purge); idempotency: CLAIM, SET, DEL.
    let store = Store::redis(redis.clone());
    let ttl = Duration::from_secs(60);
    let (generation, miss) = store.lookup(tenant, "h1").await.unwrap();
    assert!(miss.is_none());
    store
        .put(tenant, generation, "h1", Bytes::from_static(b"answer"), ttl)
        .await
        .unwrap();
    let (_, hit) = store.lookup(tenant, "h1").await.unwrap();
    assert_eq!(hit.as_deref(), Some(&b"answer"[..]));
    store.purge(tenant).await.unwrap();
    let (after, gone) = store.lookup(tenant, "h1").await.unwrap();
    assert_eq!((after, gone), (generation + 1, None));
    let claim = store
        .claim(tenant, "i1", Bytes::from_static(b"pending"), ttl)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Claimed));
    match store
        .claim(tenant, "i1", Bytes::from_static(b"other"), ttl)
        .await
        .unwrap()
    {
        Claim::Existing(record) => assert_eq!(record, "pending"),
        Claim::Claimed => panic!("claimed twice"),
    }
    store
        .set_record(tenant, "i1", Bytes::from_static(b"done"), ttl)
        .await
        .unwrap();
    store.release(tenant, "i1").await.unwrap();

    // Every key the scripts and commands left is in the tenant's slot, on its master.
    let mut tenant_keys = Vec::new();
    for master in cluster.masters() {
        for key in cluster.keys_on(master) {
            assert!(key.contains(tenant), "unexpected key {key}");
            assert_eq!(
                master, home,
                "{key} is on another master than {{{tenant}}}'s"
            );
            assert_eq!(cluster.slot(&key), slot, "{key} left the tenant's slot");
            tenant_keys.push(key);
        }
    }
    assert!(tenant_keys.len() >= 8, "{tenant_keys:?}");

    // The handle does refuse a script across two slots: the check above can fail.
    let other = (0..100)
        .map(|i| format!("ten_other_{i}"))
        .find(|t| cluster.slot(&format!("{{{t}}}")) != slot)
        .unwrap();
    let cross: Result<i64, _> = redis
        .call("test", |mut conn| async move {
            redis::Script::new("return 1")
                .key(format!("tg:q:{{{tenant}}}:x"))
                .key(format!("tg:q:{{{other}}}:x"))
                .invoke_async(&mut conn)
                .await
        })
        .await;
    let message = format!("{:?}", cross.expect_err("a cross-slot script ran"));
    assert!(
        message.contains("CrossSlot") || message.contains("CROSSSLOT"),
        "{message}"
    );

    // Resharding: the tenant's slot moves to another master under the handle. While it
    // migrates, new single keys go to the target by ASK; after, everything by MOVED, with
    // the counters carried over.
    let target = cluster.masters().into_iter().find(|m| *m != home).unwrap();
    let rt = tokio::runtime::Handle::current();
    let (store2, redis2) = (store.clone(), redis.clone());
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.move_slot(slot, target, || {
            rt.block_on(async {
                let (g, _) = store2.lookup(tenant, "h2").await.unwrap();
                store2
                    .put(tenant, g, "h2", Bytes::from_static(b"moved"), ttl)
                    .await
                    .unwrap();
                let claim = store2
                    .claim(tenant, "i2", Bytes::from_static(b"pending"), ttl)
                    .await
                    .unwrap();
                assert!(matches!(claim, Claim::Claimed));
            });
        });
        drop(redis2);
        cluster
    })
    .await
    .unwrap();
    assert_eq!(cluster.master_of_slot(slot), target);
    assert!(cluster.keys_on(home).is_empty(), "keys left behind");
    let later = ask(tenant, minute);
    assert_eq!(
        admit(&engine, &later).await,
        [2, 2],
        "the window's count did not survive the move"
    );
    engine.settle(&Taken::of(&later), 100, 7).await.unwrap();
    let (_, moved) = store.lookup(tenant, "h2").await.unwrap();
    assert_eq!(moved.as_deref(), Some(&b"moved"[..]));
    assert!(matches!(
        store
            .claim(tenant, "i2", Bytes::from_static(b"again"), ttl)
            .await
            .unwrap(),
        Claim::Existing(_)
    ));
}
