//! The reverse proxy over real sockets on 127.0.0.1: a test backend (echoes
//! request heads as JSON, counts bodies without keeping them, stalls, streams
//! SSE), a front server that calls `Proxy::forward` for every request, and
//! clients speaking h1, h2 and raw bytes. Every wait has a deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use ssemux_gateway::body::{self, Body, BoxError};
use ssemux_gateway::{BackendUrl, Proxy, ProxyConfig, TrustedProxies};
use ssemux_gateway::{ClientConfig, backend_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep, timeout};

/// Upper bound for any single wait in these tests.
const DEADLINE: Duration = Duration::from_secs(30);
const MB: u64 = 1024 * 1024;
const BIG: u64 = 50 * MB;
/// Socket buffers for the sockets the tests own, so that what the kernel may
/// hold is small and known; the proxy's own outbound socket keeps defaults.
const SOCK_BUF: u32 = 64 * 1024;
/// Most bytes that may be "in flight" while the far end refuses to read:
/// kernel buffers (the proxy's backend socket may autotune to a few MiB) plus
/// hyper's read/write buffers. A proxy that buffered bodies would reach BIG.
const IN_FLIGHT_MAX: u64 = 16 * MB;

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("deadline passed waiting for {what}"),
    }
}

// ---------------------------------------------------------------- backend

#[derive(Default)]
struct Backend {
    /// TCP connections accepted.
    conns: AtomicUsize,
    /// Every request head that reached a handler: (method, path).
    seen: Mutex<Vec<(String, String)>>,
    /// Bytes `/big` generated so far.
    produced: AtomicU64,
    /// Bytes of request bodies read so far.
    consumed: AtomicU64,
    /// `/count` got its head and is stalling.
    count_started: Notify,
    /// Lets a stalled `/count` read, and `/sse` send its second event.
    release: Notify,
    /// An `/sse` body was dropped (the proxy let go of the stream).
    sse_dropped: Notify,
}

impl Backend {
    fn saw(&self, path: &str) -> bool {
        self.seen
            .lock()
            .expect("seen lock")
            .iter()
            .any(|(_, p)| p == path)
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// A listener with small kernel buffers (inherited by accepted sockets).
fn small_listener() -> TcpListener {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(SOCK_BUF).expect("rcvbuf");
    sock.set_send_buffer_size(SOCK_BUF).expect("sndbuf");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    sock.listen(128).expect("listen")
}

async fn connect_small(addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(SOCK_BUF).expect("rcvbuf");
    sock.set_send_buffer_size(SOCK_BUF).expect("sndbuf");
    within("connect", sock.connect(addr))
        .await
        .expect("connect")
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(data("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("server.pem certs");
    let key = PrivateKeyDer::from_pem_file(data("server.key")).expect("server.key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

async fn start_backend(tls: bool) -> (SocketAddr, Arc<Backend>) {
    let listener = small_listener();
    let addr = listener.local_addr().expect("addr");
    let state = Arc::new(Backend::default());
    let acceptor = tls.then(tls_acceptor);
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            st.conns.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(backend_handle(st, req).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    Some(a) => match a.accept(stream).await {
                        Ok(tls) => builder.serve_connection(TokioIo::new(tls), svc).await,
                        Err(_) => return,
                    },
                    None => builder.serve_connection(TokioIo::new(stream), svc).await,
                };
            });
        }
    });
    (addr, state)
}

/// Read a body frame by frame, counting data bytes into `counter`; never
/// keeps the bytes. `Err` if the body failed.
async fn drain(mut body: Incoming, counter: &AtomicU64) -> Result<u64, String> {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
            counter.fetch_add(d.len() as u64, Ordering::SeqCst);
        }
    }
    Ok(n)
}

