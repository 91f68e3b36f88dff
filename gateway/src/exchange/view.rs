//! Typed views of OpenAI's answers: the parts the layers read, parsed once.
//!
//! - [`AnswerView`]: a whole answer (`chat.completion`, `text_completion`, embeddings and
//!   images lists): its kind, usage, and whether it is complete. Content is skipped, not
//!   copied.
//! - [`ChunkView`]: one streamed chunk, with the deltas a stream's observers need (the
//!   meter's text, the cache's assembled answer, the quota's delivered output).
//! - [`TextView`]: a whole answer's generated text, for the tokenizer fallback only.
//!
//! Every field is optional and unknown fields are ignored, so a newer API version cannot
//! break a view.

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tollgate_admin::store::Usage;

/// An OpenAI `usage` object, any of its shapes: chat, completions and embeddings
/// (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`) or images and responses (`input_tokens`,
/// `output_tokens`, `input_tokens_details.cached_tokens`,
/// `output_tokens_details.reasoning_tokens`).
///
/// Prompt-cache writes travel in `prompt_tokens_details` as `cache_write_tokens` (both
/// TTLs) and `cache_write_1h_tokens` (the 1-hour part), where the translating providers
/// put them. Anthropic's own shape (`input_tokens` without the cache, plus
/// `cache_read_input_tokens`, `cache_creation_input_tokens` and `cache_creation`'s
/// `ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`) is read too.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct UsageView {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<DetailsView>,
    #[serde(default)]
    input_tokens_details: Option<DetailsView>,
    #[serde(default)]
    completion_tokens_details: Option<OutputDetailsView>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetailsView>,
    /// Anthropic's shape.
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<CacheCreationView>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct DetailsView {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
    #[serde(default)]
    cache_write_1h_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct OutputDetailsView {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// Anthropic's `usage.cache_creation`: prompt-cache writes by TTL.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct CacheCreationView {
    #[serde(default)]
    pub ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    pub ephemeral_1h_input_tokens: Option<u64>,
}

impl CacheCreationView {
    /// (all writes, the 1-hour part) given Anthropic's `cache_creation_input_tokens`
    /// (`total`): the split when it is there, else every write at the 5-minute TTL.
    pub fn writes(split: Option<&Self>, total: Option<u64>) -> (u64, u64) {
        let five = split.and_then(|c| c.ephemeral_5m_input_tokens).unwrap_or(0);
        let hour = split.and_then(|c| c.ephemeral_1h_input_tokens).unwrap_or(0);
        let all = total.unwrap_or(0).max(five.saturating_add(hour));
        (all, hour.min(all))
    }
}

impl UsageView {
    pub fn to_usage(&self) -> Usage {
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .or(self.output_tokens_details.as_ref())
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        let output = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        let anthropic = self.prompt_tokens.is_none()
            && (self.cache_read_input_tokens.is_some()
                || self.cache_creation_input_tokens.is_some()
                || self.cache_creation.is_some());
        let (input, cached, write, write_1h) = if anthropic {
            // Anthropic's input_tokens leaves out what was read from or written to the cache.
            let read = self.cache_read_input_tokens.unwrap_or(0);
            let (write, write_1h) = CacheCreationView::writes(
                self.cache_creation.as_ref(),
                self.cache_creation_input_tokens,
            );
            let input = self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write);
            (input, read, write, write_1h)
        } else {
            let input = self.prompt_tokens.or(self.input_tokens).unwrap_or(0);
            let details = self
                .prompt_tokens_details
                .as_ref()
                .or(self.input_tokens_details.as_ref());
            let field = |f: fn(&DetailsView) -> Option<u64>| details.and_then(f).unwrap_or(0);
            (
                input,
                field(|d| d.cached_tokens),
                field(|d| d.cache_write_tokens),
                field(|d| d.cache_write_1h_tokens),
            )
        };
        let cached = cached.min(input);
        let write = write.min(input - cached);
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached,
            cache_write_tokens: write,
            cache_write_1h_tokens: write_1h.min(write),
            reasoning_tokens: reasoning.min(output),
            images: 0,
        }
    }
}

/// A whole answer; see the module docs.
#[derive(Debug, Default, Deserialize)]
pub struct AnswerView {
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    /// Boxed: most of the view's size, and only read once.
    #[serde(default)]
    usage: Option<Box<UsageView>>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    /// Images and embeddings: only counted.
    #[serde(default)]
    data: Option<Vec<IgnoredAny>>,
}

impl AnswerView {
    /// The view of another dialect's whole answer (an Anthropic message): its `object`,
    /// and its usage given in OpenAI's shape.
    pub fn of_usage(object: &str, usage: Option<Value>) -> Self {
        Self {
            object: Some(object.to_owned()),
            usage: usage
                .and_then(|u| UsageView::deserialize(u).ok())
                .map(Box::new),
            ..Self::default()
        }
    }

