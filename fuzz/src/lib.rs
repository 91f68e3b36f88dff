//! The fuzz targets' checks, one function per target, each taking the raw input.
//!
//! They live in a library rather than in the `fuzz_targets/` binaries so that the seed
//! corpora (`fuzz/corpus/<target>/`) are replayed by `cargo test` without libFuzzer, and
//! so that a crash found by a long run can be replayed as a plain test. Each target checks
//! properties that must hold for every input, not only "no panic": the property checks
//! use `assert!`, which libFuzzer reports as a crash like any panic.
//!
//! Several targets take a leading byte that picks a mode and bytes that pick where the
//! rest is cut into chunks ([`cut`]): the split-invariance checks compare a whole feed
//! with a cut one.

#![allow(
    clippy::panic,
    reason = "a violated property panics: that is how a fuzz target reports it to libFuzzer"
)]

pub mod anthropic;
pub mod bedrock;
pub mod config;
pub mod dialects;
pub mod gemini;
pub mod jwt;
pub mod keys;
pub mod multipart;
pub mod request;
pub mod sse;

/// A target's checks over one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("request", request::run),
    ("sse", sse::run),
    ("anthropic", anthropic::run),
    ("config", config::run),
    ("keys", keys::run),
    ("jwt", jwt::run),
    ("gemini", gemini::run),
    ("bedrock", bedrock::run),
    ("multipart", multipart::run),
    ("dialects", dialects::run),
];

/// Splits `data` into a cut list and a payload: the first byte says how many of the next
/// bytes are cut positions (at most 8); each is taken modulo the payload's length + 1.
/// Returns the payload's chunks in order (empty chunks included, as upstreams send them).
pub fn cut(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (vec![data], data);
    };
    let count = usize::from(count % 9).min(rest.len());
    let (positions, payload) = rest.split_at(count);
    let mut at: Vec<usize> = positions
        .iter()
        .map(|&p| usize::from(p) * payload.len().max(1) / 255)
        .map(|p| p.min(payload.len()))
        .collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at {
        chunks.push(&payload[start..end]);
        start = end;
    }
    chunks.push(&payload[start..]);
    (chunks, payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every committed seed goes through its target: the property checks run in the plain
    /// test suite too, and a seed that crashes a target fails here with its file name.
    #[test]
    fn every_seed_passes_its_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).expect("corpus folder") {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("{}", path.display());
                target(&data);
                seeds += 1;
            }
            assert!(seeds >= 3, "{name}: only {seeds} seeds");
        }
    }

    #[test]
    fn cut_keeps_every_byte_in_order() {
        let (chunks, payload) = cut(b"\x03\x00\x80\xffabcdef");
        assert_eq!(payload, b"abcdef");
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), payload);
        assert_eq!(chunks[0], b"");
        let (chunks, payload) = cut(b"");
        assert_eq!((chunks.concat(), payload), (Vec::new(), &b""[..]));
    }
}
