//! Watching a response body as it passes to the client, in one place: the chunks, its clean
//! end, its failure, and its drop (the client went away). The in-flight counts, the
//! load-shedding slot and the access-log line hold a value until the body ends
//! ([`hold_until_body_ends`]); the cache and idempotency layers copy the chunks and act on
//! a clean end ([`tap`]). Size hints pass through, so a relayed `Content-Length` stays
//! exact.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// What a tapped body tells its observer. Dropping the tap before [`Tap::end`] or
/// [`Tap::error`] means the client left midway.
pub trait Tap: Send + Unpin + 'static {
    /// A data chunk on its way to the client.
    fn data(&mut self, _chunk: &Bytes) {}
    /// The body ended cleanly; called at most once. A body of known length counts as
    /// ended with its last chunk, since a reader may stop polling there.
    fn end(&mut self);
    /// The body failed; called at most once, and never after [`Tap::end`].
    fn error(&mut self);
}

/// Returns `response` with a body that reports to `tap` as it passes.
pub fn tap<B, T>(response: http::Response<B>, tap: T) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    T: Tap,
{
    response.map(|body| {
        Body::new(Tapped {
            inner: Body::new(body),
            tap,
            done: false,
        })
    })
}

/// Returns `response` with a body that keeps `guard` until it ends, fails or is dropped.
pub fn hold_until_body_ends<B, G>(response: http::Response<B>, guard: G) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    G: Send + Unpin + 'static,
{
    tap(response, Hold(Some(guard)))
}

struct Hold<G>(Option<G>);

impl<G: Send + Unpin + 'static> Tap for Hold<G> {
    fn end(&mut self) {
        self.0 = None;
    }

    fn error(&mut self) {
        self.0 = None;
    }
}

struct Tapped<T> {
    inner: Body,
    tap: T,
    /// `end` or `error` was called.
    done: bool,
}

impl<T: Tap> http_body::Body for Tapped<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    this.tap.data(chunk);
                }
                if this.inner.is_end_stream() && !this.done {
                    this.done = true;
                    this.tap.end();
                }
            }
            Poll::Ready(Some(Err(_))) if !this.done => {
                this.done = true;
                this.tap.error();
            }
            Poll::Ready(None) if !this.done => {
                this.done = true;
                this.tap.end();
            }
            _ => {}
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
