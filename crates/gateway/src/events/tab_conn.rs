//! Tab connection: a client connection whose first request is a plain
//! `GET <events path>` over HTTP/1.1 is served here instead of by hyper. It
//! reads the request head once, and from then on holds no buffer of its own:
//! the tab's frames go from the channel's shared bytes to the socket in one
//! `writev` per batch (framing from [`crate::h1`]). An idle tab then costs
//! its socket, its task and its tab state — not hyper's connection buffers.
//!
//! Anything else — another first request, HTTP/1.0, a request with a body,
//! HTTP/2, a head it does not fully accept — goes to hyper untouched, with
//! the bytes already read put back in front ([`Rewind`]). This module never
//! answers a request other than the events stream, never reads a request
//! body, and never keeps a connection open after its one response.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use bytes_utils::SegmentedBuf;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::Body;
use crate::events::channel::MAX_BATCH;
use crate::h1::head::{self, MAX_REQUEST_HEAD};
use crate::h1::{MAX_HEADERS, body, write};

/// Bytes a peer may send after the events request before it is cut.
const MAX_UNSOLICITED: usize = 64 * 1024;

/// How long a finished response waits for the peer to close, reading and
/// dropping what it sends, and how much it reads meanwhile.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// What the first bytes of a connection turned out to be.
pub enum Sniffed<I> {
    /// A complete `GET <events path>` head: serve it here.
    Events(I, Request<()>),
    /// Anything else: hand to hyper; the bytes read so far come first.
    Other(Rewind<I>),
    /// An events head a strict parser refuses (a bare LF line ending, which
    /// hyper would take): answer `400` here.
    Malformed(I),
    /// The peer closed, failed or sent no complete head in time.
    Gone,
}

/// Read the start of a connection and decide who serves it. Returns as soon
/// as the first bytes rule the events path out, so proxied requests are not
/// held up waiting for a whole head.
pub async fn sniff<I>(mut io: I, events_path: &str, head_timeout: Duration) -> Sniffed<I>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + head_timeout;
    loop {
        if buf.len() >= MAX_REQUEST_HEAD {
            return Sniffed::Other(Rewind::new(io, buf.freeze()));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(MAX_REQUEST_HEAD - buf.len()).max(1024));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Sniffed::Gone,
        }
        match classify(&buf, events_path) {
            Head::NeedMore => continue,
            Head::Other => return Sniffed::Other(Rewind::new(io, buf.freeze())),
            Head::Events(req) => return Sniffed::Events(io, *req),
            Head::Malformed => return Sniffed::Malformed(io),
        }
    }
}

enum Head {
    NeedMore,
    Other,
    Malformed,
    Events(Box<Request<()>>),
}

