//! Embeddings with BERT-family models, computed as sentence-transformers does: the last
//! hidden states, mean-pooled over the attention mask (padding never counts), then L2
//! normalised.
//!
//! On the CPU the encoder is [`PackedBert`]: a batch's inputs are packed end to end with
//! no padding, products use every core, and element-wise work is fused. (On a GPU,
//! candle's `BertModel` runs batches of similar length, padded to the longest.)
//!
//! Dynamic batching: the model's thread takes every request waiting in its queue (up to
//! [`MAX_BATCH`] inputs) and runs them together, so concurrent small requests share
//! forward passes. Results go back to each request in its own order.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use super::bert::PackedBert;
use super::{LoadError, read_json, safetensors_files};

/// Inputs taken from the queue at once.
pub const MAX_BATCH: usize = 256;
/// Inputs of one padded forward pass (the GPU path).
const PADDED_BATCH: usize = 32;
/// Tokens of one packed forward pass: activations of a few MB (MiniLM), which stay in the
/// caches; big batches run as several passes.
const PACKED_TOKENS: usize = 1024;

/// How token states become one vector (from `1_Pooling/config.json`; mean by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// A loaded BERT model and its tokenizer; used from the model's thread only.
pub struct BertEmbedder {
    model: BertModel,
    /// The packed CPU encoder (`None` on a GPU).
    packed: Option<PackedBert>,
    tokenizer: Tokenizer,
    pooling: Pooling,
    device: Device,
    pub dimensions: usize,
}

/// Vectors in input order and the tokens they took (special tokens included).
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

impl BertEmbedder {
    pub fn load(dir: &Path, config: &Value) -> Result<Self, LoadError> {
        let cfg: BertConfig = serde_json::from_value(config.clone())
            .map_err(|e| LoadError::new(format!("config.json: not a BERT config: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| LoadError::new(format!("tokenizer.json: {e}")))?;
        // sentence-transformers truncates at the model's max_seq_length, not at the
        // tokenizer file's own setting, and pads per batch: do the same.
        let max_len = read_json(&dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|c| c.get("max_seq_length").and_then(Value::as_u64))
            .map_or(cfg.max_position_embeddings, |n| n as usize)
            .min(cfg.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| LoadError::new(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        let pooling = match read_json(&dir.join("1_Pooling/config.json")) {
            Ok(p) if p.get("pooling_mode_cls_token").and_then(Value::as_bool) == Some(true) => {
                Pooling::Cls
            }
            _ => Pooling::Mean,
        };
        let device = super::device();
        let files = safetensors_files(dir)?;
        let vb = super::weights(&files, &device)?;
        let packed = if device.is_cpu() {
            let act = config.get("hidden_act").and_then(Value::as_str);
            Some(PackedBert::load(&vb, &cfg, act)?)
        } else {
            None
        };
        let model =
            BertModel::load(vb, &cfg).map_err(|e| LoadError::new(format!("weights: {e}")))?;
        Ok(Self {
            model,
            packed,
            tokenizer,
            pooling,
            device,
            dimensions: cfg.hidden_size,
        })
    }

    /// Tokenizes `texts` (special tokens added, truncated, unpadded), on every core.
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, String> {
        use rayon::prelude::*;
        texts
            .par_iter()
            .map(|t| {
                self.tokenizer
                    .encode(*t, true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| format!("tokenize: {e}"))
            })
            .collect()
    }

    /// Embeds inputs packed (no padding): pooled per input over its own rows, normalised.
    fn forward_packed(
        &self,
        packed: &PackedBert,
        batch: &[&[u32]],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let h = self.dimensions;
        let hidden = packed.forward(batch)?;
        let mut out = Vec::with_capacity(batch.len());
        let mut row = 0;
        for seq in batch {
            let rows = &hidden[row * h..(row + seq.len()) * h];
            row += seq.len();
            let mut v = vec![0f32; h];
            match self.pooling {
                Pooling::Cls => v.copy_from_slice(&rows[..h]),
                Pooling::Mean => {
                    for r in rows.chunks(h) {
                        for (a, b) in v.iter_mut().zip(r) {
                            *a += b;
                        }
                    }
                    let n = seq.len().max(1) as f32;
                    v.iter_mut().for_each(|a| *a /= n);
                }
            }
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= norm);
            out.push(v);
        }
        Ok(out)
    }

    /// Embeds one batch of token sequences: padded to the longest, masked, pooled,
    /// normalised.
    fn forward(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let longest = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for seq in batch {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(0u32, longest - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - seq.len()));
        }
        let shape = (batch.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        let norms = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norms)?.to_vec2::<f32>()
    }

    /// Embeds `texts`, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Embedded, String> {
        let (vectors, lengths) = self.embed_counted(texts)?;
        Ok(Embedded {
            vectors,
            tokens: lengths.iter().sum(),
        })
    }

    /// The same through candle's padded `BertModel` (the tests compare both paths).
    #[cfg(test)]
    pub(crate) fn embed_padded(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let encoded = self.encode(texts)?;
        let batch: Vec<&[u32]> = encoded.iter().map(Vec::as_slice).collect();
        self.forward(&batch).map_err(|e| e.to_string())
    }

    /// The vectors and each input's token count.
    fn embed_counted(&self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, Vec<usize>), String> {
        let encoded = self.encode(texts)?;
        let lengths: Vec<usize> = encoded.iter().map(Vec::len).collect();
        if let Some(packed) = &self.packed {
            // Packed in input order, in passes of at most PACKED_TOKENS tokens.
            let mut vectors = Vec::with_capacity(encoded.len());
            let mut start = 0;
            while start < encoded.len() {
                let mut end = start;
                let mut tokens = 0;
                while end < encoded.len()
                    && (end == start || tokens + lengths[end] <= PACKED_TOKENS)
                {
                    tokens += lengths[end];
                    end += 1;
                }
                let batch: Vec<&[u32]> = encoded[start..end].iter().map(Vec::as_slice).collect();
                vectors.extend(
                    self.forward_packed(packed, &batch)
                        .map_err(|e| format!("embedding forward pass: {e}"))?,
                );
                start = end;
            }
            return Ok((vectors, lengths));
        }
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let mut vectors = vec![Vec::new(); encoded.len()];
        for chunk in order.chunks(PADDED_BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| encoded[i].as_slice()).collect();
            let out = self
                .forward(&batch)
                .map_err(|e| format!("embedding forward pass: {e}"))?;
            for (&i, v) in chunk.iter().zip(out) {
                vectors[i] = v;
            }
        }
        Ok((vectors, lengths))
    }
}

/// One request waiting for the model's thread.
struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Embedded, String>>,
}

