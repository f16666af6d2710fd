//! The seed mocks against their own clients, no ssemux in between: each
//! client gets what its document says it needs, bad credentials are
//! refused, and reconnects catch up. The ScaiDrive WebSocket mock is also
//! driven frame by frame with a plain tokio-tungstenite client, to pin its
//! wire shapes. These pin the mocks down before the integration tests put a
//! proxy in the middle.

mod seeds;

use std::time::Duration;

use bytes::Bytes;
use seeds::eventsource::{self, Base, EventSource, Failure, Update};
use seeds::{cloud_share, fastapi_sse, scaidrive, synckit};
use serde_json::{Value, json};

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

// ---- ScaiDrive ----

/// (token, user): Alice has two tokens (two devices), Bob one.
const SCAI_TOKENS: [(&str, &str); 3] = [
    ("tok-alice", "alice"),
    ("tok-alice-2", "alice"),
    ("tok-bob", "bob"),
];

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn scai_ws(mock: &scaidrive::Mock, path: &str, headers: &[(&str, &str)]) -> Ws {
    scaidrive::connect(&mock.addr().into(), path, headers)
        .await
        .expect("handshake")
}

/// A realtime socket of `token` (query form), past its `connected` frame.
async fn realtime(mock: &scaidrive::Mock, token: &str) -> Ws {
    let mut ws = scai_ws(mock, &format!("{}?token={token}", scaidrive::REALTIME), &[]).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    ws
}

/// The next text frame, within the deadline; anything else fails the test.
async fn next_text(ws: &mut Ws) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("JSON frame")
}

async fn send(ws: &mut Ws, frame: &str) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await
        .expect("send");
}

/// How the server ends the connection: its close code, or None for EOF or
/// a reset without a close frame. Returns once the connection is over.
async fn ending(ws: &mut Ws) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("ends in time")
        {
            Some(Ok(Message::Close(c))) => {
                // Read on, so tungstenite sends the answering close and the
                // server's socket ends now rather than at its close timeout.
                while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
                return c.map(|c| u16::from(c.code));
            }
            Some(Ok(Message::Text(t))) => panic!("unexpected frame {t}"),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return None,
        }
    }
}

#[tokio::test]
async fn scaidrive_query_and_bearer_handshakes_both_say_connected() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let before = scaidrive::timestamp(std::time::SystemTime::now());
    let mut q = scai_ws(&mock, "/api/v1/realtime/ws?token=tok-alice", &[]).await;
    let mut b = scai_ws(
        &mock,
        "/api/v1/realtime/ws",
        &[("authorization", "Bearer tok-alice-2")],
    )
    .await;
    for ws in [&mut q, &mut b] {
        let text = next_text(ws).await;
        let frame: Value = serde_json::from_str(&text).unwrap();
        let ts = frame["timestamp"].as_str().unwrap().to_string();
        assert_eq!(
            text,
            format!(r#"{{"type":"connected","user_id":"alice","timestamp":"{ts}"}}"#)
        );
        assert!(ts.len() == 20 && ts >= before, "RFC 3339 UTC, now: {ts}");
    }
    let mut bob = scai_ws(
        &mock,
        "/api/v1/realtime/ws",
        &[("authorization", "bearer tok-bob")],
    )
    .await;
    assert_eq!(next_json(&mut bob).await["user_id"], "bob");
    assert_eq!((mock.open_for("alice"), mock.open_for("bob")), (2, 1));
    assert_eq!((mock.connects(), mock.connects_for("alice")), (3, 2));
    assert_eq!(
        mock.sockets("alice")[0].endpoint,
        scaidrive::Endpoint::Realtime
    );

    drop(q);
    assert!(seeds::until(WAIT, || mock.open_for("alice") == 1).await);
    assert_eq!(
        scaidrive::timestamp(std::time::UNIX_EPOCH + Duration::from_secs(1_776_939_302)),
        "2026-04-23T10:15:02Z"
    );
    assert_eq!(
        scaidrive::timestamp(std::time::UNIX_EPOCH + Duration::from_secs(951_868_799)),
        "2000-02-29T23:59:59Z"
    );
}

