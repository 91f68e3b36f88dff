//! Counting what a request used: from the upstream's own `usage` when it reports one, else
//! with a tokenizer over the prompt and the text that was delivered.
//!
//! The upstream's numbers are the ones its invoice uses, so they always win; the tokenizer
//! is the fallback for answers without `usage` (servers that do not report it, streams cut
//! before the final usage chunk, clients gone midway). It uses OpenAI's encodings:
//! `o200k_base` for the GPT-4o / o-series / GPT-4.1 / GPT-5 families and `cl100k_base`
//! otherwise, which is close for most other models too.

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;
use tollgate_admin::store::Usage;

use crate::exchange::view::{AnswerView, TextView, push_content};
use crate::exchange::{Endpoint, Payload};

/// Tokens OpenAI adds per chat message (role and framing) and once per reply, in its
/// published counting recipe.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_REPLY: u64 = 3;

/// The prompt of a request as text, for the tokenizer: read from the body only when a
/// count is needed (no usage reported, or a tpm limit the byte bound does not fit).
#[derive(Debug, Default, Clone)]
pub struct Prompt {
    texts: Vec<String>,
    /// Tokens known without a tokenizer: token-id prompts, per-message framing.
    known: u64,
}

impl Prompt {
    pub fn of(endpoint: Endpoint, payload: &Payload) -> Self {
        let mut prompt = Prompt::default();
        match endpoint {
            Endpoint::ChatCompletions => {
                if let Some(Value::Array(messages)) = payload.value("messages") {
                    for m in &messages {
                        prompt.chat_message(m);
                    }
                    prompt.known += TOKENS_PER_REPLY;
                }
            }
            Endpoint::Completions => prompt.inputs(payload.value("prompt").as_ref()),
            Endpoint::Responses => {
                for field in ["instructions", "input", "tools"] {
                    if let Some(v) = payload.value(field) {
                        let mut text = String::new();
                        anthropic_texts(&v, &mut text);
                        prompt.texts.push(text);
                    }
                }
                prompt.known += TOKENS_PER_REPLY;
            }
            Endpoint::Messages | Endpoint::CountTokens => {
                for field in ["system", "messages", "tools"] {
                    if let Some(v) = payload.value(field) {
                        let mut text = String::new();
                        anthropic_texts(&v, &mut text);
                        prompt.texts.push(text);
                    }
                }
                if let Some(Value::Array(messages)) = payload.value("messages") {
                    prompt.known += TOKENS_PER_MESSAGE * messages.len() as u64;
                }
                prompt.known += TOKENS_PER_REPLY;
            }
            Endpoint::Embeddings | Endpoint::Moderations => {
                prompt.inputs(payload.value("input").as_ref())
            }
            // Priced per image (or not by tokens at all): the prompt is not what is billed.
            Endpoint::ImagesGenerations
            | Endpoint::ResponseObject
            | Endpoint::Files
            | Endpoint::FineTuning
            | Endpoint::Batches
            | Endpoint::AudioTranscriptions
            | Endpoint::AudioTranslations
            | Endpoint::AudioSpeech => {}
        }
        prompt
    }

    /// An upper bound on [`Prompt::count`] without a tokenizer and without copying the
    /// prompt: every BPE token stands for at least one byte of its text, so a text has at
    /// most as many tokens as bytes. Read straight from the body (strings borrowed, not
    /// copied).
    pub fn bound(endpoint: Endpoint, payload: &Payload) -> u64 {
        let (field, chat) = match endpoint {
            // Text scattered in blocks, besides images' data: read as for the count.
            Endpoint::Messages | Endpoint::Responses => {
                return Prompt::of(endpoint, payload).upper_bound();
            }
            Endpoint::ChatCompletions => ("messages", true),
            Endpoint::Completions => ("prompt", false),
            Endpoint::Embeddings | Endpoint::Moderations => ("input", false),
            _ => return 0,
        };
        let Some(raw) = payload.raw(field) else {
            return 0;
        };
        let counted = if chat {
            serde_json::from_slice::<Vec<bound::Message<'_>>>(raw)
                .map(|ms| ms.iter().map(bound::Message::bytes).sum::<u64>() + TOKENS_PER_REPLY)
        } else {
            serde_json::from_slice::<bound::Inputs>(raw).map(|i| i.0)
        };
        // A body that passed the checks always reads; the raw length is a bound too.
        counted.unwrap_or(raw.len() as u64 + TOKENS_PER_REPLY)
    }

