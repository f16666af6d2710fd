//! Incremental SSE parser following the WHATWG "event stream interpretation"
//! rules, with a per-event size cap.
//!
//! Owns line splitting, field semantics and the last-event-ID state. Must never
//! do I/O, fail on malformed input (only oversize is reported), or hold more
//! than about the cap of any one event or line in memory.

use std::collections::VecDeque;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event:` field, or "message" when absent.
    pub event: String,
    /// Data lines joined with "\n" (trailing newline removed, as the spec says).
    pub data: String,
    /// The parser's last-event-ID buffer at dispatch time (spec semantics: persists across
    /// events; "" if never set).
    pub last_event_id: String,
    /// True if this very event carried an `id:` field that was accepted.
    pub has_id: bool,
}

/// Something the parser produced, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete event.
    Event(Event),
    /// a valid `retry:` field (all ASCII digits), in milliseconds
    Retry(u64),
}

/// A problem with the stream. Malformed input is never an error; only a
/// too-large event is, so that callers can count it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// An event or line exceeded the cap; the event was discarded.
    #[error("SSE event larger than {limit} bytes discarded")]
    Oversize {
        /// The configured `max_event_bytes`.
        limit: usize,
    },
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Incremental, size-capped SSE parser. Feed bytes with [`Parser::push`], then
/// drain [`Parser::next_item`].
///
/// Lines are processed as soon as their terminator arrives, so only an
/// incomplete line (at most the cap) and the current event (at most the cap)
/// are held, plus items not yet taken.
#[derive(Debug)]
pub struct Parser {
    max_event_bytes: usize,
    /// `Some(n)`: still at stream start, `n` bytes of a BOM seen so far.
    bom_matched: Option<usize>,
    /// The previous chunk ended in CR, so a leading LF belongs to that CR.
    skip_lf: bool,
    /// Bytes of a line whose terminator has not arrived yet.
    line: Vec<u8>,
    /// The current line is over the cap; drop bytes until its terminator.
    discarding_line: bool,
    /// The current event is over the cap; drop data/event fields until the
    /// blank line. Also means Oversize was already reported for it.
    discarding_event: bool,
    data: String,
    event_type: String,
    id_buffer: String,
    id_in_event: bool,
    /// The id committed at the last blank line: what a browser would resume from.
    last_event_id: String,
    queue: VecDeque<Result<Item, ParseError>>,
    queued_bytes: usize,
}

impl Parser {
    /// `max_event_bytes` caps one event: a line or an accumulating event (data+event+id bytes)
    /// larger than this is discarded up to the next blank line, and reported ONCE as
    /// `Err(Oversize)`. Memory stays bounded by the cap even for a 1 MB line with no newline
    /// fed in small chunks (the discarded bytes are never buffered).
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            bom_matched: Some(0),
            skip_lf: false,
            line: Vec::new(),
            discarding_line: false,
            discarding_event: false,
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            id_in_event: false,
            last_event_id: String::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    /// Feed bytes as they arrive (arbitrary chunking, even 1 byte at a time).
    pub fn push(&mut self, chunk: &[u8]) {
        let mut chunk = chunk;
        if let Some(mut matched) = self.bom_matched {
            let mut used = 0;
            while matched < BOM.len() && chunk.get(used) == BOM.get(matched) {
                matched += 1;
                used += 1;
            }
            if matched == BOM.len() {
                self.bom_matched = None;
                chunk = chunk.get(used..).unwrap_or_default();
            } else if used == chunk.len() {
                // Could still become a BOM: decide on the next chunk.
                self.bom_matched = Some(matched);
                return;
            } else {
                // Not a BOM after all: the bytes held back are ordinary input.
                self.bom_matched = None;
                self.feed(BOM.get(..matched).unwrap_or_default());
                chunk = chunk.get(used..).unwrap_or_default();
            }
        }
        self.feed(chunk);
    }

    /// Next complete item, if any. Call until None after each push.
    pub fn next_item(&mut self) -> Option<Result<Item, ParseError>> {
        let item = self.queue.pop_front()?;
        if let Ok(Item::Event(ev)) = &item {
            self.queued_bytes = self.queued_bytes.saturating_sub(event_len(ev));
        }
        Some(item)
    }

    /// The last-event-ID to resume from (for reconnect's Last-Event-ID): the id buffer as it
    /// was at the most recent blank line, which is what browsers send. An `id:` of an event
    /// whose blank line has not arrived yet is not included, since that event was not received.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Bytes currently buffered: the incomplete line, the event being accumulated and events
    /// not yet taken by [`Parser::next_item`]. Stays <= about 2 × `max_event_bytes` plus the
    /// items produced by the last chunk.
    pub fn buffered_bytes(&self) -> usize {
        self.line.len() + self.data.len() + self.event_type.len() + self.queued_bytes
    }

    fn feed(&mut self, mut input: &[u8]) {
        while let Some((&first, after_first)) = input.split_first() {
            if std::mem::take(&mut self.skip_lf) && first == b'\n' {
                input = after_first;
                continue;
            }
            let Some(end) = input.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.hold_partial(input);
                return;
            };
            let (line, rest) = input.split_at(end);
            if rest.first() == Some(&b'\r') {
                self.skip_lf = true;
            }
            input = rest.get(1..).unwrap_or_default();

            if std::mem::take(&mut self.discarding_line) {
                // The tail of an over-long line: already reported, nothing to keep.
            } else if self.line.is_empty() {
                // Fast path: the whole line is in this chunk, no copy needed.
                self.complete_line(line);
            } else if self.line.len() + line.len() > self.max_event_bytes {
                self.line.clear();
                self.mark_oversize();
            } else {
                let mut held = std::mem::take(&mut self.line);
                held.extend_from_slice(line);
                self.complete_line(&held);
                held.clear();
                // Reuse the allocation for the next partial line.
                self.line = held;
            }
        }
    }

    /// Keep the start of a line whose terminator has not arrived, unless it is
    /// already too long, in which case nothing more of it is kept.
    fn hold_partial(&mut self, bytes: &[u8]) {
        if self.discarding_line {
            return;
        }
        if self.line.len() + bytes.len() > self.max_event_bytes {
            self.line = Vec::new();
            self.discarding_line = true;
            self.mark_oversize();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn complete_line(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.len() > self.max_event_bytes {
            self.mark_oversize();
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // comment
            Some(i) => {
                let value = line.get(i + 1..).unwrap_or_default();
                (
                    line.get(..i).unwrap_or_default(),
                    value.strip_prefix(b" ").unwrap_or(value),
                )
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" if !self.discarding_event => {
                let value = String::from_utf8_lossy(value);
                if self.event_size() + value.len() + 1 > self.max_event_bytes {
                    self.mark_oversize();
                } else {
                    self.data.push_str(&value);
                    self.data.push('\n');
                }
            }
            b"event" if !self.discarding_event => {
                let value = String::from_utf8_lossy(value);
                let others = self.event_size().saturating_sub(self.event_type.len());
                if others + value.len() > self.max_event_bytes {
                    self.mark_oversize();
                } else {
                    self.event_type.clear();
                    self.event_type.push_str(&value);
                }
            }
            // The id is stream state, not event payload: it takes effect even
            // inside a discarded event, so a resume skips that event.
            b"id" if !value.contains(&0) => {
                let value = String::from_utf8_lossy(value);
                self.id_buffer.clear();
                self.id_buffer.push_str(&value);
                self.id_in_event = true;
                if !self.discarding_event && self.event_size() > self.max_event_bytes {
                    self.mark_oversize();
                }
            }
            // Out-of-range values saturate: still "all digits", so still valid.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, &d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.queue.push_back(Ok(Item::Retry(ms)));
            }
            _ => {}
        }
    }

    fn event_size(&self) -> usize {
        let id = if self.id_in_event {
            self.id_buffer.len()
        } else {
            0
        };
        self.data.len() + self.event_type.len() + id
    }

    /// Drop the current event's payload and report it, once per event.
    fn mark_oversize(&mut self) {
        if self.discarding_event {
            return;
        }
        self.discarding_event = true;
        // Release rather than clear: this buffer may have grown to the cap.
        self.data = String::new();
        self.event_type.clear();
        self.queue.push_back(Err(ParseError::Oversize {
            limit: self.max_event_bytes,
        }));
    }

    fn dispatch(&mut self) {
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        let has_id = std::mem::take(&mut self.id_in_event);
        if std::mem::take(&mut self.discarding_event) || self.data.is_empty() {
            self.data.clear();
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.event_type)
        };
        let ev = Event {
            event,
            data,
            last_event_id: self.id_buffer.clone(),
            has_id,
        };
        self.queued_bytes += event_len(&ev);
        self.queue.push_back(Ok(Item::Event(ev)));
    }
}

fn event_len(ev: &Event) -> usize {
    ev.event.len() + ev.data.len() + ev.last_event_id.len()
}

#[cfg(test)]
mod tests;
