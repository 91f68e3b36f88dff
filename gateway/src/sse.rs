//! Server-sent events: the one framer every stream goes through, and the encoder.
//!
//! Upstream bytes arrive in chunks that may split anywhere: inside a line, between `\r`
//! and `\n`, inside a multi-byte character. [`Framer`] keeps only the unfinished line and
//! hands out whole [`Frame`]s, following the WHATWG rules: lines end in `\n`, `\r\n` or
//! `\r`; a blank line dispatches the event; `data:` lines join with `\n`; one space after
//! the colon is dropped; `:` lines are comments; a leading byte-order mark is skipped.
//! An event (or a line) larger than the framer's bound is an error rather than unbounded
//! buffering, so a hostile upstream cannot grow memory.
//!
//! Zero-copy where the upstream makes it possible: a `data` that is one line within one
//! chunk is a slice of that chunk, and an event sent exactly as `data: ...\n\n` keeps its
//! bytes ([`Frame::raw`]), so relaying it costs no copy at all.

use bytes::{Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The `event:` field, when it had one.
    pub name: Option<Bytes>,
    /// The `data:` lines, joined with `\n`.
    pub data: Bytes,
    /// The event's exact bytes when they were `data: <data>\n\n` in one chunk: relayed as
    /// they are.
    pub raw: Option<Bytes>,
}

impl Frame {
    /// A frame with only `data`.
    pub fn data(data: impl Into<Bytes>) -> Self {
        Self {
            name: None,
            data: data.into(),
            raw: None,
        }
    }

    /// A frame with an `event:` name and `data`.
    pub fn named(name: &'static str, data: impl Into<Bytes>) -> Self {
        Self {
            name: Some(Bytes::from_static(name.as_bytes())),
            data: data.into(),
            raw: None,
        }
    }

    /// The bytes of this event on the wire, ending with its blank line.
    pub fn encode(&self) -> Bytes {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut out = BytesMut::with_capacity(self.data.len() + 16);
        if let Some(name) = &self.name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(name);
            out.extend_from_slice(b"\n");
        }
        for line in self.data.split(|&b| b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(b"\n");
        out.freeze()
    }
}

/// Why a stream could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line or an event went over the framer's bound.
    #[error("an event larger than the gateway accepts")]
    TooLarge,
    /// A line that is no SSE field (strict framers only): HTML, binary, garbage.
    #[error("a line that is no server-sent event field")]
    NotSse,
}

/// The data accumulated for the event in progress.
#[derive(Debug, Default)]
enum Data {
    #[default]
    None,
    One(Bytes),
    Many(BytesMut),
}

/// Incremental SSE framer; see the module docs.
#[derive(Debug)]
pub struct Framer {
    max_event: usize,
    /// Refuse lines whose field is not `data`, `event`, `id` or `retry` (an upstream that
    /// is not speaking SSE), instead of ignoring them as the spec's browsers do.
    strict: bool,
    /// The start of a line cut at the end of the previous chunk.
    partial: BytesMut,
    /// The previous chunk ended in `\r`: a `\n` starting the next chunk belongs to it.
    after_cr: bool,
    /// The stream's first line was read (a byte-order mark may only start it).
    started: bool,
    name: Option<Bytes>,
    data: Data,
    /// Bytes of the event in progress (its lines so far).
    event_bytes: usize,
    /// The event in progress is so far exactly `data: ...\n` from this offset of the
    /// current chunk: if a blank `\n` line follows, its bytes are its raw form.
    raw_from: Option<usize>,
}

impl Framer {
    /// A framer refusing events over `max_event` bytes; lenient about unknown fields.
    pub fn new(max_event: usize) -> Self {
        Self {
            max_event,
            strict: false,
            partial: BytesMut::new(),
            after_cr: false,
            started: false,
            name: None,
            data: Data::None,
            event_bytes: 0,
            raw_from: None,
        }
    }

    /// A framer that also refuses lines that are no SSE field.
    pub fn strict(max_event: usize) -> Self {
        Self {
            strict: true,
            ..Self::new(max_event)
        }
    }

