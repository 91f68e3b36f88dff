//! Target `multipart`: the audio uploads' `multipart/form-data` parser (`gateway/src/audio.rs`)
//! and the one rewrite it does, on client bytes.
//!
//! Input: the first byte picks a boundary (three choices), the rest is the body. A body the
//! parser takes names a model and a file; replacing the model gives a body that parses to
//! the same parts (names, files, every other part's bytes) with the new model.

use bytes::Bytes;
use tollgate_gateway::audio;
use tollgate_gateway::exchange::Endpoint;

const BOUNDARIES: [&str; 3] = ["b", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x-y_z"];

pub fn run(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let boundary = BOUNDARIES[usize::from(pick) % BOUNDARIES.len()];
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let body = Bytes::copy_from_slice(body);
    let Ok(parsed) = audio::parse(Endpoint::AudioTranscriptions, Some(&content_type), &body) else {
        return;
    };
    assert!(!parsed.model.is_empty());
    let Some(before) = audio::parts(&body, boundary) else {
        panic!("parse took a body that parts() refuses");
    };
    let Some(out) = audio::with_model(&body, boundary, "fuzz-model") else {
        panic!("a parsed body without its model field");
    };
    let Some(after) = audio::parts(&out, boundary) else {
        panic!("the rewritten body does not parse");
    };
    assert_eq!(before.len(), after.len());
    let mut replaced = false;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.name, &b.filename), (&a.name, &a.filename));
        if !replaced && b.name == "model" && b.filename.is_none() {
            assert_eq!(&out[a.content.clone()], b"fuzz-model");
            replaced = true;
        } else {
            assert_eq!(&body[b.content.clone()], &out[a.content.clone()]);
        }
    }
    assert!(replaced);
}
