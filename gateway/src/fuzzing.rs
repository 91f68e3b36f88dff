//! Entry points for the fuzz targets (`fuzz/`) into parsers that are private to their
//! modules. Not an API: the targets are its only users.

pub use crate::providers::anthropic::fuzzing as anthropic;

/// The meter's framing of an upstream SSE stream: the length of the first whole event in
/// `buf` (through its blank line), or `None` while it is incomplete.
pub fn meter_event_len(buf: &[u8]) -> Option<usize> {
    crate::meter::event_len(buf)
}

/// The `data` the meter reads from one event (its `data:` lines joined), if any.
pub fn meter_event_data(event: &[u8]) -> Option<Vec<u8>> {
    crate::meter::event_data(event).map(std::borrow::Cow::into_owned)
}

/// The public id and secret of a data-plane key in an `Authorization` value, as the
/// gateway's auth layer reads it.
pub fn bearer_key(authorization: &[u8]) -> Option<(&str, &str)> {
    crate::auth::bearer_key(authorization)
}
