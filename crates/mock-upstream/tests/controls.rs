//! Fault controls: drop, refuse, stall, restart, shutdown, keepalive and
//! disconnect accounting.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use ssemux_mock_upstream::MockConfig;

#[tokio::test]
async fn drop_ends_streams_cleanly_and_counts_drop() {
    let mock = start().await;
    let c = client();
    let (alice, bob) = (mock.create_session("alice"), mock.create_session("bob"));
    let mut a1 = open_events(&c, &mock.url(), &alice, None).await;
    let mut a2 = open_events(&c, &mock.url(), &alice, None).await;
    let mut b = open_events(&c, &mock.url(), &bob, None).await;
    assert!(mock.wait_until(SOON, |m| m.open_streams_total() == 3).await);
    assert_eq!(mock.open_streams("alice"), 2);
    assert_eq!(mock.streams_opened_total(), 3);

    mock.drop_streams();
    assert!(a1.ends().await && a2.ends().await && b.ends().await);
    assert!(mock.wait_until(SOON, |m| m.open_streams_total() == 0).await);
    assert_eq!(mock.open_streams("alice"), 0);
    assert_eq!(mock.streams_opened_total(), 3);

    // New streams work after a drop.
    let mut a = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    mock.emit("alice", "tick", "after");
    assert_eq!(a.next().await.data, "after");
}

#[tokio::test]
async fn client_disconnect_uncounts_the_stream() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    drop(s);
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 0)
            .await
    );
}

#[tokio::test]
async fn refuse_returns_status_then_recovers() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    mock.refuse_streams(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(300));
    let s = open_events(&c, &mock.url(), &alice, Some("x-1")).await;
    assert_eq!(s.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mock.streams_opened_total(), 0);
    // Other routes are unaffected.
    let me = get(&c, &format!("{}/api/v1/me", mock.url()), Some(&alice)).await;
    assert_eq!(me.status, StatusCode::OK);

    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let s = open_events(&c, &mock.url(), &alice, None).await;
        if s.status == StatusCode::OK {
            break;
        }
        assert_eq!(s.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusal never lifted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mock.streams_opened_total(), 1);
    let reqs = mock.stream_requests("alice");
    assert_eq!(
        reqs.first(),
        Some(&Some("x-1".to_owned())),
        "refused requests are recorded"
    );
}

#[tokio::test]
async fn stall_sends_nothing_then_continues() {
    let mock = start_with(MockConfig {
        keepalive: Duration::from_millis(50),
        ..MockConfig::default()
    })
    .await;
    let c = client();
    let alice = mock.create_session("alice");
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    // Keepalives flow before the stall.
    assert!(matches!(s.read(SOON).await, Read::Comment(c) if c == "keepalive"));

    mock.stall_streams(Duration::from_millis(800));
    mock.emit("alice", "tick", "held");
    // Drain anything that was already in flight when the stall began.
    while s.chunk(Duration::from_millis(100)).await.is_ok() {}
    assert!(
        s.chunk(Duration::from_millis(400)).await.is_err(),
        "no bytes at all while stalled"
    );
    assert_eq!(mock.open_streams("alice"), 1, "a stall does not close");
    assert_eq!(
        s.next().await.data,
        "held",
        "queued event arrives after the stall"
    );
}

#[tokio::test]
async fn drop_works_during_a_stall() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    mock.stall_streams(Duration::from_secs(60));
    mock.drop_streams();
    assert!(s.ends().await);
}

#[tokio::test]
async fn keepalive_comments_when_idle() {
    let mock = start_with(MockConfig {
        keepalive: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let c = client();
    let alice = mock.create_session("alice");
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    for _ in 0..2 {
        let chunk = s.chunk(SOON).await.expect("in time").expect("not eof");
        assert_eq!(&chunk[..], b": keepalive\n\n");
    }
}

#[tokio::test]
async fn restart_changes_epoch_and_keeps_sessions_and_chat() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let row = mock.send_message("bob", "alice", "hi");
    let e1 = mock.epoch();
    mock.restart();
    let e2 = mock.epoch();
    assert_ne!(e1, e2);
    assert!(!e2.contains('-'));
    let me = get(&c, &format!("{}/api/v1/me", mock.url()), Some(&alice)).await;
    assert_eq!(me.status, StatusCode::OK);
    let t = get(
        &c,
        &format!("{}/fragments/thread/bob", mock.url()),
        Some(&alice),
    )
    .await;
    assert!(t.body.contains(&format!("data-row-id=\"{row}\"")));
    // The new epoch's ids restart from 1.
    assert_eq!(mock.emit("alice", "tick", "1"), format!("{e2}-1"));
}

#[tokio::test]
async fn shutdown_ends_streams_and_stops_accepting() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    mock.shutdown();
    assert!(s.ends().await);
    assert!(mock.wait_until(SOON, |m| m.open_streams_total() == 0).await);
    let connect = tokio::time::timeout(SOON, async {
        loop {
            // The listener closes asynchronously; retry until refused.
            if tokio::net::TcpStream::connect(mock.addr()).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(connect.await.is_ok(), "listener still accepting");
}

#[tokio::test]
async fn many_instances_in_one_binary() {
    let a = start().await;
    let b = start().await;
    assert_ne!(a.addr(), b.addr());
    assert_ne!(a.epoch(), b.epoch());
    a.send_message("alice", "bob", "x");
    assert_eq!(
        b.send_message("alice", "bob", "y"),
        1,
        "row ids are per instance"
    );
}
