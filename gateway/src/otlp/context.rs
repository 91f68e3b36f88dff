//! W3C Trace Context: the `traceparent` header in and out, fresh ids, and the sampling
//! decision.
//!
//! <https://www.w3.org/TR/trace-context/>: `VERSION-TRACEID-PARENTID-FLAGS`, lower-case hex.
//! A header that breaks the rules is ignored (the request starts a trace of its own), as
//! the spec asks, never an error for the client.

use std::cell::Cell;

/// A trace id and the span a request continues, from a caller's `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's `sampled` flag: it decided for the whole trace.
    pub sampled: bool,
}

/// Parses a `traceparent` value; `None` when it breaks the spec's rules.
pub fn parse_traceparent(value: &str) -> Option<Parent> {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    // version(2) - trace-id(32) - parent-id(16) - flags(2) = 55 characters.
    if bytes.len() < 55 {
        return None;
    }
    let version = hex_byte(bytes.get(0..2)?)?;
    if version == 0xff || bytes.get(2) != Some(&b'-') {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may append `-...` fields.
    if (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes.get(55) != Some(&b'-')) {
        return None;
    }
    let trace_id: [u8; 16] = hex_array(bytes.get(3..35)?)?;
    if bytes.get(35) != Some(&b'-') {
        return None;
    }
    let span_id: [u8; 8] = hex_array(bytes.get(36..52)?)?;
    if bytes.get(52) != Some(&b'-') {
        return None;
    }
    let flags = hex_byte(bytes.get(53..55)?)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// The `traceparent` to send downstream: version 00, `span_id` as the parent.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    let flags = if sampled { "01" } else { "00" };
    format!("00-{}-{}-{flags}", hex(trace_id), hex(span_id))
}

/// Lower-case hex, as both W3C and OTLP/JSON write ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Only lower-case digits are valid in `traceparent`.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    match pair {
        [hi, lo] => Some(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => None,
    }
}

fn hex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *slot = hex_byte(pair)?;
    }
    Some(out)
}

thread_local! {
    /// splitmix64 state, seeded once per thread from the OS's random source.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = crate::base::new_uuid().into_bytes();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(bytes.get(0..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(seed) ^ 0x9e37_79b9_7f4a_7c15
}

/// Random 64 bits for ids. Not cryptographic: ids only need to be unique, and a syscall per
/// id would be a cost on every request.
fn next_u64() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A fresh trace id (never all zero, which W3C reserves as invalid).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next_u64().to_be_bytes());
        id[8..].copy_from_slice(&next_u64().to_be_bytes());
        if id != [0; 16] {
            return id;
        }
    }
}

/// A fresh span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = next_u64().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Head sampling, parent-based: a caller's decision wins; a new trace is kept with
/// probability `ratio`, decided from its trace id (the low 8 bytes, as OpenTelemetry's
/// `TraceIdRatioBased` does), so every service that samples by ratio agrees on a trace.
pub fn sampled(parent: Option<&Parent>, trace_id: &[u8; 16], ratio: f64) -> bool {
    if let Some(parent) = parent {
        return parent.sampled;
    }
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    // 63 bits against ratio · 2^63; both sides exact enough in f64 for a sampling ratio.
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_the_spec_example() {
        let p = parse_traceparent(VALID).unwrap();
        assert_eq!(hex(&p.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&p.span_id), "b7ad6b7169203331");
        assert!(p.sampled);
        let unsampled =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!unsampled.sampled);
        // Other flag bits do not make it sampled.
        let other =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02").unwrap();
        assert!(!other.sampled);
    }

    #[test]
    fn round_trips() {
        let p = parse_traceparent(VALID).unwrap();
        assert_eq!(format_traceparent(&p.trace_id, &p.span_id, true), VALID);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "garbage",
            // upper-case hex
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            // all-zero ids
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // version ff is invalid
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // version 00 with trailing data
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            // short ids, wrong separators, non-hex
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let p = parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz")
            .unwrap();
        assert!(p.sampled);
        assert_eq!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01xyz"),
            None
        );
    }

    #[test]
    fn ids_are_fresh_and_valid() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, b);
        assert_ne!(new_span_id(), new_span_id());
        let header = format_traceparent(&a, &new_span_id(), false);
        assert_eq!(parse_traceparent(&header).unwrap().trace_id, a);
    }

    #[test]
    fn the_parent_decides_sampling() {
        let p = parse_traceparent(VALID).unwrap();
        assert!(sampled(Some(&p), &p.trace_id, 0.0));
        let no = Parent {
            sampled: false,
            ..p
        };
        assert!(!sampled(Some(&no), &p.trace_id, 1.0));
    }

    #[test]
    fn ratio_sampling_keeps_about_that_share_and_is_decided_by_the_trace_id() {
        assert!(sampled(None, &new_trace_id(), 1.0));
        assert!(!sampled(None, &new_trace_id(), 0.0));
        let n = 20_000;
        let kept = (0..n)
            .filter(|_| sampled(None, &new_trace_id(), 0.25))
            .count();
        // Binomial(20000, 0.25): sd ≈ 61; 5 sd either side.
        assert!((4_700..=5_300).contains(&kept), "{kept}");
        let id = new_trace_id();
        let first = sampled(None, &id, 0.5);
        assert!((0..10).all(|_| sampled(None, &id, 0.5) == first));
        // The low half decides: all ones is past any ratio below 1, all zeros under any above 0.
        let mut high = [0u8; 16];
        high[8..].copy_from_slice(&[0xff; 8]);
        assert!(!sampled(None, &high, 0.999));
        let mut low = [0xffu8; 16];
        low[8..].copy_from_slice(&[0; 8]);
        assert!(sampled(None, &low, 0.001));
    }
}
