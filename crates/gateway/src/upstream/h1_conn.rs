//! The HTTP/1.1 connector: the one long `GET <events path>` per user,
//! spoken as HTTP/1.1 straight on the socket (framing
//! from [`crate::h1`]). It owns the socket, the response head check and the
//! body stream. Between reads it holds no buffer (reads land on the stack and
//! leave as the data they carry), so an idle user's upstream costs its socket
//! and a few hundred bytes instead of a pooled client connection's buffers,
//! dispatch channel and task — multiplied by every user.
//!
//! To an `https://` backend the same client runs over TLS (ALPN `http/1.1`),
//! a connection per user: no backend stream limit can starve a user, and the
//! pool proxied requests use stays free. (`upstream.http_version = "http2"`
//! selects [`super::h2_conn`] instead.) This module never sends a second
//! request on a connection, never follows a redirect and never hands on a
//! byte that is not body data.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::Stream;
use http::{HeaderValue, StatusCode, Uri};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::connector::{
    ByteStream, ConnectError, ConnectRequest, Connector, check_content_type, check_status,
};
use crate::body::BoxError;
use crate::h1::MAX_HEADERS;
use crate::h1::body::{Framing, Step};
use crate::h1::head::MAX_RESPONSE_HEAD;

/// Most bytes taken per read of the body (a stack buffer, not kept).
const READ_CHUNK: usize = 8192;

/// Read buffer for the response head, grown as needed up to [`MAX_RESPONSE_HEAD`].
const HEAD_CHUNK: usize = 1024;

/// Where and how to open the stream; shared by every user's connect.
struct Target {
    host: String,
    port: u16,
    /// For an https backend: the TLS client (ALPN `http/1.1` only) and the
    /// name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    // The request head's headers before the per-user ones (no request line).
    head: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// Opens upstream streams with the lean HTTP/1.1 client, one connection per
/// user: plain TCP to an `http://` backend, TLS to an `https://` one.
#[derive(Clone)]
pub struct H1Connector {
    target: Arc<Target>,
}

impl H1Connector {
    /// A connector for the backend at `url` (its scheme and authority; each
    /// request names its own path). `tls` is the client
    /// configuration for an `https://` URL (its ALPN is set to `http/1.1`
    /// here). `None` when the URL has no usable host, carries userinfo, or
    /// is https without `tls`.
    pub fn new(
        url: &Uri,
        tls: Option<rustls::ClientConfig>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Option<H1Connector> {
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return None,
        };
        let authority = url.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let (host, port) = crate::backend::socket_target(authority, https);
        let tls = match (https, tls) {
            (false, _) => None,
            (true, None) => return None,
            // One request per connection, one endless response: h2 would
            // only add framing.
            (true, Some(cfg)) => Some(crate::backend::h1_tls(cfg, &host)?),
        };
        let head = format!(
            "host: {}\r\naccept: text/event-stream\r\ncache-control: no-cache\r\n",
            authority.as_str()
        );
        Some(H1Connector {
            target: Arc::new(Target {
                host,
                port,
                tls,
                head,
                connect_timeout,
                response_timeout,
            }),
        })
    }
}

impl Connector for H1Connector {
    fn connect(&self, req: ConnectRequest) -> BoxFuture<'static, Result<ByteStream, ConnectError>> {
        let t = self.target.clone();
        Box::pin(async move {
            let transport = |e: io::Error| ConnectError::Transport(e.to_string());
            let timed_out = |_| ConnectError::Transport("connect timed out".into());
            let tcp = tokio::time::timeout(
                t.connect_timeout,
                TcpStream::connect((t.host.as_str(), t.port)),
            )
            .await
            .map_err(timed_out)?
            .map_err(transport)?;
            // Small request, then a stream of small events: no batching.
            let _ = tcp.set_nodelay(true);
            let head = request_head(&t.head, &req);
            let Some((tls, name)) = &t.tls else {
                return open(tcp, head, t.response_timeout).await;
            };
            let stream = tokio::time::timeout(t.connect_timeout, tls.connect(name.clone(), tcp))
                .await
                .map_err(timed_out)?
                .map_err(transport)?;
            open(stream, head, t.response_timeout).await
        })
    }
}

