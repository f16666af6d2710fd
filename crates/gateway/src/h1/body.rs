//! Body framing: de-framing a response body (chunked, content-length, or
//! until close) one step at a time from a caller's buffer, and chunk-framing
//! a batch of frames on the way out. Holds no buffer itself.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use bytes_utils::SegmentedBuf;

/// Longest chunk-size or trailer line in a chunked body.
pub const MAX_LINE: usize = 4096;

/// How the response body is delimited, and how far through it we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Chunked transfer coding, at this point of a chunk.
    Chunked(Chunk),
    /// This many body bytes remain.
    Length(u64),
    /// The body runs until the backend closes the connection.
    Close,
    /// The body ended (or failed); nothing more is read.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
}

/// What one de-framing step found in the buffer.
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no complete step: read more.
    NeedMore,
    /// The body is complete.
    End,
}

impl Framing {
    /// The body's framing from the response headers (RFC 9112 §6.3); the
    /// error names what is wrong.
    pub fn of(headers: &[httparse::Header<'_>], http11: bool) -> Result<Framing, &'static str> {
        let mut chunked = None;
        let mut length: Option<u64> = None;
        for h in headers {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // The last coding listed decides; several headers form one list.
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(http11 && last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or("invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length");
                }
                length = Some(n);
            }
        }
        Ok(match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunk::Size),
            // A transfer coding we do not decode: the body runs to close.
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        })
    }

    /// Take the next piece of body out of `buf`, advancing the framing.
    pub fn step(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            match *self {
                Framing::Done => return Ok(Step::End),
                Framing::Close => {
                    return Ok(if buf.is_empty() {
                        Step::NeedMore
                    } else {
                        Step::Data(buf.split().freeze())
                    });
                }
                Framing::Length(0) => return Ok(Step::End),
                Framing::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    *self = Framing::Length(n - k as u64);
                    return Ok(Step::Data(buf.split_to(k).freeze()));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    *self = Framing::Chunked(if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    });
                }
                Framing::Chunked(Chunk::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let left = n - k as u64;
                    *self = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Step::Data(buf.split_to(k).freeze()));
                }
                Framing::Chunked(Chunk::DataEnd) => match buf.first() {
                    None => return Ok(Step::NeedMore),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Framing::Chunked(Chunk::Size);
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Step::NeedMore),
                        Some(b'\n') => {
                            buf.advance(2);
                            *self = Framing::Chunked(Chunk::Size);
                        }
                        Some(_) => return Err(bad_chunk("chunk data not followed by CRLF")),
                    },
                    Some(_) => return Err(bad_chunk("chunk data longer than its size")),
                },
                Framing::Chunked(Chunk::Trailer) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    if line.is_empty() {
                        return Ok(Step::End);
                    }
                }
            }
        }
    }
}

/// Take one line (without its CRLF or LF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(bad_chunk("chunk line too long"));
        }
        return Ok(None);
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line.freeze()))
}

/// The size of a chunk-size line: hex digits, then optionally extensions
/// (ignored) after `;`.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    // Leading zeros are allowed; 15 significant hex digits stay below
    // u64::MAX, and nobody sends a bigger chunk.
    if digits == 0 || digits - zeros > 15 {
        return Err(bad_chunk("invalid chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(bad_chunk("invalid chunk size"));
    }
    if digits == zeros {
        return Ok(0);
    }
    let hex =
        std::str::from_utf8(&line[zeros..digits]).map_err(|_| bad_chunk("invalid chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| bad_chunk("invalid chunk size"))
}

fn bad_chunk(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Append `frames` to `out`, with chunk framing (one chunk for the batch)
/// when `chunked`, and the last-chunk marker if the body `ended`.
pub fn frame_into(
    out: &mut SegmentedBuf<Bytes>,
    frames: &mut Vec<Bytes>,
    chunked: bool,
    ended: bool,
) {
    if !chunked {
        frames.drain(..).for_each(|f| out.push(f));
        return;
    }
    let len: usize = frames.iter().map(Bytes::len).sum();
    if len > 0 {
        out.push(Bytes::from(format!("{len:x}\r\n")));
        frames.drain(..).for_each(|f| out.push(f));
        out.push(Bytes::from_static(b"\r\n"));
    }
    if ended {
        out.push(Bytes::from_static(b"0\r\n\r\n"));
    }
}
