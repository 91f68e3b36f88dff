//! What travels through the data plane's inner stack: a [`Call`] down, a [`Reply`] up.
//!
//! This is the leaf every layer builds on and nothing here imports a layer. The request is
//! parsed once at the edge (`openai.rs`) into a `Call`: who is calling, which configured
//! model, the typed parameters the layers decide on, and the body kept for forwarding. The
//! answer comes back as a `Reply`: a whole JSON answer or a stream of parsed events, plus
//! the facts the layers learned on the way (cache status, deployment, upstream time, cost,
//! rate limits). Client-facing headers are written once, at the edge, from those facts;
//! no layer reads another's headers.

mod events;
mod payload;
mod reply;
pub mod view;

use std::sync::{Arc, Mutex, PoisonError};

pub use events::{BROKE_OFF, End, Event, Events, Flow, Hold, Observer, StreamError};
pub use payload::{Payload, PayloadError, without_position};
pub use reply::{Answer, CacheStatus, Charged, Facts, Outcome, RateLimits, RateLine, Reply};

/// A data-plane endpoint (what a call asks for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    ImagesGenerations,
    Moderations,
    /// `/v1/files*`, forwarded by the passthrough.
    Files,
    /// `/v1/fine_tuning/jobs*`, forwarded by the passthrough.
    FineTuning,
    /// `/v1/batches*`, forwarded by the passthrough.
    Batches,
    /// `/v1/audio/transcriptions` (a multipart upload).
    AudioTranscriptions,
    /// `/v1/audio/translations` (a multipart upload).
    AudioTranslations,
    /// `/v1/audio/speech` (JSON in, audio bytes out).
    AudioSpeech,
    /// `/v1/messages`: Anthropic's Messages API (the body and the answer in its dialect).
    Messages,
    /// `/v1/messages/count_tokens`: Anthropic's free prompt count.
    CountTokens,
    /// `/v1/responses`: OpenAI's Responses API (the body and the answer in its dialect).
    Responses,
    /// `GET`/`DELETE /v1/responses/{id}`, `POST .../cancel`, `GET .../input_items`: about
    /// a response made earlier (method and path in the call's `upload`).
    ResponseObject,
}

impl Endpoint {
    /// The path below the API root, as sent upstream (passthrough calls carry their own).
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::ImagesGenerations => "/images/generations",
            Self::Moderations => "/moderations",
            Self::Files => "/files",
            Self::FineTuning => "/fine_tuning/jobs",
            Self::Batches => "/batches",
            Self::AudioTranscriptions => "/audio/transcriptions",
            Self::AudioTranslations => "/audio/translations",
            Self::AudioSpeech => "/audio/speech",
            Self::Messages => "/messages",
            Self::CountTokens => "/messages/count_tokens",
            Self::Responses | Self::ResponseObject => "/responses",
        }
    }

    /// A short label for logs, metrics and usage records.
    pub fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::ImagesGenerations => "images_generations",
            Self::Moderations => "moderations",
            Self::Files => "files",
            Self::FineTuning => "fine_tuning",
            Self::Batches => "batches",
            Self::AudioTranscriptions => "audio_transcriptions",
            Self::AudioTranslations => "audio_translations",
            Self::AudioSpeech => "audio_speech",
            Self::Messages => "messages",
            Self::CountTokens => "messages_count_tokens",
            Self::Responses => "responses",
            Self::ResponseObject => "responses_object",
        }
    }

    /// Transcriptions and translations: a multipart upload, forwarded as it came.
    pub fn is_upload(self) -> bool {
        matches!(self, Self::AudioTranscriptions | Self::AudioTranslations)
    }

    /// The audio endpoints (priced per minute or per 1M characters when no tokens come).
    pub fn is_audio(self) -> bool {
        matches!(
            self,
            Self::AudioTranscriptions | Self::AudioTranslations | Self::AudioSpeech
        )
    }

    /// Whether a client may ask for `stream: true`.
    pub fn can_stream(self) -> bool {
        matches!(
            self,
            Self::ChatCompletions | Self::Completions | Self::Messages | Self::Responses
        )
    }

    /// Anthropic's Messages API (`/v1/messages*`): the body, the answer, its stream and its
    /// errors are in Anthropic's dialect.
    pub fn is_anthropic(self) -> bool {
        matches!(self, Self::Messages | Self::CountTokens)
    }

    /// Files, fine-tuning and batches: forwarded to the passthrough upstream, no model.
    pub fn is_passthrough(self) -> bool {
        matches!(self, Self::Files | Self::FineTuning | Self::Batches)
    }
}

