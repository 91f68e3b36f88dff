//! Streams as typed events, watched through one hook.
//!
//! A provider frames its upstream's bytes once (`crate::sse`) into [`Event`]s; the layers
//! above do not wrap the body again, they add an [`Observer`] to the reply's [`Events`].
//! At the edge one body ([`Events::into_body`]) pulls the events and shows each to the
//! observers in the order they were added (innermost layer first): each may let it pass,
//! hide it, change it, hold it until a future resolves (the meter's record, the quota's
//! extra reservation), or stop the stream with a last event. When the source ends, fails,
//! is cut, or the client goes away, every observer hears how ([`End`]).
//!
//! An event's JSON is parsed at most once ([`Event::view`]), whoever asks first; events a
//! translating provider builds carry their view from the start. Failures of the source
//! never reach the client as a cut connection after a `200`: they become OpenAI's error
//! event, and no `[DONE]`, so SDKs raise instead of taking a truncated answer for a whole
//! one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use http_body::Frame as BodyFrame;

use super::view::ChunkView;
use crate::sse::Frame;

/// One server-sent event of a reply.
#[derive(Debug)]
pub struct Event {
    frame: Frame,
    /// The data parsed as a chunk, once asked for: `Some(None)` when it is not one.
    view: Option<Option<Box<ChunkView>>>,
}

impl Event {
    /// An event as the upstream framed it.
    pub fn from_frame(frame: Frame) -> Self {
        Self { frame, view: None }
    }

    /// An event with `data` only.
    pub fn data(data: impl Into<Bytes>) -> Self {
        Self::from_frame(Frame::data(data))
    }

    /// An event whose view its maker already has (no parse when observers ask).
    pub fn with_view(data: impl Into<Bytes>, view: Option<ChunkView>) -> Self {
        Self {
            frame: Frame::data(data),
            view: Some(view.map(Box::new)),
        }
    }

    /// A named event (`event: <name>`), as Anthropic's.
    pub fn named(name: &'static str, data: impl Into<Bytes>) -> Self {
        Self::from_frame(Frame::named(name, data))
    }

    /// `data: [DONE]`, the end of an OpenAI stream.
    pub fn done() -> Self {
        Self::with_view(Bytes::from_static(b"[DONE]"), None)
    }

    pub fn bytes(&self) -> &Bytes {
        &self.frame.data
    }

    /// The `event:` name, when it has one.
    pub fn name(&self) -> Option<&[u8]> {
        self.frame.name.as_deref()
    }

    /// `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.frame.data.trim_ascii() == b"[DONE]"
    }

    /// The data as an OpenAI chunk, parsed on the first call only.
    pub fn view(&mut self) -> Option<&ChunkView> {
        let frame = &self.frame;
        self.view
            .get_or_insert_with(|| {
                if frame.data.trim_ascii() == b"[DONE]" {
                    None
                } else {
                    serde_json::from_slice(&frame.data).ok().map(Box::new)
                }
            })
            .as_deref()
    }

    /// Sets the view its maker knows: an event of another dialect (Anthropic's, OpenAI's
    /// Responses API) carries what observers need (delivered text, usage) as a chunk's
    /// view, since its own JSON is not a chunk.
    pub fn set_view(&mut self, view: Option<ChunkView>) {
        self.view = Some(view.map(Box::new));
    }

    /// Replaces the data (its view stays: callers change how it is written, not what it
    /// says).
    pub fn set_data(&mut self, data: Bytes) {
        self.frame.data = data;
        self.frame.raw = None;
    }

    /// The event's bytes on the wire.
    pub fn encode(&self) -> Bytes {
        self.frame.encode()
    }
}

/// Why a stream's source failed (for the log; the client sees one error event).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StreamError(pub String);

