//! Text generation with Llama-family models (Llama 2/3, Qwen 2/2.5), served with
//! continuous batching and per-request output buffers.
//!
//! The model's thread keeps a set of running sequences (every choice of every admitted
//! request). Each turn it admits what waits in the queue (up to [`MAX_RUNNING`]), then runs
//! one decode step for all running sequences together ([`Decoder::step`]): N streams
//! share one pass over the weights. A new request's prompt is read (prefill) when it is
//! admitted; its `n` choices share that work.
//!
//! The thread never waits on a client. What a request produces goes into its own
//! [`Outbox`], bounded by `stream_buffer` events: a client that far behind is cut (a
//! final [`Event::Overflow`] with the tokens generated so far, which are billed, and
//! `tollgate_local_streams_cut_total`), and a client that went away is noticed at its
//! next token, which frees its place in the batch.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokenizers::Tokenizer;
use tokio::sync::Notify;

use super::decoder::{Arch, Decoder, SeqCache};
use super::embed::Busy;
use super::grammar::{Grammar, Matcher, State, TokenTrie};
use super::sampling::{PromptToken, Rng, TokenLogprob, pick};
use super::template::{ChatTemplate, plain_prompt};
use super::tools::{Call, ToolFormat};
use super::{LoadError, read_json, safetensors_files};

pub use super::sampling::Sampler;

/// Sequences decoded together at most; more requests wait in the queue.
pub const MAX_RUNNING: usize = 32;
/// Events a request may have waiting for its client when `stream_buffer` is not set.
pub const DEFAULT_STREAM_BUFFER: usize = 1024;

/// A loaded decoder model, its tokenizer and chat template.
pub struct LlamaModel {
    decoder: Decoder,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    eos: Vec<u32>,
    /// Put first in completion prompts when the tokenizer does not add it itself
    /// (`add_bos_token` in tokenizer_config.json).
    bos: Option<u32>,
    /// The bytes each token adds to the text (`None`: special tokens).
    token_bytes: Vec<Option<Vec<u8>>>,
    trie: Arc<TokenTrie>,
    tool_format: Option<ToolFormat>,
    /// `<|fim_prefix|>`, `<|fim_suffix|>`, `<|fim_middle|>` when the vocabulary has them.
    fim: Option<[u32; 3]>,
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
        }
    }
}

