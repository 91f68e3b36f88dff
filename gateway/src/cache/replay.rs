//! Streams in and out of the cache. An entry is always the whole answer object
//! (`chat.completion`, `text_completion`, an embeddings `list`), whichever way it came:
//!
//! - [`Assembler`] reads a streamed miss's events as they pass (their views, parsed once
//!   for every observer) and builds that object: per choice the
//!   content, refusal, tool-call deltas (arguments concatenated by tool index) and finish
//!   reason, plus the usage chunk. Only a stream that ended with `[DONE]` and carried no
//!   error event gives an entry. Deltas it cannot rebuild faithfully (log probabilities,
//!   legacy `function_call`, audio) give none: such streams are simply not cached.
//! - [`to_events`] replays an entry as events in OpenAI's framing: one chunk per choice with its
//!   whole message, one with its finish reason, a usage chunk (`choices: []`) when
//!   `stream_options.include_usage` is set, then `data: [DONE]`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::exchange::view::{AnswerView, ChunkView, ToolCallDelta};
use crate::exchange::{Endpoint, Event};

/// Checks a non-streamed answer before it is stored: a JSON object of the endpoint's kind
/// (its view, parsed once by the provider).
pub fn valid_entry(endpoint: Endpoint, view: &AnswerView) -> bool {
    if view.is_error() {
        return false;
    }
    let object = view.object.as_deref();
    match endpoint {
        Endpoint::ChatCompletions => object == Some("chat.completion") && view.has_choices(),
        Endpoint::Completions => object == Some("text_completion") && view.has_choices(),
        Endpoint::Embeddings => object == Some("list") && view.has_data(),
        Endpoint::Messages => object == Some("message"),
        Endpoint::Responses => object == Some("response"),
        _ => false,
    }
}

/// An entry replayed as stream events; `None` when the entry is not a chat or text
/// completion.
pub fn to_events(entry: &[u8], include_usage: bool) -> Option<Vec<Event>> {
    let Value::Object(mut object) = serde_json::from_slice::<Value>(entry).ok()? else {
        return None;
    };
    let chat = match object.get("object").and_then(Value::as_str) {
        Some("chat.completion") => true,
        Some("text_completion") => false,
        _ => return None,
    };
    let usage = object.remove("usage");
    let Some(Value::Array(choices)) = object.remove("choices") else {
        return None;
    };
    // Every chunk repeats the answer's identity, as OpenAI's do.
    let mut head = Map::new();
    for field in HEAD_FIELDS {
        if let Some(v) = object.get(field) {
            head.insert(field.to_owned(), v.clone());
        }
    }
    head.insert(
        "object".into(),
        Value::from(if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        }),
    );
    let chunk = |choices: Value| {
        let mut c = head.clone();
        c.insert("choices".into(), choices);
        c
    };
    let mut out = Vec::with_capacity(2 * choices.len() + 2);
    let mut event = |value: Map<String, Value>| {
        out.push(Event::data(Value::Object(value).to_string()));
    };
    for choice in choices {
        let Value::Object(mut choice) = choice else {
            return None;
        };
        let index = choice.remove("index").unwrap_or(Value::from(0));
        let finish = choice.remove("finish_reason").unwrap_or(Value::Null);
        let logprobs = choice.remove("logprobs").unwrap_or(Value::Null);
        if chat {
            let mut delta = match choice.remove("message") {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (i, call) in calls.iter_mut().enumerate() {
                    if let Value::Object(call) = call {
                        call.insert("index".into(), Value::from(i));
                    }
                }
            }
            event(chunk(json!([{
                "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null
            }])));
            event(chunk(json!([{
                "index": index, "delta": {}, "logprobs": null, "finish_reason": finish
            }])));
        } else {
            let text = choice.remove("text").unwrap_or(Value::from(""));
            event(chunk(json!([{
                "text": text, "index": index, "logprobs": logprobs, "finish_reason": finish
            }])));
        }
    }
    if include_usage && let Some(usage) = usage.filter(|u| !u.is_null()) {
        let mut last = chunk(json!([]));
        last.insert("usage".into(), usage);
        event(last);
    }
    out.push(Event::done());
    Some(out)
}

