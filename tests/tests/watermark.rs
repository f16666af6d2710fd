//! Read watermark and active peer, end to end against the mock backend.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Env, Tab, WAIT};
use http::StatusCode;

async fn tab(env: &Env, cookie: &str, id: &str) -> Tab {
    Tab::open(env.addr, &format!("/events?tab={id}"), cookie, None)
        .await
        .expect("tab opens")
}

async fn read(addr: SocketAddr, cookie: &str, tab: Option<&str>, body: &str) -> StatusCode {
    let mut headers = vec![("cookie", cookie), ("content-type", "application/json")];
    if let Some(t) = tab {
        headers.push(("x-tab-id", t));
    }
    common::request(addr, "POST", "/api/v1/contacts/read", &headers, body)
        .await
        .0
}

/// Wait for `thread-updated` from `peer`; return the backend's watermark for
/// (user, peer) as it was the moment the trigger arrived.
async fn watermark_when_told(env: &Env, tab: &mut Tab, user: &str, peer: &str) -> u64 {
    loop {
        let ev = tab.next().await;
        if ev.event == "thread-updated" && ev.data == peer {
            return env.backend.read_watermark(user, peer);
        }
    }
}

#[tokio::test]
async fn open_thread_is_advanced_before_tabs_are_told() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut a = tab(&env, &alice, "A").await;
    let mut b = tab(&env, &alice, "B").await;
    assert_eq!(
        read(env.addr, &alice, Some("A"), r#"{"peer":"bob","rowId":0}"#).await,
        StatusCode::OK
    );
    assert!(
        env.backend
            .wait_until(WAIT, |m| m.open_streams("alice") == 1)
            .await
    );

    let row = env.backend.send_message("bob", "alice", "are you there?");
    assert_eq!(watermark_when_told(&env, &mut a, "alice", "bob").await, row);
    assert_eq!(watermark_when_told(&env, &mut b, "alice", "bob").await, row);
    assert_eq!(env.gateway.watermarks().advances(), 1);
}

#[tokio::test]
async fn without_an_active_peer_nothing_advances() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut a = tab(&env, &alice, "A").await;
    assert!(
        env.backend
            .wait_until(WAIT, |m| m.open_streams("alice") == 1)
            .await
    );
    env.backend.send_message("bob", "alice", "hello");
    assert_eq!(watermark_when_told(&env, &mut a, "alice", "bob").await, 0);
    assert_eq!(env.gateway.watermarks().advances(), 0);
}