/// What an observer wants done with an event.
pub enum Flow {
    /// On to the next observer, then the client.
    Pass,
    /// Not sent; the stream goes on.
    Hide,
    /// Held until the future says what to do with it.
    Wait(BoxFuture<'static, Flow>),
    /// The stream ends here: with this last event, if any.
    Stop(Option<Event>),
    /// The stream ends in error here: the client sees it cut short.
    Abort,
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The source ended.
    Complete,
    /// The source failed; an error event follows.
    Failed,
    /// An observer stopped it, or the gateway is shutting down.
    Cut,
    /// The client went away (the body was dropped). Futures are not awaited then.
    Gone,
}

/// What an observer may hold the end of a stream on: `true` to end as planned, `false` to
/// end in error (the client sees the stream cut short).
pub type Hold = BoxFuture<'static, bool>;

/// See the module docs.
pub trait Observer: Send + 'static {
    /// One event on its way to the client.
    fn event(&mut self, _event: &mut Event) -> Flow {
        Flow::Pass
    }

    /// The stream ended; called once. What it returns is awaited before the stream's
    /// last frame (except for [`End::Gone`]).
    fn end(&mut self, _end: End) -> Option<Hold> {
        None
    }
}

/// An observer that only keeps a value until the stream ends (an in-flight count, a
/// reservation).
struct Keep<G>(Option<G>);

impl<G: Send + 'static> Observer for Keep<G> {
    fn end(&mut self, _end: End) -> Option<Hold> {
        self.0 = None;
        None
    }
}

/// A reply's stream: its source, and who watches it.
pub struct Events {
    source: BoxStream<'static, Result<Event, StreamError>>,
    /// Events taken from the source early (the router's look at the first one).
    front: VecDeque<Event>,
    observers: Vec<Box<dyn Observer>>,
    /// Ends the stream early when it resolves (the gateway's shutdown).
    cut: Option<BoxFuture<'static, ()>>,
    /// The last event when the source fails: [`BROKE_OFF`] unless the client's dialect
    /// has its own ([`Events::fail_with`]).
    broke_off: Option<Bytes>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl Events {
    pub fn new(source: impl Stream<Item = Result<Event, StreamError>> + Send + 'static) -> Self {
        Self {
            source: source.boxed(),
            front: VecDeque::new(),
            observers: Vec::new(),
            cut: None,
            broke_off: None,
        }
    }

    /// The source as a stream of its events (the first one, when taken early, first): for
    /// a provider that translates another provider's stream, before any observer is added.
    pub fn into_stream(self) -> BoxStream<'static, Result<Event, StreamError>> {
        let front = futures_util::stream::iter(self.front.into_iter().map(Ok));
        front.chain(self.source).boxed()
    }

    /// The event the client gets when the source fails (instead of OpenAI's error event):
    /// set where the reply meets its client's dialect.
    pub fn fail_with(&mut self, event: Event) {
        self.broke_off = Some(event.encode());
    }

    /// A finished stream of these events.
    pub fn of(events: Vec<Event>) -> Self {
        Self::new(futures_util::stream::iter(events.into_iter().map(Ok)))
    }

    /// Adds an observer after those already there.
    pub fn observe(&mut self, observer: impl Observer) {
        self.observers.push(Box::new(observer));
    }

    /// Keeps `value` until the stream ends, fails or is dropped.
    pub fn keep<G: Send + 'static>(&mut self, value: G) {
        self.observe(Keep(Some(value)));
    }

    /// Ends the stream (as [`End::Cut`], broken off) once `signal` resolves.
    pub fn cut_when(&mut self, signal: impl Future<Output = ()> + Send + 'static) {
        self.cut = Some(Box::pin(signal));
    }

    /// Waits for the first event, which stays first; an error or an empty stream is a
    /// failure (nothing reached the client yet, so the router can still try elsewhere).
    pub async fn first(&mut self) -> Result<(), StreamError> {
        if !self.front.is_empty() {
            return Ok(());
        }
        match self.source.next().await {
            Some(Ok(event)) => {
                self.front.push_back(event);
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Err(StreamError(
                "the stream ended before its first event".into(),
            )),
        }
    }

    /// The HTTP body that drives the stream to the client.
    pub fn into_body(self) -> EventBody {
        EventBody {
            events: self,
            state: State::Pull,
        }
    }
}

/// The error event a stream ends with when its source fails after the `200`: OpenAI's
/// error shape, and no `[DONE]`.
pub const BROKE_OFF: &str = "{\"error\":{\"message\":\"The upstream stopped in the middle of the stream.\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_stream_error\"}}";