#[tokio::test]
async fn scaidrive_bad_tokens_complete_the_handshake_then_close_4401() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let cases: [(&str, &[(&str, &str)]); 7] = [
        ("/api/v1/realtime/ws", &[]),
        ("/api/v1/realtime/ws?token=", &[]),
        ("/api/v1/realtime/ws?token=nope", &[]),
        (
            "/api/v1/realtime/ws",
            &[("authorization", "Basic tok-alice")],
        ),
        ("/api/v1/realtime/ws", &[("authorization", "Bearer nope")]),
        // The query token is the one read when both are there.
        (
            "/api/v1/realtime/ws?token=nope",
            &[("authorization", "Bearer tok-alice")],
        ),
        ("/api/v1/sync/ws/dev-1?token=nope", &[]),
    ];
    for (i, (path, headers)) in cases.iter().enumerate() {
        let mut ws = scai_ws(&mock, path, headers).await;
        assert_eq!(ending(&mut ws).await, Some(4401), "{path} {headers:?}");
        assert_eq!(mock.refusals(), i + 1);
    }
    assert_eq!((mock.connects(), mock.open_sockets()), (0, 0));

    // Not a WebSocket handshake, or not a ScaiDrive path: plain HTTP errors.
    let base: Base = mock.addr().into();
    for (method, path, want) in [
        ("GET", "/api/v1/realtime/ws?token=tok-alice", 400),
        ("POST", "/api/v1/realtime/ws?token=tok-alice", 405),
        ("GET", "/api/v1/sync/ws/", 404),
        ("GET", "/api/v1/sync/ws/a/b", 404),
        ("GET", "/api/v1/realtime", 404),
    ] {
        let (status, _) = eventsource::fetch(&base, method, path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, want, "{method} {path}");
    }
}

