//! The seed mocks against their own clients, no ssemux in between: each
//! client gets what its document says it needs, bad credentials are
//! refused, and reconnects catch up. These pin the mocks down before the
//! integration tests put a proxy in the middle.

mod seeds;

use std::time::Duration;

use bytes::Bytes;
use seeds::eventsource::{self, Base, EventSource, Failure, Update};
use seeds::{cloud_share, fastapi_sse, synckit};
use serde_json::json;

/// Deadline for anything a test waits for.
const WAIT: Duration = Duration::from_secs(5);

/// The exact bytes of one stream: opened, fed by `emit` once the mock
/// counts it open, then ended by `end` so the body can be read whole.
async fn wire(
    base: Base,
    path: &str,
    headers: Vec<(String, String)>,
    open: impl Fn() -> usize,
    emit: impl FnOnce(),
    end: impl FnOnce(),
) -> (u16, String) {
    let path = path.to_string();
    let before = open();
    let fetch = tokio::spawn(async move {
        eventsource::fetch(&base, "GET", &path, &headers, Bytes::new()).await
    });
    assert!(
        seeds::until(WAIT, || open() == before + 1).await,
        "stream opens"
    );
    emit();
    end();
    let (status, body) = fetch.await.unwrap().expect("response");
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// An address nothing listens on.
async fn dead_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---- cloud-share ----

#[tokio::test]
async fn cloud_share_wire_is_unnamed_json_data_only() {
    let mock = cloud_share::Mock::start().await;
    let path = format!("/events?secret={}", mock.secret());
    let mut id = String::new();
    let (status, body) = wire(
        mock.addr().into(),
        &path,
        vec![],
        || mock.open_streams(),
        || id = mock.add_item("report.pdf"),
        || mock.drop_streams(),
    )
    .await;
    assert_eq!(status, 200);
    let item = format!(
        r#"{{"id":"{id}","type":"file","name":"report.pdf","sizeBytes":204800,"status":"Queued","hasZipPassword":false}}"#
    );
    assert_eq!(
        body,
        format!("data: {{\"type\":\"new_item\",\"item\":{item}}}\n\n")
    );

    // Received and deleted, each one line of JSON.
    let (_, body) = wire(
        mock.addr().into(),
        &path,
        vec![],
        || mock.open_streams(),
        || {
            mock.receive(&id);
            mock.delete(&id);
        },
        || mock.drop_streams(),
    )
    .await;
    assert_eq!(
        body,
        format!(
            "data: {{\"type\":\"item_received\",\"id\":\"{id}\"}}\n\n\
             data: {{\"type\":\"item_deleted\",\"id\":\"{id}\"}}\n\n"
        )
    );

    let (status, queue) = eventsource::fetch(
        &mock.addr().into(),
        "GET",
        &format!("/queue?secret={}", mock.secret()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!((status, &queue[..]), (200, &b"[]"[..]));
}

#[tokio::test]
async fn cloud_share_receiver_follows_the_queue() {
    let mock = cloud_share::Mock::start().await;
    let early = mock.add_item("early.txt");
    let rx = cloud_share::Receiver::start(mock.url(), mock.secret(), Duration::from_millis(100));
    assert!(
        rx.wait_for(WAIT, |v| v.badge == cloud_share::Badge::Connected
            && v.refreshes == 1
            && v.queue.len() == 1)
            .await,
        "initial load, then connected: {:?}",
        rx.view()
    );
    assert_eq!(rx.queue()[0].id, early);

    let late = mock.add_item("late.pdf");
    assert!(rx.wait_for(WAIT, |v| v.queue.len() == 2).await);
    assert_eq!(rx.queue(), mock.queue(), "the model matches the sender");

    mock.receive(&late);
    assert!(
        rx.wait_for(WAIT, |v| v
            .queue
            .iter()
            .any(|i| i.id == late && i.status == "Received"))
            .await
    );
    mock.delete(&early);
    assert!(rx.wait_for(WAIT, |v| v.queue.len() == 1).await);
    assert_eq!(rx.queue(), mock.queue());
    assert_eq!(rx.view().ignored, 0);
    assert_eq!((rx.reconnects(), mock.queue_requests()), (0, 1));

    drop(rx);
    assert!(
        seeds::until(WAIT, || mock.open_streams() == 0).await,
        "hyper notices the close"
    );
}

#[tokio::test]
async fn cloud_share_wrong_secret_is_refused_and_badge_red() {
    let mock = cloud_share::Mock::start().await;
    let rx = cloud_share::Receiver::start(mock.addr(), "not-it", Duration::from_millis(50));
    assert!(
        rx.wait_for(WAIT, |v| v.badge == cloud_share::Badge::Disconnected)
            .await
    );
    assert_eq!((mock.streams_opened(), mock.queue_requests()), (0, 0));
    assert_eq!(rx.refreshes(), 0);

    let (status, _) = eventsource::fetch(&mock.addr().into(), "GET", "/queue", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 401, "no secret at all");
}

#[tokio::test]
async fn cloud_share_unreachable_sender_turns_red_after_tries() {
    let rx = cloud_share::Receiver::start(dead_addr().await, "s", Duration::from_millis(10));
    assert!(
        rx.wait_for(WAIT, |v| v.badge == cloud_share::Badge::Disconnected)
            .await
    );
}

#[tokio::test]
async fn cloud_share_reconnect_refreshes_the_queue() {
    let mock = cloud_share::Mock::start().await;
    let rx = cloud_share::Receiver::start(mock.url(), mock.secret(), Duration::from_millis(300));
    assert!(
        rx.wait_for(WAIT, |v| v.badge == cloud_share::Badge::Connected)
            .await
    );

    mock.drop_streams();
    assert!(
        rx.wait_for(WAIT, |v| v.badge == cloud_share::Badge::Reconnecting)
            .await
    );
    let missed = mock.add_item("while-down.zip");
    // Added before the second stream existed: only the refresh can bring it.
    assert_eq!(mock.streams_opened(), 1);

    assert!(
        rx.wait_for(WAIT, |v| v.badge == cloud_share::Badge::Connected
            && v.reconnects == 1
            && v.refreshes == 2)
            .await,
        "{:?}",
        rx.view()
    );
    assert_eq!(
        rx.queue().iter().map(|i| &i.id).collect::<Vec<_>>(),
        [&missed]
    );
    assert_eq!(mock.queue_requests(), 2);

    // Live again after the reconnect.
    mock.add_item("after.txt");
    assert!(rx.wait_for(WAIT, |v| v.queue.len() == 2).await);
}

// ---- FastAPI SSE ----

#[tokio::test]
async fn fastapi_wire_is_named_events_with_a_data_line_per_line() {
    let mock = fastapi_sse::Mock::start().await;
    let session = mock.create_session("alice");
    let (status, body) = wire(
        mock.addr().into(),
        &format!("{}?sessionId={session}", fastapi_sse::SUBSCRIBE),
        vec![],
        || mock.open_streams(),
        || {
            mock.send_event(&session, "syncProgress", "75");
            mock.send_event(&session, "syncMessage", "Processing a.txt\nstep 2");
        },
        || mock.drop_streams(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "event: syncProgress\ndata: 75\n\n\
         event: syncMessage\ndata: Processing a.txt\ndata: step 2\n\n"
    );
}

#[tokio::test]
async fn fastapi_listeners_get_their_events_intact() {
    let mock = fastapi_sse::Mock::start().await;
    let session = mock.create_session("alice");
    let client = fastapi_sse::Client::start(
        mock.url(),
        &session,
        fastapi_sse::Via::Query,
        Duration::from_millis(50),
    );
    // Registered before the connection opens (the plugin queues them) ...
    client.add_event_listener("syncProgress");
    client.add_event_listener("syncMessage");
    assert!(
        client
            .wait_for(WAIT, |v| v.ready_state == fastapi_sse::OPEN)
            .await
    );
    // ... and after.
    client.add_event_listener("documentLocked");
    assert_eq!(
        client.url(),
        format!("{}/api/v1/sse/subscribe?sessionId={session}", mock.url())
    );

    let locked = json!({"stable_id": "doc-1", "locked_by": "bob"}).to_string();
    assert_eq!(
        mock.send_event(&session, "syncProgress", &75.to_string()),
        1
    );
    mock.send_event(&session, "syncMessage", "Synced a.txt\nand b.txt");
    mock.send_event(&session, "nobodyListens", "x");
    mock.send_event(&session, "documentLocked", &locked);
    assert!(
        client
            .wait_for(WAIT, |v| v
                .received
                .get("documentLocked")
                .is_some_and(|d| !d.is_empty()))
            .await
    );
    assert_eq!(client.events("syncProgress"), ["75"]);
    assert_eq!(client.progress(), Some(75));
    assert_eq!(client.events("syncMessage"), ["Synced a.txt\nand b.txt"]);
    assert_eq!(client.events("documentLocked"), [locked]);
    assert_eq!(client.view().unheard, 1);

    // Another session's events are not ours.
    let other = mock.create_session("bob");
    assert_eq!(mock.send_event(&other, "syncProgress", "1"), 0);
    assert_eq!(fastapi_sse::parse_int(" 42% done"), Some(42));
    assert_eq!(fastapi_sse::parse_int("n/a"), None);
}

#[tokio::test]
async fn fastapi_header_session_and_echo_endpoint() {
    let mock = fastapi_sse::Mock::start().await;
    let session = mock.create_session("alice");
    let client = fastapi_sse::Client::start(
        mock.addr(),
        &session,
        fastapi_sse::Via::Header,
        Duration::from_millis(50),
    );
    client.add_event_listener("test");
    assert!(
        client
            .wait_for(WAIT, |v| v.ready_state == fastapi_sse::OPEN)
            .await
    );
    let headers = [("x-session-id".to_string(), session.clone())];
    let (status, body) = eventsource::fetch(
        &mock.addr().into(),
        "POST",
        fastapi_sse::ECHO,
        &headers,
        Bytes::from(r#"["Message 1","Message 2","Message 3"]"#),
    )
    .await
    .unwrap();
    assert_eq!((status, &body[..]), (200, &br#"{"sent":3}"#[..]));
    assert!(
        client
            .wait_for(WAIT, |v| v.received["test"].len() == 3)
            .await
    );
    assert_eq!(
        client.events("test"),
        ["Message 1", "Message 2", "Message 3"]
    );
    assert_eq!(mock.streams_opened_for(&session), 1);

    let bad = eventsource::fetch(
        &mock.addr().into(),
        "POST",
        fastapi_sse::ECHO,
        &headers,
        Bytes::from("{"),
    )
    .await
    .unwrap();
    assert_eq!(bad.0, 400);
}

#[tokio::test]
async fn fastapi_unknown_session_never_opens_and_gives_up_after_five() {
    let mock = fastapi_sse::Mock::start().await;
    let client = fastapi_sse::Client::start(
        mock.url(),
        "no-such-session",
        fastapi_sse::Via::Query,
        Duration::from_millis(5),
    );
    assert!(
        client.wait_for(WAIT, |v| v.gave_up).await,
        "{:?}",
        client.view()
    );
    let v = client.view();
    assert_eq!(
        (v.opens, v.ready_state, v.reconnect_attempts),
        (0, fastapi_sse::CLOSED, 5)
    );
    assert_eq!(mock.streams_opened(), 0);
    assert_eq!(mock.refusals(), 6, "the first try and five reconnects");

    // `sse.reconnect()` tries once more even after giving up.
    client.reconnect();
    assert!(seeds::until(WAIT, || mock.refusals() == 7).await);
    assert!(client.wait_for(WAIT, |v| v.gave_up).await);

    let headerless = EventSource::new(mock.addr(), fastapi_sse::SUBSCRIBE);
    let mut conn = headerless.connect();
    assert_eq!(conn.next().await, Some(Update::Error(Failure::Status(401))));
}

#[tokio::test]
async fn fastapi_reconnects_with_backoff_reset_and_revoke_ends_it() {
    let mock = fastapi_sse::Mock::start().await;
    let session = mock.create_session("alice");
    let client = fastapi_sse::Client::start(
        mock.url(),
        &session,
        fastapi_sse::Via::Query,
        Duration::from_millis(20),
    );
    client.add_event_listener("fileChanged");
    assert!(client.wait_for(WAIT, |v| v.opens == 1).await);

    mock.drop_streams();
    assert!(
        client
            .wait_for(WAIT, |v| v.opens == 2 && v.ready_state == fastapi_sse::OPEN)
            .await
    );
    assert_eq!(client.reconnect_attempts(), 0, "reset on open");
    mock.send_event(&session, "fileChanged", r#"{"file_id":"f1"}"#);
    assert!(
        client
            .wait_for(WAIT, |v| v.received["fileChanged"].len() == 1)
            .await
    );

    mock.revoke(&session);
    assert!(client.wait_for(WAIT, |v| v.gave_up).await);
    assert_eq!(
        (client.view().opens, mock.streams_opened_for(&session)),
        (2, 2)
    );
}

// ---- SyncKit ----

#[tokio::test]
async fn synckit_wire_is_changed_with_an_empty_data_line() {
    let mock = synckit::Mock::start(Duration::ZERO).await;
    let token = mock.token("alice");
    let (status, body) = wire(
        mock.addr().into(),
        "/api/sync/subscribe?app_id=notes",
        vec![("authorization".to_string(), format!("Bearer {token}"))],
        || mock.open_streams(),
        || {
            mock.push("alice", "notes");
        },
        || mock.drop_streams(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "event: changed\ndata:\n\n"));
}

#[tokio::test]
async fn synckit_changed_triggers_a_pull_for_that_pair_only() {
    let mock = synckit::Mock::start(Duration::from_millis(50)).await;
    let alice = synckit::Client::start(
        mock.url(),
        &mock.token("alice"),
        "notes",
        Duration::from_millis(50),
    );
    let bob = synckit::Client::start(
        mock.addr(),
        &mock.token("bob"),
        "notes",
        Duration::from_millis(50),
    );
    assert!(alice.wait_for(WAIT, |v| v.connected).await);
    assert!(bob.wait_for(WAIT, |v| v.connected).await);
    assert_eq!(
        (
            mock.streams_for("alice", "notes"),
            mock.streams_for("bob", "notes")
        ),
        (1, 1)
    );

    mock.push("alice", "notes");
    assert!(
        alice
            .wait_for(WAIT, |v| v.pulls == 1 && v.pulled == 1)
            .await
    );
    mock.push("alice", "notes");
    mock.push("alice", "notes");
    assert!(
        alice
            .wait_for(WAIT, |v| v.changed_events == 3 && v.pulled == 3)
            .await
    );

    // Bob's change and Alice's other app come first on their streams; had
    // they reached Alice's stream, they would precede this push.
    mock.push("bob", "notes");
    mock.push("alice", "tasks");
    mock.push("alice", "notes");
    assert!(
        alice
            .wait_for(WAIT, |v| v.changed_events == 4 && v.pulled == 4)
            .await
    );
    assert!(
        bob.wait_for(WAIT, |v| v.changed_events == 1 && v.pulled == 1)
            .await
    );

    // Keepalives arrive and change nothing.
    assert!(alice.wait_for(WAIT, |v| v.keepalives >= 2).await);
    assert_eq!((alice.pulls(), alice.view().pull_errors), (4, 0));

    drop(alice);
    assert!(seeds::until(WAIT, || mock.streams_for("alice", "notes") == 0).await);
    assert_eq!(mock.streams_for("bob", "notes"), 1);
}

#[tokio::test]
async fn synckit_refuses_bad_tokens_and_missing_app() {
    let mock = synckit::Mock::start(Duration::ZERO).await;
    let now = synckit::now();
    let claims = |exp: u64, aud: &str| json!({"sub": "alice", "iat": now, "exp": exp, "iss": "synckit", "aud": aud});
    let bad = [
        String::new(),
        "Bearer".to_string(),
        "Bearer not.a.jwt".to_string(),
        format!("Basic {}", mock.token("alice")),
        format!(
            "Bearer {}",
            mock.token_with(&claims(now - 3600, "synckit-api"))
        ),
        format!(
            "Bearer {}",
            mock.token_with(&claims(now + 3600, "elsewhere"))
        ),
        format!(
            "Bearer {}",
            mock.token_with(&json!({"sub": "alice", "aud": "synckit-api", "iss": "synckit"}))
        ),
        format!(
            "Bearer {}",
            synckit::sign(b"another key", &claims(now + 3600, "synckit-api"))
        ),
    ];
    for auth in &bad {
        for path in [
            "/api/sync/subscribe?app_id=notes",
            "/api/sync/pull?app_id=notes",
        ] {
            let headers = [("authorization".to_string(), auth.clone())];
            let (status, _) =
                eventsource::fetch(&mock.addr().into(), "GET", path, &headers, Bytes::new())
                    .await
                    .unwrap();
            assert_eq!(status, 401, "{auth:?} on {path}");
        }
    }
    let good = [(
        "authorization".to_string(),
        format!("Bearer {}", mock.token("alice")),
    )];
    for path in [
        "/api/sync/subscribe",
        "/api/sync/subscribe?app_id=",
        "/api/sync/pull",
    ] {
        let (status, _) = eventsource::fetch(&mock.addr().into(), "GET", path, &good, Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, 400, "{path}");
    }
    assert_eq!(mock.streams_opened(), 0);

    let expired = mock.token_with(&claims(now - 3600, "synckit-api"));
    let client = synckit::Client::start(mock.url(), &expired, "notes", Duration::from_millis(10));
    assert!(client.wait_for(WAIT, |v| v.refused == Some(401)).await);
    assert_eq!((client.view().opens, client.pulls()), (0, 0));

    let dir = std::env::temp_dir().join(format!("seed-synckit-{}", std::process::id()));
    mock.write_secret(&dir).unwrap();
    assert_eq!(std::fs::read(&dir).unwrap(), mock.secret());
    std::fs::remove_file(&dir).unwrap();
}

#[tokio::test]
async fn synckit_reconnect_pulls_what_it_missed() {
    let mock = synckit::Mock::start(Duration::ZERO).await;
    let client = synckit::Client::start(
        mock.url(),
        &mock.token("alice"),
        "notes",
        Duration::from_millis(300),
    );
    assert!(client.wait_for(WAIT, |v| v.connected).await);
    mock.push("alice", "notes");
    assert!(client.wait_for(WAIT, |v| v.pulled == 1).await);

    mock.drop_streams();
    assert!(client.wait_for(WAIT, |v| !v.connected).await);
    mock.push("alice", "notes");
    mock.push("alice", "notes");
    // No stream was open for these: only the reconnect's pull sees them.
    assert_eq!(mock.streams_opened(), 1);

    assert!(
        client
            .wait_for(WAIT, |v| v.reconnects == 1 && v.pulls == 2 && v.pulled == 3)
            .await,
        "{:?}",
        client.view()
    );
    assert_eq!((client.view().changed_events, mock.pull_requests()), (1, 2));

    // Pushed through the HTTP endpoint (the path a proxy would forward).
    let headers = [(
        "authorization".to_string(),
        format!("Bearer {}", mock.token("alice")),
    )];
    let (status, body) = eventsource::fetch(
        &mock.addr().into(),
        "POST",
        synckit::PUSH,
        &headers,
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "app_id is required on push too: {body:?}");
    let (status, body) = eventsource::fetch(
        &mock.addr().into(),
        "POST",
        &format!("{}?app_id=notes", synckit::PUSH),
        &headers,
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!((status, &body[..]), (200, &br#"{"changes":4}"#[..]));
    assert!(client.wait_for(WAIT, |v| v.pulled == 4).await);
}

// ---- the EventSource itself ----

#[tokio::test]
async fn eventsource_keeps_the_last_id_across_connections() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let s = seen.clone();
    let server = seeds::serve::start(move |req| {
        let s = s.clone();
        async move {
            let last = seeds::serve::header(&req, "last-event-id").map(str::to_string);
            s.lock().unwrap().push(last);
            let body = "retry: 250\nid: 7\nevent: tick\ndata: a\n\n: note\ndata: b\n\n";
            let mut resp = http::Response::new(http_body_util::BodyExt::boxed(
                http_body_util::Full::new(Bytes::from(body)),
            ));
            resp.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            resp
        }
    })
    .await;
    let es = EventSource::new(format!("http://{}", server.addr), "/stream?x=1");
    let mut all = Vec::new();
    for _ in 0..2 {
        let mut conn = es.connect();
        while let Some(u) = tokio::time::timeout(WAIT, conn.next()).await.unwrap() {
            all.push(u);
        }
    }
    let msg = |event: &str, data: &str| {
        Update::Event(eventsource::Message {
            event: event.to_string(),
            data: data.to_string(),
            id: "7".to_string(),
        })
    };
    let one = vec![
        Update::Open,
        Update::Retry(250),
        msg("tick", "a"),
        Update::Comment,
        msg("message", "b"),
        Update::Closed,
    ];
    assert_eq!(all, [one.clone(), one].concat());
    assert_eq!(*seen.lock().unwrap(), [None, Some("7".to_string())]);
    assert_eq!(
        (es.last_event_id(), es.retry_ms()),
        ("7".to_string(), Some(250))
    );
}