impl LlamaModel {
    pub fn load(dir: &Path, config: &Value) -> Result<Self, LoadError> {
        let arch = match super::model_kind(dir)?.0 {
            super::ModelKind::Qwen2 => Arch::Qwen2,
            _ => Arch::Llama,
        };
        Decoder::check(config, arch)?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| LoadError::new(format!("tokenizer.json: {e}")))?;
        let tok_config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
        let template = ChatTemplate::from_tokenizer_config(&tok_config)
            .map_err(|e| LoadError::new(format!("tokenizer_config.json: {e}")))?;
        let device = super::device();
        let files = safetensors_files(dir)?;
        let vb = super::weights(&files, &device)?;
        let decoder = Decoder::load(config, arch, &vb)?;
        let mut eos = decoder.config.eos.clone();
        let eos_text = match tok_config.get("eos_token") {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        if let Some(id) = eos_text.and_then(|t| tokenizer.token_to_id(t))
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        // Chat models end a turn with their own marker, which may not be `eos_token`.
        for marker in ["<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>"] {
            if let Some(id) = tokenizer.token_to_id(marker)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }
        let token_bytes = token_bytes(&tokenizer, decoder.config.vocab);
        let trie = Arc::new(TokenTrie::new(&token_bytes));
        let tool_format = template
            .as_ref()
            .and_then(|t| ToolFormat::detect(t.source()));
        let fim = match (
            tokenizer.token_to_id("<|fim_prefix|>"),
            tokenizer.token_to_id("<|fim_suffix|>"),
            tokenizer.token_to_id("<|fim_middle|>"),
        ) {
            (Some(p), Some(s), Some(m)) => Some([p, s, m]),
            _ => None,
        };
        let add_bos = tok_config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            bos: decoder.config.bos.filter(|_| add_bos),
            decoder,
            tokenizer,
            template,
            eos,
            token_bytes,
            trie,
            tool_format,
            fim,
        })
    }

    /// The decoder itself (tests drive batches by hand).
    #[cfg(test)]
    pub(crate) fn decoder_for_tests(&self) -> &Decoder {
        &self.decoder
    }

    /// The longest prompt plus completion the model takes.
    pub fn context_length(&self) -> usize {
        self.decoder.config.max_positions
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder.config.vocab
    }

    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn trie(&self) -> Arc<TokenTrie> {
        self.trie.clone()
    }

    /// Token ids of a chat prompt (rendered by the chat template, with `tools`).
    pub fn chat_prompt_with(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
    ) -> Result<Vec<u32>, String> {
        let text = match &self.template {
            Some(t) => t.render(messages, tools)?,
            None => plain_prompt(messages),
        };
        // The template writes the special tokens (BOS) itself.
        self.encode(&text, self.template.is_none())
    }

    /// Token ids of a chat prompt of plain text messages.
    pub fn chat_prompt(&self, messages: &[super::template::Message]) -> Result<Vec<u32>, String> {
        let values: Vec<Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        self.chat_prompt_with(&values, None)
    }

    /// Token ids of a completion prompt, starting with BOS as the model was trained.
    pub fn completion_prompt(&self, prompt: &str) -> Result<Vec<u32>, String> {
        self.encode(prompt, true)
    }

    /// A fill-in-the-middle prompt (`suffix`); `None` when the model has no FIM tokens.
    pub fn fim_prompt(&self, prefix: &str, suffix: &str) -> Option<Result<Vec<u32>, String>> {
        let [p, s, m] = self.fim?;
        Some((|| {
            let mut ids = vec![p];
            ids.extend(self.encode(prefix, false)?);
            ids.push(s);
            ids.extend(self.encode(suffix, false)?);
            ids.push(m);
            Ok(ids)
        })())
    }

    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        let mut ids = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| format!("tokenize: {e}"))?
            .get_ids()
            .to_vec();
        if add_special
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// A token's text and bytes as `logprobs` shows them; a token that is part of a
    /// character reads `bytes:\xe2\x80`, as OpenAI writes those.
    pub fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        match self.token_bytes.get(id as usize).and_then(Option::as_ref) {
            Some(b) => {
                let text = match std::str::from_utf8(b) {
                    Ok(t) => t.to_owned(),
                    Err(_) => {
                        let hex: String = b.iter().map(|x| format!("\\x{x:02x}")).collect();
                        format!("bytes:{hex}")
                    }
                };
                (text, b.clone())
            }
            None => {
                let t = self.tokenizer.id_to_token(id).unwrap_or_default();
                let b = t.as_bytes().to_vec();
                (t, b)
            }
        }
    }

    /// Resolves a `logit_bias` key: a token id of this model's vocabulary.
    pub fn valid_token(&self, id: u64) -> bool {
        (id as usize) < self.vocab_size()
    }

    /// The next-token logits after `ids` (one full forward pass on a fresh cache).
    pub fn logits(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let mut cache = self.decoder.new_cache(ids.len())?;
        self.decoder.prefill(&mut cache, ids)
    }

    /// Generates up to `max_tokens` tokens after `prompt`, alone (the server batches; this
    /// is for tests and the benchmark). `on_token` returns false to stop. With
    /// `use_kv_cache` off every step re-reads the whole sequence.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &Sampler,
        choice: usize,
        use_kv_cache: bool,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> candle_core::Result<(Vec<u32>, Finish)> {
        let mut rng = sampler.rng(choice);
        let counts = HashMap::new();
        let mut cache = self.decoder.new_cache(prompt.len() + max_tokens)?;
        let mut logits = self.decoder.prefill(&mut cache, prompt)?;
        let budget = max_tokens.min(self.context_length().saturating_sub(prompt.len()));
        let mut out = Vec::new();
        while out.len() < budget {
            let Some(next) = pick(&logits, sampler, &mut rng, &counts, None, None) else {
                break;
            };
            if self.eos.contains(&next.token) {
                return Ok((out, Finish::Stop));
            }
            out.push(next.token);
            if !on_token(next.token) {
                return Ok((out, Finish::Stop));
            }
            if out.len() == budget {
                break;
            }
            logits = if use_kv_cache {
                self.decoder
                    .step(&mut [&mut cache], &[next.token])?
                    .pop()
                    .unwrap_or_default()
            } else {
                let mut all = prompt.to_vec();
                all.extend_from_slice(&out);
                self.logits(&all)?
            };
        }
        Ok((out, Finish::Length))
    }
}

