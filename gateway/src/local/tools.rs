//! Tool calls the way the model was trained to write them, found from its chat template:
//!
//! - **Hermes / Qwen 2.5**: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
//!   one block per call (parallel calls are several blocks).
//! - **Llama 3.1+** (JSON tool calling): the whole answer is
//!   `{"name": ..., "parameters": {...}}`, one call.
//!
//! The template renders `tools` into the prompt itself; here a call is constrained (with
//! `tool_choice: required` or a named function the answer is generated under a grammar
//! of exactly these shapes, the arguments under the function's JSON schema) and parsed
//! back into OpenAI's `tool_calls`. With `auto` the model writes freely until it starts a
//! call (the marker, or `{` first for Llama), and from there the grammar keeps the call
//! well-formed.

use serde_json::{Value, json};

use super::grammar::{Builder, Grammar, Node, SchemaError};

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3,
}

/// Most calls in one answer when `parallel_tool_calls` is on.
pub const MAX_PARALLEL: u32 = 8;

impl ToolFormat {
    /// From the chat template's source; `None` when it does not render `tools` in a
    /// format known here.
    pub fn detect(template: &str) -> Option<Self> {
        if !template.contains("tools") {
            return None;
        }
        if template.contains("<tool_call>") {
            Some(Self::Hermes)
        } else if template.contains("\"parameters\"") || template.contains("<|python_tag|>") {
            Some(Self::Llama3)
        } else {
            None
        }
    }

    /// The key the arguments go under.
    fn arguments_key(self) -> &'static str {
        match self {
            Self::Hermes => "arguments",
            Self::Llama3 => "parameters",
        }
    }

    /// Where a call starts in free text (`auto`): the marker, anywhere; for Llama the
    /// answer's first non-blank character being `{`.
    pub fn trigger(self, text: &str) -> Option<usize> {
        match self {
            Self::Hermes => text.find("<tool_call>"),
            Self::Llama3 => {
                let start = text.len() - text.trim_start().len();
                text[start..].starts_with('{').then_some(start)
            }
        }
    }

    /// The longest text a trigger could still grow from (held back while streaming).
    pub fn may_trigger(self, text: &str) -> usize {
        match self {
            Self::Hermes => {
                let marker = "<tool_call>";
                (1..marker.len())
                    .rev()
                    .find(|&i| text.ends_with(&marker[..i]))
                    .unwrap_or(0)
            }
            // Nothing but blanks yet: the first character decides.
            Self::Llama3 if text.trim().is_empty() => text.len(),
            Self::Llama3 => 0,
        }
    }

    /// The grammar of an answer that is only tool calls, each to one of `tools`.
    pub fn grammar(self, tools: &[Tool], parallel: bool) -> Result<Grammar, SchemaError> {
        let mut b = Builder::default();
        let mut calls = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            let args = b.schema(&tool.parameters).map_err(|e| SchemaError {
                path: format!(
                    "tools[{}].function.parameters{}",
                    tool.index.unwrap_or(i),
                    e.path
                ),
                message: e.message,
            })?;
            let name = b.literal(&super::grammar::json_bytes(&Value::String(
                tool.name.clone(),
            )));
            let name_key = b.literal(b"name\"");
            let mut args_key = self.arguments_key().as_bytes().to_vec();
            args_key.push(b'"');
            let args_key = b.literal(&args_key);
            calls.push(b.add(Node::Object {
                props: vec![(name_key, name, true), (args_key, args, true)],
                extra: None,
            }));
        }
        let call = if calls.len() == 1 {
            calls[0]
        } else {
            b.add(Node::Union(calls))
        };
        let root = match self {
            Self::Hermes => {
                // The marker, then a newline as Qwen writes it (optional: a call a model
                // starts without one in `auto` mode is still constrained from there).
                let with_newline = b.literal(b"<tool_call>\n");
                let bare = b.literal(b"<tool_call>");
                let open = b.add(Node::Union(vec![with_newline, bare]));
                let close = b.literal(b"\n</tool_call>");
                let block = b.add(Node::Seq(vec![open, call, close]));
                let sep = b.literal(b"\n");
                b.add(Node::Repeat {
                    item: block,
                    sep: Some(sep),
                    min: 1,
                    max: if parallel { MAX_PARALLEL } else { 1 },
                })
            }
            Self::Llama3 => call,
        };
        Ok(b.build(root))
    }

    /// The calls in a generated answer, and the text before them. `None` when the text
    /// holds no well-formed call (it is then plain content).
    pub fn parse(self, text: &str) -> Option<(String, Vec<Call>)> {
        let start = self.trigger(text)?;
        let content = text[..start].trim_end().to_owned();
        let mut calls = Vec::new();
        match self {
            Self::Hermes => {
                let mut rest = &text[start..];
                while let Some(open) = rest.find("<tool_call>") {
                    let body = &rest[open + "<tool_call>".len()..];
                    let (inner, after) = match body.find("</tool_call>") {
                        Some(end) => (&body[..end], &body[end + "</tool_call>".len()..]),
                        None => (body, ""),
                    };
                    calls.push(Call::from_json(inner.trim(), "arguments")?);
                    rest = after;
                }
            }
            Self::Llama3 => calls.push(Call::from_json(text[start..].trim(), "parameters")?),
        }
        (!calls.is_empty()).then_some((content, calls))
    }
}

/// A function the client offered (`tools[i]`).
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub parameters: Value,
    /// Its place in the request's `tools`, for error messages.
    pub index: Option<usize>,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

impl Call {
    fn from_json(text: &str, key: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let name = v.get("name")?.as_str()?.to_owned();
        let args = v
            .get(key)
            .or_else(|| v.get("arguments"))
            .or_else(|| v.get("parameters"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        let arguments = match args {
            Value::String(s) => s,
            other => other.to_string(),
        };
        Some(Self { name, arguments })
    }
}
