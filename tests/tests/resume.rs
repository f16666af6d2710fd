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

/// A gateway on `addr` (a fixed port, to restart on) in front of `env`'s
/// backend, with `overrides`.
async fn gateway_on(
    env: &Env,
    addr: std::net::SocketAddr,
    overrides: &[&str],
) -> std::sync::Arc<ssemux_gateway::Gateway> {
    let mut sets = vec![format!("backend={}", env.backend.url())];
    sets.extend(overrides.iter().map(|s| s.to_string()));
    let cfg = ssemux_gateway::Config::from_parts("", Vec::new(), &sets).expect("config");
    let gw = ssemux_gateway::Gateway::new(cfg).expect("gateway");
    // The old listener may take a moment to go: bind with a deadline.
    let deadline = tokio::time::Instant::now() + WAIT;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    };
    tokio::spawn(gw.clone().serve(listener));
    gw
}

#[tokio::test]
async fn a_restart_with_the_shared_key_resumes_every_tab() {
    let dir = std::env::temp_dir().join(format!("ssemux-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("resume.key");
    std::fs::write(&key, "restart-test-resume-key-0123456789abcdef").expect("key");
    let shared = format!("hub.resume_key_file={}", key.display());
    let env = Env::start(&[]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let first = gateway_on(&env, port, &[&shared, "server.drain_timeout=1s"]).await;
    let cookies: Vec<String> = ["alice", "bob"].iter().map(|u| env.cookie(u)).collect();
    let mut lasts = Vec::new();
    for (user, cookie) in ["alice", "bob"].iter().zip(&cookies) {
        let mut tab = Tab::open(port, "/events", cookie, None).await.expect("tab");
        emit(&env, user, "before");
        lasts.push(
            tab.until("contact-changed")
                .await
                .last()
                .expect("ev")
                .id
                .clone(),
        );
    }
    // The deploy: the gateway goes, an event happens, the new one starts.
    first.shutdown_token().cancel();
    assert!(
        eventually(WAIT, || std::net::TcpStream::connect(port).is_err()).await,
        "the old gateway stopped listening"
    );
    emit(&env, "alice", "during");
    emit(&env, "bob", "during");
    let _second = gateway_on(&env, port, &[&shared]).await;
    for ((user, cookie), last) in ["alice", "bob"].iter().zip(&cookies).zip(&lasts) {
        let mut back = Tab::open(port, "/events", cookie, Some(last))
            .await
            .expect("tab");
        let ev = back.next().await;
        assert_eq!(
            (ev.event.as_str(), ev.data.as_str()),
            ("thread-updated", "during"),
            "{user}: exactly the missed trigger first, no resync"
        );
        assert_eq!(back.next().await.event, "contact-changed");
    }
}