/// The bytes of every token: byte-level BPE (GPT-2 / Llama 3 / Qwen) maps its printable
/// stand-ins back to bytes; SentencePiece vocabularies (`▁` for spaces, `<0xNN>` byte
/// tokens) are read as such. Special tokens have none.
fn token_bytes(tokenizer: &Tokenizer, vocab: usize) -> Vec<Option<Vec<u8>>> {
    let special: std::collections::HashSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| *id)
        .collect();
    let unicode_to_byte: HashMap<char, u8> = byte_level_alphabet()
        .into_iter()
        .enumerate()
        .map(|(b, c)| (c, b as u8))
        .collect();
    let byte_level = tokenizer
        .get_decoder()
        .and_then(|d| serde_json::to_value(d).ok())
        .is_some_and(|d| d.to_string().contains("ByteLevel"));
    let size = vocab.max(tokenizer.get_vocab_size(true));
    (0..size as u32)
        .map(|id| {
            if special.contains(&id) {
                return None;
            }
            let piece = tokenizer.id_to_token(id)?;
            if tokenizer
                .get_added_tokens_decoder()
                .get(&id)
                .is_some_and(|t| !t.special)
            {
                // Added, non-special tokens (`<tool_call>`) are written as they read.
                return Some(piece.into_bytes());
            }
            if byte_level {
                return piece
                    .chars()
                    .map(|c| unicode_to_byte.get(&c).copied())
                    .collect();
            }
            if let Some(hex) = piece
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .filter(|h| h.len() == 2)
            {
                return u8::from_str_radix(hex, 16).ok().map(|b| vec![b]);
            }
            Some(piece.replace('\u{2581}', " ").into_bytes())
        })
        .collect()
}

/// GPT-2's printable stand-ins for the 256 byte values, indexed by byte.
fn byte_level_alphabet() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(u32::from('¡')..=u32::from('¬'))
        .chain(u32::from('®')..=u32::from('ÿ'))
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort_unstable();
    pairs
        .into_iter()
        .map(|(_, c)| char::from_u32(c).unwrap_or('?'))
        .collect()
}

/// Turns tokens into text deltas: holds back what may still become a stop sequence or an
/// unfinished UTF-8 character, and cuts the text at the first stop sequence.
pub struct StopText<'a> {
    stops: &'a [String],
    text: String,
    sent: usize,
    pub stopped: bool,
}

