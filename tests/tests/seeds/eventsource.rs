//! A browser-like EventSource over a hyper 1 HTTP/1.1 connection, the common
//! transport of the seed clients.
//!
//! It does one connection at a time and never reconnects on its own: the
//! seed documents each describe their own retry policy, so that decision
//! stays with each system's client. It keeps the last event ID across
//! connections, as a browser does, and sends it on the next one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::lock;

/// How long a request may wait for its response head (and a plain response
/// for its body) before it counts as a transport failure.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a client sends its requests: the mock itself or a proxy in front of
/// it, with an optional path prefix the proxy serves the system under.
#[derive(Clone, Debug)]
pub struct Base {
    pub addr: SocketAddr,
    pub prefix: String,
}

impl Base {
    /// `http://127.0.0.1:port[/prefix]` or `127.0.0.1:port`; None otherwise.
    pub fn parse(s: &str) -> Option<Base> {
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        Some(Base {
            addr: host.parse().ok()?,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The request target for `path` (which starts with `/`).
    pub fn target(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    /// The full URL of `path`, for logs and `url()` accessors.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, self.target(path))
    }
}

impl From<SocketAddr> for Base {
    fn from(addr: SocketAddr) -> Base {
        Base {
            addr,
            prefix: String::new(),
        }
    }
}

impl From<&str> for Base {
    /// Panics on an unusable address: a test's own mistake.
    fn from(s: &str) -> Base {
        Base::parse(s).unwrap_or_else(|| panic!("not a loopback base URL: {s}"))
    }
}

impl From<String> for Base {
    fn from(s: String) -> Base {
        Base::from(s.as_str())
    }
}

/// Percent-encodes a query value, so a secret or id with `&` or `=` cannot
/// change the query's meaning.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a client should stop trying after `status`: a 4xx other than
/// "try later" (408, 429). A wrong secret or token does not fix itself, and
/// a browser's EventSource gives up on any non-200 too.
pub fn refuses(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// One dispatched event as a page's listener sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `message` when the stream named none.
    pub event: String,
    pub data: String,
    /// The last event ID at dispatch time ("" if none was ever set).
    pub id: String,
}

/// Why a connection did not open or stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A response other than 200.
    Status(u16),
    /// A 200 that is not `text/event-stream` (a browser fails those too).
    NotEventStream(String),
    /// Connect, handshake, timeout or a broken body.
    Transport(String),
}

/// What one connection reports, in stream order. `Error` and `Closed` are
/// last; the channel ends after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    Open,
    Event(Message),
    Retry(u64),
    /// A comment line (`: ...`), which the parser itself hides; reported so a
    /// test can see keepalives get through.
    Comment,
    Error(Failure),
    /// The server ended the stream cleanly.
    Closed,
}

/// The connection settings plus the state a browser keeps between
/// connections (last event ID, `retry:`).
#[derive(Clone, Debug)]
pub struct EventSource {
    base: Base,
    path: String,
    headers: Vec<(String, String)>,
    last_id: Arc<Mutex<String>>,
    retry_ms: Arc<Mutex<Option<u64>>>,
}

impl EventSource {
    /// `path` includes the query, exactly as the system's document gives it.
    pub fn new(base: impl Into<Base>, path: &str) -> EventSource {
        EventSource {
            base: base.into(),
            path: path.to_string(),
            headers: Vec::new(),
            last_id: Arc::default(),
            retry_ms: Arc::default(),
        }
    }

    /// An extra request header on every connection.
    pub fn header(mut self, name: &str, value: &str) -> EventSource {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The full URL connections go to.
    pub fn url(&self) -> String {
        self.base.url(&self.path)
    }

    /// The ID the next connection will resume from ("" = none).
    pub fn last_event_id(&self) -> String {
        lock(&self.last_id).clone()
    }

    /// The last `retry:` the server sent, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        *lock(&self.retry_ms)
    }

    /// Opens one connection, read in the background until it ends or the
    /// returned handle is dropped.
    pub fn connect(&self) -> Connection {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(self.clone().run(tx));
        Connection { rx, task }
    }