/// The fields that name an answer, repeated on each of its chunks.
const HEAD_FIELDS: [&str; 5] = [
    "id",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

/// One choice being assembled.
#[derive(Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    /// By tool index: (id, type, name, arguments).
    tools: BTreeMap<u64, (Value, Value, String, String)>,
    finish_reason: Value,
}

/// Builds the whole answer from a streamed one; see the module docs.
pub struct Assembler {
    chat: bool,
    head: Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
    done: bool,
    /// An error event, an unparsable event, or a delta we cannot rebuild.
    spoiled: bool,
    /// Stop assembling past this many bytes of stream.
    budget: usize,
}

impl Assembler {
    pub fn new(endpoint: Endpoint, budget: usize) -> Self {
        Self {
            chat: endpoint == Endpoint::ChatCompletions,
            head: Map::new(),
            choices: BTreeMap::new(),
            usage: None,
            done: false,
            spoiled: !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions),
            budget,
        }
    }

    /// Takes the next event of the stream (its view, parsed once for every observer).
    pub fn push(&mut self, event: &mut Event) {
        if self.spoiled {
            return;
        }
        let len = event.bytes().len();
        if len > self.budget {
            self.spoiled = true;
            return;
        }
        self.budget -= len;
        if self.done {
            // Anything after `[DONE]` is unexpected.
            self.spoiled = true;
            return;
        }
        if event.is_done() {
            self.done = true;
            return;
        }
        match event.view() {
            Some(view) => self.chunk(view),
            None => self.spoiled = true,
        }
    }

    fn chunk(&mut self, chunk: &ChunkView) {
        if chunk.is_error() {
            self.spoiled = true;
            return;
        }
        for (field, value) in [
            ("id", &chunk.id),
            ("created", &chunk.created),
            ("model", &chunk.model),
            ("system_fingerprint", &chunk.system_fingerprint),
            ("service_tier", &chunk.service_tier),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !v.is_null()) {
                self.head.entry(field).or_insert_with(|| v.clone());
            }
        }
        if let Some(usage) = chunk.usage.as_ref().filter(|u| !u.is_null()) {
            self.usage = Some(usage.clone());
        }
        for choice in chunk.choices.iter().flatten() {
            if choice.logprobs.as_ref().is_some_and(|l| !l.is_null()) {
                self.spoiled = true;
                return;
            }
            let index = choice.index.unwrap_or(0);
            let acc = self.choices.entry(index).or_default();
            if let Some(reason) = choice.finish_reason.as_ref().filter(|r| !r.is_null()) {
                acc.finish_reason = reason.clone();
            }
            if !self.chat {
                if let Some(text) = &choice.text {
                    acc.content.get_or_insert_with(String::new).push_str(text);
                }
                continue;
            }
            let Some(delta) = &choice.delta else {
                continue;
            };
            if delta.other {
                self.spoiled = true;
                return;
            }
            if let Some(role) = delta.role.as_ref().filter(|r| !r.is_null()) {
                acc.role = Some(role.clone());
            }
            match &delta.content {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => acc.content.get_or_insert_with(String::new).push_str(s),
                Some(_) => {
                    self.spoiled = true;
                    return;
                }
            }
            if let Some(refusal) = &delta.refusal {
                acc.refusal
                    .get_or_insert_with(String::new)
                    .push_str(refusal);
            }
            for call in delta.tool_calls.iter().flatten() {
                if !tool_delta(acc, call) {
                    self.spoiled = true;
                    return;
                }
            }
        }
    }

    /// The whole answer, when the stream ended cleanly.
    pub fn finish(self) -> Option<Bytes> {
        if self.spoiled || !self.done {
            return None;
        }
        let mut object = self.head;
        object.insert(
            "object".into(),
            Value::from(if self.chat {
                "chat.completion"
            } else {
                "text_completion"
            }),
        );
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| {
                if self.chat {
                    let mut message = Map::new();
                    message.insert("role".into(), c.role.unwrap_or(Value::from("assistant")));
                    message.insert("content".into(), c.content.map_or(Value::Null, Value::from));
                    message.insert("refusal".into(), c.refusal.map_or(Value::Null, Value::from));
                    if !c.tools.is_empty() {
                        let calls: Vec<Value> = c
                            .tools
                            .into_values()
                            .map(|(id, kind, name, arguments)| {
                                json!({"id": id, "type": kind, "function": {"name": name, "arguments": arguments}})
                            })
                            .collect();
                        message.insert("tool_calls".into(), Value::Array(calls));
                    }
                    json!({"index": index, "message": message, "logprobs": null, "finish_reason": c.finish_reason})
                } else {
                    json!({"text": c.content.unwrap_or_default(), "index": index, "logprobs": null, "finish_reason": c.finish_reason})
                }
            })
            .collect();
        object.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            object.insert("usage".into(), usage);
        }
        Some(Bytes::from(Value::Object(object).to_string()))
    }
}

