//! `/metrics`, `/healthz`, `/readyz`: drive real traffic through a gateway
//! and check the counters moved in the Prometheus text.

mod common;

use common::{Env, Tab, WAIT, request};
use http::StatusCode;

/// The value of the series `name` (exact, labels included) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok()).flatten()
    })
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, headers, body) = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    body
}

#[tokio::test]
async fn traffic_moves_the_counters() {
    let env = Env::start(&[]).await;
    let before = scrape(env.addr).await;
    assert_eq!(value(&before, "ssemux_tabs_open"), Some(0.0));
    assert_eq!(value(&before, "ssemux_upstream_connects_total"), Some(0.0));

    let alice = env.cookie("alice");
    // Two tabs and a message; a tab coming back with an id from another
    // epoch gets a resync.
    let [mut t1, _t2, _t3] = env.alice_traffic().await;
    // The backend's own resync fans out as a trigger.
    env.backend.emit("alice", "resync", "{}");
    t1.until("resync").await;
    // A proxied request and an unauthenticated /events.
    let (s, _, _) = request(env.addr, "GET", "/api/v1/me", &[("cookie", &alice)], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        Tab::open(env.addr, "/events", "", None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    let text = scrape(env.addr).await;
    let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("no series {s} in\n{text}"));
    assert_eq!(v("ssemux_tabs_open"), 3.0);
    assert_eq!(v("ssemux_channels_open"), 1.0);
    assert_eq!(v("ssemux_channels_in_grace"), 0.0);
    assert_eq!(v("ssemux_upstream_connections_open"), 1.0);
    assert_eq!(v("ssemux_upstream_connects_total"), 1.0);
    assert_eq!(v("ssemux_upstream_events_total{event=\"inbound\"}"), 1.0);
    assert_eq!(v("ssemux_upstream_events_total{event=\"resync\"}"), 1.0);
    assert_eq!(
        v("ssemux_triggers_emitted_total{trigger=\"thread-updated\"}"),
        1.0
    );
    assert_eq!(
        v("ssemux_triggers_emitted_total{trigger=\"contact-changed\"}"),
        1.0
    );
    // 2 tabs × 2 triggers + 3 tabs × the backend's resync, at least.
    assert!(v("ssemux_triggers_delivered_total") >= 7.0);
    assert_eq!(v("ssemux_resyncs_total{cause=\"epoch\"}"), 1.0);
    assert_eq!(v("ssemux_resyncs_total{cause=\"upstream\"}"), 1.0);
    assert!(v("ssemux_auth_results_total{result=\"ok\"}") >= 3.0);
    assert_eq!(
        v("ssemux_auth_results_total{result=\"unauthenticated\"}"),
        1.0
    );
    assert!(v("ssemux_auth_cache_hits_total") >= 2.0);
    assert!(v("ssemux_proxy_requests_total{class=\"2xx\"}") >= 1.0);
    assert!(v("ssemux_proxy_latency_seconds_count") >= 1.0);
    assert!(v("ssemux_fanout_latency_seconds_count") >= 2.0);
    assert_eq!(v("ssemux_watermark_advances_total"), 0.0);
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn health_and_readiness() {
    let env = Env::start(&[]).await;
    let (s, _, body) = request(env.addr, "GET", "/healthz", &[], "").await;
    assert_eq!((s, body.trim()), (StatusCode::OK, "ok"));
    let (s, _, _) = request(env.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    // Backend gone → not ready (liveness unaffected).
    env.backend.shutdown();
    let mut ready = StatusCode::OK;
    for _ in 0..100 {
        ready = request(env.addr, "GET", "/readyz", &[], "").await.0;
        if ready == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _, _) = request(env.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn admin_listener_serves_metrics_and_says_draining() {
    let admin_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        l.local_addr().expect("addr").port()
    };
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let env = Env::start(&[
        &format!("admin.listen={admin}"),
        "admin.metrics_path=/internal/metrics",
        "server.drain_timeout=5s",
    ])
    .await;
    // The admin listener is bound by `serve`, which runs in the background.
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(up, "admin listener did not come up");
    let (s, _, body) = request(admin, "GET", "/internal/metrics", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("ssemux_tabs_open"));
    // With an admin listener the main one proxies these paths to the backend.
    let (s, _, body) = request(env.addr, "GET", "/internal/metrics", &[], "").await;
    assert!(!body.contains("ssemux_tabs_open"), "{s} {body}");
    // A proxied backend stream keeps the drain going (up to drain_timeout)
    // so there is time to look at /readyz.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let alice = env.cookie("alice");
    let mut held = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    held.write_all(
        format!("GET /api/v1/events HTTP/1.1\r\nhost: x\r\ncookie: {alice}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, held.read_exact(&mut head))
        .await
        .expect("response in time")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
    let (s, _, _) = request(admin, "GET", "/readyz", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    env.gateway.shutdown_token().cancel();
    let (s, _, body) = request(admin, "GET", "/readyz", &[], "").await;
    assert_eq!(
        (s, body.trim()),
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    );
}
