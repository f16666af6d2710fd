//! Identity answers as web frameworks give them for a logged-out browser: a
//! `302` to the login page (Django, Rails, Laravel, Spring form login) or a
//! `200` with the login page's HTML. The first means "not logged in": the tab
//! gets `401` with the login page's `Location`, the identity endpoint is asked
//! at most once per negative-cache period, and nothing is logged at WARN. The
//! second stays a `503`, counted under its own result, logged at WARN once
//! with a hint, not once per attempt.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How the fake backend's identity endpoint answers.
#[derive(Clone, Copy)]
enum Me {
    /// `302 Found`, `Location: /accounts/login/?next=/events`.
    Redirect,
    /// `200 text/html` with a login form.
    LoginPage,
    /// `200` JSON whose id carries a line break.
    ControlId,
    /// The redirect, after a third of a second (a slow identity service).
    SlowRedirect,
}

/// A backend whose only behaviour is its identity endpoint; counts calls.
async fn backend(me: Me) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counted = calls.clone();
    tokio::spawn(async move {
        // Bounded: a test opens a handful of connections.
        for _ in 0..1000 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let calls = counted.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let calls = calls.clone();
                async move {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    if req.uri().path() == "/api/v1/me" {
                        calls.fetch_add(1, Ordering::SeqCst);
                        if matches!(me, Me::SlowRedirect) {
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        }
                        match me {
                            Me::Redirect | Me::SlowRedirect => {
                                *resp.status_mut() = StatusCode::FOUND;
                                resp.headers_mut().insert(
                                    "location",
                                    "/accounts/login/?next=/events".parse().expect("hv"),
                                );
                            }
                            Me::LoginPage => {
                                *resp.body_mut() = Full::new(Bytes::from_static(
                                    b"<!doctype html><form action=/login>...</form>",
                                ));
                                resp.headers_mut()
                                    .insert("content-type", "text/html".parse().expect("hv"));
                            }
                            Me::ControlId => {
                                *resp.body_mut() = Full::new(Bytes::from_static(
                                    br#"{"id":"alice\nlevel=admin"}"#,
                                ));
                            }
                        }
                    } else {
                        *resp.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

async fn gateway(backend: SocketAddr, extra: &[&str]) -> SocketAddr {
    // Long enough that a reconnecting tab's attempts fall inside it.
    let mut sets = vec!["auth.negative_ttl=30s"];
    sets.extend(extra);
    common::gateway_for(backend, &sets).await.1
}

/// The gateway's log lines, recorded once for the whole test binary.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    common::capture_logs("ssemux_gateway=debug")
}

/// Log lines at `level` that mention `needle`.
fn lines(level: &str, needle: &str) -> usize {
    let buf = logs();
    let text = String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    text.lines()
        .filter(|l| l.contains(level) && l.contains(needle))
        .count()
}

/// `n` attempts of a tab whose cookie the backend does not know, as an
/// EventSource retrying would make them.
async fn attempts(gw: SocketAddr, cookie: &str, n: usize) -> Vec<(StatusCode, http::HeaderMap)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (s, h, _) = common::request(gw, "GET", "/events", &[("cookie", cookie)], "").await;
        out.push((s, h));
    }
    out
}

#[tokio::test]
async fn a_redirect_to_the_login_page_is_a_401_with_its_location_asked_once() {
    let _ = logs();
    let (be, calls) = backend(Me::Redirect).await;
    let gw = gateway(be, &[]).await;
    let got = attempts(gw, "sessionid=loggedout-redirect", 5).await;
    for (status, headers) in &got {
        assert_eq!(*status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers.get("location").map(|v| v.as_bytes()),
            Some(&b"/accounts/login/?next=/events"[..]),
            "the login page is passed along"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "five reconnects within the negative-cache period cost one identity call"
    );
    assert_eq!(
        lines("WARN", "identity lookup failed"),
        0,
        "a logged-out user is a normal state, not a warning"
    );

    // Configured the old way, a redirect is a backend fault (and says so).
    let (be, _) = backend(Me::Redirect).await;
    let gw = gateway(be, &["auth.redirect_means=error"]).await;
    let got = attempts(gw, "sessionid=redirect-as-error", 1).await;
    assert_eq!(got[0].0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(lines("WARN", "identity lookup failed"), 1);
}

#[tokio::test]
async fn an_html_login_page_is_a_503_logged_once_with_a_hint_and_counted_apart() {
    let _ = logs();
    let (be, _) = backend(Me::LoginPage).await;
    let gw = gateway(be, &[]).await;
    let got = attempts(gw, "sessionid=html-page", 4).await;
    for (status, headers) in &got {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
    }
    let hinted = lines(
        "WARN",
        "point auth.me_path at an endpoint that answers JSON",
    );
    assert_eq!(
        hinted, 1,
        "one WARN with the hint, the other attempts at debug"
    );
    let (_, _, metrics) = common::request(gw, "GET", "/metrics", &[], "").await;
    let bad = metrics
        .lines()
        .find(|l| l.starts_with("ssemux_auth_results_total{result=\"bad_answer\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(bad, Some(4), "{metrics}");
    // Not a backend outage: the unavailable count stays at zero.
    assert!(
        !metrics.contains("ssemux_auth_results_total{result=\"unavailable\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_identity_with_control_characters_is_refused() {
    let (be, _) = backend(Me::ControlId).await;
    let gw = gateway(be, &[]).await;
    let got = attempts(gw, "session=control-id", 1).await;
    assert_eq!(got[0].0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn concurrent_first_requests_with_one_credential_make_one_identity_call() {
    let (be, calls) = backend(Me::SlowRedirect).await;
    let gw = gateway(be, &[]).await;
    let tabs: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                common::request(
                    gw,
                    "GET",
                    "/events",
                    &[("cookie", "sessionid=many-tabs")],
                    "",
                )
                .await
                .0
            })
        })
        .collect();
    for t in tabs {
        assert_eq!(t.await.expect("task"), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "sixteen tabs arriving together wait for one identity call"
    );
}