    fn chat_message(&mut self, m: &Value) {
        self.known += TOKENS_PER_MESSAGE;
        let Some(m) = m.as_object() else { return };
        for field in ["role", "name"] {
            if let Some(Value::String(s)) = m.get(field) {
                self.texts.push(s.clone());
            }
        }
        let mut text = String::new();
        if let Some(content) = m.get("content") {
            push_content(content, &mut text);
        }
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            for call in calls {
                if let Some(Value::Object(f)) = call.get("function") {
                    push_str_fields(f, &["name", "arguments"], &mut text);
                }
            }
        }
        if !text.is_empty() {
            self.texts.push(text);
        }
    }

    /// `prompt` / `input`: a string, strings, token ids, or arrays of token ids.
    fn inputs(&mut self, v: Option<&Value>) {
        match v {
            Some(Value::String(s)) => self.texts.push(s.clone()),
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(s) => self.texts.push(s.clone()),
                        Value::Number(_) => self.known += 1,
                        Value::Array(ids) => self.known += ids.len() as u64,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// An upper bound on [`Prompt::count`] without a tokenizer: every BPE token stands for
    /// at least one byte of its text, so a text has at most as many tokens as bytes.
    pub fn upper_bound(&self) -> u64 {
        self.known + self.texts.iter().map(|t| t.len() as u64).sum::<u64>()
    }

    /// Prompt tokens by the tokenizer (CPU work: call off the async threads).
    pub fn count(&self, model: &str) -> u64 {
        let bpe = encoding(model);
        self.known + self.texts.iter().map(|t| count_with(bpe, t)).sum::<u64>()
    }
}

/// The text of an Anthropic `system`, `messages` or `tools` value (or a Responses API
/// `instructions`, `input` or `tools`): every string in it (texts, tool inputs and
/// results, schemas) but an image's or document's base64 `data` and `image_url`.
fn anthropic_texts(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|i| anthropic_texts(i, out)),
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("data" | "signature" | "type" | "cache_control" | "image_url", _) => {}
                    (_, Value::Number(n)) => {
                        out.push_str(&n.to_string());
                        out.push(' ');
                    }
                    _ => anthropic_texts(value, out),
                }
            }
        }
        _ => {}
    }
}

fn push_str_fields(map: &Map<String, Value>, fields: &[&str], out: &mut String) {
    for field in fields {
        if let Some(Value::String(s)) = map.get(*field) {
            out.push_str(s);
        }
    }
}

/// Byte counts of a prompt's texts, read without copying them (for [`Prompt::bound`]).
mod bound {
    use std::borrow::Cow;
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::TOKENS_PER_MESSAGE;

    #[derive(Deserialize)]
    pub struct Message<'a> {
        #[serde(borrow, default)]
        role: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(default)]
        content: Option<Text>,
        #[serde(borrow, default)]
        tool_calls: Option<Vec<Call<'a>>>,
    }

    #[derive(Deserialize)]
    struct Call<'a> {
        #[serde(borrow, default)]
        function: Option<Function<'a>>,
    }

    #[derive(Deserialize)]
    struct Function<'a> {
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        arguments: Option<Cow<'a, str>>,
    }

    impl Message<'_> {
        pub fn bytes(&self) -> u64 {
            let len = |s: &Option<Cow<'_, str>>| s.as_ref().map_or(0, |s| s.len() as u64);
            let calls: u64 = self
                .tool_calls
                .iter()
                .flatten()
                .filter_map(|c| c.function.as_ref())
                .map(|f| len(&f.name) + len(&f.arguments))
                .sum();
            TOKENS_PER_MESSAGE
                + len(&self.role)
                + len(&self.name)
                + self.content.as_ref().map_or(0, |t| t.0)
                + calls
        }
    }

    /// The bytes of a `content`: a string, or the `text` of its parts.
    pub struct Text(u64);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Text;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a content")
                }
                fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.len() as u64))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text, A::Error> {
                    let mut n = 0;
                    while let Some(part) = seq.next_element::<Part<'de>>()? {
                        n += part.text.map_or(0, |t| t.len() as u64);
                    }
                    Ok(Text(n))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Text(0))
                }
                fn visit_unit<E>(self) -> Result<Text, E> {
                    Ok(Text(0))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Text, E> {
                    Ok(Text(0))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Text, E> {
                    Ok(Text(0))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Text, E> {
                    Ok(Text(0))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Text, E> {
                    Ok(Text(0))
                }
            }
            d.deserialize_any(V)
        }
    }

    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }

    /// `prompt` / `input`: string bytes, plus one per token id.
    pub struct Inputs(pub u64);

    impl<'de> Deserialize<'de> for Inputs {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Inputs;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a prompt")
                }
                fn visit_str<E>(self, v: &str) -> Result<Inputs, E> {
                    Ok(Inputs(v.len() as u64))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Inputs, E> {
                    Ok(Inputs(1))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Inputs, E> {
                    Ok(Inputs(1))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Inputs, E> {
                    Ok(Inputs(1))
                }
                fn visit_unit<E>(self) -> Result<Inputs, E> {
                    Ok(Inputs(0))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Inputs, E> {
                    Ok(Inputs(0))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                    let mut n = 0;
                    while let Some(item) = seq.next_element::<Inputs>()? {
                        n += item.0;
                    }
                    Ok(Inputs(n))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Inputs, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Inputs(0))
                }
            }
            d.deserialize_any(V)
        }
    }
}