    /// Parses a whole answer; `None` when it is not a JSON object.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The upstream's usage, when it reported one.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.as_deref().map(UsageView::to_usage)
    }

    /// An `error` object instead of an answer.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }

    /// Entries of `data` (images generated, embeddings).
    pub fn data_len(&self) -> usize {
        self.data.as_ref().map_or(0, Vec::len)
    }

    pub fn has_choices(&self) -> bool {
        self.choices.is_some()
    }

    pub fn has_data(&self) -> bool {
        self.data.is_some()
    }
}

/// A whole answer's generated text (the tokenizer's input when no usage came).
#[derive(Debug, Default, Deserialize)]
pub struct TextView {
    #[serde(default)]
    choices: Option<Vec<TextChoice>>,
}

#[derive(Debug, Default, Deserialize)]
struct TextChoice {
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

impl TextView {
    /// Appends every choice's text (content, refusal, tool calls) to `out`.
    pub fn push_text(&self, out: &mut String) {
        for choice in self.choices.iter().flatten() {
            if let Some(text) = &choice.text {
                out.push_str(text);
            }
            if let Some(m) = &choice.message {
                m.push_text(out);
            }
        }
    }
}

/// One streamed chunk; see the module docs.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkView {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub created: Option<Value>,
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    pub system_fingerprint: Option<Value>,
    #[serde(default)]
    pub service_tier: Option<Value>,
    #[serde(default)]
    pub choices: Option<Vec<ChoiceDelta>>,
    /// As sent (the cache stores it whole); [`ChunkView::usage`] reads it.
    #[serde(default)]
    pub usage: Option<Value>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

impl ChunkView {
    /// The view of another dialect's event that delivers `text` (generated text, tool
    /// input): what the meter's fallback and the quota's output watch read.
    pub fn text(text: String) -> Self {
        let delta = Delta {
            content: Some(Value::String(text)),
            ..Delta::default()
        };
        Self {
            choices: Some(vec![ChoiceDelta {
                delta: Some(delta),
                ..ChoiceDelta::default()
            }]),
            ..Self::default()
        }
    }

    /// The view of another dialect's event that reports the answer's usage, given in
    /// OpenAI's shape (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details`).
    pub fn usage_of(usage: Value) -> Self {
        Self {
            usage: Some(usage),
            ..Self::default()
        }
    }

    /// An error event (`{"error": {...}}`) instead of a chunk.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }

    /// A stream's final usage chunk: `usage` and no choices.
    pub fn is_usage_chunk(&self) -> bool {
        self.usage.as_ref().is_some_and(|u| !u.is_null())
            && self.choices.as_ref().is_none_or(Vec::is_empty)
    }

    /// The upstream's usage, when this chunk carries it.
    pub fn usage(&self) -> Option<Usage> {
        let usage = self.usage.as_ref().filter(|u| !u.is_null())?;
        UsageView::deserialize(usage).ok().map(|u| u.to_usage())
    }

    /// Appends the generated text of every choice to `out`.
    pub fn push_text(&self, out: &mut String) {
        for choice in self.choices.iter().flatten() {
            if let Some(text) = &choice.text {
                out.push_str(text);
            }
            if let Some(delta) = &choice.delta {
                delta.push_text(out);
            }
        }
    }

    /// Bytes of generated text in this chunk (the quota's cheap measure of output).
    pub fn text_len(&self) -> usize {
        self.choices
            .iter()
            .flatten()
            .map(|c| {
                c.text.as_ref().map_or(0, String::len) + c.delta.as_ref().map_or(0, Delta::text_len)
            })
            .sum()
    }
}

/// One choice of a chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChoiceDelta {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub delta: Option<Delta>,
    /// Completions stream their text here.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub finish_reason: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

/// A chat delta (or a whole message). Fields it does not know are remembered
/// ([`Delta::other`]), since the cache cannot rebuild what it does not understand.
#[derive(Debug, Default)]
pub struct Delta {
    pub role: Option<Value>,
    pub content: Option<Value>,
    pub refusal: Option<String>,
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// A non-null field other than the four above (audio, legacy `function_call`...).
    pub other: bool,
}

impl Delta {
    fn push_text(&self, out: &mut String) {
        if let Some(content) = &self.content {
            push_content(content, out);
        }
        if let Some(refusal) = &self.refusal {
            out.push_str(refusal);
        }
        for call in self.tool_calls.iter().flatten() {
            if let Some(f) = &call.function {
                out.push_str(f.name.as_deref().unwrap_or_default());
                out.push_str(f.arguments.as_deref().unwrap_or_default());
            }
        }
    }

    fn text_len(&self) -> usize {
        let content = match &self.content {
            Some(Value::String(s)) => s.len(),
            _ => 0,
        };
        let calls: usize = self
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|c| c.function.as_ref())
            .map(|f| f.arguments.as_ref().map_or(0, String::len))
            .sum();
        content + self.refusal.as_ref().map_or(0, String::len) + calls
    }
}

