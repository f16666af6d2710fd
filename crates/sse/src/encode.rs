//! SSE encoder: turns an event's parts into one ready-to-send frame.
//!
//! Owns framing safety: no caller-supplied text can ever start a new field or
//! end a frame early. Must never do I/O and never write a value unchecked.

use bytes::Bytes;

/// Why an event could not be encoded. Only the single-line fields can fail;
/// `data` is always made safe instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The event name is empty or contains CR, LF or NUL.
    #[error("invalid SSE event name: must be non-empty and contain no CR, LF or NUL")]
    InvalidEventName,
    /// The id contains CR, LF or NUL (a parser would split it or ignore it).
    #[error("invalid SSE id: must contain no CR, LF or NUL")]
    InvalidId,
}

const REPLACEMENT: &str = "\u{FFFD}";

fn is_unsafe(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | 0)
}

/// Encode one event. `data` may contain any text: every line terminator (CRLF, LF, CR) starts a
/// new `data:` line, so a value can never start a new field. NUL in data is replaced by U+FFFD.
///
/// Errors if `event` or `id` contain CR, LF or NUL, or `event` is empty.
pub fn encode_event(
    id: Option<&str>,
    event: Option<&str>,
    data: &str,
) -> Result<Bytes, EncodeError> {
    if event.is_some_and(|e| e.is_empty() || e.bytes().any(is_unsafe)) {
        return Err(EncodeError::InvalidEventName);
    }
    // NUL is rejected rather than passed on: parsers ignore such an id
    // entirely, which would silently break resumption.
    if id.is_some_and(|i| i.bytes().any(is_unsafe)) {
        return Err(EncodeError::InvalidId);
    }

    // Each unsafe byte costs at most one extra "\ndata: " or a 3-byte U+FFFD.
    let extra = data.bytes().filter(|&b| is_unsafe(b)).count() * 7;
    let mut out = Vec::with_capacity(
        16 + id.map_or(0, |s| s.len() + 4) + event.map_or(0, |s| s.len() + 7) + data.len() + extra,
    );
    // Always "name: value": the single space is what parsers strip, so a value
    // that itself starts with a space survives intact.
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    let mut rest = data.as_bytes();
    while let Some(i) = rest.iter().position(|&b| is_unsafe(b)) {
        let (head, tail) = rest.split_at(i);
        out.extend_from_slice(head);
        rest = match tail {
            [0, after @ ..] => {
                out.extend_from_slice(REPLACEMENT.as_bytes());
                after
            }
            // CRLF is one terminator, so it must yield one line break, not two.
            [b'\r', b'\n', after @ ..] | [_, after @ ..] => {
                out.extend_from_slice(b"\ndata: ");
                after
            }
            [] => tail,
        };
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
    Ok(Bytes::from(out))
}

/// A `: text\n\n`-style comment frame (keepalive). Line terminators and NUL in `text` are
/// replaced by spaces.
pub fn encode_comment(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 4);
    out.extend_from_slice(b": ");
    let mut rest = text.as_bytes();
    while let Some(i) = rest.iter().position(|&b| is_unsafe(b)) {
        let (head, tail) = rest.split_at(i);
        out.extend_from_slice(head);
        out.push(b' ');
        rest = match tail {
            [b'\r', b'\n', after @ ..] | [_, after @ ..] => after,
            [] => tail,
        };
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `retry: <ms>\n\n`
pub fn encode_retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

#[cfg(test)]
mod tests;
