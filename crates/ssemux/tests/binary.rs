//! The real binary. The demo: log in, a proxied route, the backend's own
//! stream through the proxy, and `/events`, as the README promises.
//! Graceful shutdown: SIGTERM ends every tab stream
//! cleanly (a proper end of the chunked body, never a 5xx or a reset), lets
//! in-flight proxied requests finish, closes the upstreams and exits 0 within
//! the drain time; a second signal exits at once. A tab reconnecting to the
//! next instance with its `Last-Event-ID` is told to `resync`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ssemux_mock_upstream::MockBackend;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_secs(5);
const RETRY_HINT_MS: u64 = 2000;

/// A running `ssemux serve` and the address it listens on.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    async fn start(backend: &MockBackend, extra: &[&str]) -> Instance {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssemux"));
        cmd.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args(["--backend", &backend.url()])
            .args([
                "--set",
                &format!("server.drain_timeout={}s", DRAIN.as_secs()),
            ])
            .args(["--set", &format!("hub.retry_hint={RETRY_HINT_MS}ms")]);
        for s in extra {
            cmd.args(["--set", s]);
        }
        let mut child = cmd
            .env("SSEMUX_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ssemux");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("log line") {
                if line.contains("ssemux serving") {
                    return listen_addr(&line);
                }
            }
            panic!("ssemux exited before serving");
        })
        .await
        .expect("ssemux starts in time");
        // Keep draining the log so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Instance { child, addr }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("ssemux exits in time")
            .expect("wait")
            .code()
    }
}

fn listen_addr(json_line: &str) -> SocketAddr {
    let v: serde_json::Value = serde_json::from_str(json_line).expect("json log line");
    v["fields"]["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no listen address in {json_line}"))
}

/// An open `/events` stream read in the background.
struct Tab {
    seen: Arc<Mutex<Vec<u8>>>,
    /// `Ok(body)` only if the stream ended properly.
    done: tokio::task::JoinHandle<Result<Bytes, String>>,
}

impl Tab {
    async fn open(addr: SocketAddr, cookie: &str, last_event_id: Option<&str>) -> Tab {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut b = Request::get("/events")
            .header("host", addr.to_string())
            .header("cookie", cookie);
        if let Some(id) = last_event_id {
            b = b.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(
            WAIT,
            send.send_request(b.body(Empty::<Bytes>::new()).expect("req")),
        )
        .await
        .expect("response in time")
        .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let done = tokio::spawn(async move {
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Ok(data) = frame.into_data() {
                    sink.lock().expect("lock").extend_from_slice(&data);
                }
            }
            let all = sink.lock().expect("lock").clone();
            Ok(Bytes::from(all))
        });
        Tab { seen, done }
    }