/// Who is calling: set by the auth layer, read by everything below it. Shared (`Arc`), so
/// passing it down costs no copy.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant_id: String,
    pub key_id: String,
    /// The tenant's plan: its limits count per tenant.
    pub plan: String,
    /// Models this key may use; empty means all.
    pub models: Arc<[String]>,
    /// The key's own requests per minute (per key, on top of the plan's).
    pub rpm: Option<u32>,
    /// The key's own tokens per minute.
    pub tpm: Option<u32>,
    /// The key's own requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// The key's own spend per calendar month (UTC), integer micro-USD.
    pub monthly_budget_micro_usd: Option<i64>,
    /// The key's own tokens per calendar month (UTC).
    pub monthly_tokens: Option<u64>,
}

impl Principal {
    /// Whether the key's allow-list lets it use `model`: an entry equal to it, or a
    /// pattern entry (`openai/*`, `*-mini`) that matches it.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|m| m == model || (m.contains('*') && glob_match(m, model)))
    }
}

/// Whether `name` matches `pattern`, where each `*` stands for any text (also empty, also
/// with `/`). Linear in practice: the pieces between stars are found left to right, each
/// at its first place, which is enough for `*` (no `?` or classes).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let Some(first) = pieces.next() else {
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The client's `Cache-Control` request directives that the cache honours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`: do not answer from the cache (the answer may still be stored).
    pub no_cache: bool,
    /// `no-store`: do not store this answer.
    pub no_store: bool,
}

impl Directives {
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut out = Self::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let directive = directive.trim();
                if directive.eq_ignore_ascii_case("no-cache") {
                    out.no_cache = true;
                } else if directive.eq_ignore_ascii_case("no-store") {
                    out.no_store = true;
                }
            }
        }
        out
    }
}

/// Who a call is for and what it is part of, for the usage ledger only (never a metric
/// label: both are unbounded): the end user from `x-tollgate-user` (the body's `user` or
/// `safety_identifier` wins, see the meter) and the tags of `x-tollgate-tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub user: Option<String>,
    /// Distinct, in the order given.
    pub tags: Vec<String>,
}

/// Longest end-user id kept, in bytes (longer ones from a body are cut at a character
/// boundary; a longer header is refused).
pub const MAX_USER_BYTES: usize = 256;
/// Most tags one request may carry.
pub const MAX_TAGS: usize = 10;
/// Longest tag, in characters of `[A-Za-z0-9_.:-]`.
pub const MAX_TAG_CHARS: usize = 64;
/// The request headers read by [`Attribution::from_headers`].
pub const USER_HEADER: &str = "x-tollgate-user";
pub const TAGS_HEADER: &str = "x-tollgate-tags";

impl Attribution {
    /// Reads `x-tollgate-user` and `x-tollgate-tags`; on a bad value, `Err((header,
    /// message))` for a 400 naming the header.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Self, (&'static str, String)> {
        let mut out = Self::default();
        if let Some(value) = headers.get(USER_HEADER) {
            let user = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|u| {
                    !u.is_empty() && u.len() <= MAX_USER_BYTES && !u.chars().any(char::is_control)
                })
                .ok_or_else(|| {
                    (
                        USER_HEADER,
                        format!("The {USER_HEADER} header must be 1 to {MAX_USER_BYTES} bytes of visible ASCII text."),
                    )
                })?;
            out.user = Some(user.to_owned());
        }
        for value in headers.get_all(TAGS_HEADER) {
            let bad = || {
                (
                    TAGS_HEADER,
                    format!(
                        "The {TAGS_HEADER} header must be a comma-separated list of at most {MAX_TAGS} tags, each 1 to {MAX_TAG_CHARS} characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'."
                    ),
                )
            };
            let text = value.to_str().map_err(|_| bad())?;
            if text.trim().is_empty() {
                continue;
            }
            for tag in text.split(',').map(str::trim) {
                let valid = (1..=MAX_TAG_CHARS).contains(&tag.len())
                    && tag.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
                    });
                if !valid {
                    return Err(bad());
                }
                if !out.tags.iter().any(|t| t == tag) {
                    out.tags.push(tag.to_owned());
                }
                if out.tags.len() > MAX_TAGS {
                    return Err(bad());
                }
            }
        }
        Ok(out)
    }

    /// The end user a record carries: the body's `user`, else its `safety_identifier`
    /// (strings only), else the header's; cut to [`MAX_USER_BYTES`].
    pub fn end_user(&self, payload: &Payload) -> Option<String> {
        let from_body = ["user", "safety_identifier"].into_iter().find_map(|field| {
            match payload.value(field) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            }
        });
        let mut user = from_body.or_else(|| self.user.clone())?;
        if user.len() > MAX_USER_BYTES {
            let mut end = MAX_USER_BYTES;
            while !user.is_char_boundary(end) {
                end -= 1;
            }
            user.truncate(end);
        }
        Some(user)
    }
}