/// The whole request head for one user's connect. An id that HTTP cannot
/// carry is left out, as the hyper client does (a missing id is answered
/// with a resync); the credential's header is checked where it was made. A
/// path with bytes a request line cannot carry is sent as `/`, which the
/// backend answers with an error instead of a smuggled request.
fn request_head(base: &str, req: &ConnectRequest) -> Bytes {
    let shown = &req.credential;
    let path = shown.path(&req.path);
    let path = if path.bytes().all(|b| b.is_ascii_graphic()) {
        path.as_str()
    } else {
        "/"
    };
    let mut h = BytesMut::with_capacity(base.len() + path.len() + 256);
    h.extend_from_slice(b"GET ");
    h.extend_from_slice(path.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    h.extend_from_slice(base.as_bytes());
    if let Some((name, value)) = &shown.header {
        h.extend_from_slice(name.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if let Some(id) = req.last_event_id.as_deref()
        && HeaderValue::from_str(id).is_ok()
    {
        h.extend_from_slice(b"last-event-id: ");
        h.extend_from_slice(id.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h.freeze()
}

/// Send `head` on `io`, read and check the response head within
/// `response_timeout`, and return the body as a stream of data bytes.
pub async fn open<I>(
    mut io: I,
    head: Bytes,
    response_timeout: Duration,
) -> Result<ByteStream, ConnectError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + response_timeout;
    let transport = |e: io::Error| ConnectError::Transport(e.to_string());
    tokio::time::timeout_at(deadline, io.write_all(&head))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(transport)?;
    let mut buf = BytesMut::with_capacity(HEAD_CHUNK);
    let framing = loop {
        match parse_head(&mut buf)? {
            Some(framing) => break framing,
            None if buf.len() >= MAX_RESPONSE_HEAD => {
                return Err(ConnectError::Transport("response head too large".into()));
            }
            None => {}
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(HEAD_CHUNK));
        }
        let n = tokio::time::timeout_at(deadline, io.read_buf(&mut buf))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(transport)?;
        if n == 0 {
            return Err(ConnectError::Transport(
                "connection closed before the response head".into(),
            ));
        }
    };
    let mut body = BodyReader { io, buf, framing };
    body.release_if_empty();
    Ok(Box::pin(body))
}

/// Parse a complete response head at the start of `buf` and consume it;
/// `None` while incomplete. Interim (1xx) heads are skipped.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Framing>, ConnectError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(ConnectError::Transport(format!(
                    "malformed response head: {e}"
                )));
            }
        };
        let status = resp
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| ConnectError::Transport("malformed status code".into()))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        check_status(status)?;
        let framing = check_headers(resp.headers, resp.version == Some(1))?;
        buf.advance(len);
        return Ok(Some(framing));
    }
}

