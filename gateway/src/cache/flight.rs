//! Single flight: identical concurrent misses wait for one upstream call.
//!
//! The first miss for a key becomes the [`Leader`] and calls the upstream; the others
//! [`Join::Follow`] it and wait for its outcome: the complete answer (they are served it as
//! a hit; a stream is replayed once complete) or nothing (the leader failed, was cut, or
//! its answer may not be cached): then they try again, and one of them leads. A leader that
//! is dropped without finishing (client gone, panic) reports failure, so waiters are never
//! stuck and never poisoned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

/// `None` while the leader works; then `Some(answer)` (`Some(None)`: nothing to share).
type Outcome = Option<Option<Bytes>>;

/// Flights in progress, by key.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
}

pub enum Join {
    Lead(Leader),
    Follow(Follower),
}

/// Holds the flight open until it finishes or is dropped.
pub struct Leader {
    flights: Arc<Flights>,
    key: String,
    tx: Option<watch::Sender<Outcome>>,
}

pub struct Follower(watch::Receiver<Outcome>);

impl Flights {
    /// Leads the flight for `key`, or follows the one in progress.
    pub fn join(self: &Arc<Self>, key: String) -> Join {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = map.get(&key) {
            return Join::Follow(Follower(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Join::Lead(Leader {
            flights: self.clone(),
            key,
            tx: Some(tx),
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Leader {
    /// Ends the flight with the answer to share (`None`: followers try again).
    pub fn finish(mut self, answer: Option<Bytes>) {
        self.end(answer);
    }

    fn end(&mut self, answer: Option<Bytes>) {
        let Some(tx) = self.tx.take() else { return };
        {
            let mut map = self
                .flights
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if map
                .get(&self.key)
                .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
            {
                map.remove(&self.key);
            }
        }
        tx.send_replace(Some(answer));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(None);
    }
}

impl Follower {
    /// The leader's answer, or `None` when it has none to share.
    pub async fn wait(mut self) -> Option<Bytes> {
        match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().flatten(),
            Err(_) => None,
        }
    }
}

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_answer() {
        let flights = Arc::new(Flights::default());
        let Join::Lead(leader) = flights.join("k".into()) else {
            panic!("first should lead")
        };
        let Join::Follow(f) = flights.join("k".into()) else {
            panic!("second should follow")
        };
        let waiter = tokio::spawn(f.wait());
        leader.finish(Some(Bytes::from_static(b"answer")));
        assert_eq!(waiter.await.unwrap().unwrap(), "answer");
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_frees_its_followers() {
        let flights = Arc::new(Flights::default());
        let Join::Lead(leader) = flights.join("k".into()) else {
            panic!()
        };
        let Join::Follow(f) = flights.join("k".into()) else {
            panic!()
        };
        drop(leader);
        assert!(f.wait().await.is_none());
        assert!(matches!(flights.join("k".into()), Join::Lead(_)));
    }
}
