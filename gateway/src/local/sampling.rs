//! Choosing the next token from the logits: `logit_bias`, presence and frequency
//! penalties, the grammar's mask, then greedy (`temperature: 0`) or temperature / `top_p`
//! sampling from a seeded generator (same seed, same text), and the log-probabilities
//! `logprobs` / `top_logprobs` report.
//!
//! Log-probabilities are those of the model itself (a log-softmax of the raw logits),
//! before bias, penalties, temperature or masks, as Hugging Face and vLLM report them.

use std::collections::HashMap;

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    pub top_p: f64,
    /// `None`: a random seed.
    pub seed: Option<u64>,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Added to the logits of these token ids (`logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(0),
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }

    pub fn penalised(&self) -> bool {
        self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }

    /// The generator of choice `choice`: each choice of `n` gets its own, still
    /// reproducible, stream.
    pub fn rng(&self, choice: usize) -> Rng {
        let seed = match self.seed {
            Some(seed) => seed.wrapping_add(choice as u64),
            None => uuid::Uuid::new_v4().as_u64_pair().0,
        };
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
}

/// splitmix64: small, fast, and the same numbers on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A token's log-probability and, when asked, the most likely alternatives at its place.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// A prompt token as `echo` with `logprobs` reports it: the first has no log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptToken {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

/// log(sum(exp(x))), stable.
fn log_sum_exp(xs: &[f32]) -> f32 {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = xs.iter().map(|x| f64::from(x - max).exp()).sum();
    max + sum.ln() as f32
}

/// The `k` most likely tokens of `logits` with their log-probabilities (`lse` from
/// [`log_sum_exp`]), most likely first.
pub fn top_logprobs(logits: &[f32], k: usize, lse: f32) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let by = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if k < ids.len() {
        ids.select_nth_unstable_by(k, by);
        ids.truncate(k);
    }
    ids.sort_by(by);
    ids.into_iter()
        .map(|t| (t, logits[t as usize] - lse))
        .collect()
}

/// The log-probability of `token` under `logits`, and its `top` alternatives.
pub fn logprob_of(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| l - lse),
        top: top_logprobs(logits, top, lse),
    }
}

/// Picks the next token. `allowed` (sorted ids) is the grammar's mask; `counts` how often
/// each token was generated so far (for the penalties). `None` only when nothing is
/// allowed at all.
pub fn pick(
    logits: &[f32],
    sampler: &Sampler,
    rng: &mut Rng,
    counts: &HashMap<u32, u32>,
    allowed: Option<&[u32]>,
    logprobs: Option<usize>,
) -> Option<TokenLogprob> {
    let mut work: Vec<f32> = match allowed {
        Some(ids) => {
            let mut w = vec![f32::NEG_INFINITY; logits.len()];
            for &t in ids {
                if let Some(l) = logits.get(t as usize) {
                    w[t as usize] = *l;
                }
            }
            w
        }
        None => logits.to_vec(),
    };
    for &(t, bias) in &sampler.logit_bias {
        if let Some(w) = work.get_mut(t as usize) {
            *w += bias;
        }
    }
    if sampler.penalised() {
        for (&t, &c) in counts {
            if let Some(w) = work.get_mut(t as usize) {
                *w -= sampler.frequency_penalty * c as f32 + sampler.presence_penalty;
            }
        }
    }
    let token = if sampler.temperature <= 1e-7 {
        let mut best: Option<(usize, f32)> = None;
        for (i, &w) in work.iter().enumerate() {
            if w > f32::NEG_INFINITY && best.is_none_or(|(_, b)| w > b) {
                best = Some((i, w));
            }
        }
        best?.0 as u32
    } else {
        sample(&work, sampler, rng)?
    };
    Some(match logprobs {
        Some(k) => logprob_of(logits, token, k),
        None => TokenLogprob {
            token,
            logprob: 0.0,
            top: Vec::new(),
        },
    })
}

fn sample(work: &[f32], sampler: &Sampler, rng: &mut Rng) -> Option<u32> {
    let max = work.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let t = sampler.temperature;
    let mut probs: Vec<(u32, f64)> = work
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > f32::NEG_INFINITY)
        .map(|(i, w)| (i as u32, (f64::from(w - max) / t).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    if sampler.top_p < 1.0 {
        // The smallest set of most likely tokens whose mass reaches top_p.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut mass = 0.0;
        let mut keep = 0;
        for (_, p) in &probs {
            mass += p;
            keep += 1;
            if mass >= sampler.top_p * total {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    let mut u = rng.next_f64() * total;
    for (t, p) in &probs {
        if u < *p {
            return Some(*t);
        }
        u -= p;
    }
    probs.last().map(|(t, _)| *t)
}