/// The parameters of a request that the layers decide on, read once from the body.
#[derive(Clone, Debug, Default)]
pub struct Params {
    /// `stream: true`.
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_output: Option<u64>,
    /// `n`: completions (or images) asked for.
    pub n: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// A non-null `seed` was given.
    pub seed: bool,
    /// The client's `anthropic-beta` header (Messages API calls): the features it asked
    /// for travel with the body to Anthropic deployments.
    pub anthropic_beta: Option<http::HeaderValue>,
    /// The deployment the call must go to (no balancing, no fallback): a Responses API
    /// call about an earlier response goes where that response was made.
    pub deployment: Option<Arc<str>>,
}

impl Params {
    /// Whether the answer is determined by the request: embeddings always; chat and
    /// completions when `temperature` is 0 or a `seed` is given; the Messages and
    /// Responses APIs when `temperature` is 0 and the answer is not streamed.
    pub fn deterministic(&self, endpoint: Endpoint) -> bool {
        match endpoint {
            Endpoint::Embeddings => true,
            Endpoint::ChatCompletions | Endpoint::Completions => {
                self.temperature == Some(0.0) || self.seed
            }
            // The client dialects: whole answers only (a cached answer is replayed as chat
            // chunks, which is not their stream).
            Endpoint::Messages | Endpoint::Responses => {
                self.temperature == Some(0.0) && !self.stream
            }
            _ => false,
        }
    }
}

/// A passthrough request's HTTP parts, forwarded as they are (files are multipart uploads,
/// streamed through, not JSON).
#[derive(Debug)]
pub struct Upload {
    pub method: http::Method,
    /// Path below `/v1` and query, as the client sent them.
    pub path_and_query: String,
    /// `content-type` of the body, when it had one.
    pub content_type: Option<http::HeaderValue>,
    /// `content-length` of the body, when it had one.
    pub content_length: Option<http::HeaderValue>,
    /// The body, taken once by the one upstream call.
    body: Mutex<Option<axum::body::Body>>,
    /// A body held in memory (an audio upload, within `max_body_mb`): every attempt of a
    /// model call sends it again.
    pub form: Option<bytes::Bytes>,
}

impl Upload {
    pub fn new(
        method: http::Method,
        path_and_query: String,
        content_type: Option<http::HeaderValue>,
        body: axum::body::Body,
    ) -> Self {
        Self {
            method,
            path_and_query,
            content_type,
            content_length: None,
            body: Mutex::new(Some(body)),
            form: None,
        }
    }

    /// An audio upload held in memory (`form`), sent by each attempt.
    pub fn form(path: &str, content_type: http::HeaderValue, form: bytes::Bytes) -> Self {
        Self {
            method: http::Method::POST,
            path_and_query: path.to_owned(),
            content_type: Some(content_type),
            content_length: None,
            body: Mutex::new(None),
            form: Some(form),
        }
    }

    /// The body; empty after the first call.
    pub fn take_body(&self) -> axum::body::Body {
        self.body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_else(axum::body::Body::empty)
    }
}