impl<'de> Deserialize<'de> for Delta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Delta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message delta")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Delta, A::Error> {
                let mut d = Delta::default();
                while let Some(KeyStr(key)) = map.next_key::<KeyStr<'de>>()? {
                    match key.as_ref() {
                        "role" => d.role = map.next_value()?,
                        "content" => d.content = map.next_value()?,
                        "refusal" => d.refusal = map.next_value()?,
                        "tool_calls" => d.tool_calls = map.next_value()?,
                        _ => {
                            let v: Value = map.next_value()?;
                            d.other |= !v.is_null();
                        }
                    }
                }
                Ok(d)
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// One `tool_calls` delta.
#[derive(Debug, Default, Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(rename = "type", default)]
    pub kind: Option<Value>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// A key borrowed from the body when it has no escapes (serde's own `Cow` always copies).
pub struct KeyStr<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// The text of a message `content`: a string, or the `text` of its parts.
pub fn push_content(content: &Value, out: &mut String) {
    match content {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for part in parts {
                if let Some(Value::String(t)) = part.get("text") {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_shapes() {
        let u: UsageView = serde_json::from_str(
            r#"{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!(
            u.to_usage(),
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_tokens: 4,
                ..Usage::default()
            }
        );
        let u: UsageView = serde_json::from_str(
            r#"{"input_tokens":7,"output_tokens":9,"input_tokens_details":{"cached_tokens":20}}"#,
        )
        .unwrap();
        assert_eq!(u.to_usage().cached_tokens, 7, "never more than the input");
        // Reasoning (chat and responses), and cache writes as the translating providers
        // report them.
        let u: UsageView = serde_json::from_str(
            r#"{"prompt_tokens":100,"completion_tokens":50,"completion_tokens_details":{"reasoning_tokens":30},
                "prompt_tokens_details":{"cached_tokens":10,"cache_write_tokens":60,"cache_write_1h_tokens":20}}"#,
        )
        .unwrap();
        assert_eq!(
            u.to_usage(),
            Usage {
                input_tokens: 100,
                output_tokens: 50,
                cached_tokens: 10,
                cache_write_tokens: 60,
                cache_write_1h_tokens: 20,
                reasoning_tokens: 30,
                images: 0
            }
        );
        let u: UsageView = serde_json::from_str(
            r#"{"input_tokens":7,"output_tokens":9,"output_tokens_details":{"reasoning_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!(u.to_usage().reasoning_tokens, 4);
        // Anthropic's own shape: input_tokens leaves the cache out; the split by TTL wins
        // over the total when both are there.
        let u: UsageView = serde_json::from_str(
            r#"{"input_tokens":5,"output_tokens":9,"cache_read_input_tokens":100,"cache_creation_input_tokens":40,
                "cache_creation":{"ephemeral_5m_input_tokens":30,"ephemeral_1h_input_tokens":10}}"#,
        )
        .unwrap();
        assert_eq!(
            u.to_usage(),
            Usage {
                input_tokens: 145,
                output_tokens: 9,
                cached_tokens: 100,
                cache_write_tokens: 40,
                cache_write_1h_tokens: 10,
                reasoning_tokens: 0,
                images: 0
            }
        );
        let u: UsageView = serde_json::from_str(
            r#"{"input_tokens":5,"output_tokens":1,"cache_creation_input_tokens":8}"#,
        )
        .unwrap();
        let usage = u.to_usage();
        assert_eq!(
            (
                usage.input_tokens,
                usage.cache_write_tokens,
                usage.cache_write_1h_tokens
            ),
            (13, 8, 0)
        );
        // A message read back from the cache (the Messages API's own usage).
        let u: UsageView = serde_json::from_str(
            r#"{"input_tokens":9,"cache_read_input_tokens":3,"cache_creation_input_tokens":2,"output_tokens":4}"#,
        )
        .unwrap();
        let usage = u.to_usage();
        assert_eq!(
            (usage.input_tokens, usage.cached_tokens, usage.output_tokens),
            (14, 3, 4)
        );
    }

    #[test]
    fn chunks_are_read_once_into_what_observers_need() {
        let c: ChunkView = serde_json::from_str(
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi","tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":null}],"usage":null}"#,
        )
        .unwrap();
        let mut text = String::new();
        c.push_text(&mut text);
        assert_eq!(text, "Hi{}");
        assert_eq!(c.text_len(), 4);
        assert!(!c.is_usage_chunk() && !c.is_error());
        let odd: ChunkView = serde_json::from_str(
            r#"{"choices":[{"delta":{"audio":{"id":"x"},"function_call":null}}]}"#,
        )
        .unwrap();
        let delta = odd.choices.unwrap().remove(0).delta.unwrap();
        assert!(delta.other);
        let usage: ChunkView =
            serde_json::from_str(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#).unwrap();
        assert!(usage.is_usage_chunk());
    }
}
