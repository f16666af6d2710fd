//! Each shipped profile (`deploy/profiles/*.toml`) in front of a mock of the
//! system it is for, with that system's own client as its document describes
//! it: N clients of one identity → one upstream; identities and keys
//! isolated; events as the client needs them; a dropped upstream caught up;
//! bad credentials refused. The profile is used as shipped — only the
//! backend address, the key file and faster reconnects are set, as a
//! deployment would with `--backend` and `--set`.

mod common;
mod seeds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use seeds::{cloud_share, fastapi_sse, synckit};
use ssemux_gateway::{Config, Gateway};

/// Deadline for anything a test waits for.
const WAIT: Duration = Duration::from_secs(10);
/// The clients' own reconnect delays, shortened.
const CLIENT_RETRY: Duration = Duration::from_millis(100);

/// The profile's text.
fn profile(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/profiles")
        .join(format!("{name}.toml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A gateway running `name`'s profile in front of `backend`.
async fn gateway(name: &str, backend: &str, extra: &[String]) -> (Arc<Gateway>, SocketAddr) {
    let mut sets = vec![
        format!("backend={backend}"),
        "upstream.backoff_min=20ms".to_string(),
        "upstream.backoff_max=100ms".to_string(),
    ];
    sets.extend(extra.iter().cloned());
    let cfg = Config::from_parts(&profile(name), Vec::new(), &sets).expect("profile loads");
    common::serve(cfg).await
}

#[test]
fn the_posta_profile_is_the_built_in_contract() {
    let from_profile = Config::from_parts(&profile("posta"), Vec::new(), &[]).expect("loads");
    assert_eq!(from_profile, Config::default());
}

#[tokio::test]
async fn cloud_share_receivers_share_one_stream_and_catch_up_after_a_drop() {
    let mock = cloud_share::Mock::start().await;
    let (gw, addr) = gateway("cloud-share", &mock.url(), &[]).await;
    let receivers: Vec<_> = (0..3)
        .map(|_| cloud_share::Receiver::start(addr, mock.secret(), CLIENT_RETRY))
        .collect();
    for r in &receivers {
        assert!(
            r.wait_for(WAIT, |v| v.badge == cloud_share::Badge::Connected)
                .await,
            "{:?}",
            r.view()
        );
    }
    assert_eq!(mock.open_streams(), 1, "three receivers, one stream");
    assert_eq!(gw.hub().channels(), 1);

    // Events arrive as the receiver parses them: unnamed, the JSON whole.
    let id = mock.add_item("report.pdf");
    for r in &receivers {
        assert!(
            r.wait_for(WAIT, |v| v.queue.iter().any(|i| i.id == id))
                .await,
            "{:?}",
            r.view()
        );
    }
    assert!(mock.receive(&id));
    for r in &receivers {
        assert!(
            r.wait_for(WAIT, |v| v
                .queue
                .iter()
                .any(|i| i.id == id && i.status == "Received"))
                .await
        );
        assert_eq!(r.view().ignored, 0, "every event was one the page knows");
    }

    // The sender drops its streams and an item is queued before anyone is
    // back: the receivers' streams end (no ids: nothing to resume), their
    // own reconnect and /queue refresh bring the item.
    let refreshes: Vec<usize> = receivers.iter().map(|r| r.refreshes()).collect();
    mock.drop_streams();
    assert!(seeds::until(WAIT, || mock.open_streams() == 0).await);
    let missed = mock.add_item("while-away.txt");
    for (r, before) in receivers.iter().zip(refreshes) {
        assert!(
            r.wait_for(WAIT, |v| v.refreshes > before
                && v.badge == cloud_share::Badge::Connected
                && v.queue.iter().any(|i| i.id == missed))
                .await,
            "{:?}",
            r.view()
        );
    }
    assert!(
        seeds::until(WAIT, || mock.open_streams() == 1).await,
        "still one stream"
    );
    assert!(mock.delete(&id));
    for r in &receivers {
        assert!(
            r.wait_for(WAIT, |v| !v.queue.iter().any(|i| i.id == id))
                .await
        );
    }

    // A wrong secret is refused as the sender refuses it: red badge.
    let wrong = cloud_share::Receiver::start(addr, "not-the-secret", CLIENT_RETRY);
    assert!(
        wrong
            .wait_for(WAIT, |v| v.badge == cloud_share::Badge::Disconnected)
            .await,
        "{:?}",
        wrong.view()
    );
    assert!(wrong.queue().is_empty());
    assert_eq!(mock.open_streams(), 1, "the refused secret holds no stream");
}

#[tokio::test]
async fn fastapi_sessions_get_their_own_events_as_sent() {
    let mock = fastapi_sse::Mock::start().await;
    let (gw, addr) = gateway("fastapi-sse", &mock.url(), &[]).await;
    let s1 = mock.create_session("alice");
    let s2 = mock.create_session("bob");
    let listen = |c: &fastapi_sse::Client| {
        for t in ["syncProgress", "syncMessage", "documentLocked"] {
            c.add_event_listener(t);
        }
    };
    // Three tabs of one session (one sends the header, as the guide's test
    // does) and one of another.
    let a = [
        fastapi_sse::Client::start(addr, &s1, fastapi_sse::Via::Query, CLIENT_RETRY),
        fastapi_sse::Client::start(addr, &s1, fastapi_sse::Via::Query, CLIENT_RETRY),
        fastapi_sse::Client::start(addr, &s1, fastapi_sse::Via::Header, CLIENT_RETRY),
    ];
    let b = fastapi_sse::Client::start(addr, &s2, fastapi_sse::Via::Query, CLIENT_RETRY);
    for c in a.iter().chain([&b]) {
        listen(c);
        assert!(
            c.wait_for(WAIT, |v| v.ready_state == fastapi_sse::OPEN)
                .await,
            "{:?}",
            c.view()
        );
    }
    assert_eq!(mock.streams_opened_for(&s1), 1, "one stream per session");
    assert_eq!(mock.streams_opened_for(&s2), 1);
    assert_eq!(gw.hub().channels(), 2);

    let locked = r#"{"stable_id": "doc-7", "locked_by": "bob"}"#;
    mock.send_event(&s1, "syncProgress", "75");
    mock.send_event(&s1, "syncMessage", "Processing a.pdf\nthen b.pdf");
    mock.send_event(&s1, "documentLocked", locked);
    for c in &a {
        assert!(
            c.wait_for(WAIT, |v| v
                .received
                .get("documentLocked")
                .is_some_and(|d| !d.is_empty()))
                .await,
            "{:?}",
            c.view()
        );
        assert_eq!(c.progress(), Some(75), "75 arrives as 75");
        assert_eq!(
            c.events("syncMessage"),
            vec!["Processing a.pdf\nthen b.pdf"]
        );
        assert_eq!(
            c.events("documentLocked"),
            vec![locked],
            "JSON byte for byte"
        );
    }
    mock.send_event(&s2, "syncProgress", "10");
    assert!(b.wait_for(WAIT, |_| b.progress() == Some(10)).await);
    assert!(
        b.events("documentLocked").is_empty(),
        "another session's events never reach it"
    );
    assert!(a.iter().all(|c| c.progress() == Some(75)));

    // The service drops its streams: ssemux reconnects, the tabs stay.
    mock.drop_streams();
    assert!(seeds::until(WAIT, || mock.streams_opened_for(&s1) == 2).await);
    mock.send_event(&s1, "syncProgress", "90");
    for c in &a {
        assert!(c.wait_for(WAIT, |_| c.progress() == Some(90)).await);
        assert_eq!(c.view().opens, 1, "the tab never saw the drop");
    }

    // An unknown session is refused, as the service refuses it.
    let stranger = fastapi_sse::Client::start(
        addr,
        "no-such-session",
        fastapi_sse::Via::Query,
        CLIENT_RETRY,
    );
    assert!(
        stranger
            .wait_for(WAIT, |v| v.reconnect_attempts >= 1 && v.opens == 0)
            .await
    );
    assert_eq!(stranger.view().opens, 0);
}

#[tokio::test]
async fn synckit_gets_one_stream_per_user_and_app_and_pulls_after_a_drop() {
    let mock = synckit::Mock::start(Duration::from_millis(200)).await;
    let dir = std::env::temp_dir().join(format!("ssemux-synckit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("hs256.key");
    mock.write_secret(&key).expect("key file");
    let (gw, addr) = gateway(
        "synckit",
        &mock.url(),
        &[format!("auth.jwt.key_file={}", key.display())],
    )
    .await;
    let alice = mock.token("alice");
    let bob = mock.token("bob");
    let alice_notes = [
        synckit::Client::start(addr, &alice, "notes", CLIENT_RETRY),
        synckit::Client::start(addr, &alice, "notes", CLIENT_RETRY),
    ];
    let alice_tasks = synckit::Client::start(addr, &alice, "tasks", CLIENT_RETRY);
    let bob_notes = synckit::Client::start(addr, &bob, "notes", CLIENT_RETRY);
    let all: Vec<&synckit::Client> = alice_notes
        .iter()
        .chain([&alice_tasks, &bob_notes])
        .collect();
    for c in &all {
        assert!(c.wait_for(WAIT, |v| v.connected).await, "{:?}", c.view());
    }
    assert_eq!(
        mock.streams_for("alice", "notes"),
        1,
        "two devices, one stream"
    );
    assert_eq!(mock.streams_for("alice", "tasks"), 1, "apps never share");
    assert_eq!(mock.streams_for("bob", "notes"), 1);
    assert_eq!(gw.hub().channels(), 3);
    let pulls_before: Vec<usize> = all.iter().map(|c| c.pulls()).collect();

    // `changed` with empty data reaches exactly alice's notes devices.
    mock.push("alice", "notes");
    for c in &alice_notes {
        assert!(c.wait_for(WAIT, |v| v.pulled == 1).await, "{:?}", c.view());
    }
    mock.push("alice", "tasks");
    assert!(alice_tasks.wait_for(WAIT, |v| v.pulled == 1).await);
    assert_eq!(bob_notes.pulls(), pulls_before[3], "bob was not told");

    // SyncKit drops its streams; a push lands while ssemux is away. The gap
    // is told as `changed`, whose pull catches the device up.
    mock.drop_streams();
    assert!(seeds::until(WAIT, || mock.open_streams() == 0).await);
    mock.push("alice", "notes");
    for c in &alice_notes {
        assert!(c.wait_for(WAIT, |v| v.pulled == 2).await, "{:?}", c.view());
        assert_eq!(c.reconnects(), 0, "the device never saw the drop");
    }
    assert!(seeds::until(WAIT, || mock.open_streams() == 3).await);

    // Refused: a token SyncKit did not sign, an expired one, no app_id.
    let forged = synckit::sign(
        b"not-the-synckit-secret-at-all",
        &serde_json::json!({
            "sub": "alice", "exp": synckit::now() + 600, "iss": "synckit", "aud": "synckit-api",
        }),
    );
    let expired = mock.token_with(&serde_json::json!({
        "sub": "alice", "exp": synckit::now() - 3600, "iss": "synckit", "aud": "synckit-api",
    }));
    for token in [forged, expired] {
        let c = synckit::Client::start(addr, &token, "notes", CLIENT_RETRY);
        assert!(
            c.wait_for(WAIT, |v| v.refused == Some(401)).await,
            "{:?}",
            c.view()
        );
    }
    assert_eq!(
        raw_get(addr, "/api/sync/subscribe", &alice).await,
        400,
        "app_id is part of the key: required"
    );
    assert_eq!(
        raw_get(addr, "/api/sync/subscribe?app_id=a%2Fb", &alice).await,
        400,
        "outside the pattern"
    );
    assert_eq!(mock.streams_for("alice", "notes"), 1);
}

/// `GET path` with a Bearer token; the status.
async fn raw_get(addr: SocketAddr, path: &str, token: &str) -> u16 {
    let auth = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let (status, _) =
        seeds::eventsource::fetch(&addr.into(), "GET", path, &auth, Default::default())
            .await
            .expect("an answer");
    status
}
