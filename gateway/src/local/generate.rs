//! Text generation with Llama-family models: prompt in, tokens out one at a time with a
//! KV cache, sampled by temperature / top_p from a seeded generator (same seed, same
//! text), cut at stop sequences, end-of-sequence tokens or `max_tokens`.
//!
//! One request at a time runs on the model's thread; its choices (`n`) run one after the
//! other. Text goes back as deltas on a channel as it is produced, so streaming and plain
//! answers share one path. A client that goes away closes the channel and generation stops
//! at the next token.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig, LlamaEosToks};
use serde_json::Value;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::embed::Busy;
use super::template::{ChatTemplate, Message, plain_prompt};
use super::{LoadError, read_json, safetensors_files};

/// A loaded Llama model, its tokenizer and chat template.
pub struct LlamaModel {
    model: Llama,
    config: Config,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    eos: Vec<u32>,
    bos: Option<u32>,
    device: Device,
}

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    pub top_p: f64,
    /// `None`: a random seed.
    pub seed: Option<u64>,
}

impl Sampler {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(0),
        }
    }

    fn processor(&self, choice: usize) -> LogitsProcessor {
        let seed = match self.seed {
            // Each choice of `n` gets its own, still reproducible, stream.
            Some(seed) => seed.wrapping_add(choice as u64),
            None => uuid::Uuid::new_v4().as_u64_pair().0,
        };
        let sampling = if self.temperature <= 1e-7 {
            Sampling::ArgMax
        } else if self.top_p < 1.0 {
            Sampling::TopP {
                p: self.top_p,
                temperature: self.temperature,
            }
        } else {
            Sampling::All {
                temperature: self.temperature,
            }
        };
        LogitsProcessor::from_sampling(seed, sampling)
    }
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

