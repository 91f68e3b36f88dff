//! Auth invalidations: the store tells every gateway replica that cached auth data went
//! stale (a key revoked or rotated, a tenant disabled), so the change takes effect within a
//! second everywhere instead of when a cache entry expires.
//!
//! - In one process, [`Store::publish`] feeds a broadcast channel directly.
//! - On Postgres it also sends `NOTIFY tollgate_auth`; every replica's listener (one
//!   dedicated connection, [`Store::subscribe`]) relays what it hears into its own channel.
//!   A listener that loses its connection reconnects and then sends [`Invalidation::All`],
//!   because notifications sent while it was away are lost.
//! - SQLite is one process's store: the in-process channel is all there is.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::{Backend, Store, StoreError};

/// The Postgres channel name.
const CHANNEL: &str = "tollgate_auth";
/// How many invalidations a slow subscriber may lag behind before it is told to drop all.
const BUFFER: usize = 1024;

/// What went stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// One key, by its public id.
    Key(String),
    /// Every key of a tenant (disabled, plan changed, deleted).
    Tenant(String),
    /// Everything: events may have been missed.
    All,
}

impl Invalidation {
    fn encode(&self) -> String {
        match self {
            Self::Key(id) => format!("k:{id}"),
            Self::Tenant(id) => format!("t:{id}"),
            Self::All => "*".to_owned(),
        }
    }

    fn decode(payload: &str) -> Self {
        if let Some(id) = payload.strip_prefix("k:") {
            Self::Key(id.to_owned())
        } else if let Some(id) = payload.strip_prefix("t:") {
            Self::Tenant(id.to_owned())
        } else {
            // Unknown payloads (a newer replica's format) are handled the safe way.
            Self::All
        }
    }
}

/// The in-process side of the feed, created with the store.
#[derive(Clone, Debug)]
pub(crate) struct Events {
    sender: broadcast::Sender<Invalidation>,
}

impl Events {
    pub(crate) fn new() -> Self {
        let (sender, _) = broadcast::channel(BUFFER);
        Self { sender }
    }
}

/// A subscription. A receiver that lagged gets [`Invalidation::All`] instead of the
/// messages it missed.
#[derive(Debug)]
pub struct Invalidations {
    receiver: broadcast::Receiver<Invalidation>,
}

impl Invalidations {
    /// The next invalidation; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<Invalidation> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Invalidation::All),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Store {
    /// Tells every replica (this one included) that `event`'s auth data is stale. Call it
    /// after the change is committed. On Postgres a failed NOTIFY is returned: the change
    /// is made, but other replicas learn it only when their cache entries expire.
    pub async fn publish(&self, event: Invalidation) -> Result<(), StoreError> {
        let payload = event.encode();
        // No local subscriber is fine (e.g. the CLI): the send result is not an error.
        let _ = self.events.sender.send(event);
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Subscribes to invalidations. On Postgres the first call starts this process's
    /// listener task, which relays `NOTIFY`s from every replica; events this process
    /// publishes arrive once, through the listener.
    pub fn subscribe(&self) -> Invalidations {
        let receiver = self.events.sender.subscribe();
        if self.backend == Backend::Postgres
            && !self
                .listening
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let url = self.url.clone();
            let sender = self.events.sender.clone();
            tokio::spawn(listen(url, sender));
        }
        Invalidations { receiver }
    }
}

/// Longest pause between reconnection attempts of the listener. Short, so invalidations
/// (revocations) flow again within a second of the store's return after a restart; an
/// attempt against a store that is down costs one refused connection.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Bound on one connection attempt of the listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Relays Postgres notifications into `sender` until every subscriber is gone, reconnecting
/// with a short backoff.
async fn listen(url: std::sync::Arc<str>, sender: broadcast::Sender<Invalidation>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if sender.receiver_count() == 0 {
            return;
        }
        // Bounded: sqlx's own connect keeps retrying a refused connection for its pool's
        // acquire timeout with growing pauses, which would notice the store's return late.
        let mut listener = match tokio::time::timeout(CONNECT_TIMEOUT, PgListener::connect(&url))
            .await
        {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "auth invalidation listener: cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::warn!("auth invalidation listener: connecting timed out; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // A lost connection ends the inner loop below; reconnecting is this loop's job.
        listener.eager_reconnect(false);
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "auth invalidation listener: LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        // Anything published while we were not listening is lost: start from a clean slate.
        let _ = sender.send(Invalidation::All);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let _ = sender.send(Invalidation::decode(n.payload()));
                }
                Ok(None) => {
                    // What is published until we listen again is covered by the `All`
                    // sent then; sending it now would only send every replica's requests
                    // to a store that is most likely down (a restart) for their keys.
                    tracing::warn!("auth invalidation listener: connection lost; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "auth invalidation listener failed; reconnecting");
                    break;
                }
            }
            if sender.receiver_count() == 0 {
                return;
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        for event in [
            Invalidation::Key("abc".into()),
            Invalidation::Tenant("ten_1".into()),
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::decode(&event.encode()), event);
        }
        assert_eq!(Invalidation::decode("future:format"), Invalidation::All);
    }
}