/// Starts loading both encodings [`encoding`] may pick, each on a detached thread of its
/// own, so that a later count does not wait for them. Used at shutdown: a stream cut at the
/// drain deadline has no usage chunk and is counted here, and loading the tables the first
/// time takes longer (seconds in a debug build) than the meter gives cut requests to
/// settle. Detached threads, not `spawn_blocking`: an idle gateway exits without waiting.
pub fn preload_tokenizers() {
    for load in [
        tiktoken_rs::o200k_base_singleton as fn() -> &'static CoreBPE,
        tiktoken_rs::cl100k_base_singleton,
    ] {
        let _ = std::thread::Builder::new()
            .name("tokenizer-load".into())
            .spawn(move || {
                load();
            });
    }
}

/// The encoding for `model` (loaded on first use, then shared).
fn encoding(model: &str) -> &'static CoreBPE {
    const O200K: &[&str] = &[
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "gpt-oss",
    ];
    if O200K.iter().any(|p| model.starts_with(p)) {
        tiktoken_rs::o200k_base_singleton()
    } else {
        tiktoken_rs::cl100k_base_singleton()
    }
}

fn count_with(bpe: &CoreBPE, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe.encode_ordinary(text).len() as u64
}

/// Tokens of `text` with `model`'s encoding (CPU work: call off the async threads).
pub fn count_tokens(model: &str, text: &str) -> u64 {
    count_with(encoding(model), text)
}

/// What the meter knows after the answer, before any tokenizer runs.
#[derive(Debug, Default)]
pub struct Seen {
    /// The upstream's numbers, when it sent them.
    pub usage: Option<Usage>,
    /// Images generated (`data` entries of an images answer).
    pub images: u32,
    /// Generated text delivered to the client, for the fallback.
    pub output_text: String,
}

impl Seen {
    /// Reads a whole JSON answer of `endpoint` from its view (parsed once by its provider);
    /// its text is read only when it reports no usage.
    pub fn from_answer(endpoint: Endpoint, body: &[u8], view: Option<&AnswerView>) -> Self {
        let Some(view) = view else {
            return Self::default();
        };
        if endpoint == Endpoint::ResponseObject {
            // A response read again (or deleted): its usage was billed when it was made.
            return Self::default();
        }
        let mut seen = Seen {
            usage: view.usage(),
            ..Seen::default()
        };
        if endpoint == Endpoint::ImagesGenerations {
            seen.images = u32::try_from(view.data_len()).unwrap_or(u32::MAX);
        }
        if seen.usage.is_none()
            && let Ok(text) = serde_json::from_slice::<TextView>(body)
        {
            text.push_text(&mut seen.output_text);
        }
        seen
    }

    /// Whether [`Seen::resolve`] would run the tokenizer.
    pub fn needs_tokenizer(&self, endpoint: Endpoint) -> bool {
        self.usage.is_none()
            && !matches!(
                endpoint,
                Endpoint::ImagesGenerations
                    | Endpoint::CountTokens
                    | Endpoint::ResponseObject
                    | Endpoint::Files
                    | Endpoint::FineTuning
                    | Endpoint::Batches
            )
    }

