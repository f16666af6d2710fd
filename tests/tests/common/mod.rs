//! Shared test harness: a mock backend and a gateway on loopback ports, and a
//! minimal SSE tab client that reads a stream in the background.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use ssemux_gateway::Config;
use ssemux_gateway::Gateway;
use ssemux_mock_upstream::MockBackend;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Default deadline for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(5);

/// A backend and a gateway in front of it.
pub struct Env {
    pub backend: MockBackend,
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
}

impl Env {
    /// Start both with default configuration plus `overrides` (`key=value`).
    pub async fn start(overrides: &[&str]) -> Env {
        let backend = MockBackend::start(([127, 0, 0, 1], 0).into())
            .await
            .expect("mock backend");
        Self::start_for(backend, overrides).await
    }

    /// Start a gateway in front of an existing backend.
    pub async fn start_for(backend: MockBackend, overrides: &[&str]) -> Env {
        let mut sets = vec![format!("backend={}", backend.url())];
        sets.extend(overrides.iter().map(|s| s.to_string()));
        let cfg = Config::from_parts("", Vec::new(), &sets).expect("config");
        let gateway = Gateway::new(cfg).expect("gateway");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(gateway.clone().serve(listener));
        Env {
            backend,
            gateway,
            addr,
        }
    }

    /// Another gateway in front of this one's backend (a second instance
    /// of one deployment), with `overrides`.
    pub async fn another_gateway(&self, overrides: &[&str]) -> SocketAddr {
        let mut sets = vec![format!("backend={}", self.backend.url())];
        sets.extend(overrides.iter().map(|s| s.to_string()));
        let cfg = Config::from_parts("", Vec::new(), &sets).expect("config");
        let gateway = Gateway::new(cfg).expect("gateway");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(gateway.serve(listener));
        addr
    }

    /// The traffic that puts series under the common metric labels: two
    /// tabs of alice that both got one message (one upstream), and a third
    /// that came with another epoch's id and got its `resync`.
    pub async fn alice_traffic(&self) -> [Tab; 3] {
        let alice = self.cookie("alice");
        let mut t1 = self.tab(&alice).await;
        let mut t2 = self.tab(&alice).await;
        assert!(
            self.backend
                .wait_until(WAIT, |b| b.open_streams("alice") == 1)
                .await
        );
        self.backend.send_message("bob", "alice", "hi");
        for t in [&mut t1, &mut t2] {
            t.until("contact-changed").await;
        }
        let mut t3 = Tab::open(self.addr, "/events", &alice, Some("deadbeef-3"))
            .await
            .expect("tab");
        assert_eq!(t3.next().await.event, "resync");
        [t1, t2, t3]
    }

    /// A session cookie header for `user`.
    pub fn cookie(&self, user: &str) -> String {
        format!("session={}", self.backend.create_session(user))
    }

    /// Open `/events` as a tab.
    pub async fn tab(&self, cookie: &str) -> Tab {
        Tab::open(self.addr, "/events", cookie, None)
            .await
            .expect("tab opens")
    }
}

/// One SSE event as a tab saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ev {
    pub event: String,
    pub data: String,
    pub id: String,
}

/// A browser tab's `/events` stream, read in the background.
pub struct Tab {
    rx: mpsc::UnboundedReceiver<Ev>,
    pub retry_ms: Option<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tab {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Send one request on a fresh connection; returns status, headers and the
/// body (read to the end, bounded by [`WAIT`]).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).to_string())
}

impl Tab {
    /// Open `path` with `cookie` and optional `Last-Event-ID`. `Err(status)`
    /// if the gateway answered anything but a 200 stream.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        cookie: &str,
        last_event_id: Option<&str>,
    ) -> Result<Tab, StatusCode> {
        Self::open_within(addr, path, cookie, last_event_id, WAIT).await
    }