/// The queue is full: the caller answers 429.
#[derive(Debug)]
pub struct Busy;

/// Handle to a BERT model's thread. Dropping it ends the thread once the queue drains.
pub struct Embedder {
    tx: SyncSender<Job>,
    pub dimensions: usize,
}

impl Embedder {
    pub fn start(model: BertEmbedder, queue_size: usize) -> Result<Self, LoadError> {
        let dimensions = model.dimensions;
        let (tx, rx) = std::sync::mpsc::sync_channel(queue_size);
        std::thread::Builder::new()
            .name("tollgate-embed".into())
            .spawn(move || run(model, rx))
            .map_err(|e| LoadError::new(format!("cannot start the model thread: {e}")))?;
        Ok(Self { tx, dimensions })
    }

    /// Queues `texts` without waiting; `Err(Busy)` when the queue is full.
    pub fn submit(
        &self,
        texts: Vec<String>,
    ) -> Result<oneshot::Receiver<Result<Embedded, String>>, Busy> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { texts, reply }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// The model's thread: block for one job, then take whatever else is waiting (dynamic
/// batching) and answer each.
fn run(model: BertEmbedder, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut inputs = jobs[0].texts.len();
        while inputs < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    inputs += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // A client that went away while queued costs nothing.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        // A panic inside candle fails this batch, not the thread (which every later
        // request needs).
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.embed_counted(&texts)))
                .unwrap_or_else(|_| Err("the model panicked".to_owned()));
        let mut start = 0;
        for job in jobs {
            let n = job.texts.len();
            let answer = match &result {
                Ok((vectors, lengths)) => Ok(Embedded {
                    vectors: vectors.get(start..start + n).unwrap_or_default().to_vec(),
                    tokens: lengths
                        .get(start..start + n)
                        .unwrap_or_default()
                        .iter()
                        .sum(),
                }),
                Err(e) => Err(e.clone()),
            };
            start += n;
            let _ = job.reply.send(answer);
        }
    }
}
