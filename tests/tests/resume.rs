//! Resume anywhere: a tab's `Last-Event-ID` carries its upstream position,
//! so a tab away longer than the grace (a hidden htmx 4 tab), or sent to
//! another gateway of the same deployment, gets exactly the triggers it
//! missed — from the backend's own history — instead of a `resync`.

mod common;

use std::time::Duration;

use common::{Env, Tab, WAIT, eventually};

/// Two distinct inbound events for `user`, from `peer`.
fn emit(env: &Env, user: &str, peer: &str) {
    env.backend.emit(
        user,
        "inbound",
        &format!(r#"{{"peer":"{peer}","rowId":1}}"#),
    );
}

#[tokio::test]
async fn a_tab_hidden_past_the_grace_gets_exactly_what_it_missed() {
    let env = Env::start(&["hub.grace=0s"]).await;
    let cookie = env.cookie("alice");
    let mut tab = env.tab(&cookie).await;
    emit(&env, "alice", "bob");
    let got = tab.until("contact-changed").await;
    let last = got.last().expect("an event").id.clone();
    // Hidden: the stream closes, and with no grace the channel goes too.
    drop(tab);
    assert!(eventually(WAIT, || env.gateway.hub().channels() == 0).await);
    let requests_before = env.backend.stream_requests("alice").len();
    emit(&env, "alice", "carol");
    emit(&env, "alice", "dave");

    let mut back = Tab::open(env.addr, "/events", &cookie, Some(&last))
        .await
        .expect("tab");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = back.next().await;
        assert_ne!(ev.event, "resync", "the backend had the history: {seen:?}");
        seen.push((ev.event, ev.data));
    }
    assert_eq!(
        seen,
        [
            ("thread-updated", "carol"),
            ("contact-changed", "carol"),
            ("thread-updated", "dave"),
            ("contact-changed", "dave"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(
        back.next_within(Duration::from_millis(200)).await.is_none(),
        "no duplicate after"
    );
    let requests = env.backend.stream_requests("alice");
    assert_eq!(
        requests.len(),
        requests_before + 1,
        "one upstream request to catch up"
    );
    assert!(
        requests.last().is_some_and(|id| id.is_some()),
        "it resumed with the upstream's id: {requests:?}"
    );
}

#[tokio::test]
async fn another_gateway_with_the_same_key_resumes_and_a_foreign_one_resyncs() {
    let dir = std::env::temp_dir().join(format!("ssemux-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("resume.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef-shared").expect("key");
    let shared = format!("hub.resume_key_file={}", key.display());
    let a = Env::start(&[&shared]).await;
    let cookie = a.cookie("alice");
    let mut tab = a.tab(&cookie).await;
    emit(&a, "alice", "bob");
    let last = tab
        .until("contact-changed")
        .await
        .last()
        .expect("ev")
        .id
        .clone();
    drop(tab);
    // Instance a is gone (the tab moves); the events go on at the backend.
    emit(&a, "alice", "carol");
    let b = a.another_gateway(&[&shared]).await;
    let mut moved = Tab::open(b, "/events", &cookie, Some(&last))
        .await
        .expect("tab");
    let first = moved.next().await;
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        ("thread-updated", "carol")
    );
    // An instance with another key cannot read the id: a resync, as before.
    let c = a.another_gateway(&[]).await;
    let mut foreign = Tab::open(c, "/events", &cookie, Some(&last))
        .await
        .expect("tab");
    let ev = foreign.next().await;
    assert_eq!(ev.event, "resync", "{ev:?}");
}
