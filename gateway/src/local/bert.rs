//! A BERT encoder for embeddings on the CPU, packed: the inputs of a batch are laid end
//! to end as the rows of one matrix, so no position is padding. The four matrix products
//! of a layer run over all rows at once (candle's GEMM, every core); attention runs per
//! input and head over that input's own rows only (in parallel, with rayon), and the
//! element-wise work (bias, GELU, residual, LayerNorm) is fused into single passes over
//! the rows, also in parallel.
//!
//! Biases ride inside the products: every matrix fed to a product carries a last column
//! of ones, and every weight matrix a last column holding its bias.
//!
//! The maths is Hugging Face's `BertModel` (erf GELU, LayerNorm with its epsilon); the
//! tests hold it to sentence-transformers' vectors and to candle's own `BertModel`.

use candle_core::{Device, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::LoadError;

type Result<T, E = candle_core::Error> = std::result::Result<T, E>;

/// Rows below which a pass stays on one thread (splitting costs more than it saves).
const MIN_ROWS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `gelu`: 0.5·x·(1 + erf(x/√2)).
    Erf,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    Tanh,
}

struct Layer {
    /// `[3·hidden, hidden + 1]`: query, key, value, each with its bias column.
    qkv: Tensor,
    /// `[hidden, hidden + 1]`.
    out: Tensor,
    ln1: (Vec<f32>, Vec<f32>),
    /// `[intermediate, hidden + 1]`.
    up: Tensor,
    /// `[hidden, intermediate + 1]`.
    down: Tensor,
    ln2: (Vec<f32>, Vec<f32>),
}

pub struct PackedBert {
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's row (sentence-transformers sends zeros).
    token_type: Vec<f32>,
    ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    gelu: Gelu,
    pub max_positions: usize,
    vocab: usize,
}

fn load_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::new(format!("weights: {e}"))
}

/// `w` with `b` appended as a last column: `[rows, cols + 1]`.
fn with_bias(w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[w, &b.unsqueeze(1)?], 1)?.contiguous()
}

/// Reads a CPU tensor's values in place (no copy).
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            let len = t.elem_count();
            match all.get(start..start + len) {
                Some(s) if t.is_contiguous() => Ok(f(s)),
                _ => candle_core::bail!("packed bert: a tensor is not contiguous"),
            }
        }
        _ => candle_core::bail!("packed bert: CPU tensors only"),
    }
}

/// `x · wᵀ` for `x` of `rows × (k + 1)` (ones last) and `w` of `n × (k + 1)`.
fn product(x: Vec<f32>, rows: usize, w: &Tensor) -> Result<Tensor> {
    let k = w.dim(1)?;
    let x = Tensor::from_vec(x, (rows, k), &Device::Cpu)?;
    x.matmul(&w.t()?)
}

/// Eigen's single-precision erf: a rational function of x² on [-4, 4], 7e-8 from exact,
/// and only multiplies, adds and one divide, so the loop vectorises. (Not `mul_add`:
/// without FMA in the build's target features it is a slow library call.)
#[inline]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_5e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

#[inline]
fn gelu(kind: Gelu, x: f32) -> f32 {
    match kind {
        Gelu::Erf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Gelu::Tanh => {
            let inner = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            0.5 * x * (1.0 + inner.tanh())
        }
    }
}

/// Sums in eight independent lanes: a plain `.sum()` of floats is one serial chain (the
/// compiler may not reorder float additions), eight lanes become SIMD.
#[inline]
fn lanes(a: &[f32], f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let whole = a.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        for (l, slot) in acc.iter_mut().enumerate() {
            *slot += f(i + l);
        }
    }
    let mut total =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in whole..a.len() {
        total += f(i);
    }
    total
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    lanes(a, |i| a[i] * b[i])
}

/// LayerNorm of `row` into `out` (which has one more slot, set to 1).
#[inline]
fn layer_norm(row: &[f32], (g, b): &(Vec<f32>, Vec<f32>), eps: f32, out: &mut [f32]) {
    let n = row.len() as f32;
    let mean = lanes(row, |i| row[i]) / n;
    let var = lanes(row, |i| (row[i] - mean) * (row[i] - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, v), g), b) in out.iter_mut().zip(row).zip(g).zip(b) {
        *o = (v - mean) * inv * g + b;
    }
    if let Some(last) = out.last_mut() {
        *last = 1.0;
    }
}

