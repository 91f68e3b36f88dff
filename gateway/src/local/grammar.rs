//! Constrained decoding: a JSON (schema) grammar that masks the logits, so whatever the
//! model's weights prefer, the text it produces parses, and matches the schema.
//!
//! A schema compiles to a small graph of [`Node`]s. The matcher walks the output byte by
//! byte with a stack of [`Frame`]s; alternatives (`anyOf`, enums, the kinds of value
//! `{}` allows) are followed side by side as a set of stacks, so nothing is ever undone.
//! The tokens allowed next are found by walking the vocabulary's byte trie from the
//! current set of stacks (a subtree is dropped at its first impossible byte), and cached by
//! state: inside a long free string the state repeats and the mask is computed once.
//!
//! Budget: every node knows the fewest bytes that complete it. When the tokens left
//! (`max_tokens`, or the context) come close to that, only tokens that keep the answer
//! completable are allowed, so a closed, parseable answer always fits (the model is cut
//! short, and `finish_reason` says `length`).
//!
//! Supported schema keywords: `type` (one or a list), `properties`, `required`,
//! `additionalProperties`, `items`, `minItems`, `maxItems`, `enum`, `const`, `anyOf`,
//! `oneOf`, `allOf` (one entry), `$ref` into `$defs`/`definitions` (recursion included),
//! `minLength`, `maxLength`, `nullable`; annotations (`title`, `description`, `format`,
//! `default`, `examples`, `$schema`, `$id`, `$comment`, `strict`) are ignored. Anything else
//! is refused, naming the keyword, rather than silently not enforced. Properties come in
//! the schema's order; optional ones may be left out.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

pub type NodeId = u32;

/// Most whitespace bytes in a row between JSON tokens (keeps a model from padding forever).
const MAX_WS: u8 = 4;
/// Digits of an integer part or a fraction, and of an exponent.
const MAX_DIGITS: u8 = 16;
const MAX_EXP_DIGITS: u8 = 3;
/// Distinct matcher states whose masks are remembered (then the cache starts over).
const MASK_CACHE: usize = 4096;
/// Stacks followed at once (alternatives of alternatives could otherwise multiply).
const MAX_STACKS: usize = 64;
const INF: usize = usize::MAX / 4;

#[derive(Debug, Clone)]
pub enum Node {
    /// Any JSON value.
    Any,
    /// An object; `props` in order, each `(key, value, required)`, the key a literal
    /// node of its JSON string without the opening quote. `extra`: a schema for keys not in
    /// `props` (then keys are free strings), only when `props` is empty.
    Object {
        props: Vec<(NodeId, NodeId, bool)>,
        extra: Option<NodeId>,
    },
    Array {
        items: NodeId,
        min: u32,
        max: Option<u32>,
    },
    String {
        min: u32,
        max: Option<u32>,
    },
    Number {
        integer: bool,
    },
    /// Exact bytes (`const`, `enum` members, `true`, `null`, tool-call markers).
    Literal(Vec<u8>),
    Union(Vec<NodeId>),
    /// Children one after the other (tool-call markers around a JSON object).
    Seq(Vec<NodeId>),
    /// `item` between `min` and `max` times, `sep` between two.
    Repeat {
        item: NodeId,
        sep: Option<NodeId>,
        min: u32,
        max: u32,
    },
    /// A `$ref` resolved after the definitions were compiled.
    Ref(NodeId),
}

/// A compiled grammar: nodes, the root, and each node's shortest completion.
#[derive(Debug, Clone)]
pub struct Grammar {
    nodes: Vec<Node>,
    root: NodeId,
    min_len: Vec<usize>,
}

/// A schema the matcher cannot enforce: `path` names where (JSON pointer style).
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

