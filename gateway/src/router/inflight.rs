//! Requests in flight per deployment, for least-outstanding-requests balancing.
//!
//! A request counts from the moment it is sent until its response body ends or is dropped
//! (client gone, stream cut), so a deployment that streams slowly keeps counting while it
//! streams; that is the load the balancer wants to spread. The counter is decremented by a
//! guard's `Drop`, so no exit path can leak a count.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

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
        let (parts, body) = response.into_parts();
        Response::from_parts(
            parts,
            Body::new(Guarded {
                inner: body,
                guard: Some(self),
            }),
        )
    }
}

/// A body that drops its guard at its end (or with itself). Forwards size hints, so a
/// relayed `Content-Length` stays exact.
struct Guarded {
    inner: Body,
    guard: Option<Guard>,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
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