    async fn run(self, tx: mpsc::UnboundedSender<Update>) {
        let end = match self.read(&tx).await {
            Ok(()) => Update::Closed,
            Err(f) => Update::Error(f),
        };
        let _ = tx.send(end);
    }

    async fn read(&self, tx: &mpsc::UnboundedSender<Update>) -> Result<(), Failure> {
        let mut headers = vec![("accept".to_string(), "text/event-stream".to_string())];
        let last = self.last_event_id();
        if !last.is_empty() {
            headers.push(("last-event-id".to_string(), last));
        }
        headers.extend(self.headers.iter().cloned());
        let (resp, _conn) = send(&self.base, "GET", &self.path, &headers, Bytes::new()).await?;
        if resp.status() != http::StatusCode::OK {
            return Err(Failure::Status(resp.status().as_u16()));
        }
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ctype.split(';').next().map(str::trim) != Some("text/event-stream") {
            return Err(Failure::NotEventStream(ctype.to_string()));
        }
        let _ = tx.send(Update::Open);
        let mut body = resp.into_body();
        let mut parser = ssemux_sse::Parser::new(1 << 20);
        let (mut at_line_start, mut in_comment) = (true, false);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Transport(e.to_string()))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            // Fed a line at a time so a comment is reported in its place
            // among the events.
            let mut start = 0;
            for (i, &b) in chunk.iter().enumerate() {
                if at_line_start && b == b':' {
                    in_comment = true;
                }
                at_line_start = b == b'\n' || b == b'\r';
                if at_line_start {
                    self.drain(&mut parser, &chunk[start..=i], tx);
                    start = i + 1;
                    if std::mem::take(&mut in_comment) {
                        let _ = tx.send(Update::Comment);
                    }
                }
            }
            self.drain(&mut parser, &chunk[start..], tx);
        }
        Ok(())
    }

    /// Parses `bytes` and reports what they completed.
    fn drain(
        &self,
        parser: &mut ssemux_sse::Parser,
        bytes: &[u8],
        tx: &mpsc::UnboundedSender<Update>,
    ) {
        parser.push(bytes);
        while let Some(item) = parser.next_item() {
            match item {
                Ok(ssemux_sse::Item::Event(ev)) => {
                    let _ = tx.send(Update::Event(Message {
                        event: ev.event,
                        data: ev.data,
                        id: ev.last_event_id,
                    }));
                }
                Ok(ssemux_sse::Item::Retry(ms)) => {
                    *lock(&self.retry_ms) = Some(ms);
                    let _ = tx.send(Update::Retry(ms));
                }
                // An oversize event is dropped unseen, as a browser would
                // give up on it; nothing to report.
                Err(_) => {}
            }
        }
        lock(&self.last_id).replace_range(.., parser.last_event_id());
    }
}

/// One open (or opening) connection; dropping it closes the socket.
pub struct Connection {
    rx: mpsc::UnboundedReceiver<Update>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// The next update; None once the connection has ended.
    pub async fn next(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

/// A plain request on a fresh connection: status and whole body.
pub async fn fetch(
    base: &Base,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<(u16, Bytes), Failure> {
    let (resp, _conn) = send(base, method, path, headers, body).await?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(HEAD_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| Failure::Transport("body timeout".to_string()))?
        .map_err(|e| Failure::Transport(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// Sends one request; the returned guard keeps the connection task alive
/// while the body is read.
async fn send(
    base: &Base,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), Failure> {
    let transport = |e: &dyn std::fmt::Display| Failure::Transport(e.to_string());
    let stream = TcpStream::connect(base.addr)
        .await
        .map_err(|e| transport(&e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut req = Request::builder()
        .method(method)
        .uri(base.target(path))
        .header("host", base.addr.to_string());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(body)).map_err(|e| transport(&e))?;
    let resp = tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| Failure::Transport("response head timeout".to_string()))?
        .map_err(|e| transport(&e))?;
    Ok((resp, conn))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