#[tokio::test]
async fn scaidrive_realtime_ping_subscribe_unsubscribe_and_ignored_frames() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let mut ws = realtime(&mock, "tok-alice").await;

    send(&mut ws, r#"{"action":"ping"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"type":"pong"}"#);
    send(&mut ws, r#"{"action":"subscribe","share_id":"shr_a"}"#).await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"type":"subscribed","share_id":"shr_a"}"#
    );
    send(&mut ws, r#"{"action":"subscribe","share_id":"shr_b"}"#).await;
    // Subscribing twice is acknowledged again and holds it once.
    send(&mut ws, r#"{"action":"subscribe","share_id":"shr_a"}"#).await;
    assert_eq!(next_json(&mut ws).await["share_id"], "shr_b");
    assert_eq!(next_json(&mut ws).await["share_id"], "shr_a");
    assert_eq!(mock.sockets("alice")[0].shares, ["shr_a", "shr_b"]);
    assert_eq!(mock.subscribers("alice", "shr_a"), 1);

    send(&mut ws, r#"{"action":"unsubscribe","share_id":"shr_a"}"#).await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"type":"unsubscribed","share_id":"shr_a"}"#
    );
    assert_eq!(mock.sockets("alice")[0].shares, ["shr_b"]);

    // Nothing the page documents: no answer, and the socket carries on.
    for junk in [
        "not json",
        r#"{"type":"ping"}"#,
        r#"{"action":"subscribe"}"#,
        r#"{"action":"subscribe","share_id":""}"#,
        r#"{"action":"dance"}"#,
        r#"["ping"]"#,
    ] {
        send(&mut ws, junk).await;
    }
    {
        use futures_util::SinkExt;
        ws.send(tokio_tungstenite::tungstenite::Message::binary(
            b"\x00".to_vec(),
        ))
        .await
        .unwrap();
    }
    send(&mut ws, r#"{"action":"ping"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"type":"pong"}"#);
    assert_eq!(mock.ignored_frames(), 7);
    assert_eq!(mock.frames_received(), 13);
    assert_eq!(mock.sockets("alice")[0].frames_received, 13);
    assert_eq!(mock.pongs(), 2);
    assert_eq!(mock.sockets("alice")[0].shares, ["shr_b"]);
}

#[tokio::test]
async fn scaidrive_events_reach_only_sockets_subscribed_to_their_share() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let mut a = realtime(&mock, "tok-alice").await;
    let mut b = realtime(&mock, "tok-alice-2").await;
    let mut bob = realtime(&mock, "tok-bob").await;
    for (ws, share) in [(&mut a, "shr_a"), (&mut b, "shr_b"), (&mut bob, "shr_a")] {
        send(
            ws,
            &format!(r#"{{"action":"subscribe","share_id":"{share}"}}"#),
        )
        .await;
        assert_eq!(next_json(ws).await["type"], "subscribed");
    }

    let data = json!({"file_id": "fil_1", "name": "spec.pdf"});
    assert_eq!(mock.emit("alice", "shr_a", "file_created", &data), 1);
    assert_eq!(
        next_text(&mut a).await,
        r#"{"event_type":"file_created","share_id":"shr_a","data":{"file_id":"fil_1","name":"spec.pdf"}}"#
    );
    // Had the event reached B or Bob, it would come before these.
    assert_eq!(mock.emit("alice", "shr_b", "folder_created", &json!({})), 1);
    assert_eq!(
        mock.emit("bob", "shr_a", "file_deleted", &json!({"file_id": "fil_1"})),
        1
    );
    assert_eq!(next_json(&mut b).await["event_type"], "folder_created");
    assert_eq!(next_json(&mut bob).await["event_type"], "file_deleted");
    assert_eq!(mock.emit("carol", "shr_a", "file_updated", &data), 0);

    // Unsubscribed: nothing more for that share.
    send(&mut a, r#"{"action":"unsubscribe","share_id":"shr_a"}"#).await;
    assert_eq!(next_json(&mut a).await["type"], "unsubscribed");
    assert_eq!(mock.emit("alice", "shr_a", "file_updated", &data), 0);
    send(&mut a, r#"{"action":"ping"}"#).await;
    assert_eq!(next_text(&mut a).await, r#"{"type":"pong"}"#);
    assert_eq!(scaidrive::REALTIME_EVENTS.len(), 5);
}

#[tokio::test]
async fn scaidrive_force_sync_reaches_every_holder_of_the_share() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let mut a = realtime(&mock, "tok-alice").await;
    let mut other = realtime(&mock, "tok-alice-2").await;
    send(&mut a, r#"{"action":"subscribe","share_id":"shr_a"}"#).await;
    send(&mut other, r#"{"action":"subscribe","share_id":"shr_b"}"#).await;
    assert_eq!(next_json(&mut a).await["type"], "subscribed");
    assert_eq!(next_json(&mut other).await["type"], "subscribed");
    let mut sync = scai_ws(&mock, "/api/v1/sync/ws/dev-1?token=tok-alice", &[]).await;
    send(&mut sync, r#"{"type":"subscribe"}"#).await;
    assert_eq!(next_text(&mut sync).await, r#"{"type":"subscribed"}"#);

    assert_eq!(mock.force_sync("alice", "shr_a"), 2);
    let want = r#"{"event_type":"force_sync","share_id":"shr_a"}"#;
    assert_eq!(next_text(&mut a).await, want);
    assert_eq!(next_text(&mut sync).await, want);
    assert_eq!(mock.force_sync("bob", "shr_a"), 0);
    // The socket holding only shr_b got none: its next frame is its own.
    assert_eq!(mock.force_sync("alice", "shr_b"), 2);
    assert_eq!(next_json(&mut other).await["share_id"], "shr_b");
    assert_eq!(next_json(&mut sync).await["share_id"], "shr_b");
}

#[tokio::test]
async fn scaidrive_sync_socket_subscribes_once_for_every_share() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let mut sync = scai_ws(
        &mock,
        "/api/v1/sync/ws/dev-7",
        &[("authorization", "Bearer tok-alice")],
    )
    .await;
    assert!(seeds::until(WAIT, || mock.open_for("alice") == 1).await);
    assert_eq!(
        mock.sockets("alice")[0].endpoint,
        scaidrive::Endpoint::Sync {
            device_id: "dev-7".to_string()
        }
    );
    // No `connected` on this endpoint, and nothing before `subscribe`.
    assert_eq!(mock.change("alice", "shr_a", &json!({})), 0);
    send(&mut sync, r#"{"type":"ping"}"#).await;
    assert_eq!(next_text(&mut sync).await, r#"{"type":"pong"}"#);
    // The realtime socket's actions mean nothing here.
    send(&mut sync, r#"{"action":"subscribe","share_id":"shr_a"}"#).await;
    send(&mut sync, r#"{"type":"subscribe"}"#).await;
    assert_eq!(next_text(&mut sync).await, r#"{"type":"subscribed"}"#);
    assert!(mock.sockets("alice")[0].all_shares);
    assert_eq!(mock.ignored_frames(), 1);

    let entry = json!({"id": "chg_01J3L", "change_type": "updated", "resource_type": "file"});
    assert_eq!(mock.change("alice", "shr_a", &entry), 1);
    assert_eq!(mock.change("alice", "shr_z", &entry), 1);
    assert_eq!(mock.preference_updated("alice", "shr_a", "dev-9"), 1);
    assert_eq!(mock.change("bob", "shr_a", &entry), 0);
    // Realtime events are not sync frames.
    assert_eq!(mock.emit("alice", "shr_a", "file_created", &entry), 0);
    assert_eq!(
        next_text(&mut sync).await,
        r#"{"event_type":"change","share_id":"shr_a","data":{"change_type":"updated","id":"chg_01J3L","resource_type":"file"}}"#
    );
    assert_eq!(next_json(&mut sync).await["share_id"], "shr_z");
    assert_eq!(
        next_text(&mut sync).await,
        r#"{"event_type":"sync_preference_updated","share_id":"shr_a","device_id":"dev-9"}"#
    );
}

#[tokio::test]
async fn scaidrive_drop_all_loses_every_socket_and_nothing_survives_a_reconnect() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let mut a = realtime(&mock, "tok-alice").await;
    let mut bob = realtime(&mock, "tok-bob").await;
    send(&mut a, r#"{"action":"subscribe","share_id":"shr_a"}"#).await;
    assert_eq!(next_json(&mut a).await["type"], "subscribed");

    mock.drop_all();
    assert_eq!(
        ending(&mut a).await,
        None,
        "no close frame: the backend is gone"
    );
    assert_eq!(ending(&mut bob).await, None);
    assert_eq!(mock.open_sockets(), 0);
    assert_eq!(mock.emit("alice", "shr_a", "file_created", &json!({})), 0);

    // The server kept nothing: the new socket holds no share until asked.
    let mut a = realtime(&mock, "tok-alice").await;
    assert_eq!(mock.sockets("alice")[0].shares, Vec::<String>::new());
    assert_eq!(mock.emit("alice", "shr_a", "file_created", &json!({})), 0);
    send(&mut a, r#"{"action":"subscribe","share_id":"shr_a"}"#).await;
    assert_eq!(
        next_text(&mut a).await,
        r#"{"type":"subscribed","share_id":"shr_a"}"#
    );
    assert_eq!(mock.emit("alice", "shr_a", "file_created", &json!({})), 1);
    assert_eq!(next_json(&mut a).await["event_type"], "file_created");
    assert_eq!((mock.connects_for("alice"), mock.connects()), (2, 3));

    // A clean shutdown instead: a close frame with the code asked for.
    mock.close_all(1001);
    assert_eq!(ending(&mut a).await, Some(1001));
    assert!(seeds::until(WAIT, || mock.open_sockets() == 0).await);
}

// The default current-thread runtime matters here: the socket's task cannot
// drain between the synchronous emits, so the fifth finds the buffer full.
#[tokio::test]
async fn scaidrive_full_buffer_sends_force_sync_and_closes() {
    let mock = scaidrive::Mock::with_buffer(&SCAI_TOKENS, 4).await;
    let mut a = realtime(&mock, "tok-alice").await;
    let mut b = realtime(&mock, "tok-alice-2").await;
    for ws in [&mut a, &mut b] {
        send(ws, r#"{"action":"subscribe","share_id":"shr_a"}"#).await;
        assert_eq!(next_json(ws).await["type"], "subscribed");
    }
    let took: Vec<usize> = (0..5)
        .map(|i| mock.emit("alice", "shr_a", "file_updated", &json!({ "n": i })))
        .collect();
    assert_eq!(took, [2, 2, 2, 2, 0]);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            next_text(ws).await,
            r#"{"event_type":"force_sync","share_id":"shr_a"}"#
        );
        assert_eq!(ending(ws).await, Some(scaidrive::OVERFLOW_CLOSE));
    }
    assert_eq!(mock.overflows(), 2);
    assert!(seeds::until(WAIT, || mock.open_sockets() == 0).await);
}

#[tokio::test]
async fn scaidrive_ui_client_heartbeats_reconnects_resubscribes_and_pulls() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let timing = scaidrive::Timing::scaled(300);
    let ui = scaidrive::Client::start(
        mock.url(),
        "tok-alice",
        scaidrive::Auth::Query,
        &["shr_a", "shr_b"],
        timing,
    );
    let tablet = scaidrive::Client::start(
        mock.addr(),
        "tok-alice-2",
        scaidrive::Auth::Bearer,
        &["shr_b"],
        timing,
    );
    assert!(
        ui.wait_for(WAIT, |v| v.subscribed.len() == 2 && v.pongs >= 2)
            .await,
        "{:?}",
        ui.view()
    );
    assert!(tablet.wait_for(WAIT, |v| v.subscribed.len() == 1).await);
    assert_eq!(ui.view().user_id.as_deref(), Some("alice"));
    assert_eq!(mock.subscribers("alice", "shr_b"), 2);

    assert_eq!(
        mock.emit("alice", "shr_a", "file_created", &json!({"file_id": "f1"})),
        1
    );
    assert_eq!(
        mock.emit("alice", "shr_b", "file_deleted", &json!({"file_id": "f2"})),
        2
    );
    assert!(ui.wait_for(WAIT, |v| v.events.len() == 2).await);
    assert!(tablet.wait_for(WAIT, |v| v.events.len() == 1).await);
    assert_eq!(tablet.view().events_of("file_deleted").len(), 1);

    // Upstream loss: both come back, re-subscribe and pull once each.
    mock.drop_all();
    assert!(
        ui.wait_for(WAIT, |v| v.reconnects == 1
            && v.subscribed.len() == 2
            && v.pulls == 1)
            .await,
        "{:?}",
        ui.view()
    );
    assert!(
        tablet
            .wait_for(WAIT, |v| v.reconnects == 1 && v.subscribed.len() == 1)
            .await
    );
    assert_eq!(mock.sockets("alice").len(), 2);
    assert_eq!(mock.connects_for("alice"), 4);

    assert_eq!(mock.force_sync("alice", "shr_a"), 1);
    assert!(
        ui.wait_for(WAIT, |v| v.force_syncs == 1 && v.pulls == 2)
            .await
    );
    ui.unsubscribe("shr_a");
    assert!(ui.wait_for(WAIT, |v| !v.subscribed.contains("shr_a")).await);
    assert_eq!(mock.emit("alice", "shr_a", "file_created", &json!({})), 0);
    ui.subscribe("shr_c");
    assert!(ui.wait_for(WAIT, |v| v.subscribed.contains("shr_c")).await);
    assert_eq!(ui.view().dead_heartbeats, 0);

    // A clean close is a loss too: reconnect, with the current shares.
    mock.close_all(1012);
    assert!(
        ui.wait_for(WAIT, |v| v.reconnects == 2
            && v.subscribed.iter().eq(["shr_b", "shr_c"]))
            .await,
        "{:?}",
        ui.view()
    );
    assert_eq!(ui.view().close_codes, [1012]);
}

#[tokio::test]
async fn scaidrive_ui_client_stops_on_4401() {
    let mock = scaidrive::Mock::start(&SCAI_TOKENS).await;
    let ui = scaidrive::Client::start(
        mock.url(),
        "stale",
        scaidrive::Auth::Bearer,
        &["shr_a"],
        scaidrive::Timing::scaled(1000),
    );
    assert!(ui.wait_for(WAIT, |v| v.refused).await, "{:?}", ui.view());
    let v = ui.view();
    assert_eq!(
        (v.opens, v.close_codes, v.connected),
        (1, vec![4401], false)
    );
    assert_eq!((mock.refusals(), mock.connects()), (1, 0));
}

#[tokio::test]
async fn scaidrive_ui_client_treats_a_missing_pong_as_a_dead_connection() {
    use futures_util::StreamExt;
    // A backend that accepts and reads but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    let ui = scaidrive::Client::start(
        addr,
        "tok-alice",
        scaidrive::Auth::Query,
        &[],
        scaidrive::Timing::scaled(300),
    );
    assert!(
        ui.wait_for(WAIT, |v| v.dead_heartbeats >= 1 && v.reconnects >= 1)
            .await,
        "{:?}",
        ui.view()
    );
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert_eq!(ui.view().pongs, 0);
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