    fn has_seen(&self, needle: &str) -> bool {
        let seen = self.seen.lock().expect("lock");
        seen.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

/// Wait until `cond` holds; false if `WAIT` passes first.
async fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Events of a complete SSE body: (retry hint, [(event, data, id)]).
fn events(body: &[u8]) -> (Option<u64>, Vec<(String, String, String)>) {
    let mut p = ssemux_sse::Parser::new(1 << 20);
    p.push(body);
    let (mut retry, mut out) = (None, Vec::new());
    while let Some(item) = p.next_item() {
        match item.expect("valid SSE") {
            ssemux_sse::Item::Retry(ms) => retry = Some(ms),
            ssemux_sse::Item::Event(e) => out.push((e.event, e.data, e.last_event_id)),
        }
    }
    (retry, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_100_tabs_cleanly_and_the_next_instance_resyncs_them() {
    let backend = MockBackend::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("backend");
    let mut gw = Instance::start(&backend, &[]).await;
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let cookies: Vec<String> = users
        .iter()
        .map(|u| format!("session={}", backend.create_session(u)))
        .collect();
    let mut tabs = Vec::new();
    for i in 0..100 {
        tabs.push(Tab::open(gw.addr, &cookies[i % 10], None).await);
    }
    assert!(
        backend
            .wait_until(WAIT, |b| b.open_streams_total() == 10)
            .await
    );
    for u in &users {
        backend.emit(u, "read-watermark-changed", r#"{"peer":"alice","rowId":1}"#);
    }
    assert!(
        wait_for(|| tabs.iter().all(|t| t.has_seen("contact-changed"))).await,
        "every tab got its trigger"
    );

    // An in-flight proxied request: the body is half sent when SIGTERM lands.
    let mut slow = half_sent_post(gw.addr).await;

    gw.signal("-TERM");
    // Every tab stream ends with a proper end of body.
    let mut last_ids = Vec::new();
    for (i, t) in tabs.into_iter().enumerate() {
        let body = tokio::time::timeout(WAIT, t.done)
            .await
            .expect("tab ends in time")
            .expect("task")
            .unwrap_or_else(|e| panic!("tab {i} did not end cleanly: {e}"));
        let (retry, evs) = events(&body);
        let retry = retry.expect("retry hint");
        assert!(
            (RETRY_HINT_MS..=2 * RETRY_HINT_MS).contains(&retry),
            "{retry}"
        );
        let last = evs
            .last()
            .unwrap_or_else(|| panic!("tab {i} got its trigger"));
        assert_eq!(last.0, "contact-changed");
        last_ids.push(last.2.clone());
    }
    // The proxied request still completes.
    slow.write_all(b"alice").await.expect("finish body");
    let mut head = String::new();
    let mut r = BufReader::new(&mut slow);
    tokio::time::timeout(WAIT, r.read_line(&mut head))
        .await
        .expect("answer in time")
        .expect("read");
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        (200..400).contains(&code),
        "in-flight request answered {head:?}"
    );
    drop(slow);

    assert_eq!(gw.exit_code(DRAIN + Duration::from_secs(5)).await, Some(0));
    assert!(
        backend
            .wait_until(WAIT, |b| b.open_streams_total() == 0)
            .await,
        "upstreams closed"
    );

    // A browser reconnecting to the next instance with its Last-Event-ID.
    let next = Instance::start(&backend, &[]).await;
    let tab = Tab::open(next.addr, &cookies[0], Some(&last_ids[0])).await;
    assert!(wait_for(|| tab.has_seen("resync")).await);
    next.signal("-TERM");
    let body = tokio::time::timeout(WAIT, tab.done)
        .await
        .expect("ends")
        .expect("task")
        .expect("clean end");
    let (_, evs) = events(&body);
    assert_eq!(evs.first().map(|e| e.0.as_str()), Some("resync"), "{evs:?}");
    assert_ne!(
        evs[0].2.split('-').next(),
        last_ids[0].split('-').next(),
        "a new epoch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let backend = MockBackend::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("backend");
    // A long drain, held open by a request whose body never completes.
    let mut gw = Instance::start(&backend, &["server.drain_timeout=60s"]).await;
    let slow = half_sent_post(gw.addr).await;
    gw.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gw.child.try_wait().expect("try_wait").is_none(),
        "still draining"
    );
    gw.signal("-TERM");
    assert_eq!(gw.exit_code(WAIT).await, Some(130));
    drop(slow);
}

/// A proxied `POST /login` whose body is half sent: in flight until the
/// caller writes the remaining `alice`.
async fn half_sent_post(addr: SocketAddr) -> TcpStream {
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /login HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 10\r\n\r\nuser="
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    // Give the gateway time to start proxying it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow
}

/// One request on a fresh connection; the body is left to the caller.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> http::Response<hyper::body::Incoming> {
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
        .body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
        .expect("request");
    tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer")
}

/// Read a streaming body until `needle` shows up.
async fn read_until(body: &mut hyper::body::Incoming, needle: &str) -> String {
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(needle) {
            let frame = body.frame().await.expect("stream open").expect("frame");
            if let Ok(d) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&d));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {seen:?}"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_login_proxy_and_events() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssemux"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--backend-listen",
            "127.0.0.1:0",
        ])
        .env("SSEMUX_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The printed URLs: the gateway's, then the mock backend's.
    let (addr, backend): (SocketAddr, SocketAddr) = tokio::time::timeout(WAIT, async {
        let mut gateway = None;
        while let Some(line) = lines.next_line().await.expect("line") {
            let line = line.trim();
            let url_after = |prefix: &str| -> Option<SocketAddr> {
                let rest = line.strip_prefix(prefix)?;
                let url = rest.split_whitespace().next()?;
                url.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()
                    .ok()
            };
            if let Some(a) = url_after("open") {
                gateway = Some(a);
            }
            if let Some(b) = url_after("mock backend at") {
                return gateway.map(|g| (g, b));
            }
        }
        None
    })
    .await
    .expect("demo prints its URLs")
    .expect("usable addresses in the URLs");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let login = |user: &'static str| async move {
        let body: &'static str = if user == "alice" {
            "user=alice"
        } else {
            "user=bob"
        };
        let r = call(
            addr,
            "POST",
            "/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
        assert!(
            r.status().is_success() || r.status().is_redirection(),
            "{}",
            r.status()
        );
        let set = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie");
        set.split(';').next().expect("cookie pair").to_string()
    };
    let alice = login("alice").await;
    let bob = login("bob").await;

    let me = call(addr, "GET", "/api/v1/me", &[("cookie", &alice)], "").await;
    assert_eq!(me.status(), StatusCode::OK);
    let me = me.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&me).contains("alice"));

    let raw = call(addr, "GET", "/api/v1/events", &[("cookie", &alice)], "").await;
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.headers()["content-type"], "text/event-stream");
    let events = call(addr, "GET", "/events", &[("cookie", &alice)], "").await;
    assert_eq!(events.status(), StatusCode::OK);
    let (mut raw, mut events) = (raw.into_body(), events.into_body());
    read_until(&mut events, "retry:").await;
    // Both streams of alice are open at the backend: the raw one and the
    // gateway's upstream (which starts after the tab's response).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = call(backend, "GET", "/__admin/stats", &[], "").await;
        let stats = stats.into_body().collect().await.expect("stats").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&stats).expect("json");
        if v["openStreams"]["alice"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "streams: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sent = call(
        addr,
        "POST",
        "/api/v1/messages",
        &[("cookie", &bob), ("content-type", "application/json")],
        r#"{"to":"alice","text":"hi from the demo test"}"#,
    )
    .await;
    assert!(sent.status().is_success(), "{}", sent.status());
    read_until(&mut raw, "event: inbound").await;
    let got = read_until(&mut events, "event: thread-updated").await;
    assert!(got.contains("data: bob"), "{got}");
    drop(child.start_kill());
}