    /// [`Tab::open`] allowing `wait` for the response head (and the first
    /// `retry:`), for tests that open very many tabs at once.
    pub async fn open_within(
        addr: SocketAddr,
        path: &str,
        cookie: &str,
        last_event_id: Option<&str>,
        wait: Duration,
    ) -> Result<Tab, StatusCode> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn_task = tokio::spawn(conn);
        let mut b = Request::get(path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        if !cookie.is_empty() {
            b = b.header("cookie", cookie);
        }
        if let Some(id) = last_event_id {
            b = b.header("last-event-id", id);
        }
        let req = b.body(Empty::<Bytes>::new()).expect("request");
        let resp = tokio::time::timeout(wait, send.send_request(req))
            .await
            .expect("response in time")
            .expect("response");
        if resp.status() != StatusCode::OK {
            conn_task.abort();
            return Err(resp.status());
        }
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(ctype, "text/event-stream");
        let (tx, rx) = mpsc::unbounded_channel();
        let (retry_tx, retry_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _conn = AbortOnDrop(conn_task);
            let mut body = resp.into_body();
            let mut parser = ssemux_sse::Parser::new(1 << 20);
            let mut retry_tx = Some(retry_tx);
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                parser.push(&data);
                while let Some(item) = parser.next_item() {
                    match item {
                        Ok(ssemux_sse::Item::Retry(ms)) => {
                            if let Some(t) = retry_tx.take() {
                                let _ = t.send(ms);
                            }
                        }
                        Ok(ssemux_sse::Item::Event(e)) => {
                            let _ = tx.send(Ev {
                                event: e.event,
                                data: e.data,
                                id: e.last_event_id,
                            });
                        }
                        Err(_) => {}
                    }
                }
            }
        });
        let retry_ms = tokio::time::timeout(wait, retry_rx)
            .await
            .ok()
            .and_then(|r| r.ok());
        Ok(Tab { rx, retry_ms, task })
    }

    /// The next event, or `None` if none arrives within `wait` or the stream
    /// ended.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Ev> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event within [`WAIT`]; panics if none.
    pub async fn next(&mut self) -> Ev {
        self.next_within(WAIT).await.expect("an event in time")
    }

    /// Events until one named `name` arrives (inclusive); panics on timeout.
    pub async fn until(&mut self, name: &str) -> Vec<Ev> {
        let mut seen = Vec::new();
        loop {
            let ev = self.next().await;
            let done = ev.event == name;
            seen.push(ev);
            if done {
                return seen;
            }
        }
    }

    /// Whether the stream has ended (server closed it) within `wait`.
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One step of a scripted upstream events response.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes (flushed; with `TCP_NODELAY` they leave at once).
    Write(Vec<u8>),
    /// Write each byte separately, pausing between them.
    Dribble(Vec<u8>, Duration),
    /// Pause.
    Sleep(Duration),
    /// Keep the connection open until the peer closes it.
    Hold,
}

/// A raw-TCP backend whose `/api/v1/events` answers are scripted byte by
/// byte, for upstream misbehaviour the mock backend cannot produce. `/api/v1/me`
/// answers `{"id": <cookie's session value>}`; anything else gets 404. Every
/// response but the scripted one closes its connection.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    /// `Last-Event-ID` (or None) of each events request, in order.
    pub event_requests: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    /// Scripted events connections currently open.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The script: the events response (head and body) for the n-th events
/// request (0-based).
pub type Script = Arc<dyn Fn(usize) -> Vec<Step> + Send + Sync>;

/// A standard SSE response head.
pub const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";

