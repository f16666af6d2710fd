//! The bad-input table: one test per hostile or broken input, each with the
//! outcome it must have. Upstream misbehaviour the mock backend cannot
//! produce comes from a raw-TCP scripted backend (`common::ScriptedBackend`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Env, SSE_HEAD, ScriptedBackend, Step, Tab, WAIT, eventually, request, sse};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fast reconnects so a test never waits on the default backoff.
const FAST: &[&str] = &[
    "upstream.backoff_min=20ms",
    "upstream.backoff_max=50ms",
    "server.events_connects_per_second=0",
];

fn with_fast<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = FAST.to_vec();
    v.extend_from_slice(extra);
    v
}

fn names(evs: &[common::Ev]) -> Vec<(String, String)> {
    evs.iter()
        .map(|e| (e.event.clone(), e.data.clone()))
        .collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// Read from `sock` until it is closed; returns what arrived, or `None` if it
/// is still open after `wait`.
async fn read_until_closed(sock: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn upstream_event_over_the_size_cap_becomes_one_resync_and_nothing_else_is_lost() {
    let env = Env::start(&with_fast(&["upstream.max_event_bytes=1024"])).await;
    let alice = env.cookie("alice");
    let mut tab = env.tab(&alice).await;
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    env.backend
        .emit("alice", "inbound", r#"{"peer":"bob","rowId":1}"#);
    let big = format!(r#"{{"peer":"mallory","pad":"{}"}}"#, "x".repeat(4000));
    env.backend.emit("alice", "inbound", &big);
    env.backend
        .emit("alice", "inbound", r#"{"peer":"carol","rowId":3}"#);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(tab.next().await);
    }
    assert_eq!(
        names(&got),
        vec![
            pair("thread-updated", "bob"),
            pair("contact-changed", "bob"),
            pair("resync", "1"),
            pair("thread-updated", "carol"),
            pair("contact-changed", "carol"),
        ]
    );
    assert!(tab.next_within(Duration::from_millis(200)).await.is_none());
    // The oversize event did not cost the upstream connection.
    assert_eq!(env.backend.streams_opened_total(), 1);
}

#[tokio::test]
async fn invalid_utf8_from_upstream_is_replaced_not_fatal() {
    let script: common::Script = Arc::new(|_| {
        let mut body = SSE_HEAD.to_vec();
        body.extend_from_slice(b"id: 1\nevent: inbound\ndata: {\"peer\":\"b\xFF\xFEob\"}\n\n");
        // An event name that is not UTF-8 matches no rule: dropped.
        body.extend_from_slice(b"id: 2\nevent: in\xC3bound\ndata: {\"peer\":\"x\"}\n\n");
        body.extend_from_slice(b"id: 3\xFF\nevent: inbound\ndata: {\"peer\":\"carol\"}\n\n");
        vec![Step::Write(body), Step::Hold]
    });
    let backend = ScriptedBackend::start(script).await;
    let (_gw, addr) = backend.gateway(FAST).await;
    let mut tab = Tab::open(addr, "/events", "session=alice", None)
        .await
        .expect("tab");
    let got: Vec<_> = [
        tab.next().await,
        tab.next().await,
        tab.next().await,
        tab.next().await,
    ]
    .to_vec();
    assert_eq!(
        names(&got),
        vec![
            pair("thread-updated", "b\u{FFFD}\u{FFFD}ob"),
            pair("contact-changed", "b\u{FFFD}\u{FFFD}ob"),
            pair("thread-updated", "carol"),
            pair("contact-changed", "carol"),
        ]
    );
    assert_eq!(backend.event_request_count(), 1, "no reconnect needed");
}

#[tokio::test]
async fn a_1mb_line_without_newline_is_skipped_with_a_resync() {
    let script: common::Script = Arc::new(|n| {
        if n > 0 {
            return vec![Step::Write(SSE_HEAD.to_vec()), Step::Hold];
        }
        let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
        steps.push(Step::Write(sse("1", "inbound", r#"{"peer":"bob"}"#)));
        steps.push(Step::Write(b"data: ".to_vec()));
        // 1 MiB without a line break, in 16 KiB writes.
        for _ in 0..64 {
            steps.push(Step::Write(vec![b'x'; 16 * 1024]));
        }
        steps.push(Step::Write(b"\n\n".to_vec()));
        steps.push(Step::Write(sse("3", "inbound", r#"{"peer":"carol"}"#)));
        steps.push(Step::Hold);
        steps
    });
    let backend = ScriptedBackend::start(script).await;
    let (_gw, addr) = backend.gateway(FAST).await;
    let mut tab = Tab::open(addr, "/events", "session=alice", None)
        .await
        .expect("tab");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(tab.next().await);
    }
    assert_eq!(
        names(&got),
        vec![
            pair("thread-updated", "bob"),
            pair("contact-changed", "bob"),
            pair("resync", "1"),
            pair("thread-updated", "carol"),
            pair("contact-changed", "carol"),
        ]
    );
    assert_eq!(backend.event_request_count(), 1);
}

#[tokio::test]
async fn wrong_content_type_from_upstream_is_never_parsed_and_is_retried() {
    let script: common::Script = Arc::new(|_| {
        let mut b =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 48\r\n\r\n".to_vec();
        let body = sse("1", "inbound", r#"{"peer":"evil"}"#);
        b.extend_from_slice(&body);
        b.truncate(b.len() - body.len() + body.len().min(48));
        vec![Step::Write(b)]
    });
    let backend = ScriptedBackend::start(script).await;
    let (gw, addr) = backend.gateway(FAST).await;
    let mut tab = Tab::open(addr, "/events", "session=alice", None)
        .await
        .expect("tab");
    assert!(
        eventually(WAIT, || backend.event_request_count() >= 3).await,
        "the gateway keeps retrying"
    );
    // Only ssemux's own word that the upstream is down may arrive.
    while let Some(ev) = tab.next_within(Duration::from_millis(200)).await {
        assert_eq!(
            ev.event, "upstream-down",
            "nothing from a non-SSE body: {ev:?}"
        );
    }
    assert_eq!(gw.hub().tabs("alice"), 1, "the tab stays connected");
}

#[tokio::test]
async fn upstream_401_mid_stream_logs_the_tabs_out_and_frees_the_channel() {
    let env = Env::start(FAST).await;
    let token = env.backend.create_session("alice");
    let alice = format!("session={token}");
    let mut tabs = vec![env.tab(&alice).await, env.tab(&alice).await];
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    env.backend.send_message("bob", "alice", "hi");
    for t in &mut tabs {
        t.until("contact-changed").await;
    }
    // The session dies while the stream is open; the next connect gets 401.
    env.backend.revoke_session(&token);
    env.backend.drop_streams();
    for t in &mut tabs {
        let seen = t.until("logout").await;
        assert!(seen.iter().all(|e| e.event != "thread-updated"), "{seen:?}");
        assert!(t.ended_within(WAIT).await, "stream ends after logout");
    }
    assert!(eventually(WAIT, || env.gateway.hub().channels() == 0).await);
    assert_eq!(env.backend.open_streams("alice"), 0);
}

#[tokio::test]
async fn upstream_sending_one_byte_at_a_time_is_parsed_exactly() {
    let script: common::Script = Arc::new(|n| {
        if n > 0 {
            return vec![Step::Write(SSE_HEAD.to_vec()), Step::Hold];
        }
        let mut body = b"\xEF\xBB\xBF: hello\r\n\r\n".to_vec();
        body.extend_from_slice(
            b"id: 1\r\nevent: inbound\r\ndata: {\"peer\":\r\ndata: \"bob\"}\r\n\r\n",
        );
        body.extend_from_slice(
            b"retry: 10\revent: outbound-state\rid: 2\rdata: {\"peer\":\"carol\"}\r\r",
        );
        vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Dribble(body, Duration::from_millis(1)),
            Step::Hold,
        ]
    });
    let backend = ScriptedBackend::start(script).await;
    let (_gw, addr) = backend.gateway(FAST).await;
    let mut tab = Tab::open(addr, "/events", "session=alice", None)
        .await
        .expect("tab");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(tab.next().await);
    }
    assert_eq!(
        names(&got),
        vec![
            pair("thread-updated", "bob"),
            pair("contact-changed", "bob"),
            pair("thread-updated", "carol"),
            pair("contact-changed", "carol"),
        ]
    );
    assert_eq!(backend.event_request_count(), 1);
}

#[tokio::test]
async fn events_with_a_100kb_cookie_header_is_refused_cleanly() {
    let env = Env::start(FAST).await;
    let huge = format!("session={}", "a".repeat(100 * 1024));
    let (status, _, _) = request(env.addr, "GET", "/events", &[("cookie", &huge)], "").await;
    assert!(
        status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
    assert_eq!(env.gateway.hub().channels(), 0);
    // Still serving.
    let alice = env.cookie("alice");
    let _tab = env.tab(&alice).await;
    assert_eq!(env.gateway.hub().tabs("alice"), 1);
}

/// Send a request head one byte every 50 ms: the gateway must cut the
/// connection at the header read timeout, long before the head is complete.
async fn slowloris(addr: std::net::SocketAddr, path: &str) {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nCookie: session=alice\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(200)
    );
    let mut cut = false;
    for b in head.as_bytes() {
        if sock.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        // A closed socket shows up as EOF on read.
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(50), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                // A 408 or similar: wait for the close.
                cut = read_until_closed(&mut sock, WAIT).await.is_some();
                break;
            }
            Err(_) => {}
        }
    }
    // The head (~280 bytes at one per 50 ms) was still incomplete when the
    // connection was cut, so it was the header read timeout that cut it.
    assert!(cut, "{path}: a dribbled request head was never cut off");
}

#[tokio::test]
async fn slowloris_on_events_and_on_proxied_routes_is_cut_at_the_header_timeout() {
    let env = Env::start(&with_fast(&["server.header_read_timeout=300ms"])).await;
    let before = env.backend.streams_opened_total();
    slowloris(env.addr, "/events").await;
    slowloris(env.addr, "/api/v1/me").await;
    assert_eq!(env.gateway.hub().total_tabs(), 0);
    assert_eq!(env.backend.streams_opened_total(), before);
    // Ordinary clients are still served.
    let (status, _, _) = request(
        env.addr,
        "GET",
        "/api/v1/me",
        &[("cookie", &env.cookie("alice"))],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn x_tab_id_with_crlf_or_10kb_is_refused() {
    let env = Env::start(FAST).await;
    let alice = env.cookie("alice");
    let body = r#"{"peer":"bob","rowId":1}"#;
    let long = "t".repeat(10 * 1024);
    for bad in [long.as_str(), "tab one", "a\tb", "ä"] {
        let (status, _, _) = request(
            env.addr,
            "POST",
            "/api/v1/contacts/read",
            &[
                ("cookie", &alice),
                ("x-tab-id", bad),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:.20}");
    }
    // CR, NUL and obs-fold cannot even be sent through a header API: raw
    // bytes. The server's parser refuses them before ssemux sees a value.
    let raw = |bad: &str| {
        format!(
            "POST /api/v1/contacts/read HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nX-Tab-Id: {bad}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for bad in ["a\rb", "a\0b", "a\r\n b", "a\x7fb"] {
        let mut sock = TcpStream::connect(env.addr).await.expect("connect");
        sock.write_all(raw(bad).as_bytes()).await.expect("write");
        let out = read_until_closed(&mut sock, WAIT).await.expect("closed");
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 400"), "{bad:?}: {out}");
    }
    // The query form on /events too.
    for bad in ["/events?tab=a%0D%0Ab", &format!("/events?tab={long}")] {
        let r = Tab::open(env.addr, bad, &alice, None).await;
        assert_eq!(r.err(), Some(StatusCode::BAD_REQUEST), "{bad:.40}");
    }
    assert_eq!(
        env.backend.read_watermark("alice", "bob"),
        0,
        "nothing was marked read"
    );
    assert!(env.gateway.watermarks().active_peers("alice").is_empty());
    // A bare LF ends the header line (RFC 9112 §2.2 lets servers accept it):
    // the tab id is then just "a" and the rest a separate, inert header, so
    // nothing reaches a value ssemux writes anywhere.
    for bad in ["a\nX-Injected: 1", "a\r\nX-Injected: 1"] {
        let mut sock = TcpStream::connect(env.addr).await.expect("connect");
        sock.write_all(raw(bad).as_bytes()).await.expect("write");
        let out = read_until_closed(&mut sock, WAIT).await.expect("closed");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{bad:?}: {out}");
        assert!(!out.to_ascii_lowercase().contains("x-injected"), "{out}");
    }
}

#[tokio::test]
async fn last_event_id_garbage_gets_a_resync_first() {
    let env = Env::start(FAST).await;
    let alice = env.cookie("alice");
    let mut first = env.tab(&alice).await;
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    env.backend.send_message("bob", "alice", "one");
    // Delivered before the probe opens, so the probe starts at "two".
    first.until("contact-changed").await;
    let mut probe = env.tab(&alice).await;
    env.backend.send_message("bob", "alice", "two");
    let good = probe
        .until("contact-changed")
        .await
        .pop()
        .expect("event")
        .id;
    let epoch = good
        .split('.')
        .next()
        .and_then(|h| h.rsplit_once('-'))
        .map(|(e, _)| e.to_string())
        .expect("epoch");
    let long = "9".repeat(8 * 1024);
    let cases = [
        "garbage".to_string(),
        "-".to_string(),
        "--1".to_string(),
        format!("{epoch}-"),
        format!("{epoch}--1"),
        format!("{epoch}-18446744073709551615"),
        format!("{epoch}-99999999999999999999999"),
        format!("other-{epoch}-1"),
        format!("{epoch}-1x"),
        long.clone(),
    ];
    for id in &cases {
        let mut t = Tab::open(env.addr, "/events", &alice, Some(id))
            .await
            .expect("tab");
        let ev = t.next().await;
        assert_eq!(ev.event, "resync", "Last-Event-ID {:.40}", id);
        let path = format!("/events?lastEventId={}", id.replace('-', "%2D"));
        let mut t = Tab::open(env.addr, &path, &alice, None).await.expect("tab");
        let first = t.next_within(Duration::from_millis(300)).await;
        // Percent-encoded ids are not decoded: never servable, so resync.
        assert_eq!(
            first.map(|e| e.event),
            Some("resync".to_string()),
            "{path:.60}"
        );
    }
    // The tabs are still live afterwards.
    env.backend.send_message("carol", "alice", "three");
    assert_eq!(
        probe.until("thread-updated").await.pop().map(|e| e.data),
        Some("carol".into())
    );
}

/// Child side of the 10k-tab test: when started with `SSEMUX_HOLD_TABS`, open
/// that many `/events` connections and never read from them, until killed.
/// In a normal run it does nothing.
#[test]
fn hold_tabs_child() {
    let Ok(spec) = std::env::var("SSEMUX_HOLD_TABS") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut parts = spec.splitn(3, ' ');
        let addr = parts.next().unwrap_or_default().to_string();
        let n: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let cookie = parts.next().unwrap_or_default().to_string();
        let req = format!(
            "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nCookie: {cookie}\r\n\r\n"
        );
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            match TcpStream::connect(&addr).await {
                Ok(mut s) => {
                    let _ = s.write_all(req.as_bytes()).await;
                    held.push(s);
                }
                Err(e) => eprintln!("connect failed: {e}"),
            }
        }
        println!("HELD {}", held.len());
        std::future::pending::<()>().await;
    });
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn soft_fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_tabs_stay_bounded_and_are_all_released() {
    // The tabs' client sockets live in a child process, so this process only
    // holds the server side: 10k fits under a 20k descriptor limit.
    let n = 10_000.min(soft_fd_limit().saturating_sub(1_000));
    let env = Env::start(&with_fast(&[
        "hub.max_tabs_per_user=20000",
        "hub.max_total_tabs=20000",
        "hub.max_lag_bytes=4096",
        "hub.ring_size=64",
        "hub.keepalive=500ms",
        "hub.grace=100ms",
        "server.write_timeout=2s",
    ]))
    .await;
    let alice = env.cookie("alice");
    let rss_before = rss_kb();
    let exe = std::env::current_exe().expect("test binary");
    let child = std::process::Command::new(exe)
        .args([
            "hold_tabs_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SSEMUX_HOLD_TABS", format!("{} {n} {alice}", env.addr))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("child");
    let mut child = KillOnDrop(child);
    let hub = env.gateway.hub().clone();
    assert!(
        eventually(Duration::from_secs(120), || hub.total_tabs() == n).await,
        "only {} of {n} tabs opened",
        hub.total_tabs()
    );
    assert_eq!(hub.channels(), 1);
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    // Traffic the abandoned tabs never read: more than the ring and the lag
    // budget hold. Each trigger wakes every tab, so in a debug build on two cores
    // this takes a while; the bound below is a deadline, not a measurement.
    for i in 0..150 {
        env.backend
            .emit("alice", "inbound", &format!(r#"{{"peer":"p{i}"}}"#));
    }
    let ch = hub.channel("alice").expect("channel");
    assert!(
        eventually(Duration::from_secs(120), || ch.last_seq() >= 300).await,
        "triggers published: {}",
        ch.last_seq()
    );
    // The ring holds at most ring_size frames plus the lag budget, whatever
    // the tabs do (a frame is under 256 bytes: a trigger and its id with
    // the sealed upstream position).
    assert!(
        ch.ring_bytes() <= 64 * 256 + 4096,
        "ring holds {} bytes",
        ch.ring_bytes()
    );
    let rss_grew = rss_kb().saturating_sub(rss_before);
    eprintln!("{n} abandoned tabs: RSS grew by {rss_grew} KiB");
    assert!(
        rss_grew < n as u64 * 64,
        "{rss_grew} KiB for {n} tabs: more than 64 KiB each"
    );
    assert_eq!(env.backend.open_streams("alice"), 1, "still one upstream");
    drop(ch);

    // Abandon them: the child dies without a word.
    child.0.kill().expect("kill child");
    let _ = child.0.wait();
    assert!(
        eventually(Duration::from_secs(30), || hub.total_tabs() == 0).await,
        "{} tabs still held",
        hub.total_tabs()
    );
    assert!(eventually(WAIT, || hub.channels() == 0).await);
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams_total() == 0)
            .await
    );
}

/// The child must not outlive a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