async fn backend_handle(st: Arc<Backend>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    st.seen
        .lock()
        .expect("seen lock")
        .push((req.method().to_string(), path.clone()));
    match path.as_str() {
        "/count" => {
            st.count_started.notify_one();
            st.release.notified().await;
            match drain(req.into_body(), &st.consumed).await {
                Ok(n) => Response::new(body::full(n.to_string())),
                Err(e) => body::text(StatusCode::BAD_REQUEST, &e),
            }
        }
        "/big" => {
            let n = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let gen_body = GenBody::new(n, Arc::new(AtomicU64::new(0)), Some(st.clone()));
            Response::new(gen_body.boxed_unsync())
        }
        "/stall" => std::future::pending().await,
        "/sse" => {
            let (tx, rx) = mpsc::channel(4);
            let st2 = st.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: one\n\n")).await;
                st2.release.notified().await;
                let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
            });
            let mut resp = Response::new(
                ChannelBody {
                    rx,
                    _guard: DropSignal(st),
                }
                .boxed_unsync(),
            );
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
        "/hop" => {
            let mut resp = Response::new(body::full("hop"));
            let h = resp.headers_mut();
            h.append("set-cookie", "a=1; Path=/".parse().expect("v"));
            h.append("set-cookie", "b=2; Path=/".parse().expect("v"));
            h.insert("connection", "x-backend-hop".parse().expect("v"));
            h.insert("x-backend-hop", "secret".parse().expect("v"));
            h.insert("keep-alive", "timeout=5".parse().expect("v"));
            h.insert("proxy-authenticate", "Basic".parse().expect("v"));
            h.insert("upgrade", "h2c".parse().expect("v"));
            h.insert("x-end-to-end", "kept".parse().expect("v"));
            resp
        }
        _ => {
            // Echo: the request head as JSON, plus the body length.
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let version = format!("{:?}", req.version());
            let headers: Vec<Value> = req
                .headers()
                .iter()
                .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
                .collect();
            let body_len = drain(req.into_body(), &st.consumed).await;
            let out = json!({
                "method": method, "uri": uri, "version": version,
                "headers": headers, "body_len": body_len.ok(),
            });
            Response::new(body::full(out.to_string()))
        }
    }
}

/// A body of `left` bytes made on the fly from one shared 64 KiB chunk.
struct GenBody {
    left: u64,
    chunk: Bytes,
    produced: Arc<AtomicU64>,
    backend: Option<Arc<Backend>>,
}

impl GenBody {
    fn new(len: u64, produced: Arc<AtomicU64>, backend: Option<Arc<Backend>>) -> Self {
        GenBody {
            left: len,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            produced,
            backend,
        }
    }
}