const IGNORED: &[&str] = &[
    "title",
    "description",
    "format",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "strict",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Nodes every grammar starts with, at fixed ids.
const LIT_TRUE: NodeId = 0;
const LIT_FALSE: NodeId = 1;
const LIT_NULL: NodeId = 2;
const ANY: NodeId = 3;
const FREE_STRING: NodeId = 4;
const ANY_OBJECT: NodeId = 5;
const ANY_ARRAY: NodeId = 6;

/// Builds grammars. Public so tool-call formats can wrap a schema in markers.
pub struct Builder {
    nodes: Vec<Node>,
    defs: HashMap<String, NodeId>,
    pending: Vec<(NodeId, String)>,
    root_schema: Option<Value>,
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl Default for Builder {
    fn default() -> Self {
        let nodes = vec![
            Node::Literal(b"true".to_vec()),
            Node::Literal(b"false".to_vec()),
            Node::Literal(b"null".to_vec()),
            Node::Any,
            Node::String { min: 0, max: None },
            Node::Object {
                props: Vec::new(),
                extra: Some(ANY),
            },
            Node::Array {
                items: ANY,
                min: 0,
                max: None,
            },
        ];
        Self {
            nodes,
            defs: HashMap::new(),
            pending: Vec::new(),
            root_schema: None,
        }
    }
}

impl Builder {
    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    pub fn literal(&mut self, bytes: &[u8]) -> NodeId {
        self.add(Node::Literal(bytes.to_vec()))
    }

    /// Any JSON object (`response_format: json_object`).
    pub fn any_object(&mut self) -> NodeId {
        ANY_OBJECT
    }

    /// Compiles a JSON schema (its `$defs` resolved against itself).
    pub fn schema(&mut self, schema: &Value) -> Result<NodeId, SchemaError> {
        self.root_schema = Some(schema.clone());
        let id = self.compile(schema, "")?;
        self.resolve()?;
        Ok(id)
    }

    fn resolve(&mut self) -> Result<(), SchemaError> {
        while let Some((slot, reference)) = self.pending.pop() {
            let target = match self.defs.get(&reference) {
                Some(t) => *t,
                None => {
                    let schema = self
                        .root_schema
                        .as_ref()
                        .and_then(|root| lookup(root, &reference))
                        .cloned()
                        .ok_or_else(|| err(&reference, "$ref points nowhere"))?;
                    // Registered before compiling, so a recursive reference finds it.
                    let placeholder = self.add(Node::Any);
                    self.defs.insert(reference.clone(), placeholder);
                    let compiled = self.compile(&schema, &reference)?;
                    self.nodes[placeholder as usize] = Node::Ref(compiled);
                    placeholder
                }
            };
            self.nodes[slot as usize] = Node::Ref(target);
        }
        Ok(())
    }

    fn compile(&mut self, schema: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let obj = match schema {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => return Err(err(path, "a false schema allows nothing")),
            Value::Object(o) => o,
            _ => return Err(err(path, "a schema must be an object")),
        };
        for key in obj.keys() {
            let known = matches!(
                key.as_str(),
                "type"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "minItems"
                    | "maxItems"
                    | "enum"
                    | "const"
                    | "anyOf"
                    | "oneOf"
                    | "allOf"
                    | "$ref"
                    | "$defs"
                    | "definitions"
                    | "minLength"
                    | "maxLength"
                    | "nullable"
            ) || IGNORED.contains(&key.as_str());
            if !known {
                return Err(err(
                    path,
                    format!("the keyword '{key}' is not supported by local models"),
                ));
            }
        }
        let node = self.compile_inner(obj, path)?;
        if obj.get("nullable") == Some(&Value::Bool(true)) {
            let null = self.literal(b"null");
            return Ok(self.add(Node::Union(vec![node, null])));
        }
        Ok(node)
    }

    fn compile_inner(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, SchemaError> {
        if let Some(r) = obj.get("$ref") {
            let Some(r) = r.as_str() else {
                return Err(err(path, "$ref must be a string"));
            };
            let slot = self.add(Node::Any);
            self.pending.push((slot, r.to_owned()));
            return Ok(slot);
        }
        if let Some(c) = obj.get("const") {
            return Ok(self.literal(&json_bytes(c)));
        }
        if let Some(e) = obj.get("enum") {
            let Some(items) = e.as_array().filter(|a| !a.is_empty()) else {
                return Err(err(path, "enum must be a non-empty array"));
            };
            let alts = items.iter().map(|v| self.literal(&json_bytes(v))).collect();
            return Ok(self.add(Node::Union(alts)));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = obj.get(key) {
                let Some(items) = list.as_array().filter(|a| !a.is_empty()) else {
                    return Err(err(path, format!("{key} must be a non-empty array")));
                };
                let alts = items
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.compile(s, &format!("{path}/{key}/{i}")))
                    .collect::<Result<_, _>>()?;
                return Ok(self.add(Node::Union(alts)));
            }
        }
        if let Some(list) = obj.get("allOf") {
            return match list.as_array().map(Vec::as_slice) {
                Some([one]) => self.compile(one, &format!("{path}/allOf/0")),
                _ => Err(err(path, "allOf is supported with one schema only")),
            };
        }
        let types: Vec<&str> = match obj.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(err(path, "type must be a string or an array of strings")),
        };
        if types.is_empty() {
            // Untyped: what its keywords imply, else anything.
            if obj.contains_key("properties") {
                return self.object(obj, path);
            }
            if obj.contains_key("items") {
                return self.array(obj, path);
            }
            return Ok(ANY);
        }
        let mut alts = Vec::new();
        for t in types {
            alts.push(match t {
                "object" => self.object(obj, path)?,
                "array" => self.array(obj, path)?,
                "string" => {
                    let min = u32_of(obj, "minLength", path)?.unwrap_or(0);
                    let max = u32_of(obj, "maxLength", path)?;
                    if max.is_some_and(|m| m < min) {
                        return Err(err(path, "maxLength is below minLength"));
                    }
                    self.add(Node::String { min, max })
                }
                "number" => self.add(Node::Number { integer: false }),
                "integer" => self.add(Node::Number { integer: true }),
                "boolean" => {
                    let t = self.literal(b"true");
                    let f = self.literal(b"false");
                    self.add(Node::Union(vec![t, f]))
                }
                "null" => self.literal(b"null"),
                other => return Err(err(path, format!("unknown type '{other}'"))),
            });
        }
        Ok(if alts.len() == 1 {
            alts[0]
        } else {
            self.add(Node::Union(alts))
        })
    }

    fn object(&mut self, obj: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(err(path, "required must be an array of strings")),
        };
        let mut props = Vec::new();
        if let Some(p) = obj.get("properties") {
            let Some(p) = p.as_object() else {
                return Err(err(path, "properties must be an object"));
            };
            for (name, schema) in p {
                let value = self.compile(schema, &format!("{path}/properties/{name}"))?;
                let mut key = json_bytes(&Value::String(name.clone()));
                key.remove(0);
                let key = self.add(Node::Literal(key));
                props.push((key, value, required.contains(&name.as_str())));
            }
        }
        let names: Vec<&String> = obj
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        if let Some(missing) = required.iter().find(|r| !names.iter().any(|n| n == r)) {
            return Err(err(
                path,
                format!("required property '{missing}' is not in properties"),
            ));
        }
        let extra = match obj.get("additionalProperties") {
            _ if !props.is_empty() => None,
            None | Some(Value::Bool(true)) => Some(ANY),
            Some(Value::Bool(false)) => None,
            Some(s) => Some(self.compile(s, &format!("{path}/additionalProperties"))?),
        };
        Ok(self.add(Node::Object { props, extra }))
    }

    fn array(&mut self, obj: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let items = match obj.get("items") {
            None => ANY,
            Some(s) => self.compile(s, &format!("{path}/items"))?,
        };
        let min = u32_of(obj, "minItems", path)?.unwrap_or(0);
        let max = u32_of(obj, "maxItems", path)?;
        if max.is_some_and(|m| m < min) {
            return Err(err(path, "maxItems is below minItems"));
        }
        Ok(self.add(Node::Array { items, min, max }))
    }

    pub fn build(self, root: NodeId) -> Grammar {
        let min_len = min_lengths(&self.nodes);
        Grammar {
            nodes: self.nodes,
            root,
            min_len,
        }
    }
}