impl<'a> StopText<'a> {
    pub fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Takes the whole decoded text so far; returns the part that is safe to send now.
    pub fn update(&mut self, decoded: String) -> String {
        if self.stopped {
            return String::new();
        }
        self.text = decoded;
        let search_from = self.sent.saturating_sub(self.longest_stop());
        let search_from = floor_char(&self.text, search_from);
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()))
            .min()
            .map(|i| i + search_from);
        if let Some(at) = found {
            self.stopped = true;
            return self.take(at.max(self.sent));
        }
        // Hold back a suffix that a stop sequence starts with, and a trailing replacement
        // character (a multi-byte character whose bytes are not all generated yet).
        let mut safe = self.text.len();
        for stop in self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.text.ends_with(&stop[..i]) {
                    safe = safe.min(self.text.len() - i);
                }
            }
        }
        if self.text[..safe].ends_with('\u{FFFD}') {
            safe -= '\u{FFFD}'.len_utf8();
        }
        self.take(safe.max(self.sent))
    }

    /// The rest at the end of generation (nothing more can complete a stop sequence).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        self.take(self.text.len())
    }

    /// The text accepted so far (sent or not), cut at a stop sequence.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn take(&mut self, end: usize) -> String {
        let end = floor_char(&self.text, end);
        let out = self.text.get(self.sent..end).unwrap_or_default().to_owned();
        self.sent = self.sent.max(end);
        out
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// How tools shape a request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMode {
    /// Free text; a call the model starts is constrained from its first character on.
    Auto(ToolFormat),
    /// Only tool calls (`required`, or a named function).
    Forced(ToolFormat),
}

/// A grammar for the answer: from the first token, or once a tool call starts.
#[derive(Clone)]
pub struct Constraint {
    pub grammar: Arc<Grammar>,
}

/// One generation request: prompts × `n` choices, numbered prompt by prompt.
pub struct Job {
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampler: Sampler,
    pub stop: Vec<String>,
    /// `Some(k)`: each token's log-probability and its `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Also the prompt's log-probabilities (`echo` with `logprobs` on completions).
    pub prompt_logprobs: bool,
    pub constraint: Option<Constraint>,
    pub tools: Option<ToolMode>,
    pub outbox: Arc<Outbox>,
}

/// What the model's thread reports while it works on a job.
#[derive(Debug, Clone)]
pub enum Event {
    Delta {
        choice: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The prompt's tokens with their log-probabilities (the first has none).
    Prompt {
        choice: usize,
        tokens: Vec<PromptToken>,
    },
    ToolCalls {
        choice: usize,
        calls: Vec<Call>,
    },
    Finished {
        choice: usize,
        finish: Finish,
        completion_tokens: usize,
    },
    /// The client fell `stream_buffer` events behind: the request was stopped.
    Overflow {
        completion_tokens: usize,
    },
    Failed(String),
}

/// Outcome of handing an event to a request's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The client went away.
    Gone,
    /// The buffer holds `bound` events: the client is too far behind.
    Full,
}

struct OutState {
    queue: VecDeque<Event>,
    reader_gone: bool,
    /// The model's thread is done with the job: nothing more will come.
    closed: bool,
}

/// A request's output on its way to the client: filled by the model's thread (never
/// waiting), drained by the response body.
pub struct Outbox {
    state: Mutex<OutState>,
    notify: Notify,
    bound: usize,
}