impl http_body::Body for GenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        let data = self.chunk.slice(..n as usize);
        self.left -= n;
        self.produced.fetch_add(n, Ordering::SeqCst);
        if let Some(b) = &self.backend {
            b.produced.fetch_add(n, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

struct DropSignal(Arc<Backend>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.sse_dropped.notify_one();
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    _guard: DropSignal,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

// ------------------------------------------------------------------ front

/// Where the front forwards to, and its `[proxy]` limits.
struct Front {
    backend: BackendUrl,
    cfg: ProxyConfig,
    trusted: TrustedProxies,
}

fn proxy_cfg(backend: &str) -> Front {
    Front {
        backend: BackendUrl::parse(backend).expect("backend uri"),
        cfg: ProxyConfig {
            max_request_body: 100 * MB,
            response_timeout: Duration::from_secs(30),
            ..ProxyConfig::default()
        },
        trusted: TrustedProxies::default(),
    }
}

/// A front server: every request goes to `Proxy::forward`.
async fn start_front(front: Front, client: ClientConfig) -> SocketAddr {
    let proxy = Proxy::new(
        front.backend,
        &front.cfg,
        &front.trusted,
        backend_client(&client).expect("backend client"),
    );
    let listener = small_listener();
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.forward(req, peer, "http").await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn setup() -> (SocketAddr, Arc<Backend>) {
    let (baddr, backend) = start_backend(false).await;
    let front = start_front(
        proxy_cfg(&format!("http://{baddr}")),
        ClientConfig::default(),
    )
    .await;
    (front, backend)
}

// ---------------------------------------------------------------- clients

type H1 = hyper::client::conn::http1::SendRequest<Body>;

async fn h1(addr: SocketAddr) -> H1 {
    let stream = connect_small(addr).await;
    let (send, conn) = within(
        "h1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .expect("handshake");
    tokio::spawn(conn);
    send
}

async fn send(client: &mut H1, req: Request<Body>) -> Response<Incoming> {
    within("response head", client.send_request(req))
        .await
        .expect("response")
}

async fn text_of(resp: Response<Incoming>) -> String {
    let bytes = within("body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn echo_json(resp: Response<Incoming>) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    serde_json::from_str(&text_of(resp).await).expect("echo json")
}

/// All values of header `name` in an echo.
fn header_values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Write raw bytes, read until the server closes.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect_small(addr).await;
    within("raw write", s.write_all(bytes))
        .await
        .expect("write");
    let mut out = Vec::new();
    within("server to close the connection", s.read_to_end(&mut out))
        .await
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Wait until `counter` has not moved for a while, and return it. Used to
/// measure how far a producer gets while its consumer refuses to read: a
/// buffering proxy lets it run to the end, a streaming one stops it early.
async fn settled(counter: &AtomicU64) -> u64 {
    within("producer to settle", async {
        let mut last = counter.load(Ordering::SeqCst);
        let mut since = Instant::now();
        loop {
            sleep(Duration::from_millis(20)).await;
            let now = counter.load(Ordering::SeqCst);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= Duration::from_millis(400) {
                return now;
            }
        }
    })
    .await
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_body_of_50mb_streams_with_backpressure() {
    let (front, backend) = setup().await;
    let mut client = h1(front).await;
    let produced = Arc::new(AtomicU64::new(0));
    let req = Request::post("/count")
        .header("host", "front")
        .header("content-length", BIG)
        .body(GenBody::new(BIG, produced.clone(), None).boxed_unsync())
        .expect("request");
    let pending = tokio::spawn(async move { client.send_request(req).await });

    within("backend to get the head", backend.count_started.notified()).await;
    let stalled_at = settled(&produced).await;
    assert!(
        stalled_at < IN_FLIGHT_MAX,
        "client could write {stalled_at} bytes while the backend read nothing: the proxy is buffering"
    );
    assert_eq!(backend.consumed.load(Ordering::SeqCst), 0);

    backend.release.notify_one();
    let resp = within("response", pending)
        .await
        .expect("join")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text_of(resp).await, BIG.to_string());
    assert_eq!(produced.load(Ordering::SeqCst), BIG);
    eprintln!("request direction: {stalled_at} bytes in flight while stalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_body_of_50mb_streams_with_backpressure() {
    let (front, backend) = setup().await;
    let mut client = h1(front).await;
    let req = Request::get(format!("/big?n={BIG}"))
        .header("host", "front")
        .body(body::empty())
        .expect("request");
    let resp = send(&mut client, req).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // The client holds the body without reading it.
    let stalled_at = settled(&backend.produced).await;
    assert!(
        stalled_at < IN_FLIGHT_MAX,
        "backend could write {stalled_at} bytes while the client read nothing: the proxy is buffering"
    );

    let received = AtomicU64::new(0);
    let n = within(
        "50 MB through the proxy",
        drain(resp.into_body(), &received),
    )
    .await
    .expect("body");
    assert_eq!(n, BIG);
    assert_eq!(backend.produced.load(Ordering::SeqCst), BIG);
    eprintln!("response direction: {stalled_at} bytes in flight while stalled");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (front, _backend) = setup().await;
    let mut client = h1(front).await;
    let req = Request::get("/echo")
        .header("host", "front")
        .header("connection", "keep-alive, X-Custom")
        .header("x-custom", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("trailer", "x-t")
        .header("upgrade", "websocket")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-end-to-end", "kept")
        .body(body::empty())
        .expect("request");
    let echo = echo_json(send(&mut client, req).await).await;
    for h in [
        "connection",
        "x-custom",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            header_values(&echo, h).is_empty(),
            "{h} reached the backend"
        );
    }
    // End-to-end, but joined into the one value ssemux authenticates.
    assert_eq!(header_values(&echo, "cookie"), ["a=1; b=2"]);
    assert_eq!(header_values(&echo, "x-end-to-end"), ["kept"]);

    let req = Request::get("/hop")
        .header("host", "front")
        .body(body::empty())
        .expect("request");
    let resp = send(&mut client, req).await;
    let h = resp.headers();
    for name in [
        "x-backend-hop",
        "keep-alive",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(!h.contains_key(name), "{name} reached the client");
    }
    assert!(h.get_all("connection").iter().all(|v| v != "x-backend-hop"));
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(text_of(resp).await, "hop");
}

#[tokio::test]
async fn forwarded_headers_and_backend_host() {
    let (baddr, _backend) = start_backend(false).await;
    // From a trusted proxy (this test's loopback client) the chain is kept.
    let mut front = proxy_cfg(&format!("http://{baddr}/prefix/"));
    front.trusted = TrustedProxies::parse("127.0.0.1").expect("trusted");
    let front = start_front(front, ClientConfig::default()).await;
    let mut client = h1(front).await;
    let req = Request::get("/echo?x=1")
        .header("host", "front.example:8443")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "ftp")
        .body(body::empty())
        .expect("request");
    let echo = echo_json(send(&mut client, req).await).await;
    assert_eq!(echo["uri"], "/prefix/echo?x=1");
    assert_eq!(header_values(&echo, "host"), [baddr.to_string()]);
    assert_eq!(
        header_values(&echo, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(header_values(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        header_values(&echo, "x-forwarded-host"),
        ["front.example:8443"]
    );
}

/// Over HTTP/2 every request carries :authority; that is not absolute-form.
#[tokio::test]
async fn h2_client_authority_becomes_forwarded_host() {
    let (front, backend) = setup().await;
    let stream = connect_small(front).await;
    let (mut client, conn) = within(
        "h2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://front.example/echo")
        .version(Version::HTTP_2)
        .body(body::empty())
        .expect("request");
    let resp = within("h2 response", client.send_request(req))
        .await
        .expect("response");
    let echo = echo_json(resp).await;
    assert_eq!(echo["uri"], "/echo");
    assert_eq!(header_values(&echo, "x-forwarded-host"), ["front.example"]);
    assert!(backend.saw("/echo"));
}

#[tokio::test]
async fn closed_backend_port_is_502() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let front = start_front(
        proxy_cfg(&format!("http://{closed}")),
        ClientConfig::default(),
    )
    .await;
    let mut client = h1(front).await;
    let req = Request::get("/anything")
        .header("host", "front")
        .body(body::empty())
        .expect("request");
    let resp = send(&mut client, req).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn silent_backend_is_504() {
    let (baddr, backend) = start_backend(false).await;
    let mut cfg = proxy_cfg(&format!("http://{baddr}"));
    cfg.cfg.response_timeout = Duration::from_millis(300);
    let front = start_front(cfg, ClientConfig::default()).await;
    let mut client = h1(front).await;
    let started = Instant::now();
    let req = Request::get("/stall")
        .header("host", "front")
        .body(body::empty())
        .expect("request");
    let resp = send(&mut client, req).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(backend.saw("/stall"));
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let (baddr, backend) = start_backend(false).await;
    let mut cfg = proxy_cfg(&format!("http://{baddr}"));
    cfg.cfg.max_request_body = 1024;
    let front = start_front(cfg, ClientConfig::default()).await;

    // Declared: refused from the head alone, the backend is never contacted.
    let out = raw_exchange(
        front,
        b"POST /echo HTTP/1.1\r\nHost: front\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(backend.conns(), 0);

    // Streamed (chunked, no length): cut once past the limit.
    let mut client = h1(front).await;
    let req = Request::post("/echo")
        .header("host", "front")
        // Hide the exact size so the client sends it chunked.
        .body(
            UnknownSize(GenBody::new(256 * 1024, Arc::new(AtomicU64::new(0)), None).boxed_unsync())
                .boxed_unsync(),
        )
        .expect("request");
    let resp = send(&mut client, req).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(backend.consumed.load(Ordering::SeqCst) <= 1024);
}

/// Forwards frames, reports no size.
struct UnknownSize(Body);

impl http_body::Body for UnknownSize {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
}

#[tokio::test]
async fn no_open_proxy() {
    let (front, backend) = setup().await;
    let out = raw_exchange(
        front,
        b"GET http://other.example/steal HTTP/1.1\r\nHost: front.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw_exchange(
        front,
        b"GET http://other.example/steal HTTP/1.1\r\nHost: other.example\r\nHost: front.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw_exchange(
        front,
        b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert_eq!(backend.conns(), 0, "the backend was contacted");

    // Absolute-form naming our own Host is an ordinary request.
    let out = raw_exchange(
        front,
        b"GET http://front.example/echo HTTP/1.1\r\nHost: front.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#""uri":"/echo""#), "{out}");
}

/// hyper's h1 server handles CL+TE per RFC 9112 §6.1: it drops the
/// Content-Length, decodes the chunked body, and closes the connection after
/// responding, so bytes smuggled behind the body are never parsed as a
/// request. Differing lengths and non-chunked codings it answers 400 itself.
#[tokio::test]
async fn smuggling_attempts_never_reach_the_backend() {
    let (front, backend) = setup().await;

    for attack in [
        &b"POST /echo HTTP/1.1\r\nHost: front\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: front\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: front\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: front\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: front\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: front\r\n\r\n",
    ] {
        let out = raw_exchange(front, attack).await;
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
        assert!(!backend.saw("/smuggled"), "smuggled request reached the backend");
        if out.starts_with("HTTP/1.1 200") {
            // What was forwarded is unambiguous: no stale length.
            let json = &out[out.find("\r\n\r\n").map_or(0, |i| i + 4)..];
            let echo: Value = serde_json::from_str(json).expect("echo json");
            assert!(header_values(&echo, "content-length").is_empty(), "{out}");
            assert!(echo["body_len"] == 0 || echo["body_len"] == 5, "{out}");
        } else {
            assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        }
    }

    let conns_before = backend.conns();
    for attack in [
        &b"POST /echo HTTP/1.1\r\nHost: front\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcdeGET /smuggled HTTP/1.1\r\nHost: front\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: front\r\nContent-Length: 3, 5\r\n\r\nabcdeGET /smuggled HTTP/1.1\r\nHost: front\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: front\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\nabcdeGET /smuggled HTTP/1.1\r\nHost: front\r\n\r\n",
        b"POST /echo HTTP/1.0\r\nHost: front\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: front\r\n\r\n",
    ] {
        let out = raw_exchange(front, attack).await;
        assert!(out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.0 400"), "{out}");
        assert_eq!(out.matches("HTTP/1.").count(), 1, "{out}");
    }
    assert_eq!(backend.conns(), conns_before, "the backend was contacted");
    assert!(!backend.saw("/smuggled"));
}

#[tokio::test]
async fn sse_on_any_path_streams_unbuffered_and_disconnect_releases_backend() {
    let (front, backend) = setup().await;
    let mut client = h1(front).await;
    let req = Request::get("/sse")
        .header("host", "front")
        .body(body::empty())
        .expect("request");
    let resp = send(&mut client, req).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();

    // The backend holds its response open until released; the first event
    // must already be here.
    let mut got = Vec::new();
    while !got.ends_with(b"data: one\n\n") {
        let frame = within("first event", body.frame())
            .await
            .expect("body open")
            .expect("frame");
        if let Some(d) = frame.data_ref() {
            got.extend_from_slice(d);
        }
    }
    backend.release.notify_one();
    let rest = within("rest of stream", body.collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&rest[..], b"data: two\n\n");
    within("stream end seen by backend", backend.sse_dropped.notified()).await;

    // Now a client that goes away mid-stream: the backend stream must end.
    let mut client = h1(front).await;
    let req = Request::get("/sse")
        .header("host", "front")
        .body(body::empty())
        .expect("request");
    let resp = send(&mut client, req).await;
    let mut body = resp.into_body();
    let first = within("first event", body.frame())
        .await
        .expect("body open")
        .expect("frame");
    assert!(first.data_ref().is_some());
    drop(body);
    drop(client);
    within(
        "backend stream to be dropped after client disconnect",
        backend.sse_dropped.notified(),
    )
    .await;
}

#[tokio::test]
async fn https_backend_with_extra_ca_speaks_h2() {
    let (baddr, backend) = start_backend(true).await;
    let front = start_front(
        proxy_cfg(&format!("https://{baddr}")),
        ClientConfig {
            extra_ca_pem: Some(data("ca.pem")),
            ..ClientConfig::default()
        },
    )
    .await;
    let mut client = h1(front).await;
    let req = Request::post("/echo")
        .header("host", "front")
        .body(body::full("hello"))
        .expect("request");
    let echo = echo_json(send(&mut client, req).await).await;
    assert_eq!(echo["version"], "HTTP/2.0", "ALPN did not pick h2");
    assert_eq!(echo["body_len"], 5);
    assert!(backend.saw("/echo"));

    // Without the test CA the backend's certificate is not trusted.
    let untrusting = start_front(
        proxy_cfg(&format!("https://{baddr}")),
        ClientConfig::default(),
    )
    .await;
    let mut client = h1(untrusting).await;
    let req = Request::get("/echo")
        .header("host", "front")
        .body(body::empty())
        .expect("request");
    assert_eq!(
        send(&mut client, req).await.status(),
        StatusCode::BAD_GATEWAY
    );
}