/// One client request, authenticated, parsed, resolved to a configured model: what the
/// inner stack works on.
#[derive(Clone, Debug)]
pub struct Call {
    /// The request's id in the usage ledger (see `api::ledger_id`).
    pub request_id: Arc<str>,
    pub principal: Arc<Principal>,
    pub endpoint: Endpoint,
    /// The configured model's name (the client's, checked to exist and be allowed);
    /// `passthrough` for files, fine-tuning and batches.
    pub model: Arc<str>,
    pub params: Params,
    /// The body as it came, kept for forwarding.
    pub payload: Arc<Payload>,
    /// The client's `Cache-Control` directives.
    pub directives: Directives,
    /// Set by the meter when the client did not ask for stream usage: providers then ask
    /// the upstream for it (`stream_options.include_usage`), and the meter hides that
    /// chunk from the client.
    pub ask_usage: bool,
    /// A passthrough request's method, path and body (or an audio upload's form).
    pub upload: Option<Arc<Upload>>,
    /// The model was resolved by a pattern (`openai/*`): `model` is the client's own name,
    /// so the layers never look it up in the store (a client could mint names without
    /// end); the meter prices the call by the upstream model that answered
    /// ([`Facts::price_model`]).
    pub by_pattern: bool,
    /// End user and tags for the usage record ([`Attribution`]).
    pub attribution: Arc<Attribution>,
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::{Attribution, MAX_TAG_CHARS, Payload, TAGS_HEADER, USER_HEADER, glob_match};

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, http::HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn attribution_reads_and_checks_its_headers() {
        let a = Attribution::from_headers(&headers(&[
            (USER_HEADER, " alice "),
            (TAGS_HEADER, "feature:search, team-a,feature:search"),
            (TAGS_HEADER, "v1.2_x"),
        ]))
        .unwrap();
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert_eq!(a.tags, ["feature:search", "team-a", "v1.2_x"]);
        assert_eq!(
            Attribution::from_headers(&headers(&[(TAGS_HEADER, " ")])).unwrap(),
            Attribution::default()
        );
        let eleven = (0..11)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let long = "x".repeat(MAX_TAG_CHARS + 1);
        for bad in ["a,,b", "a b", "é", "a;b", eleven.as_str(), long.as_str()] {
            let (header, message) =
                Attribution::from_headers(&headers(&[(TAGS_HEADER, bad)])).unwrap_err();
            assert_eq!(header, TAGS_HEADER, "{bad}");
            assert!(message.contains(TAGS_HEADER));
        }
        let ten = (0..10)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            Attribution::from_headers(&headers(&[(TAGS_HEADER, &ten)]))
                .unwrap()
                .tags
                .len(),
            10
        );
        assert_eq!(
            Attribution::from_headers(&headers(&[(USER_HEADER, &"u".repeat(257))]))
                .unwrap_err()
                .0,
            USER_HEADER
        );
    }

    #[test]
    fn the_body_names_the_end_user_first() {
        let a = Attribution {
            user: Some("header-user".into()),
            tags: vec![],
        };
        let body = |json: &str| Payload::parse(bytes::Bytes::from(json.to_owned())).unwrap();
        assert_eq!(
            a.end_user(&body(r#"{"user":"body-user","safety_identifier":"s"}"#))
                .as_deref(),
            Some("body-user")
        );
        assert_eq!(
            a.end_user(&body(r#"{"safety_identifier":"s"}"#)).as_deref(),
            Some("s")
        );
        assert_eq!(
            a.end_user(&body(r#"{"user":7}"#)).as_deref(),
            Some("header-user")
        );
        let long = format!(r#"{{"user":"{}é"}}"#, "u".repeat(255));
        assert_eq!(
            a.end_user(&body(&long)).unwrap().len(),
            255,
            "cut at a character boundary"
        );
        assert_eq!(Attribution::default().end_user(&body("{}")), None);
    }

    #[test]
    fn globs_match_stars_anywhere() {
        assert!(glob_match("openai/*", "openai/gpt-4.1"));
        assert!(glob_match("openai/*", "openai/"));
        assert!(!glob_match("openai/*", "azure/gpt-4.1"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        assert!(!glob_match("ab*ba", "aba"), "the ends may not overlap");
        assert!(glob_match("*", ""));
        assert!(glob_match("gpt-4o", "gpt-4o"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
    }
}