#[tokio::test]
async fn each_tab_advances_only_its_own_peer() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut a = tab(&env, &alice, "A").await;
    let _b = tab(&env, &alice, "B").await;
    read(env.addr, &alice, Some("A"), r#"{"peer":"bob","rowId":0}"#).await;
    read(env.addr, &alice, Some("B"), r#"{"peer":"carol","rowId":0}"#).await;
    assert!(
        env.backend
            .wait_until(WAIT, |m| m.open_streams("alice") == 1)
            .await
    );

    let rb = env.backend.send_message("bob", "alice", "from bob");
    assert_eq!(watermark_when_told(&env, &mut a, "alice", "bob").await, rb);
    assert_eq!(
        env.backend.read_watermark("alice", "carol"),
        0,
        "carol untouched"
    );
    let rc = env.backend.send_message("carol", "alice", "from carol");
    assert_eq!(
        watermark_when_told(&env, &mut a, "alice", "carol").await,
        rc
    );
    assert_eq!(env.backend.read_watermark("alice", "bob"), rb);
    // dave is no one's open thread: a message from a peer nobody has open.
    let rb2 = env.backend.send_message("carol", "bob", "not alice's");
    assert!(rb2 > rc);
    assert_eq!(env.backend.read_watermark("alice", "carol"), rc);
}

#[tokio::test]
async fn closing_the_tab_clears_its_active_peer() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let a = tab(&env, &alice, "A").await;
    let mut keep = tab(&env, &alice, "K").await;
    read(env.addr, &alice, Some("A"), r#"{"peer":"bob","rowId":0}"#).await;
    assert_eq!(
        env.gateway.watermarks().active_peers("alice"),
        vec!["bob".to_string()]
    );
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !env.gateway.watermarks().active_peers("alice").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "active peer not cleared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.backend.send_message("bob", "alice", "anyone?");
    assert_eq!(
        watermark_when_told(&env, &mut keep, "alice", "bob").await,
        0
    );
}

#[tokio::test]
async fn explicit_no_thread_clears_by_null_peer_or_delete() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut a = tab(&env, &alice, "A").await;
    read(env.addr, &alice, Some("A"), r#"{"peer":"bob","rowId":0}"#).await;
    assert_eq!(
        read(env.addr, &alice, Some("A"), r#"{"peer":null}"#).await,
        StatusCode::NO_CONTENT
    );
    assert!(env.gateway.watermarks().active_peers("alice").is_empty());
    read(env.addr, &alice, Some("A"), r#"{"peer":"bob","rowId":0}"#).await;
    let (status, _, _) = common::request(
        env.addr,
        "DELETE",
        "/api/v1/contacts/read",
        &[("cookie", &alice), ("x-tab-id", "A")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(env.gateway.watermarks().active_peers("alice").is_empty());
    env.backend.send_message("bob", "alice", "hi");
    assert_eq!(watermark_when_told(&env, &mut a, "alice", "bob").await, 0);
}

#[tokio::test]
async fn watermark_never_moves_back_and_concurrent_reads_settle_on_max() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let _a = tab(&env, &alice, "A").await;
    let _b = tab(&env, &alice, "B").await;
    let rows: Vec<u64> = (0..6)
        .map(|i| env.backend.send_message("bob", "alice", &format!("m{i}")))
        .collect();
    let hi = rows[5];
    let (lo_body, hi_body) = (
        format!(r#"{{"peer":"bob","rowId":{}}}"#, rows[1]),
        format!(r#"{{"peer":"bob","rowId":{hi}}}"#),
    );
    let (s1, s2) = tokio::join!(
        read(env.addr, &alice, Some("A"), &hi_body),
        read(env.addr, &alice, Some("B"), &lo_body),
    );
    assert!(s1.is_success() && s2.is_success());
    assert_eq!(env.backend.read_watermark("alice", "bob"), hi);
    read(
        env.addr,
        &alice,
        Some("B"),
        &format!(r#"{{"peer":"bob","rowId":{}}}"#, rows[0]),
    )
    .await;
    assert_eq!(
        env.backend.read_watermark("alice", "bob"),
        hi,
        "never backwards"
    );
}

#[tokio::test]
async fn another_users_cookie_cannot_touch_alices_tab() {
    let env = Env::start(&[]).await;
    let (alice, bob) = (env.cookie("alice"), env.cookie("bob"));
    let mut a = tab(&env, &alice, "A").await;
    // bob replays alice's tab id with his own cookie.
    read(env.addr, &bob, Some("A"), r#"{"peer":"carol","rowId":0}"#).await;
    assert!(env.gateway.watermarks().active_peers("alice").is_empty());
    env.backend.send_message("carol", "alice", "hi alice");
    assert_eq!(watermark_when_told(&env, &mut a, "alice", "carol").await, 0);
    // …and cannot clear alice's mark either.
    read(env.addr, &alice, Some("A"), r#"{"peer":"bob","rowId":0}"#).await;
    read(env.addr, &bob, Some("A"), r#"{"peer":null}"#).await;
    assert_eq!(
        env.gateway.watermarks().active_peers("alice"),
        vec!["bob".to_string()]
    );
}

#[tokio::test]
async fn bad_tab_ids_are_refused() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let long = "x".repeat(10 * 1024);
    assert_eq!(
        read(env.addr, &alice, Some(&long), r#"{"peer":"bob","rowId":0}"#).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        Tab::open(env.addr, "/events?tab=a%0d%0ab", &alice, None)
            .await
            .err(),
        Some(StatusCode::BAD_REQUEST)
    );
}
