//! A Llama-family decoder (Llama 2/3 and Qwen 2/2.5, which differ only by the q/k/v bias
//! and tied embeddings) written for serving: every sequence has its own KV cache, and one
//! decode step runs any number of sequences, each at its own position, through one set of
//! matrix products.
//!
//! candle-transformers' `Llama` keeps one cache for one batch whose rows share a position,
//! so concurrent requests could not share a forward pass. Here the projections and the MLP
//! (nearly all of the weights and time) see all sequences as the rows of one matrix, and
//! only attention, which reads each sequence's own cache, runs per sequence. The maths is
//! Hugging Face's (`modeling_llama.py`, `modeling_qwen2.py`): the tests hold its logits to
//! 1e-4.

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;

use super::LoadError;

type Result<T, E = candle_core::Error> = std::result::Result<T, E>;

/// `rope_scaling` of Llama 3.1+ (`rope_type: llama3`); other kinds are refused at load.
#[derive(Debug, Clone, Deserialize)]
struct RopeScaling {
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
    #[serde(default)]
    factor: Option<f32>,
    #[serde(default)]
    low_freq_factor: Option<f32>,
    #[serde(default)]
    high_freq_factor: Option<f32>,
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
}

/// The `config.json` fields a decoder reads (Llama's and Qwen2's share names).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<Value>,
    /// Qwen2's sliding-window attention (off in the released Qwen 2.5 models).
    #[serde(default)]
    use_sliding_window: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_theta() -> f64 {
    10_000.0
}

/// The architecture a folder's `config.json` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

/// Shape and numbers of a loaded decoder.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub hidden: usize,
    pub vocab: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub eps: f64,
    pub max_positions: usize,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

struct Layer {
    input_norm: Tensor,
    /// q, k and v projections stacked: one product for all three.
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    o: Tensor,
    post_norm: Tensor,
    /// gate and up projections stacked.
    gate_up: Tensor,
    down: Tensor,
}

/// The weights. Immutable and shared; the per-sequence state is a [`SeqCache`].
pub struct Decoder {
    pub config: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// One sequence's keys and values, layer by layer, in buffers that grow by doubling (so a
/// step writes one row instead of copying the whole history).
pub struct SeqCache {
    /// Per layer: keys and values, `[kv_heads, capacity, head_dim]`.
    kv: Vec<(Tensor, Tensor)>,
    capacity: usize,
    /// Positions filled.
    pub len: usize,
}

impl SeqCache {
    /// A copy that shares nothing (the buffers are written in place): one prompt's cache
    /// becomes each of its `n` choices'.
    pub fn fork(&self) -> Result<Self> {
        let kv = self
            .kv
            .iter()
            .map(|(k, v)| Ok((k.copy()?, v.copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            kv,
            capacity: self.capacity,
            len: self.len,
        })
    }
}

fn load_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::new(format!("weights: {e}"))
}

impl Decoder {
    /// Checks `config.json` (already parsed) before anything else is read.
    pub fn check(config: &Value, arch: Arch) -> Result<(), LoadError> {
        Self::parse(config, arch).map(|_| ())
    }

    fn parse(config: &Value, arch: Arch) -> Result<(RawConfig, Config), LoadError> {
        let raw: RawConfig = serde_json::from_value(config.clone()).map_err(|e| {
            LoadError::new(format!(
                "config.json: not a {} config: {e}",
                match arch {
                    Arch::Llama => "Llama",
                    Arch::Qwen2 => "Qwen2",
                }
            ))
        })?;
        if raw.num_attention_heads == 0 || raw.num_hidden_layers == 0 || raw.vocab_size == 0 {
            return Err(LoadError::new(
                "config.json: num_attention_heads, num_hidden_layers and vocab_size must be positive",
            ));
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(LoadError::new(
                "config.json: num_attention_heads must be a multiple of num_key_value_heads",
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(LoadError::new(
                    "config.json: hidden_size must be a multiple of num_attention_heads",
                ));
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(LoadError::new("config.json: head_dim must be even"));
        }
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(LoadError::new(format!(
                "config.json: hidden_act '{act}' is not supported (silu only)"
            )));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(LoadError::new(
                "config.json: use_sliding_window is not supported (full attention only)",
            ));
        }
        if raw.mlp_bias == Some(true) {
            return Err(LoadError::new("config.json: mlp_bias is not supported"));
        }
        let eos = match &raw.eos_token_id {
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|n| n as u32)
                .collect(),
            _ => Vec::new(),
        };
        let cfg = Config {
            arch,
            hidden: raw.hidden_size,
            vocab: raw.vocab_size,
            layers: raw.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            intermediate: raw.intermediate_size,
            eps: raw.rms_norm_eps,
            max_positions: raw.max_position_embeddings,
            bos: raw.bos_token_id,
            eos,
        };
        Ok((raw, cfg))
    }

