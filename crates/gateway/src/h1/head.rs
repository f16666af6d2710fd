//! Heads: a parsed request head as the `http::Request` hyper would build,
//! and a response head encoded for a connection that ends with its one
//! response. Never reads or writes a socket.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Version, header};

/// Longest request head read by hand; a longer one goes to hyper, which
/// applies its own limits and error answers.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024 + 2048;

/// Longest response head accepted from the backend.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The `http::Request` for a parsed head: `GET` over HTTP/1.1 with exactly
/// one `Host` and without a body (or a claim of one: that framing is hyper's
/// to judge), else `None` — and hyper, which refuses what a strict parser
/// refuses, answers it.
pub fn get_request(req: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts != 1 {
        return None;
    }
    let mut out = Request::get(req.path?).version(Version::HTTP_11);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body (or a claim of one) on an events request is not ours to
        // frame: hyper decides what to make of it.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            return None;
        }
        out = out.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    out.body(()).ok()
}

/// Whether every line of `head` ends in CRLF. httparse also takes a bare LF,
/// which hyper refuses: a head with one is not read by hand.
pub fn crlf_only(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .all(|(i, &b)| b != b'\n' || (i > 0 && head[i - 1] == b'\r'))
}

/// The head of the connection's one and last response: `content-length`
/// when `sized`, else chunked; `date` added; `connection: close`.
pub fn encode_response(parts: &http::response::Parts, sized: Option<u64>) -> Bytes {
    let mut h = Vec::with_capacity(256);
    let reason = parts.status.canonical_reason().unwrap_or("");
    h.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        h.extend_from_slice(name.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        h.extend_from_slice(b"date: ");
        h.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    match sized {
        Some(n) => h.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None => h.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    // One response per connection: the stream never ends in a state where
    // another request could follow.
    h.extend_from_slice(b"connection: close\r\n\r\n");
    Bytes::from(h)
}