impl LlamaModel {
    pub fn load(dir: &Path, config: &Value) -> Result<Self, LoadError> {
        let raw: LlamaConfig = serde_json::from_value(config.clone())
            .map_err(|e| LoadError::new(format!("config.json: not a Llama config: {e}")))?;
        let cfg = raw.into_config(false);
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(LoadError::new(
                "config.json: hidden_size must be a multiple of num_attention_heads",
            ));
        }
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| LoadError::new(format!("tokenizer.json: {e}")))?;
        let tok_config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
        let template = ChatTemplate::from_tokenizer_config(&tok_config)
            .map_err(|e| LoadError::new(format!("tokenizer_config.json: {e}")))?;
        let mut eos = match &cfg.eos_token_id {
            Some(LlamaEosToks::Single(id)) => vec![*id],
            Some(LlamaEosToks::Multiple(ids)) => ids.clone(),
            None => Vec::new(),
        };
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
        let device = super::device();
        let files = safetensors_files(dir)?;
        let vb = super::weights(&files, &device)?;
        // candle's Llama::load panics on a missing layer tensor: contain it, so a bad folder
        // is a config error and not a crash.
        let model =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Llama::load(vb, &cfg)))
                .map_err(|_| LoadError::new("weights: a layer's tensors are missing or malformed"))?
                .map_err(|e| LoadError::new(format!("weights: {e}")))?;
        Ok(Self {
            bos: cfg.bos_token_id,
            model,
            config: cfg,
            tokenizer,
            template,
            eos,
            device,
        })
    }

    /// The longest prompt plus completion the model takes.
    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Token ids of a chat prompt (rendered by the chat template).
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>, String> {
        let text = match &self.template {
            Some(t) => t.render(messages)?,
            None => plain_prompt(messages),
        };
        // The template writes the special tokens (BOS) itself.
        self.encode(&text, self.template.is_none())
    }

    /// Token ids of a completion prompt, starting with BOS as the model was trained.
    pub fn completion_prompt(&self, prompt: &str) -> Result<Vec<u32>, String> {
        self.encode(prompt, true)
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

    fn new_cache(&self, use_kv_cache: bool) -> candle_core::Result<Cache> {
        Cache::new(use_kv_cache, DType::F32, &self.config, &self.device)
    }

    /// The next-token logits after `ids` (one full forward pass, no cache).
    pub fn logits(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let mut cache = self.new_cache(false)?;
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        self.model
            .forward(&input, 0, &mut cache)?
            .squeeze(0)?
            .to_vec1()
    }

    /// Generates up to `max_tokens` tokens after `prompt`. `on_token` sees each new token
    /// and returns false to stop (stop sequence found, client gone). With `use_kv_cache`
    /// off every step re-reads the whole sequence (the tests compare both).
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &Sampler,
        choice: usize,
        use_kv_cache: bool,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> candle_core::Result<(Vec<u32>, Finish)> {
        let mut cache = self.new_cache(use_kv_cache)?;
        let mut processor = sampler.processor(choice);
        let mut tokens = prompt.to_vec();
        let mut out = Vec::new();
        let budget = max_tokens.min(self.context_length().saturating_sub(prompt.len()));
        let mut pos = 0;
        while out.len() < budget {
            let input = if use_kv_cache {
                &tokens[pos..]
            } else {
                &tokens[..]
            };
            let index = if use_kv_cache { pos } else { 0 };
            let x = Tensor::new(input, &self.device)?.unsqueeze(0)?;
            let logits = self.model.forward(&x, index, &mut cache)?.squeeze(0)?;
            let next = processor.sample(&logits)?;
            pos = tokens.len();
            if self.eos.contains(&next) {
                return Ok((out, Finish::Stop));
            }
            tokens.push(next);
            out.push(next);
            if !on_token(next) {
                return Ok((out, Finish::Stop));
            }
        }
        Ok((out, Finish::Length))
    }
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

/// One generation request: prompts × `n` choices, numbered prompt by prompt.
pub struct Job {
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampler: Sampler,
    pub stop: Vec<String>,
    pub events: mpsc::Sender<Event>,
}

/// What the model's thread reports while it works on a job.
#[derive(Debug)]
pub enum Event {
    Delta {
        choice: usize,
        text: String,
    },
    Finished {
        choice: usize,
        finish: Finish,
        completion_tokens: usize,
    },
    Failed(String),
}

/// Handle to a Llama model's thread.
pub struct Generator {
    tx: SyncSender<Job>,
    model: std::sync::Arc<LlamaModel>,
}

impl Generator {
    pub fn start(model: LlamaModel, queue_size: usize) -> Result<Self, LoadError> {
        let model = std::sync::Arc::new(model);
        let (tx, rx) = std::sync::mpsc::sync_channel(queue_size);
        let worker = model.clone();
        std::thread::Builder::new()
            .name("tollgate-generate".into())
            .spawn(move || run(&worker, rx))
            .map_err(|e| LoadError::new(format!("cannot start the model thread: {e}")))?;
        Ok(Self { tx, model })
    }

    /// The model, for tokenizing prompts on the caller's side (cheap next to generation).
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// Queues a job without waiting; `Err(Busy)` when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn run(model: &LlamaModel, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        if job.events.is_closed() {
            continue;
        }
        // A panic inside candle fails this request, not the thread.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(model, &job)))
                .unwrap_or_else(|_| Err(candle_core::Error::Msg("the model panicked".into())));
        if let Err(e) = result {
            let _ = job.events.blocking_send(Event::Failed(e.to_string()));
        }
    }
}

fn run_job(model: &LlamaModel, job: &Job) -> candle_core::Result<()> {
    for (p, prompt) in job.prompts.iter().enumerate() {
        for i in 0..job.n {
            let choice = p * job.n + i;
            let mut stop = StopText::new(&job.stop);
            let mut generated: Vec<u32> = Vec::new();
            let mut gone = false;
            let (tokens, finish) =
                model.generate(prompt, job.max_tokens, &job.sampler, choice, true, |t| {
                    generated.push(t);
                    let delta = stop.update(model.decode(&generated));
                    if !delta.is_empty()
                        && job
                            .events
                            .blocking_send(Event::Delta {
                                choice,
                                text: delta,
                            })
                            .is_err()
                    {
                        gone = true;
                    }
                    !gone && !stop.stopped
                })?;
            if gone {
                return Ok(());
            }
            let rest = stop.finish();
            if !rest.is_empty() {
                let _ = job
                    .events
                    .blocking_send(Event::Delta { choice, text: rest });
            }
            let finish = if stop.stopped { Finish::Stop } else { finish };
            let sent = job.events.blocking_send(Event::Finished {
                choice,
                finish,
                completion_tokens: tokens.len(),
            });
            if sent.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