    /// The final counts and whether they are the upstream's: its `usage` when reported,
    /// else the tokenizer over the prompt and the delivered text. Images answers count
    /// their images (the upstream's own count) and no tokens unless it reported some;
    /// passthrough calls count nothing.
    pub fn resolve(self, endpoint: Endpoint, model: &str, payload: &Payload) -> (Usage, bool) {
        if let Some(mut usage) = self.usage {
            usage.images = self.images;
            return (usage, true);
        }
        if !self.needs_tokenizer(endpoint) {
            let usage = Usage {
                images: self.images,
                ..Usage::default()
            };
            return (usage, true);
        }
        let usage = Usage {
            input_tokens: Prompt::of(endpoint, payload).count(model),
            output_tokens: count_tokens(model, &self.output_text),
            ..Usage::default()
        };
        (usage, false)
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn payload(body: Value) -> Payload {
        Payload::parse(bytes::Bytes::from(body.to_string())).unwrap()
    }

    fn seen(endpoint: Endpoint, body: Value) -> Seen {
        let bytes = body.to_string();
        let view = AnswerView::parse(bytes.as_bytes());
        Seen::from_answer(endpoint, bytes.as_bytes(), view.as_ref())
    }

    #[test]
    fn reported_usage_wins() {
        let s = seen(
            Endpoint::ChatCompletions,
            json!({"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "prompt_tokens_details": {"cached_tokens": 4}}}),
        );
        assert!(!s.needs_tokenizer(Endpoint::ChatCompletions));
        let (usage, reported) = s.resolve(Endpoint::ChatCompletions, "m", &payload(json!({})));
        assert!(reported);
        assert_eq!(
            usage,
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_tokens: 4,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn images_are_counted() {
        let s = seen(
            Endpoint::ImagesGenerations,
            json!({"created": 1, "data": [{"url": "a"}, {"url": "b"}]}),
        );
        let (usage, reported) = s.resolve(Endpoint::ImagesGenerations, "m", &payload(json!({})));
        assert_eq!((usage.images, usage.input_tokens, reported), (2, 0, true));
        // gpt-image-1 reports tokens as input_tokens / output_tokens.
        let s = seen(
            Endpoint::ImagesGenerations,
            json!({"data": [{"b64_json": "x"}], "usage": {"input_tokens": 7, "output_tokens": 9,
            "input_tokens_details": {"cached_tokens": 2}}}),
        );
        let (usage, _) = s.resolve(Endpoint::ImagesGenerations, "m", &payload(json!({})));
        assert_eq!(
            usage,
            Usage {
                input_tokens: 7,
                output_tokens: 9,
                cached_tokens: 2,
                images: 1,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn without_usage_the_tokenizer_counts() {
        let body = payload(json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello."}, {"type": "image_url", "image_url": {"url": "data:x"}}]}
        ]}));
        let s = seen(
            Endpoint::ChatCompletions,
            json!({"choices": [{"message": {"content": "Hello there, friend."}}]}),
        );
        assert!(s.needs_tokenizer(Endpoint::ChatCompletions));
        let (usage, reported) = s.resolve(Endpoint::ChatCompletions, "gpt-4o-mini", &body);
        assert!(!reported);
        // "Hello there, friend." is 5 tokens in o200k_base.
        assert_eq!(usage.output_tokens, 5);
        // 2 messages × 3 + 3 for the reply, plus role and content tokens.
        let content = count_tokens("gpt-4o-mini", "system")
            + count_tokens("gpt-4o-mini", "You are terse.")
            + count_tokens("gpt-4o-mini", "user")
            + count_tokens("gpt-4o-mini", "Say hello.");
        assert_eq!(usage.input_tokens, 9 + content);
        assert!(Prompt::bound(Endpoint::ChatCompletions, &body) >= usage.input_tokens);
    }

    #[test]
    fn the_bound_reads_the_body_without_copying_and_equals_the_texts_bound() {
        let cases = [
            (
                Endpoint::ChatCompletions,
                json!({"model": "m", "messages": [
                    {"role": "system", "content": "Be \"terse\" ✓"},
                    {"role": "user", "name": "ann", "content": [{"type": "text", "text": "hé"}, {"type": "image_url", "image_url": {"url": "data:xxxxxxxx"}}]},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                    {"role": "tool", "tool_call_id": "c", "content": "42"}
                ]}),
            ),
            (
                Endpoint::Completions,
                json!({"model": "m", "prompt": ["ab", [1, 2, 3], "é"]}),
            ),
            (
                Endpoint::Completions,
                json!({"model": "m", "prompt": "plain"}),
            ),
            (
                Endpoint::Embeddings,
                json!({"model": "m", "input": [[1, 2], [3]]}),
            ),
        ];
        for (endpoint, body) in cases {
            let p = payload(body);
            let prompt = Prompt::of(endpoint, &p);
            assert_eq!(
                Prompt::bound(endpoint, &p),
                prompt.upper_bound(),
                "{endpoint:?}"
            );
            assert!(Prompt::bound(endpoint, &p) >= prompt.count("gpt-4o-mini"));
        }
    }

    #[test]
    fn token_id_prompts_count_without_a_tokenizer() {
        let body = payload(json!({"model": "x", "prompt": [[1, 2, 3], [4, 5]]}));
        assert_eq!(Prompt::of(Endpoint::Completions, &body).count("x"), 5);
        let body = payload(json!({"model": "x", "input": [1, 2, 3]}));
        assert_eq!(Prompt::of(Endpoint::Embeddings, &body).count("x"), 3);
    }
}
