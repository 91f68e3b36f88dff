//! [`Reply`]: what comes back up the inner stack.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::oneshot;
use tollgate_admin::error::ApiError;
use tollgate_admin::store::MicroUsd;

use super::events::Events;
use super::view::AnswerView;

/// The answer to one call, with what the layers learned about it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub answer: Answer,
    pub facts: Facts,
}

/// The body of a reply.
pub enum Answer {
    /// A whole JSON answer as it goes to the client (a success, or an upstream's own 4xx
    /// error, its key redacted). `view` is the answer parsed once, for successes.
    Json {
        bytes: Bytes,
        view: Option<AnswerView>,
    },
    /// A stream of events (`text/event-stream`).
    Events(Events),
    /// An error the gateway made; `error.rs` turns it into the client's response.
    Error(ApiError),
    /// Bytes relayed as they are (a file's content), with their content type.
    Raw {
        content_type: Option<http::HeaderValue>,
        body: axum::body::Body,
    },
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json { bytes, .. } => write!(f, "Json({} bytes)", bytes.len()),
            Self::Events(_) => f.write_str("Events"),
            Self::Error(e) => write!(f, "Error({} {})", e.status, e.kind),
            Self::Raw { .. } => f.write_str("Raw"),
        }
    }
}

/// `x-tollgate-cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// One of OpenAI's `x-ratelimit-*` trios.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLine {
    pub limit: u64,
    pub remaining: u64,
    /// OpenAI's reset format: `20ms`, `1s`, `6m0s`.
    pub reset: String,
}

/// The limits that applied to a call (the tightest scope's), for the client's headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests: Option<RateLine>,
    pub tokens: Option<RateLine>,
}

/// What one call was charged: tokens (input + output) and cost. The meter sends it to
/// the quota layer, which settles its reservation to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charged {
    pub tokens: u64,
    pub cost: MicroUsd,
}

/// What the layers learned about a call on its way back up.
#[derive(Debug, Default)]
pub struct Facts {
    /// What the response cache did (`None` for endpoints it does not handle).
    pub cache: Option<CacheStatus>,
    /// The deployment that answered (or whose failure this is).
    pub deployment: Option<http::HeaderValue>,
    /// Time spent waiting on upstreams, summed over attempts.
    pub upstream: Duration,
    /// The answer (a success or an error) came from an upstream, which makes it metered
    /// even when it is a 4xx.
    pub relayed: bool,
    /// `retry-after` for the client, in seconds.
    pub retry_after: Option<u64>,
    /// `x-ratelimit-*`, from the quota layer.
    pub rate: Option<RateLimits>,
    /// What a whole answer cost (`x-tollgate-cost-usd`), from the meter.
    pub cost: Option<MicroUsd>,
    /// The model whose price applies when it is not the call's own name: set by the
    /// router for a pattern route (`openai/*`), the upstream model that answered.
    pub price_model: Option<std::sync::Arc<str>>,
    /// The answer was made by the gateway's own translation of the client's dialect (the
    /// bridge): the upstream never saw the request as the client sent it, and ids in the
    /// answer are the gateway's.
    pub bridged: bool,
    /// The meter's report to the quota layer: resolves with what the call was charged
    /// once its usage record is appended; closes empty when none is made.
    pub charged: Option<oneshot::Receiver<Charged>>,
}

impl Reply {
    /// A whole JSON answer (`view`: the success parsed once).
    pub fn json(status: StatusCode, bytes: Bytes, view: Option<AnswerView>) -> Self {
        Self {
            status,
            answer: Answer::Json { bytes, view },
            facts: Facts::default(),
        }
    }

    /// A `200` stream.
    pub fn events(events: Events) -> Self {
        Self {
            status: StatusCode::OK,
            answer: Answer::Events(events),
            facts: Facts::default(),
        }
    }

    /// An error the gateway made.
    pub fn error(error: ApiError) -> Self {
        Self {
            status: error.status,
            answer: Answer::Error(error),
            facts: Facts::default(),
        }
    }

    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The answer's view, for whole successful JSON answers.
    pub fn view(&self) -> Option<&AnswerView> {
        match &self.answer {
            Answer::Json { view, .. } => view.as_ref(),
            _ => None,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        Self::error(error)
    }
}

/// What the edge layers (request metrics, the access log, traces) need to know about an
/// answered request, as one typed value in the response's extensions: written where the
/// reply becomes the client's response, read by the layers around it. Requests refused
/// before a handler ran (auth, body limit) have none.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The configured model the request named (only configured names: a client cannot
    /// mint metric series).
    pub model: Option<std::sync::Arc<str>>,
    /// The calling tenant and key.
    pub principal: Option<std::sync::Arc<super::Principal>>,
    pub cache: Option<CacheStatus>,
    pub deployment: Option<http::HeaderValue>,
    /// Time spent waiting on upstreams.
    pub upstream: Duration,
    /// The gateway's own time to the response headers; set by `observe`.
    pub overhead: Option<Duration>,
}
