//! Chat prompts: the model folder's Jinja chat template (`tokenizer_config.json`'s
//! `chat_template`), rendered with minijinja the way transformers'
//! `apply_chat_template(..., add_generation_prompt=True)` does.
//!
//! Python's string and dict methods that templates call (`.strip()`, `.startswith()`,
//! `.items()`) come from minijinja-contrib's pycompat. A template that still fails to
//! render is a 400 naming `messages`; a folder without a template uses a plain
//! `role: content` layout.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

/// One chat message as the template sees it: text content only.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A token in tokenizer_config.json: a string, or `{"content": ...}` (AddedToken).
fn token_text(config: &Value, key: &str) -> String {
    match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// From `tokenizer_config.json`; `Ok(None)` when it has no template.
    pub fn from_tokenizer_config(config: &Value) -> Result<Option<Self>, String> {
        let source = match config.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: the one called "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_owned)
                .ok_or("chat_template: no template named 'default'")?,
            _ => return Ok(None),
        };
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source)
            .map_err(|e| format!("chat_template: {e}"))?;
        Ok(Some(Self {
            env,
            bos_token: token_text(config, "bos_token"),
            eos_token: token_text(config, "eos_token"),
        }))
    }

    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("rejected").to_owned(),
                _ => format!("the model's chat template failed: {}", e.kind()),
            })
    }
}

/// The layout for models without a template: one `role: content` line per message.
pub fn plain_prompt(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&m.role);
        out.push_str(": ");
        out.push_str(&m.content);
        out.push('\n');
    }
    out.push_str("assistant:");
    out
}

/// The text of a message's `content`: a string, or the text parts of an array (images
/// and other parts cannot reach a text-only model and are refused).
pub fn content_text(content: &Value) -> Result<String, &'static str> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(text)) => out.push_str(text),
                    _ => return Err("only text content parts are supported by local models"),
                }
            }
            Ok(out)
        }
        _ => Err("must be a string or an array of text parts"),
    }
}
