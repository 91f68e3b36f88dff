//! Counting what a request used: from the upstream's own `usage` when it reports one, else
//! with a tokenizer over the prompt and the text that was delivered.
//!
//! The upstream's numbers are the ones its invoice uses, so they always win; the tokenizer
//! is the fallback for answers without `usage` (servers that do not report it, streams cut
//! before the final usage chunk, clients gone midway). It uses OpenAI's encodings:
//! `o200k_base` for the GPT-4o / o-series / GPT-4.1 / GPT-5 families and `cl100k_base`
//! otherwise, which is close for most other models too.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;
use tollgate_admin::store::Usage;

use crate::openai::{Endpoint, Request};

/// Tokens OpenAI adds per chat message (role and framing) and once per reply, in its
/// published counting recipe.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_REPLY: u64 = 3;

/// An OpenAI `usage` object, any of its shapes: chat, completions and embeddings
/// (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`) or images
/// and responses (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`).
#[derive(Debug, Default, Deserialize)]
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
}

#[derive(Debug, Default, Deserialize)]
struct DetailsView {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl UsageView {
    pub fn to_usage(&self) -> Usage {
        let input = self.prompt_tokens.or(self.input_tokens).unwrap_or(0);
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .or(self.input_tokens_details.as_ref())
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        Usage {
            input_tokens: input,
            output_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cached_tokens: cached.min(input),
            images: 0,
        }
    }
}

/// The parts of an answer (a whole JSON body, or one stream chunk) the meter reads.
#[derive(Debug, Default, Deserialize)]
pub struct AnswerView {
    #[serde(default)]
    pub usage: Option<UsageView>,
    #[serde(default)]
    pub choices: Option<Vec<ChoiceView>>,
    /// Images (and embeddings): only counted, never copied.
    #[serde(default)]
    pub data: Option<Vec<IgnoredAny>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChoiceView {
    /// Chat answers.
    #[serde(default)]
    message: Option<MessageView>,
    /// Chat stream chunks.
    #[serde(default)]
    delta: Option<MessageView>,
    /// Completions (answers and chunks).
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct MessageView {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallView>>,
}

#[derive(Debug, Default, Deserialize)]
struct ToolCallView {
    #[serde(default)]
    function: Option<FunctionView>,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionView {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl AnswerView {
    /// Appends the generated text of every choice (content, refusal, tool call names and
    /// arguments) to `out`: what the tokenizer counts as output.
    pub fn push_text(&self, out: &mut String) {
        for choice in self.choices.iter().flatten() {
            if let Some(text) = &choice.text {
                out.push_str(text);
            }
            for m in [&choice.message, &choice.delta].into_iter().flatten() {
                if let Some(content) = &m.content {
                    push_content(content, out);
                }
                if let Some(refusal) = &m.refusal {
                    out.push_str(refusal);
                }
                for call in m.tool_calls.iter().flatten() {
                    if let Some(f) = &call.function {
                        out.push_str(f.name.as_deref().unwrap_or_default());
                        out.push_str(f.arguments.as_deref().unwrap_or_default());
                    }
                }
            }
        }
    }

    /// A stream's final usage chunk: `usage` and no choices.
    pub fn is_usage_chunk(&self) -> bool {
        self.usage.is_some() && self.choices.as_ref().is_none_or(Vec::is_empty)
    }
}

/// The text of a message `content`: a string, or the `text` of its parts.
fn push_content(content: &Value, out: &mut String) {
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

/// The prompt of a request, kept as text for the tokenizer fallback: copied once when the
/// request passes the meter (the body itself moves on to the upstream).
#[derive(Debug, Default, Clone)]
pub struct Prompt {
    texts: Vec<String>,
    /// Tokens known without a tokenizer: token-id prompts, per-message framing.
    known: u64,
}

impl Prompt {
    pub fn of(request: &Request) -> Self {
        let mut prompt = Prompt::default();
        let body = &request.body;
        match request.endpoint {
            Endpoint::ChatCompletions => {
                if let Some(Value::Array(messages)) = body.get("messages") {
                    for m in messages {
                        prompt.chat_message(m);
                    }
                    prompt.known += TOKENS_PER_REPLY;
                }
            }
            Endpoint::Completions => prompt.inputs(body.get("prompt")),
            Endpoint::Embeddings | Endpoint::Moderations => prompt.inputs(body.get("input")),
            // Priced per image; the prompt's tokens are not what is billed.
            Endpoint::ImagesGenerations => {}
        }
        prompt
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

fn push_str_fields(map: &Map<String, Value>, fields: &[&str], out: &mut String) {
    for field in fields {
        if let Some(Value::String(s)) = map.get(*field) {
            out.push_str(s);
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
    /// Reads a whole JSON answer of `endpoint`. A body that is not JSON counts nothing.
    pub fn from_json(endpoint: Endpoint, body: &[u8]) -> Self {
        let Ok(view) = serde_json::from_slice::<AnswerView>(body) else {
            return Self::default();
        };
        let mut seen = Seen {
            usage: view.usage.as_ref().map(UsageView::to_usage),
            ..Seen::default()
        };
        if endpoint == Endpoint::ImagesGenerations {
            seen.images = view
                .data
                .as_ref()
                .map_or(0, |d| u32::try_from(d.len()).unwrap_or(u32::MAX));
        }
        if seen.usage.is_none() {
            view.push_text(&mut seen.output_text);
        }
        seen
    }

    /// Whether [`Seen::resolve`] would run the tokenizer.
    pub fn needs_tokenizer(&self, endpoint: Endpoint) -> bool {
        self.usage.is_none() && endpoint != Endpoint::ImagesGenerations
    }

    /// The final counts and whether they are the upstream's: its `usage` when reported,
    /// else the tokenizer over the prompt and the delivered text. Images answers count
    /// their images (the upstream's own count) and no tokens unless it reported some.
    pub fn resolve(self, endpoint: Endpoint, model: &str, prompt: &Prompt) -> (Usage, bool) {
        if let Some(mut usage) = self.usage {
            usage.images = self.images;
            return (usage, true);
        }
        if endpoint == Endpoint::ImagesGenerations {
            let usage = Usage {
                images: self.images,
                ..Usage::default()
            };
            return (usage, true);
        }
        let usage = Usage {
            input_tokens: prompt.count(model),
            output_tokens: count_tokens(model, &self.output_text),
            cached_tokens: 0,
            images: 0,
        };
        (usage, false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(endpoint: Endpoint, body: Value) -> Request {
        Request::parse(endpoint, body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn reported_usage_wins() {
        let body = json!({"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "prompt_tokens_details": {"cached_tokens": 4}}});
        let seen = Seen::from_json(Endpoint::ChatCompletions, body.to_string().as_bytes());
        assert!(!seen.needs_tokenizer(Endpoint::ChatCompletions));
        let (usage, reported) = seen.resolve(Endpoint::ChatCompletions, "m", &Prompt::default());
        assert!(reported);
        assert_eq!(
            usage,
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_tokens: 4,
                images: 0
            }
        );
    }

    #[test]
    fn images_are_counted() {
        let body = json!({"created": 1, "data": [{"url": "a"}, {"url": "b"}]});
        let seen = Seen::from_json(Endpoint::ImagesGenerations, body.to_string().as_bytes());
        let (usage, reported) = seen.resolve(Endpoint::ImagesGenerations, "m", &Prompt::default());
        assert_eq!((usage.images, usage.input_tokens, reported), (2, 0, true));
        // gpt-image-1 reports tokens as input_tokens / output_tokens.
        let body = json!({"data": [{"b64_json": "x"}], "usage": {"input_tokens": 7, "output_tokens": 9,
            "input_tokens_details": {"cached_tokens": 2}}});
        let seen = Seen::from_json(Endpoint::ImagesGenerations, body.to_string().as_bytes());
        let (usage, _) = seen.resolve(Endpoint::ImagesGenerations, "m", &Prompt::default());
        assert_eq!(
            usage,
            Usage {
                input_tokens: 7,
                output_tokens: 9,
                cached_tokens: 2,
                images: 1
            }
        );
    }

    #[test]
    fn without_usage_the_tokenizer_counts() {
        let req = request(
            Endpoint::ChatCompletions,
            json!({"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Say hello."}, {"type": "image_url", "image_url": {"url": "data:x"}}]}
            ]}),
        );
        let prompt = Prompt::of(&req);
        let body = json!({"choices": [{"message": {"content": "Hello there, friend."}}]});
        let seen = Seen::from_json(Endpoint::ChatCompletions, body.to_string().as_bytes());
        assert!(seen.needs_tokenizer(Endpoint::ChatCompletions));
        let (usage, reported) = seen.resolve(Endpoint::ChatCompletions, "gpt-4o-mini", &prompt);
        assert!(!reported);
        // "Hello there, friend." is 5 tokens in o200k_base.
        assert_eq!(usage.output_tokens, 5);
        // 2 messages × 3 + 3 for the reply, plus role and content tokens.
        let content = count_tokens("gpt-4o-mini", "system")
            + count_tokens("gpt-4o-mini", "You are terse.")
            + count_tokens("gpt-4o-mini", "user")
            + count_tokens("gpt-4o-mini", "Say hello.");
        assert_eq!(usage.input_tokens, 9 + content);
    }

    #[test]
    fn token_id_prompts_count_without_a_tokenizer() {
        let req = request(
            Endpoint::Completions,
            json!({"model": "x", "prompt": [[1, 2, 3], [4, 5]]}),
        );
        assert_eq!(Prompt::of(&req).count("x"), 5);
        let req = request(
            Endpoint::Embeddings,
            json!({"model": "x", "input": [1, 2, 3]}),
        );
        assert_eq!(Prompt::of(&req).count("x"), 3);
    }

    #[test]
    fn usage_chunks_are_recognised() {
        let usage: AnswerView = serde_json::from_value(
            json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
        )
        .unwrap();
        assert!(usage.is_usage_chunk());
        let content: AnswerView = serde_json::from_value(
            json!({"choices": [{"delta": {"content": "x"}}], "usage": null}),
        )
        .unwrap();
        assert!(!content.is_usage_chunk());
        let mut text = String::new();
        content.push_text(&mut text);
        assert_eq!(text, "x");
    }
}