/// Merges one `tool_calls` delta; false when it is not one we understand.
fn tool_delta(acc: &mut Choice, call: &ToolCallDelta) -> bool {
    let Some(index) = call.index else {
        return false;
    };
    let tool = acc.tools.entry(index).or_insert_with(|| {
        (
            Value::Null,
            Value::from("function"),
            String::new(),
            String::new(),
        )
    });
    if let Some(id) = call.id.as_ref().filter(|v| !v.is_null()) {
        tool.0 = id.clone();
    }
    if let Some(kind) = call.kind.as_ref().filter(|v| !v.is_null()) {
        tool.1 = kind.clone();
    }
    if let Some(function) = &call.function {
        if let Some(name) = &function.name {
            tool.2.push_str(name);
        }
        if let Some(arguments) = &function.arguments {
            tool.3.push_str(arguments);
        }
    }
    true
}

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn assemble_with(endpoint: Endpoint, stream: &str, budget: usize) -> Option<Value> {
        let mut a = Assembler::new(endpoint, budget);
        let mut framer = crate::sse::Framer::new(1 << 20);
        let mut frames = Vec::new();
        // Fed in awkward pieces, as the network would.
        for piece in stream.as_bytes().chunks(7) {
            framer
                .feed(&Bytes::copy_from_slice(piece), &mut frames)
                .unwrap();
            for frame in frames.drain(..) {
                a.push(&mut Event::from_frame(frame));
            }
        }
        a.finish().map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn assemble(endpoint: Endpoint, stream: &str) -> Option<Value> {
        assemble_with(endpoint, stream, 1 << 20)
    }

    fn replay(entry: &Value, include_usage: bool) -> String {
        to_events(entry.to_string().as_bytes(), include_usage)
            .unwrap()
            .iter()
            .map(|e| String::from_utf8(e.encode().to_vec()).unwrap())
            .collect()
    }

    const CHAT: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":1,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":1,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn a_chat_stream_becomes_a_completion_and_back() {
        let v = assemble(Endpoint::ChatCompletions, CHAT).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let call = &v["choices"][1]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert_eq!(v["choices"][1]["message"]["content"], Value::Null);
        assert_eq!(v["usage"]["total_tokens"], 5);
        // Replayed and assembled again: the same answer.
        let sse = replay(&v, true);
        let again = assemble(Endpoint::ChatCompletions, &sse).unwrap();
        assert_eq!(again, v);
        assert!(!replay(&v, false).contains("usage"));
    }

    #[test]
    fn cut_or_failed_streams_give_nothing() {
        let cut = &CHAT[..CHAT.len() - "data: [DONE]\n\n".len()];
        assert!(assemble(Endpoint::ChatCompletions, cut).is_none());
        let failed = format!(
            "{}data: {{\"error\":{{\"message\":\"x\"}}}}\n\n",
            &CHAT[..200]
        );
        assert!(assemble(Endpoint::ChatCompletions, &failed).is_none());
        assert!(assemble_with(Endpoint::ChatCompletions, CHAT, 100).is_none());
    }

    #[test]
    fn text_completions_round_trip() {
        let stream = concat!(
            "data: {\"id\":\"t\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"text\":\"a \",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"t\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"text\":\"b\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let v = assemble(Endpoint::Completions, stream).unwrap();
        assert_eq!(v["choices"][0]["text"], "a b");
        let view = AnswerView::parse(v.to_string().as_bytes()).unwrap();
        assert!(valid_entry(Endpoint::Completions, &view));
        let sse = replay(&v, true);
        let again = assemble(Endpoint::Completions, &sse).unwrap();
        assert_eq!(again, v);
    }
}
