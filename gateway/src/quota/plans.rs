//! Plan limits on the request path: read from the store, kept in memory for [`FRESH`],
//! dropped at once when the store says plans changed (`PUT /admin/v1/plans/{name}`
//! publishes an invalidation every replica hears). While the store is unreachable the last
//! known limits stay in use; a plan never read is then unlimited (with a warning), because
//! limits must not take serving down.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tollgate_admin::store::{PlanLimits, Store, StoreError};

use super::engine::ScopeLimits;

/// How long a plan read is used without asking the store again (the invalidation feed
/// makes changes quicker; this is the backstop).
pub const FRESH: Duration = Duration::from_secs(5);
/// How long re-reading a known plan may take before its last limits are used.
const KNOWN_PLAN_READ: Duration = Duration::from_millis(500);

pub struct Plans {
    store: Store,
    known: RwLock<HashMap<String, (Instant, ScopeLimits)>>,
}

impl Plans {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            known: RwLock::new(HashMap::new()),
        })
    }

    /// The limits of plan `name` (per tenant).
    pub async fn get(&self, name: &str) -> ScopeLimits {
        let cached = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied();
        if let Some((at, limits)) = cached
            && at.elapsed() < FRESH
        {
            return limits;
        }
        let read = self.store.get_plan(name);
        // A plan already known does not wait on a store that is slow to answer (a
        // restarting Postgres holds a connection attempt for the pool's acquire timeout).
        let read = match cached {
            None => Some(read.await),
            Some(_) => tokio::time::timeout(KNOWN_PLAN_READ, read).await.ok(),
        };
        match read.unwrap_or_else(|| Err(StoreError::Other("plan read timed out".into()))) {
            Ok(plan) => {
                let limits = plan.map(|p| of_plan(&p.limits)).unwrap_or_default();
                self.known
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_owned(), (Instant::now(), limits));
                limits
            }
            Err(e) => {
                // Kept (or, never read, unlimited) for another FRESH: an outage costs one
                // store timeout per plan every few seconds, not one per request.
                let limits = match cached {
                    Some((_, limits)) => {
                        tracing::debug!(plan = name, error = %e, "store unavailable: using the last known plan limits");
                        limits
                    }
                    None => {
                        tracing::warn!(plan = name, error = %e, "cannot read the plan's limits; not applying them for now");
                        ScopeLimits::default()
                    }
                };
                self.known
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_owned(), (Instant::now(), limits));
                limits
            }
        }
    }

    /// Forgets every plan: the next request reads its plan again. Entries are marked stale
    /// rather than dropped, so a store outage still finds them.
    fn invalidate(&self) {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        let stale = Instant::now()
            .checked_sub(FRESH)
            .unwrap_or_else(Instant::now);
        for entry in known.values_mut() {
            entry.0 = stale;
        }
    }

    /// Follows the store's invalidation feed for the life of the process.
    pub async fn run_invalidations(self: Arc<Self>) {
        let mut feed = self.store.subscribe();
        while let Some(event) = feed.recv().await {
            // Plans only ever publish `All`; a tenant's plan change reaches the request
            // through its (re-read) key, so other events need nothing here.
            if matches!(event, tollgate_admin::store::Invalidation::All) {
                self.invalidate();
            }
        }
    }
}

/// A plan's limits as the engines count them.
pub fn of_plan(limits: &PlanLimits) -> ScopeLimits {
    ScopeLimits {
        rpm: limits.rpm.map(u64::from),
        tpm: limits.tpm.map(u64::from),
        concurrent: limits.max_concurrent.map(u64::from),
        budget: limits.monthly_budget_usd.map(|b| b.micros()),
        monthly_tokens: limits.monthly_tokens,
    }
}