enum State {
    Pull,
    /// Event `event` is held by observer `at` until `wait` resolves.
    Wait {
        event: Event,
        at: usize,
        wait: BoxFuture<'static, Flow>,
    },
    /// Telling observer `at` onwards how the stream ended; `tail` goes out last.
    End {
        end: End,
        at: usize,
        hold: Option<Hold>,
        tail: Option<Bytes>,
        failed: bool,
    },
    Done,
}

/// The body of a streamed reply; see the module docs.
pub struct EventBody {
    events: Events,
    state: State,
}

impl EventBody {
    /// Shows `event` to observers `from..`; returns what to send, if anything.
    fn run(&mut self, mut event: Event, from: usize) -> Option<Bytes> {
        for at in from..self.events.observers.len() {
            let flow = match self.events.observers.get_mut(at) {
                Some(o) => o.event(&mut event),
                None => Flow::Pass,
            };
            if let Some(out) = self.apply(flow, &mut event, at) {
                return out;
            }
        }
        Some(event.encode())
    }

    /// Applies an observer's flow; `None` to go on to the next observer.
    fn apply(&mut self, flow: Flow, event: &mut Event, at: usize) -> Option<Option<Bytes>> {
        match flow {
            Flow::Pass => None,
            Flow::Hide => Some(None),
            Flow::Wait(wait) => {
                let event = std::mem::replace(event, Event::data(Bytes::new()));
                self.state = State::Wait { event, at, wait };
                Some(None)
            }
            Flow::Stop(last) => {
                self.state = State::End {
                    end: End::Cut,
                    at: 0,
                    hold: None,
                    tail: last.map(|e| e.encode()),
                    failed: false,
                };
                Some(None)
            }
            Flow::Abort => {
                self.state = State::End {
                    end: End::Cut,
                    at: 0,
                    hold: None,
                    tail: None,
                    failed: true,
                };
                Some(None)
            }
        }
    }
}