fn u32_of(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u32>, SchemaError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| err(path, format!("{key} must be a non-negative integer"))),
    }
}

/// `#/$defs/x`, `#/definitions/x`, or `#` itself.
fn lookup<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

/// Compact JSON, the form constants are generated in.
pub fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Fewest bytes that complete each node, by fixed point (recursive schemas converge).
fn min_lengths(nodes: &[Node]) -> Vec<usize> {
    let mut len = vec![INF; nodes.len()];
    loop {
        let mut changed = false;
        for (i, node) in nodes.iter().enumerate() {
            let m = |id: &NodeId| len[*id as usize];
            let v = match node {
                Node::Any => 1, // a digit
                Node::Object { props, .. } => {
                    let required: usize = props
                        .iter()
                        .filter(|p| p.2)
                        .map(|(k, v, _)| (3 + m(k)).saturating_add(m(v)))
                        .fold(0, usize::saturating_add);
                    if required == 0 {
                        2
                    } else {
                        required.saturating_add(1)
                    }
                }
                Node::Array { items, min, .. } => {
                    let n = *min as usize;
                    2usize
                        .saturating_add(n.saturating_mul(m(items)))
                        .saturating_add(n.saturating_sub(1))
                }
                Node::String { min, .. } => 2 + *min as usize,
                Node::Number { .. } => 1,
                Node::Literal(b) => b.len(),
                Node::Union(alts) => alts.iter().map(m).min().unwrap_or(INF),
                Node::Seq(parts) => parts.iter().map(m).fold(0usize, usize::saturating_add),
                Node::Repeat { item, sep, min, .. } => {
                    let n = *min as usize;
                    let s = sep.as_ref().map_or(0, m);
                    n.saturating_mul(m(item))
                        .saturating_add(n.saturating_sub(1).saturating_mul(s))
                }
                Node::Ref(t) => m(t),
            }
            .min(INF);
            if v < len[i] {
                len[i] = v;
                changed = true;
            }
        }
        if !changed {
            return len;
        }
    }
}

