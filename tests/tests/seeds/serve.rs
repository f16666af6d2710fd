//! The server side the seed mocks share: an accept loop on a loopback port
//! (HTTP upgrades allowed, for the WebSocket mock), small response helpers,
//! and a registry of open SSE responses that the SSE mocks' controls (send,
//! drop, count) act on.
//!
//! It must never panic on a request and never interpret one (routing is each
//! mock's); a stream counts as open exactly until hyper drops its body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::lock;

/// Every mock response.
pub type Resp = Response<BoxBody<Bytes, Infallible>>;

/// A listening mock; dropping it stops accepting and closes every
/// connection (the connection tasks live in the accept task's `JoinSet`).
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` on 127.0.0.1 (a free port), HTTP/1.1 or h2c, whichever
/// the peer speaks, since a gateway may use either towards its backend.
pub async fn start<H, F>(handler: H) -> Server
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let fut = handler(req);
                            async move { Ok::<_, Infallible>(fut.await) }
                        });
                        // With upgrades, so a WebSocket mock can take the
                        // connection over after its `101`.
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next() => {}
            }
        }
    });
    Server { addr, task }
}

/// An empty response with `status`.
pub fn status(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = status;
    resp
}

/// A 200 JSON response. Fields keep their declared order (a `Value`
/// would sort them), so bodies read like the documents' examples.
pub fn json(value: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A header's value, if present and text.
pub fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The first value of query parameter `name`, percent-decoded (`+` is a
/// space, as forms send it); malformed escapes are kept as written.
pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request body up to 64 KiB; None if larger or broken.
pub async fn read_body(req: Request<Incoming>) -> Option<Bytes> {
    Some(
        Limited::new(req.into_body(), 64 * 1024)
            .collect()
            .await
            .ok()?
            .to_bytes(),
    )
}

/// The SSE responses a mock has open, each tagged with the key its
/// controls select by (a session, a user and app, or nothing).
pub struct Streams<K> {
    inner: Arc<Mutex<Registry<K>>>,
}

struct Registry<K> {
    next_id: u64,
    open: HashMap<u64, (K, mpsc::Sender<Bytes>)>,
    /// The key of every stream ever accepted, in order.
    history: Vec<K>,
}

impl<K: Clone + Send + 'static> Default for Streams<K> {
    fn default() -> Self {
        Streams {
            inner: Arc::new(Mutex::new(Registry {
                next_id: 0,
                open: HashMap::new(),
                history: Vec::new(),
            })),
        }
    }
}

impl<K: Clone + Send + 'static> Streams<K> {
    /// Registers a stream and returns its 200 `text/event-stream` response.
    /// It buffers `capacity` frames; a frame sent to a full stream is
    /// skipped, as a lagging broadcast receiver skips. `keepalive` writes
    /// that comment frame at that interval.
    pub fn open(&self, key: K, capacity: usize, keepalive: Option<(Duration, Bytes)>) -> Resp {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = {
            let mut r = lock(&self.inner);
            let id = r.next_id;
            r.next_id += 1;
            r.history.push(key.clone());
            r.open.insert(id, (key, tx));
            id
        };
        let keepalive = keepalive.map(|(every, frame)| {
            let start = tokio::time::Instant::now() + every;
            (tokio::time::interval_at(start, every), frame)
        });
        let body = SseBody {
            rx,
            keepalive,
            _guard: Guard {
                inner: self.inner.clone(),
                id,
            },
        };
        let mut resp = Response::new(body.boxed());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        resp
    }

    /// Writes `frame` to every open stream whose key matches; returns how
    /// many took it.
    pub fn send(&self, matches: impl Fn(&K) -> bool, frame: &Bytes) -> usize {
        let r = lock(&self.inner);
        r.open
            .values()
            .filter(|(k, tx)| matches(k) && tx.try_send(frame.clone()).is_ok())
            .count()
    }

    /// Ends every open stream cleanly (after what was already queued).
    pub fn drop_all(&self) {
        lock(&self.inner).open.clear();
    }

    /// Ends the open streams whose key matches.
    pub fn drop_where(&self, matches: impl Fn(&K) -> bool) {
        lock(&self.inner).open.retain(|_, (k, _)| !matches(k));
    }

    /// Streams open now whose key matches.
    pub fn open_where(&self, matches: impl Fn(&K) -> bool) -> usize {
        lock(&self.inner)
            .open
            .values()
            .filter(|(k, _)| matches(k))
            .count()
    }

    /// Streams ever accepted whose key matches.
    pub fn opened_where(&self, matches: impl Fn(&K) -> bool) -> usize {
        lock(&self.inner)
            .history
            .iter()
            .filter(|k| matches(k))
            .count()
    }
}

/// Uncounts a stream however it ends: dropped by a control, or its body
/// dropped by hyper when the peer went away.
struct Guard<K> {
    inner: Arc<Mutex<Registry<K>>>,
    id: u64,
}

impl<K> Drop for Guard<K> {
    fn drop(&mut self) {
        lock(&self.inner).open.remove(&self.id);
    }
}

struct SseBody<K> {
    rx: mpsc::Receiver<Bytes>,
    keepalive: Option<(tokio::time::Interval, Bytes)>,
    _guard: Guard<K>,
}

impl<K> Body for SseBody<K> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
            // The registry dropped our sender: a control ended the stream.
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if let Some((interval, frame)) = &mut this.keepalive
            && interval.poll_tick(cx).is_ready()
        {
            return Poll::Ready(Some(Ok(Frame::data(frame.clone()))));
        }
        Poll::Pending
    }
}
