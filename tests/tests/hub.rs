//! Hub integration tests: real sockets, the mock backend, the gateway.

mod common;

use std::time::Duration;

use common::{Env, Tab, WAIT};
use http::StatusCode;

#[tokio::test]
async fn three_tabs_share_one_upstream_which_outlives_them_by_the_grace() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(env.tab(&alice).await);
    }
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await,
        "one upstream for alice"
    );
    assert_eq!(env.backend.streams_opened_total(), 1);
    let row = env.backend.send_message("bob", "alice", "hi");
    for tab in &mut tabs {
        let ev = tab.until("thread-updated").await;
        assert_eq!(ev.last().map(|e| e.data.as_str()), Some("bob"));
        assert_eq!(tab.next().await.event, "contact-changed");
    }
    assert!(row > 0);
    assert_eq!(env.backend.streams_opened_total(), 1);

    drop(tabs);
    // The upstream outlives the tabs by the 10 s grace…
    assert!(
        !env.backend
            .wait_until(Duration::from_secs(8), |b| b.open_streams("alice") == 0)
            .await,
        "upstream closed before the grace ran out"
    );
    // …and closes once it runs out.
    assert!(
        env.backend
            .wait_until(Duration::from_secs(6), |b| b.open_streams("alice") == 0)
            .await,
        "upstream still open after the grace"
    );
    assert_eq!(env.gateway.hub().channels(), 0);
}

#[tokio::test]
async fn each_tab_gets_only_its_users_triggers() {
    let env = Env::start(&[]).await;
    let (alice, bob) = (env.cookie("alice"), env.cookie("bob"));
    let mut a = vec![env.tab(&alice).await, env.tab(&alice).await];
    let mut b = vec![env.tab(&bob).await, env.tab(&bob).await];
    assert!(
        env.backend
            .wait_until(WAIT, |m| m.open_streams("alice") == 1
                && m.open_streams("bob") == 1)
            .await
    );
    // carol → alice: only alice's tabs hear it; then carol → bob.
    env.backend.send_message("carol", "alice", "for alice");
    env.backend.send_message("carol", "bob", "for bob");
    for t in &mut a {
        let ev = t.until("thread-updated").await;
        assert_eq!(ev.last().map(|e| e.data.as_str()), Some("carol"));
        assert_eq!(t.next().await.event, "contact-changed");
        assert!(
            t.next_within(Duration::from_millis(300)).await.is_none(),
            "nothing else"
        );
    }
    for t in &mut b {
        let ev = t.until("thread-updated").await;
        assert_eq!(ev.last().map(|e| e.data.as_str()), Some("carol"));
        assert_eq!(t.next().await.event, "contact-changed");
        assert!(
            t.next_within(Duration::from_millis(300)).await.is_none(),
            "nothing else"
        );
    }
}

#[tokio::test]
async fn backend_restart_reconnects_and_every_tab_resyncs() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut tabs = vec![env.tab(&alice).await, env.tab(&alice).await];
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    env.backend.send_message("bob", "alice", "before");
    for t in &mut tabs {
        t.until("contact-changed").await;
    }
    env.backend.restart();
    for t in &mut tabs {
        let seen = t.until("resync").await;
        assert_eq!(seen.len(), 1, "resync first: {seen:?}");
    }
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    assert_eq!(env.backend.streams_opened_total(), 2);
    // And live again afterwards.
    env.backend.send_message("bob", "alice", "after");
    for t in &mut tabs {
        assert_eq!(t.until("thread-updated").await.len(), 1);
    }
}

#[tokio::test]
async fn transient_drop_resumes_with_last_event_id_and_loses_nothing() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut tab = env.tab(&alice).await;
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    env.backend.send_message("bob", "alice", "one");
    assert_eq!(tab.until("contact-changed").await.len(), 2);
    // Refuse reconnects for a moment so a message lands while we are away.
    env.backend
        .refuse_streams(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(400));
    env.backend.drop_streams();
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 0)
            .await
    );
    env.backend.send_message("carol", "alice", "two");
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    let seen = tab.until("contact-changed").await;
    let names: Vec<(&str, &str)> = seen
        .iter()
        .map(|e| (e.event.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("thread-updated", "carol"), ("contact-changed", "carol")]
    );
    let reqs = env.backend.stream_requests("alice");
    let last = reqs.last().cloned().flatten();
    assert!(last.is_some(), "reconnect carried Last-Event-ID: {reqs:?}");
    assert!(
        tab.next_within(Duration::from_millis(300)).await.is_none(),
        "no resync"
    );
}

#[tokio::test]
async fn no_cookie_or_bad_cookie_is_401_never_a_stream() {
    let env = Env::start(&[]).await;
    assert_eq!(
        Tab::open(env.addr, "/events", "", None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        Tab::open(env.addr, "/events", "session=forged", None)
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let (status, headers, _) = common::request(
        env.addr,
        "GET",
        "/events",
        &[("cookie", "session=forged")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(env.backend.open_streams_total(), 0);
}

#[tokio::test]
async fn backend_down_during_auth_is_503_with_retry_after() {
    // A port with nothing behind it.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = unused.local_addr().expect("addr").port();
    drop(unused);
    let backend = ssemux_mock_upstream::MockBackend::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("mock");
    let env = Env::start_for(backend, &[&format!("backend=http://127.0.0.1:{port}")]).await;
    let (status, headers, _) =
        common::request(env.addr, "GET", "/events", &[("cookie", "session=x")], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get("retry-after").is_some());
}

#[tokio::test]
async fn tab_stream_starts_with_a_jittered_retry_hint() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut hints = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let tab = env.tab(&alice).await;
        let ms = tab.retry_ms.expect("retry hint first");
        assert!((2000..=4000).contains(&ms), "{ms}");
        hints.insert(ms);
    }
    assert!(hints.len() > 1, "jittered: {hints:?}");
}