    /// Feeds the next chunk; whole events are appended to `out` in order.
    pub fn feed(&mut self, chunk: &Bytes, out: &mut Vec<Frame>) -> Result<(), FrameError> {
        if chunk.is_empty() {
            // Nothing to frame, and a `\r` that ended the last chunk still waits for the
            // `\n` that may follow it (found by the `anthropic` fuzz target: an empty
            // chunk between the two made a blank line of the `\n`, ending an event early).
            return Ok(());
        }
        let mut at = 0;
        if std::mem::take(&mut self.after_cr) && chunk.get(at) == Some(&b'\n') {
            at += 1;
        }
        while let Some(i) = chunk[at..].iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = at + i;
            let mut next = end + 1;
            let lf = chunk[end] == b'\n';
            if !lf {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.partial.is_empty() {
                self.line(chunk, at, end, lf, out)?;
            } else {
                self.partial.extend_from_slice(&chunk[at..end]);
                let line = self.partial.split().freeze();
                self.raw_from = None;
                self.line(&line, 0, line.len(), false, out)?;
            }
            at = next;
        }
        let rest = &chunk[at..];
        if self.partial.len() + rest.len() + self.event_bytes > self.max_event {
            return Err(FrameError::TooLarge);
        }
        // Offsets are into this chunk: an event that goes on in the next one is re-encoded.
        self.raw_from = None;
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The end of the stream: a last line without its end, and an event without its
    /// blank line, are taken as complete (servers that end with `data: [DONE]\n` exist).
    pub fn finish(&mut self, out: &mut Vec<Frame>) -> Result<(), FrameError> {
        if !self.partial.is_empty() {
            let line = self.partial.split().freeze();
            self.line(&line, 0, line.len(), false, out)?;
        }
        self.raw_from = None;
        self.dispatch(out);
        Ok(())
    }

    /// One line, `chunk[start..end]`; `lf`: it ended in a lone `\n` within `chunk`.
    fn line(
        &mut self,
        chunk: &Bytes,
        start: usize,
        end: usize,
        lf: bool,
        out: &mut Vec<Frame>,
    ) -> Result<(), FrameError> {
        let mut start = start;
        if !std::mem::replace(&mut self.started, true)
            && chunk[start..end].starts_with(b"\xEF\xBB\xBF")
        {
            // A byte-order mark may start the stream (however the chunks cut it).
            start += 3;
            self.raw_from = None;
        }
        let line = &chunk[start..end];
        if line.is_empty() {
            let raw = match (self.raw_from.take(), lf) {
                (Some(from), true) => Some(chunk.slice(from..end + 1)),
                _ => None,
            };
            self.dispatch(out);
            if let (Some(raw), Some(last)) = (raw, out.last_mut()) {
                last.raw = Some(raw);
            }
            return Ok(());
        }
        self.event_bytes += line.len() + 1;
        if self.event_bytes > self.max_event {
            return Err(FrameError::TooLarge);
        }
        if line[0] == b':' {
            self.raw_from = None;
            return Ok(());
        }
        let (field, value_at) = match line.iter().position(|&b| b == b':') {
            Some(i) if line.get(i + 1) == Some(&b' ') => (&line[..i], start + i + 2),
            Some(i) => (&line[..i], start + i + 1),
            None => (line, end),
        };
        match field {
            b"data" => {
                let first = matches!(self.data, Data::None) && self.name.is_none();
                self.raw_from = match (first, lf, value_at == start + 6) {
                    (true, true, true) => Some(start),
                    _ => None,
                };
                let value = chunk.slice(value_at..end);
                self.data = match std::mem::take(&mut self.data) {
                    Data::None => Data::One(value),
                    Data::One(prev) => {
                        let mut joined = BytesMut::with_capacity(prev.len() + value.len() + 1);
                        joined.extend_from_slice(&prev);
                        joined.extend_from_slice(b"\n");
                        joined.extend_from_slice(&value);
                        Data::Many(joined)
                    }
                    Data::Many(mut joined) => {
                        joined.extend_from_slice(b"\n");
                        joined.extend_from_slice(&value);
                        Data::Many(joined)
                    }
                };
            }
            b"event" => {
                self.raw_from = None;
                self.name = Some(chunk.slice(value_at..end));
            }
            b"id" | b"retry" => self.raw_from = None,
            _ if self.strict => return Err(FrameError::NotSse),
            _ => self.raw_from = None,
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        self.event_bytes = 0;
        let name = self.name.take();
        let data = match std::mem::take(&mut self.data) {
            Data::None => return,
            Data::One(b) => b,
            Data::Many(b) => b.freeze(),
        };
        out.push(Frame {
            name,
            data,
            raw: None,
        });
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]], max: usize) -> Result<Vec<Frame>, FrameError> {
        let mut f = Framer::strict(max);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(&Bytes::copy_from_slice(c), &mut out)?;
        }
        f.finish(&mut out)?;
        Ok(out)
    }

    fn datas(chunks: &[&[u8]]) -> Vec<String> {
        frames(chunks, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|f| String::from_utf8(f.data.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn every_line_ending_and_every_split_gives_the_same_events() {
        let input: &[u8] =
            b"data: {\"a\":1}\r\n\r\nevent: x\ndata: b\ndata:c\n\n: ping\r\rdata: d\r\rdata: [DONE]\n\n";
        let whole = frames(&[input], 1 << 20).unwrap();
        assert_eq!(
            whole.iter().map(|f| f.data.as_ref()).collect::<Vec<_>>(),
            vec![&b"{\"a\":1}"[..], b"b\nc", b"d", b"[DONE]"]
        );
        assert_eq!(whole[1].name.as_deref(), Some(&b"x"[..]));
        for cut in 0..=input.len() {
            for cut2 in cut..=input.len() {
                let got =
                    frames(&[&input[..cut], &input[cut..cut2], &input[cut2..]], 1 << 20).unwrap();
                let strip = |v: &[Frame]| {
                    v.iter()
                        .map(|f| (f.name.clone(), f.data.clone()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(strip(&got), strip(&whole), "cut at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn an_empty_chunk_between_cr_and_lf_changes_nothing() {
        let input: &[u8] = b"data: a\r\ndata: b\n\n";
        let whole = frames(&[input], 1 << 20).unwrap();
        let cut = frames(&[&input[..8], b"", &input[8..]], 1 << 20).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].data.as_ref(), b"a\nb");
    }

    #[test]
    fn openai_events_keep_their_bytes() {
        let chunk: &[u8] = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let out = frames(&[chunk], 1 << 20).unwrap();
        assert_eq!(out[0].raw.as_deref(), Some(&b"data: {\"a\":1}\n\n"[..]));
        assert_eq!(out[0].encode(), Bytes::from_static(b"data: {\"a\":1}\n\n"));
        assert_eq!(out[1].raw.as_deref(), Some(&b"data: [DONE]\n\n"[..]));
        // CRLF, a name, or two data lines: re-encoded with LF.
        let out = frames(
            &[b"data: a\r\n\r\nevent: e\ndata: b\n\ndata: c\ndata: d\n\n"],
            99,
        )
        .unwrap();
        assert!(out.iter().all(|f| f.raw.is_none()));
        assert_eq!(out[0].encode(), Bytes::from_static(b"data: a\n\n"));
        assert_eq!(
            out[1].encode(),
            Bytes::from_static(b"event: e\ndata: b\n\n")
        );
        assert_eq!(out[2].encode(), Bytes::from_static(b"data: c\ndata: d\n\n"));
    }

    #[test]
    fn a_byte_order_mark_and_a_missing_last_blank_line_are_tolerated() {
        assert_eq!(
            datas(&[b"\xEF\xBB\xBFdata: a\n\ndata: [DONE]\n"]),
            vec!["a", "[DONE]"]
        );
        assert_eq!(datas(&[b"data: a\n\ndata: [DONE]"]), vec!["a", "[DONE]"]);
    }

    #[test]
    fn garbage_and_endless_events_fail() {
        assert_eq!(
            frames(&[b"<html>502 Bad Gateway</html>\n"], 1 << 20),
            Err(FrameError::NotSse)
        );
        assert_eq!(
            frames(&[b"data: {}\n\n", b"\x00\x01\xff\xfe\n"], 1 << 20),
            Err(FrameError::NotSse)
        );
        let long = vec![b'x'; 600];
        assert_eq!(
            frames(&[b"data: ", &long, &long], 1000),
            Err(FrameError::TooLarge)
        );
        let lines: Vec<&[u8]> = vec![b": ping\n"; 200];
        assert_eq!(frames(&lines, 1000), Err(FrameError::TooLarge));
        assert!(frames(&lines[..100], 1000).is_ok());
    }

    #[test]
    fn lenient_framers_skip_unknown_fields() {
        let mut f = Framer::new(1 << 20);
        let mut out = Vec::new();
        f.feed(&Bytes::from_static(b"foo: bar\ndata: x\n\n"), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, Bytes::from_static(b"x"));
    }
}