impl PackedBert {
    /// From the safetensors of a BERT folder (`config` is its `config.json`).
    pub fn load(
        vb: &VarBuilder<'_>,
        config: &candle_transformers::models::bert::Config,
        hidden_act: Option<&str>,
    ) -> Result<Self, LoadError> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb.clone()
        };
        let gelu = match hidden_act.unwrap_or("gelu") {
            "gelu" => Gelu::Erf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_approximate" => Gelu::Tanh,
            other => {
                return Err(LoadError::new(format!(
                    "config.json: hidden_act '{other}' is not supported"
                )));
            }
        };
        let (h, i) = (config.hidden_size, config.intermediate_size);
        if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
            return Err(LoadError::new(
                "config.json: hidden_size must be a multiple of num_attention_heads",
            ));
        }
        let get = |shape: (usize, usize), name: &str| vb.get(shape, name).map_err(load_err);
        let get1 = |n: usize, name: &str| vb.get(n, name).map_err(load_err);
        let vec = |t: Tensor| -> Result<Vec<f32>, LoadError> {
            t.flatten_all().and_then(|t| t.to_vec1()).map_err(load_err)
        };
        let norm = |name: &str| -> Result<(Vec<f32>, Vec<f32>), LoadError> {
            Ok((
                vec(get1(h, &format!("{name}.weight"))?)?,
                vec(get1(h, &format!("{name}.bias"))?)?,
            ))
        };
        let linear = |name: &str, out: usize, inp: usize| -> Result<Tensor, LoadError> {
            let w = get((out, inp), &format!("{name}.weight"))?;
            let b = get1(out, &format!("{name}.bias"))?;
            with_bias(&w, &b).map_err(load_err)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let a = format!("{p}.attention.self");
            let q = linear(&format!("{a}.query"), h, h)?;
            let k = linear(&format!("{a}.key"), h, h)?;
            let v = linear(&format!("{a}.value"), h, h)?;
            layers.push(Layer {
                qkv: Tensor::cat(&[&q, &k, &v], 0)
                    .and_then(|t| t.contiguous())
                    .map_err(load_err)?,
                out: linear(&format!("{p}.attention.output.dense"), h, h)?,
                ln1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&format!("{p}.intermediate.dense"), i, h)?,
                down: linear(&format!("{p}.output.dense"), h, i)?,
                ln2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_types = get(
            (config.type_vocab_size.max(1), h),
            "embeddings.token_type_embeddings.weight",
        )?;
        Ok(Self {
            word: vec(get(
                (config.vocab_size, h),
                "embeddings.word_embeddings.weight",
            )?)?,
            position: vec(get(
                (config.max_position_embeddings, h),
                "embeddings.position_embeddings.weight",
            )?)?,
            token_type: vec(token_types.get(0).map_err(load_err)?)?,
            ln: norm("embeddings.LayerNorm")?,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            intermediate: i,
            eps: config.layer_norm_eps as f32,
            gelu,
            max_positions: config.max_position_embeddings,
            vocab: config.vocab_size,
        })
    }

    /// The last hidden states of `inputs` (token ids, each at most `max_positions`
    /// long), packed: `[total tokens, hidden]` row-major, inputs one after the other.
    pub fn forward(&self, inputs: &[&[u32]]) -> Result<Vec<f32>> {
        let h = self.hidden;
        let w = h + 1;
        let rows: usize = inputs.iter().map(|s| s.len()).sum();
        let mut spans = Vec::with_capacity(inputs.len());
        let mut at = 0;
        for s in inputs {
            if s.len() > self.max_positions || s.iter().any(|&t| t as usize >= self.vocab) {
                candle_core::bail!("an input is longer than the model or has a foreign token");
            }
            spans.push((at, s.len()));
            at += s.len();
        }
        // Embeddings: word + position + type 0, then LayerNorm.
        let mut x = vec![0f32; rows * w];
        let ids: Vec<(u32, usize)> = inputs
            .iter()
            .flat_map(|s| s.iter().enumerate().map(|(p, &t)| (t, p)))
            .collect();
        x.par_chunks_mut(w)
            .with_min_len(MIN_ROWS)
            .zip(ids.par_iter())
            .for_each_init(
                || vec![0f32; h],
                |sum, (out, &(id, pos))| {
                    let word = &self.word[id as usize * h..][..h];
                    let position = &self.position[pos * h..][..h];
                    for (((s, a), b), c) in
                        sum.iter_mut().zip(word).zip(position).zip(&self.token_type)
                    {
                        *s = a + b + c;
                    }
                    layer_norm(sum, &self.ln, self.eps, out);
                },
            );
        for layer in &self.layers {
            x = self.layer(layer, x, rows, &spans)?;
        }
        // Drop the ones column.
        let mut out = Vec::with_capacity(rows * h);
        for row in x.chunks(w) {
            out.extend_from_slice(&row[..h]);
        }
        Ok(out)
    }

    fn layer(
        &self,
        layer: &Layer,
        x: Vec<f32>,
        rows: usize,
        spans: &[(usize, usize)],
    ) -> Result<Vec<f32>> {
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let w = h + 1;
        // Keep x for the residual: the product reads it from the tensor's own storage.
        let x_t = Tensor::from_vec(x, (rows, w), &Device::Cpu)?;
        let qkv = x_t.matmul(&layer.qkv.t()?)?;
        // Attention per head (in parallel), each input over its own rows: [heads][rows][d].
        let scale = 1.0 / (d as f32).sqrt();
        let mut ctx_heads = vec![0f32; heads * rows * d];
        with_slice(&qkv, |qkv| {
            ctx_heads
                .par_chunks_mut(rows * d)
                .enumerate()
                .for_each_init(Vec::new, |scores: &mut Vec<f32>, (head, out)| {
                    for &(start, len) in spans {
                        for i in 0..len {
                            let qrow = &qkv[(start + i) * 3 * h + head * d..][..d];
                            scores.clear();
                            let mut max = f32::NEG_INFINITY;
                            for j in 0..len {
                                let krow = &qkv[(start + j) * 3 * h + h + head * d..][..d];
                                let s = dot(qrow, krow) * scale;
                                max = max.max(s);
                                scores.push(s);
                            }
                            let mut total = 0.0;
                            for s in scores.iter_mut() {
                                *s = (*s - max).exp();
                                total += *s;
                            }
                            let o = &mut out[(start + i) * d..][..d];
                            o.fill(0.0);
                            for (j, p) in scores.iter().enumerate() {
                                let vrow = &qkv[(start + j) * 3 * h + 2 * h + head * d..][..d];
                                let p = p / total;
                                for (a, v) in o.iter_mut().zip(vrow) {
                                    *a += p * v;
                                }
                            }
                        }
                    }
                });
        })?;
        drop(qkv);
        // Heads back side by side, with the ones column.
        let mut ctx = vec![0f32; rows * w];
        ctx.par_chunks_mut(w)
            .with_min_len(MIN_ROWS)
            .enumerate()
            .for_each(|(r, row)| {
                for head in 0..heads {
                    row[head * d..][..d].copy_from_slice(&ctx_heads[(head * rows + r) * d..][..d]);
                }
                row[h] = 1.0;
            });
        drop(ctx_heads);
        let attn = product(ctx, rows, &layer.out)?;
        // Residual and LayerNorm: x1 = LN(x + attn).
        let mut x1 = vec![0f32; rows * w];
        with_slice(&x_t, |x| {
            with_slice(&attn, |attn| {
                x1.par_chunks_mut(w)
                    .with_min_len(MIN_ROWS)
                    .zip(x.par_chunks(w))
                    .zip(attn.par_chunks(h))
                    .for_each_init(
                        || vec![0f32; h],
                        |sum, ((out, x), a)| {
                            for ((s, x), a) in sum.iter_mut().zip(x).zip(a) {
                                *s = x + a;
                            }
                            layer_norm(sum, &layer.ln1, self.eps, out);
                        },
                    );
            })
        })??;
        drop((x_t, attn));
        let x1_t = Tensor::from_vec(x1, (rows, w), &Device::Cpu)?;
        let up = x1_t.matmul(&layer.up.t()?)?;
        let i = self.intermediate;
        let mut act = vec![0f32; rows * (i + 1)];
        let kind = self.gelu;
        with_slice(&up, |up| {
            act.par_chunks_mut(i + 1)
                .with_min_len(MIN_ROWS)
                .zip(up.par_chunks(i))
                .for_each(|(out, u)| {
                    for (o, v) in out.iter_mut().zip(u) {
                        *o = gelu(kind, *v);
                    }
                    out[i] = 1.0;
                });
        })?;
        drop(up);
        let down = product(act, rows, &layer.down)?;
        let mut next = vec![0f32; rows * w];
        with_slice(&x1_t, |x1| {
            with_slice(&down, |down| {
                next.par_chunks_mut(w)
                    .with_min_len(MIN_ROWS)
                    .zip(x1.par_chunks(w))
                    .zip(down.par_chunks(h))
                    .for_each_init(
                        || vec![0f32; h],
                        |sum, ((out, x), a)| {
                            for ((s, x), a) in sum.iter_mut().zip(x).zip(a) {
                                *s = x + a;
                            }
                            layer_norm(sum, &layer.ln2, self.eps, out);
                        },
                    );
            })
        })??;
        Ok(next)
    }
}