fn error_event(json: &'static str) -> Bytes {
    Event::data(Bytes::from_static(json.as_bytes())).encode()
}

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Pull => {
                    if let Some(cut) = this.events.cut.as_mut()
                        && cut.as_mut().poll(cx).is_ready()
                    {
                        // The client sees the stream broken off, never a clean end: what it
                        // got is not the whole answer (and it is recorded as delivered).
                        this.events.cut = None;
                        this.state = State::End {
                            end: End::Cut,
                            at: 0,
                            hold: None,
                            tail: None,
                            failed: true,
                        };
                        continue;
                    }
                    let item = match this.events.front.pop_front() {
                        Some(event) => Some(Ok(event)),
                        None => ready!(this.events.source.as_mut().poll_next(cx)),
                    };
                    match item {
                        Some(Ok(event)) => {
                            if let Some(bytes) = this.run(event, 0) {
                                return Poll::Ready(Some(Ok(BodyFrame::data(bytes))));
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "upstream stream failed; ending it with an error event");
                            this.state = State::End {
                                end: End::Failed,
                                at: 0,
                                hold: None,
                                tail: Some(
                                    this.events
                                        .broke_off
                                        .take()
                                        .unwrap_or_else(|| error_event(BROKE_OFF)),
                                ),
                                failed: false,
                            };
                        }
                        None => {
                            this.state = State::End {
                                end: End::Complete,
                                at: 0,
                                hold: None,
                                tail: None,
                                failed: false,
                            };
                        }
                    }
                }
                State::Wait { wait, .. } => {
                    let flow = ready!(wait.as_mut().poll(cx));
                    let State::Wait { mut event, at, .. } =
                        std::mem::replace(&mut this.state, State::Pull)
                    else {
                        continue;
                    };
                    match this.apply(flow, &mut event, at) {
                        Some(Some(bytes)) => return Poll::Ready(Some(Ok(BodyFrame::data(bytes)))),
                        Some(None) => {}
                        None => {
                            if let Some(bytes) = this.run(event, at + 1) {
                                return Poll::Ready(Some(Ok(BodyFrame::data(bytes))));
                            }
                        }
                    }
                }
                State::End {
                    end,
                    at,
                    hold,
                    tail,
                    failed,
                } => {
                    if let Some(h) = hold.as_mut() {
                        let fine = ready!(h.as_mut().poll(cx));
                        *failed |= !fine;
                        *hold = None;
                        *at += 1;
                        continue;
                    }
                    if let Some(observer) = this.events.observers.get_mut(*at) {
                        match observer.end(*end) {
                            Some(h) => *hold = Some(h),
                            None => *at += 1,
                        }
                        continue;
                    }
                    let (failed, tail) = (*failed, tail.take());
                    this.state = State::Done;
                    if failed {
                        return Poll::Ready(Some(Err("the stream was cut short".into())));
                    }
                    if let Some(tail) = tail {
                        return Poll::Ready(Some(Ok(BodyFrame::data(tail))));
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away. Observers not told yet hear it now.
        let from = match &self.state {
            State::Done => return,
            State::End { at, hold, .. } => at + usize::from(hold.is_some()),
            State::Pull | State::Wait { .. } => 0,
        };
        for observer in self.events.observers.iter_mut().skip(from) {
            drop(observer.end(End::Gone));
        }
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;

    /// Records what it sees; hides events with data "hide", stops at "stop".
    struct Log(Arc<Mutex<Vec<String>>>, &'static str);

    impl Observer for Log {
        fn event(&mut self, event: &mut Event) -> Flow {
            let data = String::from_utf8(event.bytes().to_vec()).unwrap();
            self.0.lock().unwrap().push(format!("{}:{data}", self.1));
            match data.as_str() {
                "hide" => Flow::Hide,
                "stop" => Flow::Stop(Some(Event::data("last"))),
                "wait" => Flow::Wait(Box::pin(async { Flow::Pass })),
                _ => Flow::Pass,
            }
        }
        fn end(&mut self, end: End) -> Option<Hold> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}:end {end:?}", self.1));
            None
        }
    }

    async fn body_text(events: Events) -> Result<String, String> {
        let collected = events
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8(collected.to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn observers_see_events_in_order_and_can_hide_hold_and_stop() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut events = Events::of(vec![
            Event::data("a"),
            Event::data("hide"),
            Event::data("wait"),
            Event::data("stop"),
            Event::data("never"),
        ]);
        events.observe(Log(log.clone(), "1"));
        events.observe(Log(log.clone(), "2"));
        let text = body_text(events).await.unwrap();
        assert_eq!(text, "data: a\n\ndata: wait\n\ndata: last\n\n");
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                "1:a",
                "2:a",
                "1:hide",
                "1:wait",
                "2:wait",
                "1:stop",
                "1:end Cut",
                "2:end Cut"
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_source_ends_with_an_error_event_and_observers_hear_it() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let source = futures_util::stream::iter(vec![
            Ok(Event::data("a")),
            Err(StreamError("cut".into())),
            Ok(Event::data("b")),
        ]);
        let mut events = Events::new(source);
        events.observe(Log(log.clone(), "1"));
        let text = body_text(events).await.unwrap();
        assert_eq!(text, format!("data: a\n\ndata: {BROKE_OFF}\n\n"));
        assert_eq!(*log.lock().unwrap(), vec!["1:a", "1:end Failed"]);
    }

    #[tokio::test]
    async fn a_dropped_body_tells_every_observer_the_client_left() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut events = Events::new(futures_util::stream::pending());
        events.observe(Log(log.clone(), "1"));
        events.observe(Log(log.clone(), "2"));
        drop(events.into_body());
        assert_eq!(*log.lock().unwrap(), vec!["1:end Gone", "2:end Gone"]);
    }

    #[tokio::test]
    async fn a_failed_hold_cuts_the_stream() {
        struct Refuse;
        impl Observer for Refuse {
            fn end(&mut self, _: End) -> Option<Hold> {
                Some(Box::pin(async { false }))
            }
        }
        let mut events = Events::of(vec![Event::data("a")]);
        events.observe(Refuse);
        assert!(body_text(events).await.is_err());
    }

    #[test]
    fn views_are_parsed_once_and_done_is_none() {
        let mut e = Event::data(r#"{"choices":[{"delta":{"content":"x"}}]}"#);
        assert!(e.view().is_some());
        e.set_data(Bytes::from_static(b"not json any more"));
        assert!(e.view().is_some(), "kept, not parsed again");
        assert!(Event::done().view().is_none());
        assert!(Event::done().is_done());
    }
}
