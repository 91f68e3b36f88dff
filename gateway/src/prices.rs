//! Prices in memory: the meter prices every request, and must not ask the store each time
//! (nor stall when the store is down).
//!
//! The whole price table is loaded at start and again every [`REFRESH`]; a model the table
//! did not have is looked up once when first seen (a price set a moment ago works at once
//! on this replica, within [`REFRESH`] on every other). A model without a price costs 0,
//! with one warning per model, so an operator sees what is served for free. When the store
//! is unreachable the last known prices stay in use.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use tollgate_admin::store::{Price, Store, StoreError};

/// How often the whole table is read again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Page size when reading the table.
const PAGE: usize = 500;

/// The price cache.
#[derive(Debug)]
pub struct Prices {
    store: Store,
    /// Known answers, `None` included ("has no price"), until the next refresh.
    known: RwLock<HashMap<String, Option<Price>>>,
    /// Models already warned about.
    warned: Mutex<HashSet<String>>,
}

impl Prices {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            known: RwLock::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// The price of the client-facing `model`, or `None` when it has none.
    pub async fn get(&self, model: &str) -> Option<Price> {
        if let Some(known) = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return known.clone();
        }
        let price = match self.store.get_price(model).await {
            Ok(price) => price,
            Err(e) => {
                // Remembered as unpriced until the next refresh, so an outage does not
                // cost every request a store timeout.
                tracing::warn!(model, error = %e, "cannot read the model's price; counting cost 0 until the store answers");
                None
            }
        };
        if price.is_none() {
            self.warn_once(model);
        }
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.to_owned(), price.clone());
        price
    }

    fn warn_once(&self, model: &str) {
        let first = self
            .warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.to_owned());
        if first {
            tracing::warn!(
                model,
                "model has no price: its requests are recorded at cost 0 (set one with PUT /admin/v1/prices/{{model}})"
            );
        }
    }

    /// Reads the whole table. Models asked about before and no longer priced stay known as
    /// unpriced; prices set since replace the old ones.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut fresh: HashMap<String, Option<Price>> = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_prices(PAGE, after.as_deref()).await?;
            after = page.data.last().map(|p| p.model.clone());
            for price in page.data {
                fresh.insert(price.model.clone(), Some(price));
            }
            if !page.has_more || after.is_none() {
                break;
            }
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        for model in known.keys() {
            fresh.entry(model.clone()).or_insert(None);
        }
        *known = fresh;
        Ok(())
    }

    /// Refreshes every [`REFRESH`], for ever; failures keep the last known prices.
    pub async fn run_refresh(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::debug!(error = %e, "price refresh failed; keeping the last known prices");
            }
        }
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use tollgate_admin::store::NewPrice;

    use super::*;

    #[tokio::test]
    async fn prices_are_cached_and_refreshed() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let new = |input: &str| NewPrice {
            input: input.parse().unwrap(),
            output: "0.6".parse().unwrap(),
            cached_input: None,
            image: None,
            per_audio_minute: None,
            per_1m_characters: None,
            ..NewPrice::default()
        };
        store.put_price("a", new("0.15")).await.unwrap();
        let prices = Prices::new(store.clone());
        prices.refresh().await.unwrap();
        assert_eq!(prices.get("a").await.unwrap().input.micros(), 150_000);
        assert!(prices.get("b").await.is_none());
        // A price set later: the cached answer holds until the refresh.
        store.put_price("b", new("1")).await.unwrap();
        store.put_price("a", new("2")).await.unwrap();
        assert!(prices.get("b").await.is_none());
        prices.refresh().await.unwrap();
        assert_eq!(prices.get("b").await.unwrap().input.micros(), 1_000_000);
        assert_eq!(prices.get("a").await.unwrap().input.micros(), 2_000_000);
        // A model first seen after the refresh is looked up at once.
        store.put_price("c", new("3")).await.unwrap();
        assert_eq!(prices.get("c").await.unwrap().input.micros(), 3_000_000);
    }
}
