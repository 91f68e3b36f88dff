//! Chat prompts: the model folder's Jinja chat template (`tokenizer_config.json`'s
//! `chat_template`), rendered with minijinja the way transformers'
//! `apply_chat_template(..., tools=..., add_generation_prompt=True)` does.
//!
//! Python's string and dict methods that templates call (`.strip()`, `.startswith()`,
//! `.items()`) come from minijinja-contrib's pycompat; `tojson` writes JSON as Python's
//! `json.dumps` does (`", "` and `": "` separators, `indent=`), since the model was trained
//! on exactly those bytes; `strftime_now` (Llama 3.2's date line) is provided. A template
//! that still fails to render is a 400 naming `messages`; a folder without a template
//! uses a plain `role: content` layout.

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

/// One chat message of plain text (tests and simple callers).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
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

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
pub fn python_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_python_json(value, indent, 0, &mut out);
    out
}

fn write_python_json(value: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        // Python writes floats with a fraction (`1.0`); serde_json agrees.
        other => out.push_str(&other.to_string()),
    }
}

/// Today's date as `strftime` would write it, for the few directives templates use.
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// From `tokenizer_config.json`; `Ok(None)` when it has no template.
    pub fn from_tokenizer_config(config: &Value) -> Result<Option<Self>, String> {
        let source = match config.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: the one called "default" ("tool_use" is the same
            // model's template for tools; "default" renders `tools` too where it can).
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
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_filter(
            "tojson",
            |value: JValue, kwargs: Kwargs| -> Result<String, minijinja::Error> {
                let indent: Option<usize> = kwargs.get("indent")?;
                let _: Option<bool> = kwargs.get("ensure_ascii")?;
                let _: Option<bool> = kwargs.get("sort_keys")?;
                let _: Option<JValue> = kwargs.get("separators")?;
                kwargs.assert_all_used()?;
                let json = serde_json::to_value(&value).map_err(|e| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string())
                })?;
                Ok(python_json(&json, indent))
            },
        );
        env.add_template_owned("chat", source.clone())
            .map_err(|e| format!("chat_template: {e}"))?;
        Ok(Some(Self {
            env,
            source,
            bos_token: token_text(config, "bos_token"),
            eos_token: token_text(config, "eos_token"),
        }))
    }

    /// The template's Jinja source (to recognise its tool-call format).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages` (OpenAI message objects, content as text), ending where
    /// the assistant's answer begins. `tools`: the request's tool list, as sent.
    pub fn render(&self, messages: &[Value], tools: Option<&Value>) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                tools => tools,
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
pub fn plain_prompt(messages: &[Value]) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(m.get("role").and_then(Value::as_str).unwrap_or_default());
        out.push_str(": ");
        out.push_str(m.get("content").and_then(Value::as_str).unwrap_or_default());
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
