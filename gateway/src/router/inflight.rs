//! Requests in flight per deployment, for least-outstanding-requests balancing.
//!
//! A request counts from the moment it is sent until its response body ends or is dropped
//! (client gone, stream cut), so a deployment that streams slowly keeps counting while it
//! streams; that is the load the balancer wants to spread. The counter is decremented by a
//! guard's `Drop`, so no exit path can leak a count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::response::Response;

/// One deployment's in-flight count.
#[derive(Debug, Default)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one request until the guard is dropped.
    pub fn start(&self) -> Guard {
        self.0.fetch_add(1, Ordering::Relaxed);
        Guard(self.0.clone())
    }
}

/// Holds one count; gives it back when dropped.
#[derive(Debug)]
pub struct Guard(Arc<AtomicU64>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Guard {
    /// Keeps the count until `response`'s body ends or is dropped.
    pub fn hold_until_body_ends(self, response: Response) -> Response {
        crate::guard::hold_until_body_ends(response, self)
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn the_count_lasts_until_the_body_ends() {
        let counter = InFlight::default();
        let guard = counter.start();
        assert_eq!(counter.get(), 1);
        let response = guard.hold_until_body_ends(Response::new(Body::from("abc")));
        assert_eq!(counter.get(), 1, "still counted while the body is unread");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(counter.get(), 0);
    }

    #[tokio::test]
    async fn a_dropped_body_gives_the_count_back() {
        let counter = InFlight::default();
        let response = counter
            .start()
            .hold_until_body_ends(Response::new(Body::from("abc")));
        assert_eq!(counter.get(), 1);
        drop(response);
        assert_eq!(counter.get(), 0);
        drop(counter.start());
        assert_eq!(counter.get(), 0);
    }
}