fn classify(buf: &[u8], events_path: &str) -> Head {
    const GET: &[u8] = b"GET /";
    let n = buf.len().min(GET.len());
    if buf[..n] != GET[..n] {
        return Head::Other;
    }
    // The request line alone decides most cases: another path, or an old
    // protocol version, goes to hyper without waiting for the headers.
    if let Some(end) = buf.iter().position(|&b| b == b'\n') {
        let line = &buf[..end];
        let mut parts = line.split(|&b| b == b' ');
        let target = parts.nth(1).unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        if path != events_path.as_bytes() || !line.ends_with(b" HTTP/1.1\r") {
            return Head::Other;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if head::crlf_only(&buf[..len]) => {}
        Ok(httparse::Status::Complete(_)) => return Head::Malformed,
        Ok(httparse::Status::Partial) => return Head::NeedMore,
        Err(_) => return Head::Other,
    }
    head::get_request(&req).map_or(Head::Other, |r| Head::Events(Box::new(r)))
}

/// An I/O object that first yields bytes already read from it.
pub struct Rewind<I> {
    pre: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    /// `pre` is read before anything from `inner`.
    pub fn new(inner: I, pre: Bytes) -> Rewind<I> {
        Rewind { pre, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            if this.pre.is_empty() {
                // Hyper may keep this connection for long: free the sniff
                // buffer now rather than when the connection ends.
                this.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Write `resp` as the connection's one and last HTTP/1.1 response: a
/// sized body with `content-length`, a stream chunked, frames that are
/// ready together in one write. Returns when the body ended (after the last
/// chunk), or when the peer closed or failed. Bytes the peer sends meanwhile
/// are read and dropped: that is how a closed tab is noticed while idle.
pub fn respond<I>(io: &mut I, resp: Response<Body>) -> impl Future<Output = io::Result<()>> + '_
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // The head is encoded here, outside the future: the response's header
    // map is not kept for the life of the stream.
    let (parts, body) = resp.into_parts();
    let sized = body.size_hint().exact();
    let head = head::encode_response(&parts, sized);
    stream(io, body, head, sized.is_none())
}

async fn stream<I>(io: &mut I, mut body: Body, head: Bytes, chunked: bool) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = SegmentedBuf::new();
    out.push(head);
    let mut frames: Vec<Bytes> = Vec::new();
    let mut unsolicited = 0usize;
    let mut ended = false;
    loop {
        // Take everything the body has ready without waiting.
        while !ended && frames.len() < MAX_BATCH {
            match body.frame().now_or_never() {
                None => break,
                Some(next) => ended = take(next, &mut frames)?,
            }
        }
        if !frames.is_empty() || ended || out.has_remaining() {
            body::frame_into(&mut out, &mut frames, chunked, ended);
            write::write_all(io, &mut out).await?;
            io.flush().await?;
        }
        if ended {
            // Best effort: the response is complete either way.
            let _ = io.shutdown().await;
            // Boxed: its buffer would otherwise sit in every idle tab.
            Box::pin(linger(io)).await;
            return Ok(());
        }
        // Nothing pending: while the tab waits (mostly, for long), it holds
        // no batch buffers; the next batch allocates its own.
        out = SegmentedBuf::new();
        frames = Vec::new();
        tokio::select! {
            next = body.frame() => ended = take(next, &mut frames)?,
            r = until_peer_gone(io, &mut unsolicited) => return r,
        }
    }
}

/// Read and drop what the peer sends until it closes (`Ok`), fails, or has
/// sent more than [`MAX_UNSOLICITED`] bytes in all (`unsolicited` carries the
/// count across calls). A browser sends nothing after its request; a peer
/// that keeps sending costs a wake-up per read and is cut. Cancel-safe: it
/// holds nothing between reads but the count.
pub async fn until_peer_gone<I: AsyncRead + Unpin>(
    io: &mut I,
    unsolicited: &mut usize,
) -> io::Result<()> {
    let mut scratch = [0u8; 64];
    loop {
        match io.read(&mut scratch).await? {
            0 => return Ok(()),
            n => {
                *unsolicited += n;
                if *unsolicited > MAX_UNSOLICITED {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "peer kept sending on an events stream",
                    ));
                }
            }
        }
    }
}

// After a complete response (an error answer, or the stream's end): closing
// a socket with unread input makes the kernel send a reset, which can
// destroy the response before the peer read it. Drain briefly first.
async fn linger<I: AsyncRead + Unpin>(io: &mut I) {
    let mut scratch = [0u8; 512];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

type Next = Option<Result<http_body::Frame<Bytes>, crate::body::BoxError>>;

// Whether the body ended.
fn take(next: Next, frames: &mut Vec<Bytes>) -> io::Result<bool> {
    match next {
        None => Ok(true),
        Some(Ok(frame)) => {
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                frames.push(data);
            }
            Ok(false)
        }
        Some(Err(e)) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, header};

    fn classify_str(s: &str) -> &'static str {
        match classify(s.as_bytes(), "/events") {
            Head::NeedMore => "more",
            Head::Other => "other",
            Head::Events(_) => "events",
            Head::Malformed => "malformed",
        }
    }

    #[test]
    fn only_a_clean_events_head_is_taken() {
        let ok = "GET /events?tab=a HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\n\r\n";
        assert_eq!(classify_str(ok), "events");
        // Undecided until the head is complete.
        assert_eq!(classify_str("GE"), "more");
        assert_eq!(classify_str("GET /events HTTP/1.1\r\nHost: x\r\n"), "more");
        for other in [
            "POST /events HTTP/1.1\r\n\r\n",
            "GET /api/v1/me HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /eventsx HTTP/1.1\r\n\r\n",
            "GET /events HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /events HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /events HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET http://evil/events HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\r\nGET /events HTTP/1.1\r\n\r\n",
            // What a strict parser refuses is hyper's to answer (400).
            "GET /events HTTP/1.1\r\n\r\n",
            "GET /events HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(classify_str(other), "other", "{other:?}");
        }
        assert_eq!(
            classify_str("GET /events HTTP/1.1\r\nHost: a\nCookie: s=1\r\n\r\n"),
            "malformed"
        );
        // Another path is ruled out from the request line alone.
        assert_eq!(classify_str("GET /index.html HTTP/1.1\r\n"), "other");
    }

    #[test]
    fn the_request_keeps_target_and_headers() {
        let Head::Events(req) = classify(
            b"GET /events?lastEventId=e-3 HTTP/1.1\r\nHost: a\r\nLast-Event-ID: e-4\r\n\r\n",
            "/events",
        ) else {
            panic!("not taken");
        };
        assert_eq!(req.uri().path(), "/events");
        assert_eq!(req.uri().query(), Some("lastEventId=e-3"));
        assert_eq!(req.headers()["last-event-id"], "e-4");
    }

    #[tokio::test]
    async fn rewind_gives_back_what_was_read_first() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b"GET /other HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let Sniffed::Other(mut rw) = sniff(near, "/events", Duration::from_secs(5)).await else {
            panic!("not handed on");
        };
        far.write_all(b"tail").await.expect("write");
        drop(far);
        let mut all = String::new();
        rw.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "GET /other HTTP/1.1\r\n\r\ntail");
    }

    #[tokio::test]
    async fn a_stream_is_chunked_batched_and_terminated() {
        let (mut far, mut near) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        for s in ["a\n\n", "bb\n\n"] {
            tx.send(Bytes::from(s)).await.expect("send");
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| {
                (
                    Ok::<_, crate::body::BoxError>(http_body::Frame::data(b)),
                    rx,
                )
            })
        });
        let body = http_body_util::StreamBody::new(stream).boxed_unsync();
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let server = tokio::spawn(async move { respond(&mut near, resp).await });
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with("bb\n\n\r\n") {
            let n = far.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_string();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-type: text/event-stream\r\n"));
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        // Both frames that were ready went out as one chunk.
        assert!(text.ends_with("\r\n\r\n7\r\na\n\nbb\n\n\r\n"), "{text:?}");
        drop(tx);
        server.await.expect("join").expect("respond");
        let mut rest = String::new();
        far.read_to_string(&mut rest).await.expect("read");
        assert_eq!(rest, "0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_closed_peer_ends_an_idle_stream() {
        let (far, mut near) = tokio::io::duplex(1024);
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, crate::body::BoxError>,
        >())
        .boxed_unsync();
        let server = tokio::spawn(async move { respond(&mut near, Response::new(body)).await });
        drop(far);
        let r = tokio::time::timeout(Duration::from_secs(10), server).await;
        assert!(r.is_ok(), "the idle stream did not notice the peer leaving");
    }

    #[tokio::test]
    async fn a_peer_that_keeps_sending_is_cut() {
        let (mut far, mut near) = tokio::io::duplex(4096);
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, crate::body::BoxError>,
        >())
        .boxed_unsync();
        let server = tokio::spawn(async move { respond(&mut near, Response::new(body)).await });
        // Drain the response head so the server is parked reading.
        let mut head = [0u8; 256];
        let _ = far.read(&mut head).await;
        let junk = [b'x'; 1024];
        let mut sent = 0;
        // Bounded: the server must give up well before this.
        while sent < 4 * MAX_UNSOLICITED {
            if far.write_all(&junk).await.is_err() {
                break;
            }
            sent += junk.len();
        }
        let r = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("cut in time")
            .expect("join");
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::InvalidData));
        assert!(
            sent <= MAX_UNSOLICITED + 8 * 1024,
            "read {sent} bytes first"
        );
    }
}
