//! Streams in and out of the cache. An entry is always the whole answer object
//! (`chat.completion`, `text_completion`, an embeddings `list`), whichever way it came:
//!
//! - [`Assembler`] reads a streamed miss as it passes and builds that object: per choice the
//!   content, refusal, tool-call deltas (arguments concatenated by tool index) and finish
//!   reason, plus the usage chunk. Only a stream that ended with `[DONE]` and carried no
//!   error event gives an entry. Deltas it cannot rebuild faithfully (log probabilities,
//!   legacy `function_call`, audio) give none: such streams are simply not cached.
//! - [`to_sse`] replays an entry as SSE in OpenAI's framing: one chunk per choice with its
//!   whole message, one with its finish reason, a usage chunk (`choices: []`) when
//!   `stream_options.include_usage` is set, then `data: [DONE]`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::openai::Endpoint;

/// Checks a non-streamed answer before it is stored: a JSON object of the endpoint's kind.
pub fn valid_entry(endpoint: Endpoint, body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if map.contains_key("error") {
        return false;
    }
    let object = map.get("object").and_then(Value::as_str);
    match endpoint {
        Endpoint::ChatCompletions => {
            object == Some("chat.completion") && map.get("choices").is_some_and(Value::is_array)
        }
        Endpoint::Completions => {
            object == Some("text_completion") && map.get("choices").is_some_and(Value::is_array)
        }
        Endpoint::Embeddings => {
            object == Some("list") && map.get("data").is_some_and(Value::is_array)
        }
        Endpoint::ImagesGenerations | Endpoint::Moderations => false,
    }
}

/// An entry replayed as an SSE body; `None` when the entry is not a chat or text completion.
pub fn to_sse(entry: &[u8], include_usage: bool) -> Option<Bytes> {
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
    for field in [
        "id",
        "created",
        "model",
        "system_fingerprint",
        "service_tier",
    ] {
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
    let mut out = String::with_capacity(entry.len() + 512);
    let mut event = |value: Map<String, Value>| {
        out.push_str("data: ");
        out.push_str(&Value::Object(value).to_string());
        out.push_str("\n\n");
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
    out.push_str("data: [DONE]\n\n");
    Some(Bytes::from(out))
}

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
    /// Bytes of an event not yet complete.
    pending: Vec<u8>,
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
            pending: Vec::new(),
            head: Map::new(),
            choices: BTreeMap::new(),
            usage: None,
            done: false,
            spoiled: !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions),
            budget,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.spoiled {
            return;
        }
        if bytes.len() > self.budget {
            self.spoiled = true;
            return;
        }
        self.budget -= bytes.len();
        self.pending.extend_from_slice(bytes);
        while let Some(end) = find_event_end(&self.pending) {
            let (event, sep) = end;
            let raw: Vec<u8> = self.pending.drain(..event + sep).collect();
            self.event(&raw[..event]);
            if self.spoiled {
                return;
            }
        }
    }

    fn event(&mut self, raw: &[u8]) {
        let Ok(text) = std::str::from_utf8(raw) else {
            self.spoiled = true;
            return;
        };
        let mut data = String::new();
        for line in text.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if data.is_empty() {
            return;
        }
        if self.done {
            // Anything after `[DONE]` is unexpected.
            self.spoiled = true;
            return;
        }
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        match serde_json::from_str::<Value>(&data) {
            Ok(Value::Object(chunk)) => self.chunk(chunk),
            _ => self.spoiled = true,
        }
    }

    fn chunk(&mut self, mut chunk: Map<String, Value>) {
        if chunk.contains_key("error") {
            self.spoiled = true;
            return;
        }
        for field in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(v) = chunk.get(field).filter(|v| !v.is_null()) {
                self.head.entry(field).or_insert_with(|| v.clone());
            }
        }
        if let Some(usage) = chunk.remove("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage);
        }
        let Some(Value::Array(choices)) = chunk.remove("choices") else {
            return;
        };
        for choice in choices {
            let Value::Object(mut choice) = choice else {
                self.spoiled = true;
                return;
            };
            if choice.get("logprobs").is_some_and(|l| !l.is_null()) {
                self.spoiled = true;
                return;
            }
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let acc = self.choices.entry(index).or_default();
            if let Some(reason) = choice.remove("finish_reason").filter(|r| !r.is_null()) {
                acc.finish_reason = reason;
            }
            if !self.chat {
                if let Some(text) = choice.get("text").and_then(Value::as_str) {
                    acc.content.get_or_insert_with(String::new).push_str(text);
                }
                continue;
            }
            let Some(Value::Object(delta)) = choice.remove("delta") else {
                continue;
            };
            for (field, value) in delta {
                match (field.as_str(), value) {
                    (_, Value::Null) => {}
                    ("role", role) => acc.role = Some(role),
                    ("content", Value::String(s)) => {
                        acc.content.get_or_insert_with(String::new).push_str(&s)
                    }
                    ("refusal", Value::String(s)) => {
                        acc.refusal.get_or_insert_with(String::new).push_str(&s)
                    }
                    ("tool_calls", Value::Array(calls)) => {
                        for call in calls {
                            if !tool_delta(acc, call) {
                                self.spoiled = true;
                                return;
                            }
                        }
                    }
                    _ => {
                        self.spoiled = true;
                        return;
                    }
                }
            }
        }
    }

    /// The whole answer, when the stream ended cleanly.
    pub fn finish(self) -> Option<Bytes> {
        if self.spoiled || !self.done || !self.pending.iter().all(u8::is_ascii_whitespace) {
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
fn tool_delta(acc: &mut Choice, call: Value) -> bool {
    let Value::Object(call) = call else {
        return false;
    };
    let Some(index) = call.get("index").and_then(Value::as_u64) else {
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
    if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
        tool.0 = id.clone();
    }
    if let Some(kind) = call.get("type").filter(|v| !v.is_null()) {
        tool.1 = kind.clone();
    }
    if let Some(Value::Object(function)) = call.get("function") {
        if let Some(name) = function.get("name").and_then(Value::as_str) {
            tool.2.push_str(name);
        }
        if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
            tool.3.push_str(arguments);
        }
    }
    true
}

/// The end of the first complete event in `buf`: (length of the event, length of the
/// blank-line separator).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn assemble(endpoint: Endpoint, stream: &str) -> Option<Value> {
        let mut a = Assembler::new(endpoint, 1 << 20);
        // Fed in awkward pieces, as the network would.
        for piece in stream.as_bytes().chunks(7) {
            a.push(piece);
        }
        a.finish().map(|b| serde_json::from_slice(&b).unwrap())
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
        let sse = to_sse(v.to_string().as_bytes(), true).unwrap();
        let again = assemble(
            Endpoint::ChatCompletions,
            std::str::from_utf8(&sse).unwrap(),
        )
        .unwrap();
        assert_eq!(again, v);
        let without = to_sse(v.to_string().as_bytes(), false).unwrap();
        assert!(!std::str::from_utf8(&without).unwrap().contains("usage"));
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
        let mut small = Assembler::new(Endpoint::ChatCompletions, 100);
        small.push(CHAT.as_bytes());
        assert!(small.finish().is_none());
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
        assert!(valid_entry(Endpoint::Completions, v.to_string().as_bytes()));
        let sse = to_sse(v.to_string().as_bytes(), true).unwrap();
        let again = assemble(Endpoint::Completions, std::str::from_utf8(&sse).unwrap()).unwrap();
        assert_eq!(again, v);
    }
}
