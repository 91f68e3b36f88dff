//! An incremental parser for server-sent events (the WHATWG "event stream" format).
//!
//! Upstream bytes arrive in chunks that may split anywhere: inside a line, between `\r` and
//! `\n`, inside a multi-byte character. The parser keeps the unfinished line and hands out
//! whole events only. It follows the spec's rules: lines end in `\n`, `\r\n` or `\r`; a
//! blank line dispatches the event; `data:` lines join with `\n`; one space after the colon
//! is dropped; lines starting with `:` are comments (keep-alives); `id`, `retry` and
//! unknown fields are ignored; a leading byte-order mark is skipped; an unfinished event at
//! the end of the stream is discarded.
//!
//! It never panics, whatever the bytes: invalid UTF-8 is replaced, and an event larger
//! than [`MAX_EVENT_BYTES`] is an error instead of unbounded buffering.

/// The largest line or event accepted. Anthropic's events are small deltas; anything near
/// this is a broken or hostile upstream.
pub(super) const MAX_EVENT_BYTES: usize = 4 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Event {
    /// The `event:` field; empty when the event had none.
    pub name: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// A line or event went over [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event larger than {MAX_EVENT_BYTES} bytes")]
pub(super) struct TooLarge;

#[derive(Debug, Default)]
pub(super) struct Parser {
    /// The current line, not yet terminated.
    line: Vec<u8>,
    /// The last chunk ended in `\r`: a `\n` starting the next chunk belongs to it.
    after_cr: bool,
    /// Whether the first line has been seen (a byte-order mark may only start the stream).
    seen_line: bool,
    name: String,
    data: String,
    /// At least one `data:` line since the last dispatch (the data itself may be empty).
    has_data: bool,
}

impl Parser {
    /// Feeds the next chunk; whole events are appended to `out` in order.
    pub(super) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            rest = rest.strip_prefix(b"\n").unwrap_or(rest);
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = rest.split_at(end);
            self.push(head)?;
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
            self.line = line;
            self.line.clear();
            let Some((&terminator, after)) = tail.split_first() else {
                break;
            };
            rest = after;
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.push(rest)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        if self.line.len().saturating_add(bytes.len()) > MAX_EVENT_BYTES {
            return Err(TooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        let mut line = line;
        if !self.seen_line {
            self.seen_line = true;
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                out.push(Event {
                    name: std::mem::take(&mut self.name),
                    data,
                });
            }
            self.name.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line.starts_with(b":") {
            return Ok(()); // a comment: keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => self.name = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.data.len().saturating_add(value.len()) >= MAX_EVENT_BYTES {
                    return Err(TooLarge);
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields mean nothing to a one-shot relay
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn parse_in(chunks: &[&[u8]]) -> Vec<Event> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    fn event(name: &str, data: &str) -> Event {
        Event {
            name: name.to_owned(),
            data: data.to_owned(),
        }
    }

    /// Every spec rule in one stream: BOM, the three line endings, comments, multi-line
    /// data, the optional space, unknown fields, empty data, non-ASCII text, and an
    /// unfinished event at the end.
    const STREAM: &[u8] = "\u{feff}event: message_start\r\ndata: {\"a\":1}\r\n\r\n\
        : ping comment\n\nevent:ping\rdata:{\"type\": \"ping\"}\r\r\
        id: 7\nretry: 10\ndata: line one\ndata:  two spaces\nfoo: bar\n\n\
        data\n\ndata: héllo → ✓\n\nevent: unfinished\ndata: lost"
        .as_bytes();

    fn expected() -> Vec<Event> {
        vec![
            event("message_start", "{\"a\":1}"),
            event("ping", "{\"type\": \"ping\"}"),
            event("", "line one\n two spaces"),
            event("", ""),
            event("", "héllo → ✓"),
        ]
    }

    #[test]
    fn parses_the_spec_cases_in_one_chunk() {
        assert_eq!(parse_in(&[STREAM]), expected());
    }

    #[test]
    fn any_split_gives_the_same_events() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(parse_in(&[a, b]), expected(), "split at {i}");
            for j in i..=STREAM.len() {
                let (b1, c) = b.split_at(j - i);
                assert_eq!(parse_in(&[a, b1, c]), expected(), "split at {i} and {j}");
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_in(&bytes), expected());
    }

    #[test]
    fn a_lone_cr_at_a_chunk_end_is_a_line_end() {
        // "\r" ends the data line; the empty chunk between must not lose that.
        assert_eq!(parse_in(&[b"data: x\r", b"", b"\r"]), vec![event("", "x")]);
        assert_eq!(parse_in(&[b"data: x\r", b"\n\r\n"]), vec![event("", "x")]);
    }

    #[test]
    fn garbage_never_panics_and_size_is_bounded() {
        // A deterministic pseudo-random soup of the pieces that matter to the grammar.
        let pieces: [&[u8]; 12] = [
            b"data:",
            b"event:",
            b"\r",
            b"\n",
            b"\r\n",
            b":",
            b" ",
            b"\xff\xfe",
            b"\xef\xbb",
            b"\xbf",
            b"{}",
            b"x",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut soup = Vec::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            soup.extend_from_slice(pieces[(x % pieces.len() as u64) as usize]);
        }
        let mut out = Vec::new();
        for size in [1, 2, 37, soup.len()] {
            let mut parser = Parser::default();
            let mut events = Vec::new();
            for chunk in soup.chunks(size) {
                parser.feed(chunk, &mut events).unwrap();
            }
            assert!(!events.is_empty());
            if out.is_empty() {
                out = events;
            } else {
                assert_eq!(events, out, "chunks of {size}");
            }
        }

        let mut parser = Parser::default();
        let big = vec![b'a'; MAX_EVENT_BYTES / 2 - 8];
        assert_eq!(parser.feed(b"data: ", &mut out), Ok(()));
        assert_eq!(parser.feed(&big, &mut out), Ok(()));
        assert_eq!(parser.feed(&big, &mut out), Ok(()));
        assert_eq!(parser.feed(&[b'a'; 20], &mut out), Err(TooLarge));
        let mut parser = Parser::default();
        let mut many = Vec::new();
        for _ in 0..5 {
            many.extend_from_slice(b"data: ");
            many.extend_from_slice(&big);
            many.push(b'\n');
        }
        assert_eq!(parser.feed(&many, &mut out), Err(TooLarge));
    }
}