/// Where in a string: plain, after a backslash, or in `\uXXXX` (hex digits left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Esc {
    None,
    Backslash,
    Hex(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum NumPhase {
    Sign,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ObjPhase {
    /// After `{` or `,`: a key (or `}` right after `{`).
    Key { first: bool },
    /// A fixed key was read: `:` next.
    Colon { prop: u16 },
    /// A free key was read.
    FreeColon,
    /// After a value: `,` or `}`.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ArrPhase {
    Start,
    After,
    Comma,
}

/// One level of the matcher's stack. Small and `Copy`: stacks are cloned per trie node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Frame {
    /// A value of `node` starts here (whitespace first is allowed in JSON contexts).
    Value {
        node: NodeId,
        ws: u8,
        json: bool,
    },
    Str {
        node: NodeId,
        esc: Esc,
        /// UTF-8 continuation bytes still expected.
        cont: u8,
        /// Characters so far, counted only when the schema bounds the length.
        len: u32,
    },
    Lit {
        node: NodeId,
        pos: u32,
    },
    Num {
        integer: bool,
        phase: NumPhase,
        digits: u8,
    },
    Obj {
        node: NodeId,
        /// Index of the next property that may come.
        next: u16,
        phase: ObjPhase,
        ws: u8,
    },
    Arr {
        node: NodeId,
        count: u32,
        phase: ArrPhase,
        ws: u8,
    },
    Seq {
        node: NodeId,
        next: u16,
    },
    Rep {
        node: NodeId,
        count: u32,
        sep_next: bool,
    },
}

type Stack = Vec<Frame>;

/// The matcher's state: the stacks still possible. Empty = nothing fits any more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    stacks: Vec<Stack>,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

impl Grammar {
    pub fn start(&self) -> State {
        State {
            stacks: vec![vec![Frame::Value {
                node: self.root,
                ws: 0,
                json: false,
            }]],
        }
    }

    /// The state after `bytes`; `None` when they do not fit.
    pub fn advance(&self, state: &State, bytes: &[u8]) -> Option<State> {
        let mut stacks = state.stacks.clone();
        for &b in bytes {
            let mut next = Vec::new();
            for s in &stacks {
                self.step(s.clone(), b, &mut next, 0);
            }
            dedup(&mut next);
            if next.is_empty() {
                return None;
            }
            stacks = next;
        }
        Some(State { stacks })
    }

    /// The text may end here.
    pub fn accepting(&self, state: &State) -> bool {
        state.stacks.iter().any(|s| self.can_end(s))
    }

    /// Nothing may follow: the answer is complete.
    pub fn finished(&self, state: &State) -> bool {
        state.stacks.iter().all(Vec::is_empty) && !state.stacks.is_empty()
    }

    /// Fewest bytes that complete the text from `state` (`INF` when it cannot end).
    pub fn remaining(&self, state: &State) -> usize {
        state
            .stacks
            .iter()
            .map(|s| self.stack_remaining(s))
            .min()
            .unwrap_or(INF)
    }

    fn can_end(&self, stack: &Stack) -> bool {
        stack.iter().all(|f| self.frame_remaining(f) == 0)
    }

    fn stack_remaining(&self, stack: &Stack) -> usize {
        stack
            .iter()
            .map(|f| self.frame_remaining(f))
            .fold(0usize, usize::saturating_add)
    }

    /// Fewest bytes to finish one frame (its children already on the stack above it are
    /// counted by their own frames).
    fn frame_remaining(&self, f: &Frame) -> usize {
        let ml = |id: NodeId| self.min_len[id as usize];
        match *f {
            Frame::Value { node, .. } => ml(node),
            Frame::Str {
                node,
                esc,
                cont,
                len,
            } => {
                let min = match &self.nodes[node as usize] {
                    Node::String { min, .. } => *min,
                    _ => 0,
                };
                let pending = match esc {
                    Esc::None => 0,
                    Esc::Backslash => 1,
                    Esc::Hex(n) => n as usize,
                };
                pending + cont as usize + (min.saturating_sub(len)) as usize + 1
            }
            Frame::Lit { node, pos } => match &self.nodes[node as usize] {
                Node::Literal(b) => b.len().saturating_sub(pos as usize),
                _ => 0,
            },
            Frame::Num { phase, .. } => match phase {
                NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::Exp => 0,
                _ => 1,
            },
            Frame::Obj {
                node, next, phase, ..
            } => {
                let Node::Object { props, extra } = &self.nodes[node as usize] else {
                    return INF;
                };
                // `,"key":value` for each required property from `from` on.
                let required_from = |from: usize| -> usize {
                    props
                        .iter()
                        .skip(from)
                        .filter(|p| p.2)
                        .map(|(k, v, _)| (3 + ml(*k)).saturating_add(ml(*v)))
                        .fold(0, usize::saturating_add)
                };
                let close = 1;
                match phase {
                    ObjPhase::Key { first } => {
                        let r = required_from(next as usize);
                        if r > 0 {
                            r.saturating_sub(1).saturating_add(close)
                        } else if first {
                            close
                        } else {
                            let fixed = props
                                .iter()
                                .skip(next as usize)
                                .map(|(k, v, _)| (2 + ml(*k)).saturating_add(ml(*v)))
                                .min();
                            let free = extra.map(|x| 3usize.saturating_add(ml(x)));
                            fixed
                                .into_iter()
                                .chain(free)
                                .min()
                                .unwrap_or(INF)
                                .saturating_add(close)
                        }
                    }
                    ObjPhase::Colon { prop } => {
                        let value = props.get(prop as usize).map_or(INF, |p| ml(p.1));
                        (1 + close)
                            .saturating_add(value)
                            .saturating_add(required_from(prop as usize + 1))
                    }
                    ObjPhase::FreeColon => (1 + close).saturating_add(extra.map_or(INF, ml)),
                    ObjPhase::After => required_from(next as usize).saturating_add(close),
                }
            }
            Frame::Arr {
                node, count, phase, ..
            } => {
                let Node::Array { items, min, .. } = &self.nodes[node as usize] else {
                    return INF;
                };
                let item = ml(*items);
                let left = (*min).saturating_sub(count) as usize;
                match phase {
                    ArrPhase::Start if left == 0 => 1,
                    ArrPhase::Start => left
                        .saturating_mul(item)
                        .saturating_add(left - 1)
                        .saturating_add(1),
                    ArrPhase::After => left
                        .saturating_mul(item.saturating_add(1))
                        .saturating_add(1),
                    ArrPhase::Comma => {
                        let k = left.max(1);
                        k.saturating_mul(item)
                            .saturating_add(k - 1)
                            .saturating_add(1)
                    }
                }
            }
            Frame::Seq { node, next } => match &self.nodes[node as usize] {
                Node::Seq(parts) => parts
                    .iter()
                    .skip(next as usize)
                    .map(|p| ml(*p))
                    .fold(0usize, usize::saturating_add),
                _ => 0,
            },
            Frame::Rep {
                node,
                count,
                sep_next,
            } => match &self.nodes[node as usize] {
                Node::Repeat { item, sep, min, .. } => {
                    let left = (*min).saturating_sub(count) as usize;
                    let s = sep.map_or(0, ml);
                    let first_sep = usize::from(sep_next && left > 0) * s;
                    left.saturating_mul(ml(*item))
                        .saturating_add(left.saturating_sub(1).saturating_mul(s))
                        .saturating_add(first_sep)
                }
                _ => 0,
            },
        }
    }

    /// Feeds `b` to the top of `stack`; pushes every resulting stack to `out`.
    fn step(&self, mut stack: Stack, b: u8, out: &mut Vec<Stack>, depth: u32) {
        if depth > 64 || out.len() >= MAX_STACKS {
            return;
        }
        let Some(top) = stack.pop() else {
            return; // complete: nothing more fits
        };
        match top {
            Frame::Value { node, ws, json } => {
                if json && is_ws(b) {
                    if ws < MAX_WS {
                        stack.push(Frame::Value {
                            node,
                            ws: ws + 1,
                            json,
                        });
                        out.push(stack);
                    }
                    return;
                }
                self.start_value(stack, node, b, out, depth);
            }
            Frame::Str {
                node,
                esc,
                cont,
                len,
            } => {
                let (min, max, counted) = match &self.nodes[node as usize] {
                    Node::String { min, max } => (*min, *max, *min > 0 || max.is_some()),
                    _ => (0, None, false),
                };
                let bump = |len: u32| if counted { len + 1 } else { len };
                let frame = |esc, cont, len| Frame::Str {
                    node,
                    esc,
                    cont,
                    len,
                };
                match esc {
                    Esc::Backslash => {
                        let next = match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                                frame(Esc::None, 0, bump(len))
                            }
                            b'u' => frame(Esc::Hex(4), 0, len),
                            _ => return,
                        };
                        stack.push(next);
                        out.push(stack);
                    }
                    Esc::Hex(n) => {
                        if !b.is_ascii_hexdigit() {
                            return;
                        }
                        stack.push(if n == 1 {
                            frame(Esc::None, 0, bump(len))
                        } else {
                            frame(Esc::Hex(n - 1), 0, len)
                        });
                        out.push(stack);
                    }
                    Esc::None if cont > 0 => {
                        if !(0x80..=0xBF).contains(&b) {
                            return;
                        }
                        let len = if cont == 1 { bump(len) } else { len };
                        stack.push(frame(Esc::None, cont - 1, len));
                        out.push(stack);
                    }
                    Esc::None => {
                        let at_max = max.is_some_and(|m| len >= m);
                        match b {
                            b'"' if len >= min => out.push(stack), // closed: popped
                            b'\\' if !at_max => {
                                stack.push(frame(Esc::Backslash, 0, len));
                                out.push(stack);
                            }
                            0x20..=0x7F if !at_max && b != b'\\' && b != b'"' => {
                                stack.push(frame(Esc::None, 0, bump(len)));
                                out.push(stack);
                            }
                            0xC2..=0xDF if !at_max => {
                                stack.push(frame(Esc::None, 1, len));
                                out.push(stack);
                            }
                            0xE0..=0xEF if !at_max => {
                                stack.push(frame(Esc::None, 2, len));
                                out.push(stack);
                            }
                            0xF0..=0xF4 if !at_max => {
                                stack.push(frame(Esc::None, 3, len));
                                out.push(stack);
                            }
                            _ => {}
                        }
                    }
                }
            }
            Frame::Lit { node, pos } => {
                let Node::Literal(bytes) = &self.nodes[node as usize] else {
                    return;
                };
                if bytes.get(pos as usize) != Some(&b) {
                    return;
                }
                if pos as usize + 1 < bytes.len() {
                    stack.push(Frame::Lit { node, pos: pos + 1 });
                }
                out.push(stack);
            }
            Frame::Num {
                integer,
                phase,
                digits,
            } => {
                let num = |phase, digits| Frame::Num {
                    integer,
                    phase,
                    digits,
                };
                let next = match (phase, b) {
                    (NumPhase::Sign, b'0') => Some(num(NumPhase::Zero, 1)),
                    (NumPhase::Sign, b'1'..=b'9') => Some(num(NumPhase::Int, 1)),
                    (NumPhase::Int, b'0'..=b'9') if digits < MAX_DIGITS => {
                        Some(num(NumPhase::Int, digits + 1))
                    }
                    (NumPhase::Zero | NumPhase::Int, b'.') if !integer => {
                        Some(num(NumPhase::Dot, 0))
                    }
                    (NumPhase::Dot, b'0'..=b'9') => Some(num(NumPhase::Frac, 1)),
                    (NumPhase::Frac, b'0'..=b'9') if digits < MAX_DIGITS => {
                        Some(num(NumPhase::Frac, digits + 1))
                    }
                    (NumPhase::Zero | NumPhase::Int | NumPhase::Frac, b'e' | b'E') if !integer => {
                        Some(num(NumPhase::E, 0))
                    }
                    (NumPhase::E, b'+' | b'-') => Some(num(NumPhase::ESign, 0)),
                    (NumPhase::E | NumPhase::ESign, b'0'..=b'9') => Some(num(NumPhase::Exp, 1)),
                    (NumPhase::Exp, b'0'..=b'9') if digits < MAX_EXP_DIGITS => {
                        Some(num(NumPhase::Exp, digits + 1))
                    }
                    _ => None,
                };
                if let Some(f) = next {
                    let mut s = stack.clone();
                    s.push(f);
                    out.push(s);
                }
                // A complete number ends at the first byte that is not part of it.
                if matches!(
                    phase,
                    NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::Exp
                ) {
                    self.step(stack, b, out, depth + 1);
                }
            }
            Frame::Obj {
                node,
                next,
                phase,
                ws,
            } => self.step_object(stack, node, next, phase, ws, b, out),
            Frame::Arr {
                node,
                count,
                phase,
                ws,
            } => {
                let Node::Array { items, min, max } = &self.nodes[node as usize] else {
                    return;
                };
                if is_ws(b) {
                    if ws < MAX_WS {
                        stack.push(Frame::Arr {
                            node,
                            count,
                            phase,
                            ws: ws + 1,
                        });
                        out.push(stack);
                    }
                    return;
                }
                let room = max.is_none_or(|m| count < m);
                match (phase, b) {
                    (ArrPhase::Start | ArrPhase::After, b']') if count >= *min => {
                        out.push(stack);
                    }
                    (ArrPhase::After, b',') if room => {
                        stack.push(Frame::Arr {
                            node,
                            count,
                            phase: ArrPhase::Comma,
                            ws: 0,
                        });
                        out.push(stack);
                    }
                    (ArrPhase::Start | ArrPhase::Comma, _) if room => {
                        stack.push(Frame::Arr {
                            node,
                            count: count + 1,
                            phase: ArrPhase::After,
                            ws: 0,
                        });
                        self.start_value(stack, *items, b, out, depth);
                    }
                    _ => {}
                }
            }
            Frame::Seq { node, next } => {
                let Node::Seq(parts) = &self.nodes[node as usize] else {
                    return;
                };
                match parts.get(next as usize) {
                    Some(part) => {
                        if (next as usize) + 1 < parts.len() {
                            stack.push(Frame::Seq {
                                node,
                                next: next + 1,
                            });
                        }
                        let part = *part;
                        self.start_value(stack, part, b, out, depth);
                    }
                    None => self.step(stack, b, out, depth + 1),
                }
            }
            Frame::Rep {
                node,
                count,
                sep_next,
            } => {
                let Node::Repeat { item, sep, max, .. } = &self.nodes[node as usize] else {
                    return;
                };
                if count < *max {
                    let mut s = stack.clone();
                    s.push(Frame::Rep {
                        node,
                        count: count + 1,
                        sep_next: true,
                    });
                    match (sep_next, sep) {
                        (true, Some(sep)) => {
                            s.push(Frame::Value {
                                node: *item,
                                ws: 0,
                                json: false,
                            });
                            self.start_value(s, *sep, b, out, depth);
                        }
                        _ => self.start_value(s, *item, b, out, depth),
                    }
                }
                // Or the repetition is over (when enough came) and `b` is for the parent.
                if let Node::Repeat { min, .. } = &self.nodes[node as usize]
                    && count >= *min
                {
                    self.step(stack, b, out, depth + 1);
                }
            }
        }
    }

    fn start_value(&self, mut stack: Stack, node: NodeId, b: u8, out: &mut Vec<Stack>, depth: u32) {
        if depth > 64 {
            return;
        }
        match &self.nodes[node as usize] {
            Node::Ref(t) => self.start_value(stack, *t, b, out, depth + 1),
            Node::Union(alts) => {
                for alt in alts {
                    self.start_value(stack.clone(), *alt, b, out, depth + 1);
                }
            }
            Node::Any => {
                let frame = match b {
                    b'{' => Frame::Obj {
                        node: ANY_OBJECT,
                        next: 0,
                        phase: ObjPhase::Key { first: true },
                        ws: 0,
                    },
                    b'[' => Frame::Arr {
                        node: ANY_ARRAY,
                        count: 0,
                        phase: ArrPhase::Start,
                        ws: 0,
                    },
                    b'"' => Frame::Str {
                        node,
                        esc: Esc::None,
                        cont: 0,
                        len: 0,
                    },
                    b't' | b'f' | b'n' => {
                        let id = match b {
                            b't' => LIT_TRUE,
                            b'f' => LIT_FALSE,
                            _ => LIT_NULL,
                        };
                        Frame::Lit { node: id, pos: 1 }
                    }
                    b'-' => Frame::Num {
                        integer: false,
                        phase: NumPhase::Sign,
                        digits: 0,
                    },
                    b'0' => Frame::Num {
                        integer: false,
                        phase: NumPhase::Zero,
                        digits: 1,
                    },
                    b'1'..=b'9' => Frame::Num {
                        integer: false,
                        phase: NumPhase::Int,
                        digits: 1,
                    },
                    _ => return,
                };
                stack.push(frame);
                out.push(stack);
            }
            Node::Object { .. } => {
                if b == b'{' {
                    stack.push(Frame::Obj {
                        node,
                        next: 0,
                        phase: ObjPhase::Key { first: true },
                        ws: 0,
                    });
                    out.push(stack);
                }
            }
            Node::Array { .. } => {
                if b == b'[' {
                    stack.push(Frame::Arr {
                        node,
                        count: 0,
                        phase: ArrPhase::Start,
                        ws: 0,
                    });
                    out.push(stack);
                }
            }
            Node::String { .. } => {
                if b == b'"' {
                    stack.push(Frame::Str {
                        node,
                        esc: Esc::None,
                        cont: 0,
                        len: 0,
                    });
                    out.push(stack);
                }
            }
            Node::Number { integer } => {
                let frame = |phase, digits| Frame::Num {
                    integer: *integer,
                    phase,
                    digits,
                };
                let f = match b {
                    b'-' => frame(NumPhase::Sign, 0),
                    b'0' => frame(NumPhase::Zero, 1),
                    b'1'..=b'9' => frame(NumPhase::Int, 1),
                    _ => return,
                };
                stack.push(f);
                out.push(stack);
            }
            Node::Literal(bytes) => {
                if bytes.first() == Some(&b) {
                    if bytes.len() > 1 {
                        stack.push(Frame::Lit { node, pos: 1 });
                    }
                    out.push(stack);
                }
            }
            Node::Seq(_) => {
                stack.push(Frame::Seq { node, next: 0 });
                self.step(stack, b, out, depth + 1);
            }
            Node::Repeat { .. } => {
                stack.push(Frame::Rep {
                    node,
                    count: 0,
                    sep_next: false,
                });
                self.step(stack, b, out, depth + 1);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_object(
        &self,
        mut stack: Stack,
        node: NodeId,
        next: u16,
        phase: ObjPhase,
        ws: u8,
        b: u8,
        out: &mut Vec<Stack>,
    ) {
        let Node::Object { props, extra } = &self.nodes[node as usize] else {
            return;
        };
        let obj = |next, phase, ws| Frame::Obj {
            node,
            next,
            phase,
            ws,
        };
        if is_ws(b) {
            if ws < MAX_WS {
                stack.push(obj(next, phase, ws + 1));
                out.push(stack);
            }
            return;
        }
        let rest_optional = props.iter().skip(next as usize).all(|p| !p.2);
        match phase {
            ObjPhase::Key { first } => {
                if b == b'}' && first && rest_optional {
                    out.push(stack);
                    return;
                }
                if b != b'"' {
                    return;
                }
                // Any property from `next` on, skipping only optional ones.
                for (i, (key, _, required)) in props.iter().enumerate().skip(next as usize) {
                    let mut s = stack.clone();
                    s.push(obj(i as u16, ObjPhase::Colon { prop: i as u16 }, 0));
                    s.push(Frame::Lit { node: *key, pos: 0 });
                    out.push(s);
                    if *required {
                        break;
                    }
                }
                if extra.is_some() {
                    stack.push(obj(next, ObjPhase::FreeColon, 0));
                    stack.push(Frame::Str {
                        node: FREE_STRING,
                        esc: Esc::None,
                        cont: 0,
                        len: 0,
                    });
                    out.push(stack);
                }
            }
            ObjPhase::Colon { prop } => {
                if b == b':'
                    && let Some((_, value, _)) = props.get(prop as usize)
                {
                    stack.push(obj(prop + 1, ObjPhase::After, 0));
                    stack.push(Frame::Value {
                        node: *value,
                        ws: 0,
                        json: true,
                    });
                    out.push(stack);
                }
            }
            ObjPhase::FreeColon => {
                if b == b':'
                    && let Some(x) = extra
                {
                    stack.push(obj(next, ObjPhase::After, 0));
                    stack.push(Frame::Value {
                        node: *x,
                        ws: 0,
                        json: true,
                    });
                    out.push(stack);
                }
            }
            ObjPhase::After => match b {
                b'}' if rest_optional => out.push(stack),
                b',' => {
                    let more = (next as usize) < props.len() || extra.is_some();
                    if more {
                        stack.push(obj(next, ObjPhase::Key { first: false }, 0));
                        out.push(stack);
                    }
                }
                _ => {}
            },
        }
    }
}

fn dedup(stacks: &mut Vec<Stack>) {
    let mut seen = std::collections::HashSet::new();
    stacks.retain(|s| seen.insert(s.clone()));
    stacks.truncate(MAX_STACKS);
}

/// The vocabulary as a byte trie: tokens sharing a prefix share the matcher's work on it.
pub struct TokenTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    tokens: Vec<u32>,
}

impl TokenTrie {
    /// `bytes[id]`: the bytes a token adds to the text; `None` for special tokens (never
    /// allowed under a grammar, but for end-of-sequence where the grammar may end).
    pub fn new(bytes: &[Option<Vec<u8>>]) -> Self {
        let mut nodes = vec![TrieNode::default()];
        for (id, b) in bytes.iter().enumerate() {
            let Some(b) = b.as_ref().filter(|b| !b.is_empty()) else {
                continue;
            };
            let mut at = 0usize;
            for &byte in b {
                at = match nodes[at].children.iter().find(|(c, _)| *c == byte) {
                    Some((_, child)) => *child as usize,
                    None => {
                        nodes.push(TrieNode::default());
                        let child = nodes.len() - 1;
                        nodes[at].children.push((byte, child as u32));
                        child
                    }
                };
            }
            nodes[at].tokens.push(id as u32);
        }
        Self { nodes }
    }
}

/// Tokens that fit after a state, each with the fewest bytes still needed after it.
type Allowed = Arc<Vec<(u32, u32)>>;

/// A grammar with its remembered masks: one per request (choices share it).
pub struct Matcher {
    grammar: Arc<Grammar>,
    trie: Arc<TokenTrie>,
    cache: HashMap<State, Allowed>,
    cached_tokens: usize,
}

/// Tokens remembered across all cached masks before the cache starts over.
const CACHE_TOKENS: usize = 8 << 20;

impl Matcher {
    pub fn new(grammar: Arc<Grammar>, trie: Arc<TokenTrie>) -> Self {
        Self {
            grammar,
            trie,
            cache: HashMap::new(),
            cached_tokens: 0,
        }
    }

    pub fn grammar(&self) -> &Grammar {
        &self.grammar
    }

    /// The tokens allowed after `state` when at most `tokens_left` more may be generated
    /// (this one included): those that still leave room to finish. Sorted by id.
    pub fn allowed(&mut self, state: &State, tokens_left: usize) -> (Vec<u32>, bool) {
        let all = match self.cache.get(state) {
            Some(a) => a.clone(),
            None => {
                let a = Arc::new(self.compute(state));
                if self.cached_tokens + a.len() > CACHE_TOKENS || self.cache.len() >= MASK_CACHE {
                    self.cache.clear();
                    self.cached_tokens = 0;
                }
                self.cached_tokens += a.len();
                self.cache.insert(state.clone(), a.clone());
                a
            }
        };
        let room = tokens_left.saturating_sub(1);
        let fits: Vec<u32> = all
            .iter()
            .filter(|(_, rest)| *rest as usize <= room)
            .map(|(t, _)| *t)
            .collect();
        // `true` when the budget, not the grammar, ruled tokens out.
        let squeezed = fits.len() < all.len();
        if fits.is_empty() {
            // No token keeps the answer completable in budget (the estimate is
            // conservative): let the grammar alone decide rather than stop.
            return (all.iter().map(|(t, _)| *t).collect(), squeezed);
        }
        (fits, squeezed)
    }

    fn compute(&self, state: &State) -> Vec<(u32, u32)> {
        // Inside a free string (the state most of a JSON answer is generated in) a plain
        // ASCII byte leaves the state as it is: such bytes are walked without stepping
        // the matcher (`None` below = "the state we started from").
        let free_string = state.stacks.iter().all(|s| match s.last() {
            Some(Frame::Str {
                node,
                esc: Esc::None,
                cont: 0,
                ..
            }) => !matches!(
                self.grammar.nodes[*node as usize],
                Node::String { min, max } if min > 0 || max.is_some()
            ),
            _ => false,
        });
        let same_rest = self.grammar.remaining(state).min(u32::MAX as usize) as u32;
        let mut out = Vec::new();
        let mut todo: Vec<(usize, Option<Vec<Stack>>)> = vec![(0, None)];
        while let Some((at, stacks)) = todo.pop() {
            for &(byte, child) in &self.trie.nodes[at].children {
                let plain = (0x20..0x7F).contains(&byte) && byte != b'"' && byte != b'\\';
                let next = if free_string && stacks.is_none() && plain {
                    None
                } else {
                    let mut next = Vec::new();
                    for s in stacks.as_ref().unwrap_or(&state.stacks) {
                        self.grammar.step(s.clone(), byte, &mut next, 0);
                    }
                    if next.is_empty() {
                        continue;
                    }
                    dedup(&mut next);
                    Some(next)
                };
                let node = &self.trie.nodes[child as usize];
                if !node.tokens.is_empty() {
                    let rest = match &next {
                        None => same_rest,
                        Some(next) => next
                            .iter()
                            .map(|s| self.grammar.stack_remaining(s))
                            .min()
                            .unwrap_or(INF)
                            .min(u32::MAX as usize) as u32,
                    };
                    out.extend(node.tokens.iter().map(|t| (*t, rest)));
                }
                if !node.children.is_empty() {
                    todo.push((child as usize, next));
                }
            }
        }
        out.sort_unstable();
        out
    }
}
