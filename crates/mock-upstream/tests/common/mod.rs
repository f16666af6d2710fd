//! Shared helpers for the mock's integration tests: a tiny HTTP client over
//! real sockets and an SSE reader with deadlines on every read.
//!
//! Owns test plumbing only; it must never sleep without a deadline.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ssemux_mock_upstream::{MockBackend, MockConfig};

/// Generous upper bound for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(5);

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn start() -> MockBackend {
    start_with(MockConfig::default()).await
}

pub async fn start_with(cfg: MockConfig) -> MockBackend {
    MockBackend::start_with(([127, 0, 0, 1], 0).into(), cfg)
        .await
        .expect("bind mock")
}

/// A buffered response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("json body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Builds a request; `cookie` is the session token, `headers` extra pairs.
pub fn request(
    method: Method,
    url: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(c) = cookie {
        b = b.header("cookie", format!("session={c}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

/// Sends and buffers the whole response, with a deadline.
pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    tokio::time::timeout(SOON, async {
        let res = c.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).expect("utf8 body"),
        }
    })
    .await
    .expect("response deadline")
}

pub async fn get(c: &HttpClient, url: &str, cookie: Option<&str>) -> Reply {
    send(c, request(Method::GET, url, cookie, &[], "")).await
}

pub async fn post_json(c: &HttpClient, url: &str, cookie: Option<&str>, body: &str) -> Reply {
    let h = [("content-type", "application/json")];
    send(c, request(Method::POST, url, cookie, &h, body)).await
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sse {
    pub id: String,
    pub event: String,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("json data")
    }

    pub fn seq(&self) -> u64 {
        let (_, s) = self.id.rsplit_once('-').expect("id has a seq");
        s.parse().expect("numeric seq")
    }
}

/// What a read from the stream produced.
#[derive(Debug)]
pub enum Read {
    Event(Sse),
    Comment(String),
    Eof,
    Timeout,
}

/// An open events stream.
pub struct SseStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buf: String,
}

/// Opens `GET /api/v1/events` and waits for the response head.
pub async fn open_events(
    c: &HttpClient,
    base: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> SseStream {
    let mut h = vec![("accept", "text/event-stream")];
    if let Some(id) = last_event_id {
        h.push(("last-event-id", id));
    }
    let req = request(
        Method::GET,
        &format!("{base}/api/v1/events"),
        Some(token),
        &h,
        "",
    );
    let res = tokio::time::timeout(SOON, c.request(req))
        .await
        .expect("events head deadline")
        .expect("events request");
    let (parts, body) = res.into_parts();
    SseStream {
        status: parts.status,
        headers: parts.headers,
        body,
        buf: String::new(),
    }
}

impl SseStream {
    /// Raw bytes of the next body chunk, `None` on EOF, `Err` on timeout.
    pub async fn chunk(&mut self, within: Duration) -> Result<Option<Bytes>, ()> {
        loop {
            match tokio::time::timeout(within, self.body.frame()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }

    /// The next event or comment block, or EOF / timeout.
    pub async fn read(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                return parse_block(block.trim_end_matches('\n'));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.chunk(left).await {
                Err(()) => return Read::Timeout,
                Ok(None) => return Read::Eof,
                Ok(Some(b)) => self
                    .buf
                    .push_str(std::str::from_utf8(&b).expect("utf8 sse")),
            }
        }
    }

    /// The next event, skipping comments; panics on EOF or timeout.
    pub async fn next(&mut self) -> Sse {
        loop {
            match self.read(SOON).await {
                Read::Event(e) => return e,
                Read::Comment(_) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// Waits for EOF, skipping anything else; false on timeout.
    pub async fn ends(&mut self) -> bool {
        loop {
            match self.read(SOON).await {
                Read::Eof => return true,
                Read::Timeout => return false,
                _ => continue,
            }
        }
    }
}

fn parse_block(block: &str) -> Read {
    let mut ev = Sse {
        id: String::new(),
        event: String::new(),
        data: String::new(),
    };
    let mut data_lines = Vec::new();
    let mut comment = None;
    for line in block.split('\n') {
        if let Some(c) = line.strip_prefix(':') {
            comment = Some(c.trim().to_owned());
            continue;
        }
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "id" => ev.id = value.to_owned(),
            "event" => ev.event = value.to_owned(),
            "data" => data_lines.push(value.to_owned()),
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    if ev.id.is_empty() && ev.event.is_empty() && data_lines.is_empty() {
        return Read::Comment(comment.unwrap_or_default());
    }
    ev.data = data_lines.join("\n");
    Read::Event(ev)
}
