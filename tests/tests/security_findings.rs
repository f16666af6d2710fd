//! The security findings of issue 16 that concern request parsing: split
//! `Cookie` fields, a doubled session cookie, a client's broken request body,
//! what the `/events` fast path accepts, and ids that are not what ssemux
//! wrote. Each test fails on the code before the fix.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::{Env, WAIT};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ssemux_gateway::{Config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Send raw bytes and read what comes back until `done` or the deadline.
async fn exchange(addr: SocketAddr, bytes: &[u8], done: impl Fn(&str) -> bool) -> String {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&out)) {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn answered(s: &str) -> bool {
    s.contains("\r\n\r\n")
}

/// A backend that answers every request with the `Cookie` fields it got,
/// one per line, as a backend reading only the first field would see them.
async fn cookie_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = service_fn(|req: Request<Incoming>| async move {
                let fields: Vec<String> = req
                    .headers()
                    .get_all("cookie")
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
                    .collect();
                let fwd = |name: &str| {
                    req.headers()
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
                        .collect::<Vec<_>>()
                        .join("|")
                };
                let body = format!(
                    "fields={}\nfirst={}\nxff={}\nforwarded={}\nreal={}\n",
                    fields.len(),
                    fields.join("|"),
                    fwd("x-forwarded-for"),
                    fwd("forwarded"),
                    fwd("x-real-ip"),
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn split_cookie_fields_reach_the_backend_as_the_one_value_authenticated() {
    let backend = cookie_echo().await;
    let cfg =
        Config::from_parts("", Vec::new(), &[format!("backend=http://{backend}")]).expect("config");
    let gw = Gateway::new(cfg).expect("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gw.serve(listener));
    let out = exchange(
        addr,
        b"GET /page HTTP/1.1\r\nHost: x\r\nCookie: theme=dark\r\nCookie: session=alice-token\r\nConnection: close\r\n\r\n",
        |s| s.contains("first="),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("fields=1\nfirst=theme=dark; session=alice-token\n"),
        "the backend must see one joined Cookie field: {out}"
    );
}

/// A gateway in front of the echo backend, with `extra` settings.
async fn echo_gateway(extra: &[&str]) -> SocketAddr {
    let backend = cookie_echo().await;
    common::gateway_for(backend, extra).await.1
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let spoofed = b"GET /page HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n";
    // Nobody trusted (the default): the client's claims are replaced.
    let out = exchange(echo_gateway(&[]).await, spoofed, |s| s.contains("real=")).await;
    assert!(out.contains("xff=127.0.0.1\n"), "{out}");
    assert!(
        out.contains("forwarded=\n") && out.contains("real=\n"),
        "{out}"
    );
    // From a trusted proxy the chain is kept and appended to.
    let out = exchange(
        echo_gateway(&["server.trusted_proxies=127.0.0.0/8"]).await,
        spoofed,
        |s| s.contains("real="),
    )
    .await;
    assert!(out.contains("xff=6.6.6.6, 127.0.0.1\n"), "{out}");
    assert!(out.contains("real=6.6.6.6\n"), "{out}");
}

#[tokio::test]
async fn a_session_cookie_named_twice_is_refused_on_every_route() {
    let env = Env::start(&[]).await;
    let alice = env.backend.create_session("alice");
    let bob = env.backend.create_session("bob");
    for head in [
        format!("Cookie: session={alice}; session={bob}\r\n"),
        format!("Cookie: session={alice}\r\nCookie: session={bob}\r\n"),
    ] {
        for path in ["/events", "/api/v1/me", "/api/v1/contacts/read"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n");
            let out = exchange(env.addr, req.as_bytes(), answered).await;
            assert!(
                out.starts_with("HTTP/1.1 400"),
                "{path} with {head:?}: {out}"
            );
        }
    }
    assert_eq!(env.gateway.hub().channels(), 0, "no stream was opened");
}

#[tokio::test]
async fn a_broken_chunked_request_body_is_the_clients_400_not_a_502() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    for body in [
        // Bare LF after a chunk extension.
        "5;ext\nhello\r\n0\r\n\r\n",
        // A chunk size that overflows.
        "fffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ] {
        let req = format!(
            "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let out = exchange(env.addr, req.as_bytes(), answered).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{body:?}: {out}");
    }
    let (_, _, metrics) = common::request(env.addr, "GET", "/metrics", &[], "").await;
    assert!(
        !metrics.contains("ssemux_proxy_requests_total{class=\"5xx\"}"),
        "a client's fault is not a proxied 5xx: {metrics}"
    );
}

#[tokio::test]
async fn the_events_fast_path_refuses_what_a_strict_parser_refuses() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    for req in [
        format!("GET /events HTTP/1.1\r\nCookie: {alice}\r\n\r\n"),
        format!("GET /events HTTP/1.1\r\nHost: a\r\nHost: b\r\nCookie: {alice}\r\n\r\n"),
        format!("GET /events HTTP/1.1\r\nHost: a\nCookie: {alice}\r\n\r\n"),
    ] {
        let out = exchange(env.addr, req.as_bytes(), answered).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{req:?}: {out}");
    }
    assert_eq!(env.gateway.hub().channels(), 0, "no stream was opened");
}

#[tokio::test]
async fn a_last_event_id_that_is_not_text_is_garbage_and_gets_resync() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut req = format!("GET /events HTTP/1.1\r\nHost: x\r\nCookie: {alice}\r\nLast-Event-ID: ")
        .into_bytes();
    req.extend_from_slice(b"\xc3\xa9\xff-1\r\n\r\n");
    let out = exchange(env.addr, &req, |s| s.contains("event: resync")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("event: resync"), "no resync: {out}");
}

#[tokio::test]
async fn junk_cookies_pin_no_memory_in_the_identity_cache() {
    let env = Env::start(&["auth.negative_ttl=1s"]).await;
    let junk = "x".repeat(7 * 1024);
    const FLOOD: usize = 500;
    for i in 0..FLOOD {
        let cookie = format!("session={junk}{i}");
        let (s, _, _) =
            common::request(env.addr, "GET", "/events", &[("cookie", &cookie)], "").await;
        assert_eq!(s, http::StatusCode::UNAUTHORIZED);
    }
    let (entries, bytes) = env.gateway.auth_cache_size();
    assert!(entries <= FLOOD, "{entries}");
    // Keys are hashes: an entry costs ~100 bytes, not the 7 KB credential.
    assert!(
        bytes <= entries * 256,
        "{bytes} bytes for {entries} entries: the credential is in the cache"
    );
    // Refusals expire as they age: once the negative TTL passed, the next
    // lookup sweeps them (waited for with a deadline, one request a round).
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let (s, _, _) = common::request(
            env.addr,
            "GET",
            "/events",
            &[("cookie", "session=probe")],
            "",
        )
        .await;
        assert_eq!(s, http::StatusCode::UNAUTHORIZED);
        let (entries, _) = env.gateway.auth_cache_size();
        if entries <= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{entries} expired refusals still cached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_read_path_limits_reads_per_client_address_before_asking_who() {
    let env = Env::start(&[
        "server.client_ip_header=x-forwarded-for",
        "server.trusted_proxies=127.0.0.1",
        "watermark.reads_per_second=5",
    ])
    .await;
    let mut limited = 0;
    for i in 0..30 {
        let cookie = format!("session=junk{i}");
        let (s, h, _) = common::request(
            env.addr,
            "POST",
            "/api/v1/contacts/read",
            &[("cookie", &cookie), ("x-forwarded-for", "203.0.113.9")],
            r#"{"peer":"bob","rowId":1}"#,
        )
        .await;
        if s == http::StatusCode::TOO_MANY_REQUESTS {
            assert!(h.contains_key("retry-after"));
            limited += 1;
        }
    }
    // A burst of 10 passes, the rest of a tight loop is refused.
    assert!(limited >= 15, "only {limited} of 30 reads were limited");
}

#[tokio::test]
async fn a_session_revoked_at_the_backend_loses_its_tab_and_cannot_open_another() {
    let env = Env::start(&["auth.recheck_interval=1s"]).await;
    let kept = env.backend.create_session("alice");
    let revoked = env.backend.create_session("alice");
    let mut kept_tab = env.tab(&format!("session={kept}")).await;
    let mut revoked_tab = env.tab(&format!("session={revoked}")).await;
    env.backend.revoke_session(&revoked);
    // The re-check runs when the interval has passed and the stream wakes;
    // a message a round wakes it. Bounded by the deadline.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut logged_out = false;
    while !logged_out && tokio::time::Instant::now() < deadline {
        env.backend.send_message("bob", "alice", "ping");
        while let Some(ev) = revoked_tab
            .next_within(std::time::Duration::from_millis(300))
            .await
        {
            if ev.event == "logout" {
                logged_out = true;
                break;
            }
        }
    }
    assert!(logged_out, "the revoked session's tab was never logged out");
    assert!(
        revoked_tab.ended_within(WAIT).await,
        "its stream did not end"
    );
    // The other session of the same user goes on.
    env.backend.send_message("bob", "alice", "still here");
    let seen = kept_tab.until("thread-updated").await;
    assert!(seen.iter().all(|e| e.event != "logout"), "{seen:?}");
    // And the revoked session cannot open a new tab (no cached identity).
    let (s, _, _) = common::request(
        env.addr,
        "GET",
        "/events",
        &[("cookie", &format!("session={revoked}"))],
        "",
    )
    .await;
    assert_eq!(s, http::StatusCode::UNAUTHORIZED);
}