    /// Reads `config.json` (already parsed) and the weights.
    pub fn load(config: &Value, arch: Arch, vb: &VarBuilder<'_>) -> Result<Self, LoadError> {
        let (raw, cfg) = Self::parse(config, arch)?;
        let (heads, kv_heads, head_dim) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let device = vb.device().clone();
        let (cos, sin) = rope_tables(&raw, head_dim, &device)?;
        let get = |shape: (usize, usize), name: &str| vb.get(shape, name).map_err(load_err);
        let get1 = |n: usize, name: &str| vb.get(n, name).map_err(load_err);
        let (h, i, q, kv) = (
            cfg.hidden,
            cfg.intermediate,
            heads * head_dim,
            kv_heads * head_dim,
        );
        let bias = arch == Arch::Qwen2 || raw.attention_bias == Some(true);
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let qw = get((q, h), &format!("{p}.self_attn.q_proj.weight"))?;
            let kw = get((kv, h), &format!("{p}.self_attn.k_proj.weight"))?;
            let vw = get((kv, h), &format!("{p}.self_attn.v_proj.weight"))?;
            let qkv = Tensor::cat(&[&qw, &kw, &vw], 0).map_err(load_err)?;
            let qkv_bias = if bias {
                let qb = get1(q, &format!("{p}.self_attn.q_proj.bias"))?;
                let kb = get1(kv, &format!("{p}.self_attn.k_proj.bias"))?;
                let vb_ = get1(kv, &format!("{p}.self_attn.v_proj.bias"))?;
                Some(Tensor::cat(&[&qb, &kb, &vb_], 0).map_err(load_err)?)
            } else {
                None
            };
            let gate = get((i, h), &format!("{p}.mlp.gate_proj.weight"))?;
            let up = get((i, h), &format!("{p}.mlp.up_proj.weight"))?;
            layers.push(Layer {
                input_norm: get1(h, &format!("{p}.input_layernorm.weight"))?,
                qkv,
                qkv_bias,
                o: get((h, q), &format!("{p}.self_attn.o_proj.weight"))?,
                post_norm: get1(h, &format!("{p}.post_attention_layernorm.weight"))?,
                gate_up: Tensor::cat(&[&gate, &up], 0).map_err(load_err)?,
                down: get((h, i), &format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let embed = get((cfg.vocab, h), "model.embed_tokens.weight")?;
        let tied = raw.tie_word_embeddings.unwrap_or(false);
        let lm_head = if tied || !vb.contains_tensor("lm_head.weight") && arch == Arch::Qwen2 {
            embed.clone()
        } else {
            get((cfg.vocab, h), "lm_head.weight")?
        };
        Ok(Self {
            norm: get1(h, "model.norm.weight")?,
            config: cfg,
            embed,
            layers,
            lm_head,
            cos,
            sin,
            device,
        })
    }

    pub fn new_cache(&self, capacity: usize) -> Result<SeqCache> {
        let capacity = capacity.clamp(1, self.config.max_positions.max(1));
        let shape = (self.config.kv_heads, capacity, self.config.head_dim);
        let kv = (0..self.config.layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, DType::F32, &self.device)?,
                    Tensor::zeros(shape, DType::F32, &self.device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(SeqCache {
            kv,
            capacity,
            len: 0,
        })
    }

    /// Makes room for `more` positions, doubling the buffers when full.
    fn reserve(&self, cache: &mut SeqCache, more: usize) -> Result<()> {
        let need = cache.len + more;
        if need <= cache.capacity {
            return Ok(());
        }
        let mut capacity = cache.capacity.max(16);
        while capacity < need {
            capacity *= 2;
        }
        let shape = (self.config.kv_heads, capacity, self.config.head_dim);
        for (k, v) in &mut cache.kv {
            let nk = Tensor::zeros(shape, DType::F32, &self.device)?;
            let nv = Tensor::zeros(shape, DType::F32, &self.device)?;
            if cache.len > 0 {
                nk.slice_set(&k.narrow(1, 0, cache.len)?.contiguous()?, 1, 0)?;
                nv.slice_set(&v.narrow(1, 0, cache.len)?.contiguous()?, 1, 0)?;
            }
            *k = nk;
            *v = nv;
        }
        cache.capacity = capacity;
        Ok(())
    }

    fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.matmul(&w.t()?)
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, w, self.config.eps as f32)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let gu = Self::linear(x, &layer.gate_up)?;
        let i = self.config.intermediate;
        let gate = gu.narrow(D::Minus1, 0, i)?;
        let up = gu.narrow(D::Minus1, i, i)?;
        let act = (candle_nn::ops::silu(&gate)? * up)?;
        Self::linear(&act, &layer.down)
    }

    fn qkv(&self, layer: &Layer, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let mut qkv = Self::linear(x, &layer.qkv)?;
        if let Some(b) = &layer.qkv_bias {
            qkv = qkv.broadcast_add(b)?;
        }
        let c = &self.config;
        let q = qkv.narrow(D::Minus1, 0, c.heads * c.head_dim)?;
        let k = qkv.narrow(D::Minus1, c.heads * c.head_dim, c.kv_heads * c.head_dim)?;
        let v = qkv.narrow(
            D::Minus1,
            (c.heads + c.kv_heads) * c.head_dim,
            c.kv_heads * c.head_dim,
        )?;
        Ok((q, k, v))
    }

    /// Runs `tokens` of one sequence from position `cache.len` (a prompt, or the rest of
    /// one) and returns the final hidden states (after the last norm) of every position,
    /// `[tokens, hidden]`.
    fn prefill_hidden(&self, cache: &mut SeqCache, tokens: &[u32]) -> Result<Tensor> {
        let c = &self.config;
        let p = tokens.len();
        let start = cache.len;
        if p == 0 {
            candle_core::bail!("empty prompt");
        }
        if start + p > c.max_positions {
            candle_core::bail!("the sequence is longer than the model's context");
        }
        self.reserve(cache, p)?;
        let total = start + p;
        let (g, d) = (c.heads / c.kv_heads, c.head_dim);
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let cos = self.cos.narrow(0, start, p)?;
        let sin = self.sin.narrow(0, start, p)?;
        // Query row r of a group is head (r / p) of it at position start + r % p: key j is
        // visible when j <= start + r % p.
        let mask: Vec<f32> = (0..g * p)
            .flat_map(|r| {
                let pos = start + r % p;
                (0..total).map(move |j| if j <= pos { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, g * p, total), &self.device)?;
        let scale = 1.0 / (d as f64).sqrt();
        for (layer, (kc, vc)) in self.layers.iter().zip(cache.kv.iter()) {
            let residual = x.clone();
            let h = self.rms(&x, &layer.input_norm)?;
            let (q, k, v) = self.qkv(layer, &h)?;
            let q = q
                .reshape((1, p, c.heads, d))?
                .transpose(1, 2)?
                .contiguous()?;
            let k = k
                .reshape((1, p, c.kv_heads, d))?
                .transpose(1, 2)?
                .contiguous()?;
            let v = v
                .reshape((1, p, c.kv_heads, d))?
                .transpose(1, 2)?
                .contiguous()?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            kc.slice_set(&k.squeeze(0)?, 1, start)?;
            vc.slice_set(&v.squeeze(0)?, 1, start)?;
            let keys = kc.narrow(1, 0, total)?;
            let values = vc.narrow(1, 0, total)?;
            // [heads, p, d] -> [kv_heads, g * p, d]: each key/value head serves its g query
            // heads in one product (grouped-query attention without copying the cache).
            let q = q.reshape((c.kv_heads, g * p, d))?;
            let att = (q.matmul(&keys.t()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&values.contiguous()?)?; // [kv_heads, g * p, d]
            let y = y
                .reshape((c.heads, p, d))?
                .transpose(0, 1)?
                .reshape((p, c.heads * d))?;
            x = (Self::linear(&y, &layer.o)? + residual)?;
            let residual = x.clone();
            let h = self.rms(&x, &layer.post_norm)?;
            x = (self.mlp(layer, &h)? + residual)?;
        }
        cache.len = total;
        self.rms(&x, &self.norm)
    }

    /// Runs a prompt (or its continuation) and returns the next-token logits, `[vocab]`.
    pub fn prefill(&self, cache: &mut SeqCache, tokens: &[u32]) -> Result<Vec<f32>> {
        let hidden = self.prefill_hidden(cache, tokens)?;
        let last = hidden.i(tokens.len() - 1)?.unsqueeze(0)?;
        Self::linear(&last, &self.lm_head)?.squeeze(0)?.to_vec1()
    }

    /// Like [`prefill`](Self::prefill), with the logits after every position,
    /// `[tokens][vocab]` (prompt log-probabilities for `echo`).
    pub fn prefill_all(&self, cache: &mut SeqCache, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let hidden = self.prefill_hidden(cache, tokens)?;
        Self::linear(&hidden, &self.lm_head)?.to_vec2()
    }

    /// One decode step for many sequences: `tokens[i]` goes after `caches[i]`'s history.
    /// Returns the next-token logits of each, `[n][vocab]`.
    pub fn step(&self, caches: &mut [&mut SeqCache], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 || n != caches.len() {
            candle_core::bail!("step: {} tokens for {} sequences", n, caches.len());
        }
        for cache in caches.iter_mut() {
            if cache.len + 1 > c.max_positions {
                candle_core::bail!("the sequence is longer than the model's context");
            }
            self.reserve(cache, 1)?;
        }
        let (g, d) = (c.heads / c.kv_heads, c.head_dim);
        let positions: Vec<u32> = caches.iter().map(|s| s.len as u32).collect();
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        // Each row rotates by its own position: cos/sin as [n, 1, d/2].
        let cos = self.cos.index_select(&positions, 0)?.unsqueeze(1)?;
        let sin = self.sin.index_select(&positions, 0)?.unsqueeze(1)?;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let scale = 1.0 / (d as f64).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let h = self.rms(&x, &layer.input_norm)?;
            let (q, k, v) = self.qkv(layer, &h)?;
            let q = q.reshape((n, c.heads, 1, d))?.contiguous()?;
            let k = k.reshape((n, c.kv_heads, 1, d))?.contiguous()?;
            let v = v.reshape((n, c.kv_heads, 1, d))?.contiguous()?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            let mut outs = Vec::with_capacity(n);
            for (i, cache) in caches.iter_mut().enumerate() {
                let (kc, vc) = &cache.kv[l];
                let pos = cache.len;
                kc.slice_set(&k.i(i)?, 1, pos)?;
                vc.slice_set(&v.i(i)?, 1, pos)?;
                let keys = kc.narrow(1, 0, pos + 1)?;
                let values = vc.narrow(1, 0, pos + 1)?;
                let qi = q.i(i)?.reshape((c.kv_heads, g, d))?;
                let att = (qi.matmul(&keys.t()?)? * scale)?;
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                outs.push(
                    att.matmul(&values.contiguous()?)?
                        .reshape((1, c.heads * d))?,
                );
            }
            let y = Tensor::cat(&outs, 0)?;
            x = (Self::linear(&y, &layer.o)? + residual)?;
            let residual = x.clone();
            let h = self.rms(&x, &layer.post_norm)?;
            x = (self.mlp(layer, &h)? + residual)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        let x = self.rms(&x, &self.norm)?;
        Self::linear(&x, &self.lm_head)?.to_vec2()
    }
}

/// cos/sin of every position, `[max_positions, head_dim / 2]`, with Llama 3's frequency
/// scaling when `rope_scaling.rope_type` is `llama3`.
fn rope_tables(
    raw: &RawConfig,
    head_dim: usize,
    device: &Device,
) -> Result<(Tensor, Tensor), LoadError> {
    let base = raw.rope_theta;
    let mut inv: Vec<f64> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f64 / head_dim as f64))
        .collect();
    match &raw.rope_scaling {
        None => {}
        Some(s) if matches!(s.rope_type.as_deref(), None | Some("default")) => {}
        Some(s) if s.rope_type.as_deref() == Some("llama3") => {
            let (Some(factor), Some(low), Some(high), Some(orig)) = (
                s.factor,
                s.low_freq_factor,
                s.high_freq_factor,
                s.original_max_position_embeddings,
            ) else {
                return Err(LoadError::new(
                    "config.json: rope_scaling llama3 needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings",
                ));
            };
            let (factor, low, high, orig) = (
                f64::from(factor),
                f64::from(low),
                f64::from(high),
                orig as f64,
            );
            let low_wavelen = orig / low;
            let high_wavelen = orig / high;
            for f in &mut inv {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                *f = if wavelen < high_wavelen {
                    *f
                } else if wavelen > low_wavelen {
                    *f / factor
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    (1.0 - smooth) * *f / factor + smooth * *f
                };
            }
        }
        Some(s) => {
            return Err(LoadError::new(format!(
                "config.json: rope_scaling type '{}' is not supported",
                s.rope_type.as_deref().unwrap_or("?")
            )));
        }
    }
    let half = inv.len();
    let n = raw.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv {
            // f32 angles, as transformers computes them (positions x inv_freq in f32).
            let angle = (p as f32) * (*f as f32);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), device).map_err(load_err)?;
    let sin = Tensor::from_vec(sin, (n, half), device).map_err(load_err)?;
    Ok((cos, sin))
}