impl ScriptedBackend {
    pub async fn start(script: Script) -> ScriptedBackend {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let event_requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (reqs, open2) = (event_requests.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let (script, reqs, open) = (script.clone(), reqs.clone(), open2.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                    let header = |name: &str| {
                        text.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                    };
                    if path == "/api/v1/me" {
                        let user = header("cookie")
                            .and_then(|c| {
                                c.split(';').find_map(|kv| {
                                    kv.trim().strip_prefix("session=").map(str::to_string)
                                })
                            })
                            .unwrap_or_default();
                        let resp = if user.is_empty() {
                            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                        } else {
                            let body = serde_json::json!({ "id": user }).to_string();
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        };
                        let _ = sock.write_all(resp.as_bytes()).await;
                        return;
                    }
                    if path != "/api/v1/events" {
                        let _ = sock
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    let n = {
                        let mut r = reqs.lock().unwrap_or_else(|p| p.into_inner());
                        r.push(header("last-event-id"));
                        r.len() - 1
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    for step in script(n) {
                        let ok = match step {
                            Step::Write(b) => sock.write_all(&b).await.is_ok(),
                            Step::Dribble(b, pause) => {
                                let mut ok = true;
                                for byte in b {
                                    if sock.write_all(&[byte]).await.is_err() {
                                        ok = false;
                                        break;
                                    }
                                    tokio::time::sleep(pause).await;
                                }
                                ok
                            }
                            Step::Sleep(d) => {
                                tokio::time::sleep(d).await;
                                true
                            }
                            Step::Hold => {
                                // Until the gateway closes its side.
                                loop {
                                    match sock.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(_) => {}
                                    }
                                }
                                false
                            }
                        };
                        if !ok {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        ScriptedBackend {
            addr,
            event_requests,
            open,
            task,
        }
    }

    /// Events requests received so far.
    pub fn event_request_count(&self) -> usize {
        self.event_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// A gateway in front of this backend (default config + `overrides`).
    pub async fn gateway(&self, overrides: &[&str]) -> (Arc<Gateway>, SocketAddr) {
        gateway_for(self.addr, overrides).await
    }
}

/// A gateway in front of `backend` (default config + `overrides`), on a
/// fresh loopback port.
pub async fn gateway_for(backend: SocketAddr, overrides: &[&str]) -> (Arc<Gateway>, SocketAddr) {
    let mut sets = vec![format!("backend=http://{backend}")];
    sets.extend(overrides.iter().map(|s| s.to_string()));
    serve(Config::from_parts("", Vec::new(), &sets).expect("config")).await
}

/// A gateway running `cfg`, on a fresh loopback port.
pub async fn serve(cfg: Config) -> (Arc<Gateway>, SocketAddr) {
    let gateway = Gateway::new(cfg).expect("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.clone().serve(listener));
    (gateway, addr)
}

/// Poll `cond` until it holds or `wait` passes; returns whether it held.
pub async fn eventually(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An SSE event as upstream bytes.
pub fn sse(id: &str, event: &str, data: &str) -> Vec<u8> {
    format!("id: {id}\nevent: {event}\ndata: {data}\n\n").into_bytes()
}

impl Env {
    /// Start both with a configuration file's text (e.g. translation rules,
    /// which are file-only) plus `overrides`.
    pub async fn start_with_file(toml: &str, overrides: &[&str]) -> Env {
        let backend = MockBackend::start(([127, 0, 0, 1], 0).into())
            .await
            .expect("mock backend");
        Self::start_for_with_file(backend, toml, overrides).await
    }

    /// [`Env::start_with_file`] in front of an existing backend.
    pub async fn start_for_with_file(backend: MockBackend, toml: &str, overrides: &[&str]) -> Env {
        let mut sets = vec![format!("backend={}", backend.url())];
        sets.extend(overrides.iter().map(|s| s.to_string()));
        let cfg = Config::from_parts(toml, Vec::new(), &sets).expect("config");
        let gateway = Gateway::new(cfg).expect("gateway");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(gateway.clone().serve(listener));
        Env {
            backend,
            gateway,
            addr,
        }
    }
}

/// A log sink the gateway's `tracing` output is recorded into.
#[derive(Clone)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install (once per test binary) a subscriber recording every log line
/// that `filter` lets through; returns the recording.
pub fn capture_logs(filter: &str) -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Capture(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}