/// Check the content type and pick the body's framing.
fn check_headers(headers: &[httparse::Header<'_>], http11: bool) -> Result<Framing, ConnectError> {
    let framing = Framing::of(headers, http11).map_err(|e| ConnectError::Transport(e.into()))?;
    let ctype = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map_or(&[][..], |h| h.value);
    check_content_type(ctype)?;
    Ok(framing)
}

struct BodyReader<I> {
    io: I,
    buf: BytesMut,
    framing: Framing,
}

impl<I> BodyReader<I> {
    /// An emptied buffer may still pin the allocation its data was split
    /// from; between reads an idle stream should hold nothing.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Bytes, BoxError>>> {
        self.framing = Framing::Done;
        self.buf = BytesMut::new();
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl<I: AsyncRead + Unpin> Stream for BodyReader<I> {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.framing.step(&mut this.buf) {
                Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(d))),
                Ok(Step::End) => {
                    this.framing = Framing::Done;
                    this.buf = BytesMut::new();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => this.release_if_empty(),
                Err(e) => return this.fail(e),
            }
            // On the stack: nothing of it outlives this read.
            let mut tmp = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut tmp);
            if let Err(e) = ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb)) {
                return this.fail(e);
            }
            if rb.filled().is_empty() {
                return match this.framing {
                    Framing::Close | Framing::Done => {
                        this.framing = Framing::Done;
                        Poll::Ready(None)
                    }
                    _ => this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed the connection inside the response body",
                    )),
                };
            }
            this.buf.extend_from_slice(rb.filled());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::body::MAX_LINE;
    use futures_util::StreamExt;
    use tokio::io::{AsyncWriteExt, DuplexStream, duplex};

    const WAIT: Duration = Duration::from_secs(5);

    fn req(cookie: &str, id: Option<&str>) -> ConnectRequest {
        ConnectRequest {
            user: "alice".into(),
            path: "/api/v1/events".into(),
            credential: crate::credential::Credential::cookies(cookie)
                .present(&crate::credential::Presentation::AsReceived),
            last_event_id: id.map(str::to_string),
        }
    }

    fn connector(url: &str) -> H1Connector {
        let url: Uri = url.parse().expect("uri");
        H1Connector::new(&url, None, WAIT, WAIT).expect("plain http")
    }

    /// Open over an in-memory pipe; the test plays the backend on `server`.
    async fn open_pipe() -> (Result<ByteStream, ConnectError>, DuplexStream) {
        let (client, server) = duplex(64 * 1024);
        let head = request_head(&connector("http://b:1/e").target.head, &req("s=1", None));
        (open(client, head, WAIT).await, server)
    }

    async fn collect(mut s: ByteStream) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            match r {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    /// Feed `response` to a fresh connection in pieces of `split` bytes and
    /// return what the body stream yields.
    async fn run(response: &[u8], split: usize) -> Result<(Vec<u8>, Option<String>), String> {
        let (client, mut server) = duplex(64 * 1024);
        let head = request_head(&connector("http://b/e").target.head, &req("s=1", None));
        let response = response.to_vec();
        let feeder = tokio::spawn(async move {
            for piece in response.chunks(split.max(1)) {
                if server.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Closing ends a close-delimited body.
            drop(server);
        });
        let out = match open(client, head, WAIT).await {
            Ok(s) => Ok(collect(s).await),
            Err(e) => Err(e.to_string()),
        };
        let _ = feeder.await;
        out
    }

    const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n";

    #[test]
    fn https_needs_a_tls_config_and_userinfo_is_refused() {
        let ok = |u: &str| H1Connector::new(&u.parse().expect("uri"), None, WAIT, WAIT).is_some();
        assert!(ok("http://127.0.0.1:8081/api/v1/events"));
        assert!(!ok("https://backend/api/v1/events"));
        let tls = crate::backend::tls_config(None).expect("tls config");
        let https = H1Connector::new(
            &"https://backend/e".parse().expect("uri"),
            Some(tls),
            WAIT,
            WAIT,
        )
        .expect("https with tls");
        assert_eq!(https.target.port, 443);
        assert!(https.target.tls.is_some());
        assert!(!ok("http://user:pw@backend/api/v1/events"));
        let c = connector("http://[::1]:8081/api/v1/events?x=1");
        assert_eq!((c.target.host.as_str(), c.target.port), ("::1", 8081));
        assert!(c.target.head.starts_with("host: [::1]:8081\r\n"));
        assert_eq!(connector("http://backend/e").target.port, 80);
    }

    #[test]
    fn request_head_carries_cookie_and_id_but_never_a_crlf_from_them() {
        let base = connector("http://b/e").target.head.clone();
        let h = request_head(&base, &req("session=abc", Some("e1-7")));
        let h = std::str::from_utf8(&h).expect("utf8");
        assert!(
            h.starts_with("GET /api/v1/events HTTP/1.1\r\nhost: b\r\n"),
            "{h}"
        );
        assert!(h.contains("\r\ncookie: session=abc\r\n"), "{h}");
        assert!(h.contains("\r\nlast-event-id: e1-7\r\n"), "{h}");
        assert!(h.ends_with("\r\n\r\n"));

        let h = request_head(&base, &req("a=1\r\nx-evil: 1", Some("1\r\nx-evil: 2")));
        let h = std::str::from_utf8(&h).expect("utf8");
        assert!(!h.contains("x-evil"), "{h}");
        assert!(!h.contains("cookie") && !h.contains("last-event-id"), "{h}");

        // A query credential rides on the path, encoded; a bearer as a header.
        let q = crate::credential::Credential::new(
            crate::credential::Place::Query("secret".into()),
            "s 1\r\nx",
        );
        let mut r = req("", None);
        r.path = "/events?a=1".into();
        r.credential = q.present(&crate::credential::Presentation::AsReceived);
        let h = request_head(&base, &r);
        let h = std::str::from_utf8(&h).expect("utf8");
        assert!(
            h.starts_with("GET /events?a=1&secret=s%201%0D%0Ax HTTP/1.1\r\n"),
            "{h}"
        );
        r.credential = q.present(&crate::credential::Presentation::In(
            crate::credential::Place::Bearer,
        ));
        let h = request_head(&base, &r);
        let h = std::str::from_utf8(&h).expect("utf8");
        assert!(!h.contains("authorization") && !h.contains("x\r\n"), "{h}");
        r.path = "/e vil HTTP/1.1\r\n".into();
        let h = request_head(&base, &r);
        assert!(h.starts_with(b"GET / HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn sends_the_request_head_first() {
        let (client, mut server) = duplex(64 * 1024);
        let head = request_head(&connector("http://b/e").target.head, &req("s=1", Some("9")));
        let expect = head.clone();
        let opening = tokio::spawn(open(client, head, WAIT));
        let mut got = vec![0u8; expect.len()];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got)
            .await
            .expect("request");
        assert_eq!(got, expect);
        server
            .write_all(format!("{SSE_HEAD}content-length: 0\r\n\r\n").as_bytes())
            .await
            .expect("answer");
        let stream = opening.await.expect("join").expect("open");
        assert_eq!(collect(stream).await, (Vec::new(), None));
    }

    #[tokio::test]
    async fn chunked_body_survives_every_split() {
        let body = "data: one\n\nevent: inbound\ndata: {\"peer\":\"bob\"}\n\n";
        let mut resp = format!("{SSE_HEAD}transfer-encoding: chunked\r\n\r\n");
        // Two chunks, one with an extension, then a trailer.
        resp.push_str(&format!("{:x}\r\n{}\r\n", 11, &body[..11]));
        resp.push_str(&format!(
            "{:X};ext=1\r\n{}\r\n",
            body.len() - 11,
            &body[11..]
        ));
        resp.push_str("00000000000000000000\r\nx-trailer: 1\r\n\r\n");
        for split in [1, 2, 3, 7, 64, resp.len()] {
            let (data, err) = run(resp.as_bytes(), split).await.expect("open");
            assert_eq!(err, None, "split {split}");
            assert_eq!(String::from_utf8_lossy(&data), body, "split {split}");
        }
    }

    #[tokio::test]
    async fn content_length_and_close_delimited_bodies() {
        let resp = format!("{SSE_HEAD}content-length: 5\r\n\r\ndata:trailing junk");
        assert_eq!(
            run(resp.as_bytes(), 4).await.expect("open"),
            (b"data:".to_vec(), None)
        );
        let resp = format!("{SSE_HEAD}\r\ndata: a\n\n");
        assert_eq!(
            run(resp.as_bytes(), 3).await.expect("open"),
            (b"data: a\n\n".to_vec(), None)
        );
        // A coding other than chunked last: read to close, undecoded.
        let resp = format!("{SSE_HEAD}transfer-encoding: chunked, gzip\r\n\r\nxyz");
        assert_eq!(
            run(resp.as_bytes(), 100).await.expect("open"),
            (b"xyz".to_vec(), None)
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_clean_end() {
        let resp = format!("{SSE_HEAD}transfer-encoding: chunked\r\n\r\n10\r\nabc");
        let (data, err) = run(resp.as_bytes(), 100).await.expect("open");
        assert_eq!(data, b"abc");
        assert!(err.is_some_and(|e| e.contains("inside the response body")));
        let resp = format!("{SSE_HEAD}content-length: 10\r\n\r\nabc");
        assert!(run(resp.as_bytes(), 100).await.expect("open").1.is_some());
    }

    #[tokio::test]
    async fn bad_chunk_framing_is_an_error() {
        for bad in [
            "zz\r\nabc\r\n",
            "3\r\nabcdef\r\n",
            "3 x\r\nabc\r\n",
            "10000000000000000\r\n",
        ] {
            let resp = format!("{SSE_HEAD}transfer-encoding: chunked\r\n\r\n{bad}");
            let (_, err) = run(resp.as_bytes(), 100).await.expect("open");
            assert!(err.is_some(), "{bad:?} accepted");
        }
        let long = format!(
            "{SSE_HEAD}transfer-encoding: chunked\r\n\r\n{}",
            "1".repeat(MAX_LINE + 10)
        );
        assert!(run(long.as_bytes(), 1000).await.expect("open").1.is_some());
    }

    #[tokio::test]
    async fn head_answers_map_to_connect_errors() {
        type Expect = fn(&ConnectError) -> bool;
        let cases: [(&str, Expect); 7] = [
            (
                "HTTP/1.1 401 Unauthorized\r\n\r\n",
                |e| matches!(e, ConnectError::Unauthorized(s) if *s == StatusCode::UNAUTHORIZED),
            ),
            ("HTTP/1.1 403 Forbidden\r\n\r\n", |e| {
                matches!(e, ConnectError::Unauthorized(_))
            }),
            (
                "HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
                |e| matches!(e, ConnectError::Status(s) if *s == StatusCode::SERVICE_UNAVAILABLE),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n\r\n",
                |e| matches!(e, ConnectError::ContentType(t) if t == "text/html"),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", |e| {
                matches!(e, ConnectError::ContentType(_))
            }),
            ("HTTP/1.1 2x0 OK\r\n\r\n", |e| {
                matches!(e, ConnectError::Transport(_))
            }),
            (
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                |e| matches!(e, ConnectError::Transport(_)),
            ),
        ];
        for (resp, is) in cases {
            for split in [1, 1000] {
                match run(resp.as_bytes(), split).await {
                    Err(_) => {}
                    Ok(out) => panic!("{resp:?} opened: {out:?}"),
                }
                let (client, mut server) = duplex(64 * 1024);
                // The backend stays connected: the request write must work.
                server.write_all(resp.as_bytes()).await.expect("write");
                let err = open(client, Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"), WAIT)
                    .await
                    .err()
                    .expect("refused");
                assert!(is(&err), "{resp:?} gave {err:?}");
            }
        }
    }

    #[tokio::test]
    async fn interim_heads_are_skipped() {
        let resp =
            format!("HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n{SSE_HEAD}\r\ndata: a\n\n");
        assert_eq!(
            run(resp.as_bytes(), 5).await.expect("open"),
            (b"data: a\n\n".to_vec(), None)
        );
    }

    #[tokio::test]
    async fn oversized_or_missing_head_is_refused() {
        let huge = format!("{SSE_HEAD}x-pad: {}\r\n\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(
            run(huge.as_bytes(), 4096)
                .await
                .is_err_and(|e| e.contains("too large"))
        );
        assert!(
            run(b"HTTP/1.1 200 OK\r\n", 100)
                .await
                .is_err_and(|e| e.contains("closed before"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_times_out_the_head() {
        let (opened, _server) = open_pipe().await;
        assert!(matches!(opened, Err(ConnectError::Timeout)));
    }

    #[tokio::test]
    async fn connects_over_tcp_and_reads_live_events() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let backend = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)
                    .await
                    .expect("read");
                head.push(b[0]);
            }
            s.write_all(format!("{SSE_HEAD}transfer-encoding: chunked\r\n\r\n").as_bytes())
                .await
                .expect("write");
            s.write_all(b"9\r\ndata: a\n\n\r\n").await.expect("write");
            (String::from_utf8_lossy(&head).into_owned(), s)
        });
        let c = connector(&format!("http://127.0.0.1:{port}/api/v1/events"));
        let mut stream = c
            .connect(req("session=x", Some("e-1")))
            .await
            .expect("connect");
        let first = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("in time")
            .expect("item")
            .expect("data");
        assert_eq!(&first[..], b"data: a\n\n");
        let (head, s) = backend.await.expect("backend");
        assert!(
            head.starts_with("GET /api/v1/events HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ncookie: session=x\r\n"), "{head}");
        assert!(head.contains("\r\nlast-event-id: e-1\r\n"), "{head}");
        // The backend going away mid-chunk-stream is an error, not an end.
        drop(s);
        let last = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("in time");
        assert!(matches!(last, Some(Err(_))), "{last:?}");
    }
}
