//! What a cache hit in the auth layer costs: `Keys::authenticate` for a key that is
//! already cached (header parse, key parse, cache lookup, SHA-256 of the secret, constant-
//! time compare, expiry checks). Run: `cargo bench -p tollgate-gateway --bench auth_cache`.
//!
//! Prints the median of several rounds in ns per call; the machine is shared, so compare
//! medians, not single runs.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark")]

use std::time::Instant;

use tollgate_admin::store::{NewKey, Store};
use tollgate_gateway::auth::Keys;
use tollgate_gateway::config::AuthConfig;

const CALLS: u32 = 200_000;
const ROUNDS: usize = 7;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let tenant = store.create_tenant("bench", None).await.unwrap();
        let key = store
            .create_key(
                &tenant.id,
                NewKey {
                    name: "bench".into(),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let keys = Keys::new(store, &AuthConfig { cache_ttl_s: 3600.0, ..AuthConfig::default() });
        let header = format!("Bearer {}", key.key);
        // The first call fills the cache.
        keys.authenticate(Some(header.as_bytes())).await.unwrap();
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..CALLS {
                let principal = keys.authenticate(Some(header.as_bytes())).await.unwrap();
                std::hint::black_box(principal);
            }
            rounds.push(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
        }
        rounds.sort_by(f64::total_cmp);
        println!(
            "auth cache hit: median {:.0} ns/call (min {:.0}, max {:.0}) over {ROUNDS} rounds of {CALLS}",
            rounds[ROUNDS / 2],
            rounds[0],
            rounds[ROUNDS - 1]
        );
    });
}
