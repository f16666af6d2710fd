//! What an operator reads in the log: recovery is visible (a line when a
//! user's upstream is back after failing), and a failed proxied request is
//! one line of causes, not the HTTP client's `Debug` dump.

mod common;

use std::time::Duration;

use common::{Env, WAIT, eventually};
use http::StatusCode;

fn logged() -> String {
    let buf = common::capture_logs("ssemux_gateway=info");
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).to_string()
}

#[tokio::test]
async fn an_upstream_back_after_failing_says_so_once() {
    let _ = logged();
    let env = Env::start(&["upstream.backoff_min=20ms", "upstream.backoff_max=50ms"]).await;
    env.backend
        .refuse_streams(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(300));
    let cookie = env.cookie("recovering-user");
    let _tab = env.tab(&cookie).await;
    assert!(
        eventually(WAIT, || logged().lines().any(|l| l
            .contains("upstream reconnected")
            && l.contains("recovering-user")))
        .await,
        "no line says the upstream is back"
    );
    let line = logged()
        .lines()
        .find(|l| l.contains("upstream reconnected") && l.contains("recovering-user"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("failures="), "{line}");
}

#[tokio::test]
async fn a_failed_proxied_request_is_one_readable_line() {
    let _ = logged();
    // A backend port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let cfg = ssemux_gateway::Config::from_parts(
        "",
        Vec::new(),
        &[format!("backend=http://127.0.0.1:{port}")],
    )
    .expect("config");
    let gw = ssemux_gateway::Gateway::new(cfg).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gw.serve(listener));
    let (status, _, _) = common::request(addr, "GET", "/some/page", &[], "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(eventually(WAIT, || logged().contains("backend request failed")).await);
    let line = logged()
        .lines()
        .find(|l| l.contains("backend request failed"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        !line.contains("Error {") && !line.contains("kind:"),
        "a Debug dump: {line}"
    );
    assert!(
        line.to_lowercase().contains("connect"),
        "the cause is named: {line}"
    );
}