impl Outbox {
    pub fn new(bound: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(OutState {
                queue: VecDeque::new(),
                reader_gone: false,
                closed: false,
            }),
            notify: Notify::new(),
            bound: bound.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event` unless the client is gone or the buffer is full.
    pub fn push(&self, event: Event) -> Push {
        let mut s = self.lock();
        if s.reader_gone {
            return Push::Gone;
        }
        if s.queue.len() >= self.bound {
            return Push::Full;
        }
        s.queue.push_back(event);
        drop(s);
        self.notify.notify_one();
        Push::Queued
    }

    /// Queues the job's last event past the bound (one more), and closes the box.
    pub fn finish(&self, last: Option<Event>) {
        let mut s = self.lock();
        if let Some(e) = last
            && !s.reader_gone
        {
            s.queue.push_back(e);
        }
        s.closed = true;
        drop(s);
        self.notify.notify_one();
    }

    pub fn reader_gone(&self) -> bool {
        self.lock().reader_gone
    }

    /// The next event; `None` once the job is over and everything was read.
    pub async fn recv(&self) -> Option<Event> {
        loop {
            {
                let mut s = self.lock();
                if let Some(e) = s.queue.pop_front() {
                    return Some(e);
                }
                if s.closed {
                    return None;
                }
            }
            // notify_one keeps a permit when nobody waits: no wake-up is lost.
            self.notify.notified().await;
        }
    }

    /// Marks the client gone: the model's thread stops the job at its next token.
    pub fn close_reader(&self) {
        let mut s = self.lock();
        s.reader_gone = true;
        s.queue.clear();
    }
}

/// The receiving end; dropping it (the client went away) tells the model's thread.
pub struct Reader(pub Arc<Outbox>);

impl Reader {
    pub async fn recv(&mut self) -> Option<Event> {
        self.0.recv().await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.close_reader();
    }
}

/// Handle to a decoder model's thread.
pub struct Generator {
    tx: SyncSender<Job>,
    model: Arc<LlamaModel>,
    pub stream_buffer: usize,
}

impl Generator {
    pub fn start(
        model: LlamaModel,
        queue_size: usize,
        stream_buffer: usize,
    ) -> Result<Self, LoadError> {
        let model = Arc::new(model);
        let (tx, rx) = std::sync::mpsc::sync_channel(queue_size);
        let worker = model.clone();
        std::thread::Builder::new()
            .name("tollgate-generate".into())
            .spawn(move || Scheduler::new(&worker).run(rx))
            .map_err(|e| LoadError::new(format!("cannot start the model thread: {e}")))?;
        Ok(Self {
            tx,
            model,
            stream_buffer: stream_buffer.max(1),
        })
    }

    /// The model, for tokenizing prompts on the caller's side (cheap next to generation).
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The model, shared (answers render token texts while streaming).
    pub fn model_arc(&self) -> Arc<LlamaModel> {
        self.model.clone()
    }

    /// Queues a job without waiting; `Err(Busy)` when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// A job's state on the model's thread, shared by its running choices.
struct Running {
    job: Job,
    matcher: RefCell<Option<Matcher>>,
    /// Choices not finished yet.
    open: RefCell<usize>,
    /// Tokens generated by all choices.
    generated: RefCell<usize>,
    /// Stopped: cut, client gone, or failed.
    dead: RefCell<bool>,
}

impl Running {
    fn kill(&self, last: Option<Event>) {
        if !*self.dead.borrow() {
            *self.dead.borrow_mut() = true;
            self.job.outbox.finish(last);
        }
    }
}

/// One choice being generated.
struct Seq {
    run: Rc<Running>,
    choice: usize,
    cache: SeqCache,
    /// The token to feed at the next step.
    last: u32,
    generated: Vec<u32>,
    budget: usize,
    counts: HashMap<u32, u32>,
    rng: Rng,
    stops: Vec<String>,
    /// Decoded text cut into content (sent as it is safe) and, once a call starts, the
    /// tool-call text from `tool_start` on.
    sent_content: usize,
    tool_start: Option<usize>,
    pending_logprobs: Vec<TokenLogprob>,
    grammar: Option<State>,
    /// The budget, not the model, closed the grammar's answer.
    squeezed: bool,
}

struct Scheduler<'a> {
    model: &'a LlamaModel,
    running: Vec<Seq>,
    waiting: VecDeque<Job>,
}

impl<'a> Scheduler<'a> {
    fn new(model: &'a LlamaModel) -> Self {
        Self {
            model,
            running: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.waiting.push_back(job);
                if self.waiting.len() > MAX_RUNNING {
                    break;
                }
            }
            while let Some(job) = self.waiting.front() {
                let seqs = job.prompts.len() * job.n;
                if !self.running.is_empty() && self.running.len() + seqs > MAX_RUNNING {
                    break;
                }
                if let Some(job) = self.waiting.pop_front() {
                    self.admit(job);
                }
            }
            // A client gone (or cut) frees its place now.
            self.running.retain(|s| {
                if s.run.job.outbox.reader_gone() {
                    s.run.kill(None);
                }
                !*s.run.dead.borrow()
            });
            if self.running.is_empty() {
                continue;
            }
            self.step();
        }
    }

    /// Reads a job's prompts and starts its choices (each with its first token).
    fn admit(&mut self, job: Job) {
        if job.outbox.reader_gone() {
            return;
        }
        let run = Rc::new(Running {
            open: RefCell::new(job.prompts.len() * job.n),
            matcher: RefCell::new(
                job.constraint
                    .as_ref()
                    .map(|c| Matcher::new(c.grammar.clone(), self.model.trie())),
            ),
            generated: RefCell::new(0),
            dead: RefCell::new(false),
            job,
        });
        let model = self.model;
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut firsts = Vec::new();
            for (p, prompt) in run.job.prompts.iter().enumerate() {
                let budget = run
                    .job
                    .max_tokens
                    .min(model.context_length().saturating_sub(prompt.len()));
                let mut cache = model.decoder.new_cache(prompt.len() + budget.min(256))?;
                let logits = if run.job.prompt_logprobs {
                    let all = model.decoder.prefill_all(&mut cache, prompt)?;
                    let k = run.job.logprobs.unwrap_or(0);
                    let mut tokens = vec![PromptToken {
                        token: prompt[0],
                        logprob: None,
                        top: Vec::new(),
                    }];
                    for (i, t) in prompt.iter().enumerate().skip(1) {
                        let lp = super::sampling::logprob_of(&all[i - 1], *t, k);
                        tokens.push(PromptToken {
                            token: *t,
                            logprob: Some(lp.logprob),
                            top: lp.top,
                        });
                    }
                    for i in 0..run.job.n {
                        let _ = run.job.outbox.push(Event::Prompt {
                            choice: p * run.job.n + i,
                            tokens: tokens.clone(),
                        });
                    }
                    all.last().cloned().unwrap_or_default()
                } else {
                    model.decoder.prefill(&mut cache, prompt)?
                };
                for i in 0..run.job.n {
                    let cache = if i + 1 == run.job.n {
                        std::mem::replace(&mut cache, model.decoder.new_cache(1)?)
                    } else {
                        cache.fork()?
                    };
                    firsts.push((p * run.job.n + i, cache, budget, logits.clone()));
                }
            }
            Ok::<_, candle_core::Error>(firsts)
        }));
        let firsts = match started {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return run.kill(Some(Event::Failed(e.to_string()))),
            Err(_) => return run.kill(Some(Event::Failed("the model panicked".into()))),
        };
        for (choice, cache, budget, logits) in firsts {
            let tool_start = matches!(run.job.tools, Some(ToolMode::Forced(_))).then_some(0);
            let grammar = run
                .job
                .constraint
                .as_ref()
                .filter(|_| !matches!(run.job.tools, Some(ToolMode::Auto(_))))
                .map(|c| c.grammar.start());
            let mut seq = Seq {
                rng: run.job.sampler.rng(choice),
                stops: run.job.stop.clone(),
                run: run.clone(),
                choice,
                cache,
                last: 0,
                generated: Vec::new(),
                budget,
                counts: HashMap::new(),
                sent_content: 0,
                tool_start,
                pending_logprobs: Vec::new(),
                grammar,
                squeezed: false,
            };
            if budget == 0 {
                self.finish(&mut seq, Finish::Length);
                continue;
            }
            if self.advance(&mut seq, &logits) {
                self.running.push(seq);
            }
        }
    }

    /// One decode step for every running sequence.
    fn step(&mut self) {
        let tokens: Vec<u32> = self.running.iter().map(|s| s.last).collect();
        let model = self.model;
        let result = {
            let mut caches: Vec<&mut SeqCache> =
                self.running.iter_mut().map(|s| &mut s.cache).collect();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.decoder.step(&mut caches, &tokens)
            }))
        };
        let logits = match result {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return self.fail_all(&e.to_string()),
            Err(_) => return self.fail_all("the model panicked"),
        };
        let running = std::mem::take(&mut self.running);
        for (mut seq, logits) in running.into_iter().zip(logits) {
            if *seq.run.dead.borrow() {
                continue;
            }
            if self.advance(&mut seq, &logits) {
                self.running.push(seq);
            }
        }
    }

    fn fail_all(&mut self, error: &str) {
        tracing::error!(error, "local generation step failed");
        for s in self.running.drain(..) {
            s.run.kill(Some(Event::Failed(error.to_owned())));
        }
    }

    /// Picks a sequence's next token from `logits` and reports it. False when the
    /// sequence is over.
    fn advance(&mut self, seq: &mut Seq, logits: &[f32]) -> bool {
        let model = self.model;
        let left = seq.budget - seq.generated.len();
        let allowed = match &seq.grammar {
            Some(state) => {
                let ids = {
                    let mut matcher = seq.run.matcher.borrow_mut();
                    matcher.as_mut().map(|m| {
                        let (mut ids, squeezed) = m.allowed(state, left);
                        if m.grammar().accepting(state) {
                            ids.extend(model.eos.iter().copied());
                        }
                        ids.sort_unstable();
                        (ids, squeezed)
                    })
                };
                match ids {
                    Some((ids, squeezed)) if !ids.is_empty() => {
                        seq.squeezed |= squeezed;
                        Some(ids)
                    }
                    _ => return self.finish(seq, Finish::Stop),
                }
            }
            None => None,
        };
        let job = &seq.run.job;
        let Some(picked) = pick(
            logits,
            &job.sampler,
            &mut seq.rng,
            &seq.counts,
            allowed.as_deref(),
            job.logprobs,
        ) else {
            return self.finish(seq, Finish::Stop);
        };
        let token = picked.token;
        if model.eos.contains(&token) {
            let finish = if seq.squeezed {
                Finish::Length
            } else {
                Finish::Stop
            };
            return self.finish(seq, finish);
        }
        seq.generated.push(token);
        *seq.run.generated.borrow_mut() += 1;
        if job.sampler.penalised() {
            *seq.counts.entry(token).or_default() += 1;
        }
        if job.logprobs.is_some() {
            seq.pending_logprobs.push(picked);
        }
        seq.last = token;
        let mut grammar_done = false;
        if let Some(state) = &seq.grammar {
            let bytes = model
                .token_bytes
                .get(token as usize)
                .cloned()
                .flatten()
                .unwrap_or_default();
            let matcher = seq.run.matcher.borrow();
            let next = matcher
                .as_ref()
                .and_then(|m| m.grammar().advance(state, &bytes));
            grammar_done = match (&next, matcher.as_ref()) {
                (Some(n), Some(m)) => m.grammar().finished(n),
                _ => true,
            };
            drop(matcher);
            seq.grammar = next;
        }
        let text = model.decode(&seq.generated);
        // An `auto` tool call starts: from here on the grammar keeps it well-formed.
        if let Some(ToolMode::Auto(format)) = job.tools
            && seq.tool_start.is_none()
            && let Some(at) = format.trigger(&text)
        {
            seq.tool_start = Some(at);
            let start = job.constraint.as_ref().map(|c| c.grammar.start());
            seq.grammar = start.and_then(|s| {
                job.constraint
                    .as_ref()
                    .and_then(|c| c.grammar.advance(&s, &text.as_bytes()[at..]))
            });
        }
        let (delta, stopped) = self.content_delta(seq, &text, false);
        if !delta.is_empty() || (!seq.pending_logprobs.is_empty() && seq.tool_start.is_none()) {
            let event = Event::Delta {
                choice: seq.choice,
                text: delta,
                logprobs: std::mem::take(&mut seq.pending_logprobs),
            };
            if !self.push(seq, event) {
                return false;
            }
        }
        if stopped || grammar_done {
            let finish = if seq.squeezed {
                Finish::Length
            } else {
                Finish::Stop
            };
            return self.finish(seq, finish);
        }
        if seq.generated.len() >= seq.budget {
            return self.finish(seq, Finish::Length);
        }
        true
    }

    /// The content that is safe to send now (or, at the end, all of it): cut at a stop
    /// sequence or where a tool call starts, holding back what may still become either.
    fn content_delta(&self, seq: &mut Seq, text: &str, end: bool) -> (String, bool) {
        let content = match seq.tool_start {
            Some(at) => &text[..at.min(text.len())],
            None => text,
        };
        let mut stop = StopText::new(&seq.stops);
        stop.sent = seq.sent_content;
        let mut delta = if end || seq.tool_start.is_some() {
            let mut d = stop.update(content.to_owned());
            d.push_str(&stop.finish());
            d
        } else {
            let hold = match seq.run.job.tools {
                Some(ToolMode::Auto(f)) => f.may_trigger(content),
                _ => 0,
            };
            let visible = floor_char(content, content.len() - hold);
            stop.update(content[..visible].to_owned())
        };
        if seq.tool_start.is_some() {
            // Content before a call goes out without its trailing blank space.
            delta = delta.trim_end().to_owned();
            stop.sent = seq.sent_content + delta.len();
        }
        seq.sent_content = stop.sent;
        (delta, stop.stopped)
    }

    /// Sends an event; false (and the job stopped) when the client is gone or too far
    /// behind.
    fn push(&mut self, seq: &Seq, event: Event) -> bool {
        match seq.run.job.outbox.push(event) {
            Push::Queued => true,
            Push::Gone => {
                seq.run.kill(None);
                false
            }
            Push::Full => {
                super::count_stream_cut();
                let completion_tokens = *seq.run.generated.borrow();
                tracing::warn!(
                    completion_tokens,
                    "a client fell too far behind its stream; the request was cut"
                );
                seq.run.kill(Some(Event::Overflow { completion_tokens }));
                false
            }
        }
    }

    /// Ends a choice: the rest of its text, its tool calls, its finish. Always false.
    fn finish(&mut self, seq: &mut Seq, mut finish: Finish) -> bool {
        let model = self.model;
        let text = model.decode(&seq.generated);
        let mut calls = Vec::new();
        if let (Some(mode), Some(at)) = (seq.run.job.tools, seq.tool_start) {
            let format = match mode {
                ToolMode::Auto(f) | ToolMode::Forced(f) => f,
            };
            match format.parse(&text[at.min(text.len())..]) {
                Some((_, parsed)) => calls = parsed,
                // Not a well-formed call after all: it is content.
                None => seq.tool_start = None,
            }
        }
        let (rest, _) = self.content_delta(seq, &text, true);
        if !rest.is_empty() || !seq.pending_logprobs.is_empty() {
            let event = Event::Delta {
                choice: seq.choice,
                text: rest,
                logprobs: std::mem::take(&mut seq.pending_logprobs),
            };
            if !self.push(seq, event) {
                return false;
            }
        }
        if !calls.is_empty() {
            finish = Finish::ToolCalls;
            let event = Event::ToolCalls {
                choice: seq.choice,
                calls,
            };
            if !self.push(seq, event) {
                return false;
            }
        }
        let event = Event::Finished {
            choice: seq.choice,
            finish,
            completion_tokens: seq.generated.len(),
        };
        if !self.push(seq, event) {
            return false;
        }
        let open = {
            let mut open = seq.run.open.borrow_mut();
            *open = open.saturating_sub(1);
            *open
        };
        if open == 0 {
            *seq.run.dead.borrow_mut() = true;
            seq.run.job.outbox.finish(None);
        }
        false
    }
}
