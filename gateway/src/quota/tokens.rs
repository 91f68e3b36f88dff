//! What a request reserves before it is forwarded: its prompt tokens, counted with the
//! meter's tokenizer (`o200k_base` for the GPT-4o / o-series / GPT-4.1 / GPT-5 families,
//! `cl100k_base` for GPT-4 / GPT-3.5 / embeddings, and `cl100k_base` as the documented
//! estimate for every other model), plus the most it may generate: `max_completion_tokens`,
//! else `max_tokens`, else `limits.default_max_tokens`, times `n`.
//!
//! The estimate only has to be an upper bound: the reservation is settled to the meter's
//! real count when the answer ends. So the limiter first reserves [`Count::Bound`] (the
//! byte length of the prompt's JSON, which no tokenizer count exceeds) and runs the tokenizer
//! ([`Count::Exact`]) only when a tpm limit refuses that bound. A request that fits with
//! room to spare, the common case, costs no tokenizer time and loads no BPE tables (tens
//! of MiB for `o200k_base`), and is admitted or refused as with exact counting. The price:
//! until it settles, a request holds its bound (for plain English about 4× its prompt
//! tokens) against tpm and budgets, so concurrent requests near a limit are refused a
//! little sooner; never later.

use tollgate_admin::store::Usage;

use crate::exchange::{Call, Endpoint};
use crate::meter::usage::Prompt;

/// Most completions one request may ask for (`n`) that the estimate believes; more is the
/// upstream's problem to refuse.
const MAX_N: u64 = 128;

/// How prompt tokens are counted for a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// The byte length of the prompt's JSON: no tokenizer, never below the exact count.
    Bound,
    /// The tokenizer's count (CPU work, and the BPE tables on first use).
    Exact,
}

/// Tokens and images one request reserves.
pub fn estimate(call: &Call, default_max_tokens: u64, count: Count) -> Usage {
    let input_tokens = match count {
        Count::Bound => Prompt::bound(call.endpoint, &call.payload),
        Count::Exact => Prompt::of(call.endpoint, &call.payload).count(&call.model),
    };
    let n = call.params.n.unwrap_or(1).clamp(1, MAX_N);
    let (output_tokens, images) = match call.endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Completions
        | Endpoint::Messages
        | Endpoint::Responses => (
            call.params
                .max_output
                .unwrap_or(default_max_tokens)
                .saturating_mul(n),
            0,
        ),
        Endpoint::ImagesGenerations => (0, u32::try_from(n).unwrap_or(1)),
        _ => (0, 0),
    };
    Usage {
        input_tokens,
        output_tokens,
        images,
        ..Usage::default()
    }
}

/// Whether the client bounded the output (`max_completion_tokens` or `max_tokens`), so the
/// reservation covers whatever the upstream may send.
pub fn bounded(call: &Call) -> bool {
    call.params.max_output.is_some()
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn req(endpoint: Endpoint, body: Value) -> Call {
        crate::openai::test_call(endpoint, body)
    }

    #[test]
    fn prompt_plus_max_tokens() {
        let chat = |extra: Value| {
            let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            estimate(&req(Endpoint::ChatCompletions, body), 1000, Count::Exact)
        };
        let plain = chat(json!({}));
        // "user" + "Hello there" (o200k: 1 + 2) + 3 per message + 3 per reply.
        assert_eq!(plain.input_tokens, 9);
        assert_eq!(plain.output_tokens, 1000);
        assert_eq!(chat(json!({"max_tokens": 50})).output_tokens, 50);
        assert_eq!(
            chat(json!({"max_tokens": 50, "max_completion_tokens": 70})).output_tokens,
            70
        );
        assert_eq!(chat(json!({"max_tokens": 50, "n": 3})).output_tokens, 150);
        let emb = estimate(
            &req(
                Endpoint::Embeddings,
                json!({"model": "text-embedding-3-small", "input": ["a b", [1, 2, 3]]}),
            ),
            1000,
            Count::Exact,
        );
        assert_eq!(emb.output_tokens, 0);
        assert_eq!(emb.input_tokens, 2 + 3);
    }

    #[test]
    fn the_bound_is_never_below_the_tokenizer() {
        let texts = [
            "Hello there",
            "",
            " ",
            "日本語のテキストとemoji 🎉🎉🎉 mixed in",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "{\"json\": [1, 2, 3], \"nested\": {\"k\": \"v\"}}\n\t\r",
            "\u{0}\u{1}\u{7f} control characters",
        ];
        for model in ["gpt-4o-mini", "gpt-4", "some-other-model"] {
            for text in texts {
                let body = json!({"model": model, "messages": [
                    {"role": "system", "content": text},
                    {"role": "user", "name": "n", "content": [{"type": "text", "text": text}]},
                ]});
                let r = req(Endpoint::ChatCompletions, body);
                let bound = estimate(&r, 10, Count::Bound);
                let exact = estimate(&r, 10, Count::Exact);
                assert!(
                    bound.input_tokens >= exact.input_tokens,
                    "{model} {text:?}: bound {} < exact {}",
                    bound.input_tokens,
                    exact.input_tokens
                );
                assert_eq!(bound.output_tokens, exact.output_tokens);
            }
            let emb = req(
                Endpoint::Embeddings,
                json!({"model": model, "input": ["a b", [1, 2, 3], "🎉"]}),
            );
            assert!(
                estimate(&emb, 0, Count::Bound).input_tokens
                    >= estimate(&emb, 0, Count::Exact).input_tokens
            );
        }
    }
}
