//! The events stream: message events, resumption by `Last-Event-ID`,
//! resync, and the subscribe-then-replay seam.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::json;
use ssemux_mock_upstream::MockConfig;

#[tokio::test]
async fn message_emits_outbound_state_and_inbound() {
    let mock = start().await;
    let c = client();
    let (alice, bob) = (mock.create_session("alice"), mock.create_session("bob"));
    let mut a = open_events(&c, &mock.url(), &alice, None).await;
    let mut b = open_events(&c, &mock.url(), &bob, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(a.headers.get("cache-control").unwrap(), "no-cache");
    assert!(mock.wait_until(SOON, |m| m.open_streams_total() == 2).await);

    let r = post_json(
        &c,
        &format!("{}/api/v1/messages", mock.url()),
        Some(&alice),
        r#"{"to":"bob","text":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"rowId": 1}));

    let ev = a.next().await;
    assert_eq!(ev.event, "outbound-state");
    assert_eq!(
        ev.json(),
        json!({"peer": "bob", "rowId": 1, "state": "sent"})
    );
    assert_eq!(ev.id, format!("{}-1", mock.epoch()));
    let ev = b.next().await;
    assert_eq!(ev.event, "inbound");
    assert_eq!(ev.json(), json!({"peer": "alice", "rowId": 1}));

    assert_eq!(mock.send_message("bob", "alice", "yo"), 2);
    assert_eq!(a.next().await.json(), json!({"peer": "bob", "rowId": 2}));
    let ev = b.next().await;
    assert_eq!((ev.event.as_str(), ev.seq()), ("outbound-state", 2));

    let url = format!("{}/api/v1/messages", mock.url());
    for bad in [
        r#"{"to":"zed","text":"x"}"#,
        r#"{"to":"bob"}"#,
        r#"{"text":"x"}"#,
        r#"{"to":"bob","text":""}"#,
        r#"{"to":"bob","text":"   "}"#,
        r#"{"to":"bob","text":" \t\n\u00a0"}"#,
        "{",
    ] {
        assert_eq!(
            post_json(&c, &url, Some(&alice), bad).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    // The send box posts a form; spaces arrive as `+` or `%20`.
    for body in ["to=bob&text=+++", "to=bob&text=%20%09", "to=bob&text="] {
        let r = send(
            &c,
            request(
                http::Method::POST,
                &url,
                Some(&alice),
                &[("content-type", "application/x-www-form-urlencoded")],
                body,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body, "empty message\n", "{body}");
    }
    // Blank messages were refused without a trace: the next event is the
    // marker, not an empty bubble.
    mock.emit("alice", "marker", "m");
    assert_eq!(a.next().await.event, "marker");
    assert_eq!(
        post_json(&c, &url, None, r#"{"to":"bob","text":"x"}"#)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn resume_by_last_event_id_has_no_gap_and_no_dup() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    for i in 1..=3 {
        mock.emit("alice", "tick", &i.to_string());
    }
    let mut last = String::new();
    for i in 1..=3 {
        let ev = s.next().await;
        assert_eq!((ev.seq(), ev.data.as_str()), (i, i.to_string().as_str()));
        last = ev.id;
    }
    drop(s);
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 0)
            .await
    );

    // Missed while disconnected.
    mock.emit("alice", "tick", "4");
    mock.emit("alice", "tick", "5");
    let mut s = open_events(&c, &mock.url(), &alice, Some(&last)).await;
    assert_eq!(s.next().await.data, "4");
    assert_eq!(s.next().await.data, "5");
    mock.emit("alice", "tick", "6");
    let ev = s.next().await;
    assert_eq!((ev.seq(), ev.data.as_str()), (6, "6"));
    assert_eq!(mock.stream_requests("alice"), vec![None, Some(last)]);
}

#[tokio::test]
async fn resuming_at_the_newest_id_replays_nothing() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let id = mock.emit("alice", "tick", "1");
    let mut s = open_events(&c, &mock.url(), &alice, Some(&id)).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    mock.emit("alice", "tick", "2");
    assert_eq!(s.next().await.data, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seam_is_exact_under_concurrent_publishing() {
    let mock = start_with(MockConfig {
        log_capacity: 100_000,
        ..MockConfig::default()
    })
    .await;
    let c = client();
    let alice = mock.create_session("alice");
    const N: u64 = 2000;
    let publisher = {
        let mock = mock.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                mock.emit("alice", "tick", &i.to_string());
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Reconnect after every few events while the publisher runs.
    let mut seen = Vec::new();
    // Cursor 0 of this epoch: replay from the very first event.
    let mut last = Some(format!("{}-0", mock.epoch()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.last().copied() != Some(N) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {:?}",
            seen.last()
        );
        let mut s = open_events(&c, &mock.url(), &alice, last.as_deref()).await;
        for _ in 0..7 {
            match s.read(SOON).await {
                Read::Event(ev) => {
                    assert_eq!(ev.event, "tick", "no resync expected");
                    let seq = ev.seq();
                    seen.push(seq);
                    last = Some(ev.id);
                    if seq == N {
                        break;
                    }
                }
                Read::Comment(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    publisher.await.unwrap();
    let expected: Vec<u64> = (1..=N).collect();
    assert_eq!(seen, expected, "gap or duplicate across reconnects");
}

#[tokio::test]
async fn resync_after_restart_then_live() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let old_epoch = mock.epoch();
    let old_id = mock.emit("alice", "tick", "old");
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );

    mock.restart();
    assert_ne!(mock.epoch(), old_epoch);
    assert!(s.ends().await, "restart ends open streams");
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 0)
            .await
    );

    let mut s = open_events(&c, &mock.url(), &alice, Some(&old_id)).await;
    let ev = s.next().await;
    assert_eq!(ev.event, "resync");
    assert_eq!(ev.data, "{}");
    assert_eq!(ev.id, format!("{}-0", mock.epoch()));
    let id = mock.emit("alice", "tick", "new");
    let ev = s.next().await;
    assert_eq!((ev.id, ev.data.as_str()), (id, "new"));
}

#[tokio::test]
async fn resync_for_ids_older_than_the_log_or_garbage() {
    let mock = start_with(MockConfig {
        log_capacity: 4,
        ..MockConfig::default()
    })
    .await;
    let c = client();
    let bob = mock.create_session("bob");
    let ids: Vec<String> = (1..=10)
        .map(|i| mock.emit("bob", "tick", &i.to_string()))
        .collect();

    // 6..=10 are logged, so resuming after 6 is fine and after 5 is not.
    let mut s = open_events(&c, &mock.url(), &bob, Some(&ids[5])).await;
    let got: Vec<String> = [
        s.next().await,
        s.next().await,
        s.next().await,
        s.next().await,
    ]
    .into_iter()
    .map(|e| e.data)
    .collect();
    assert_eq!(got, ["7", "8", "9", "10"]);

    let mut newest = ids[9].clone();
    for stale in [
        ids[4].as_str(),
        "garbage",
        "-",
        "x-1",
        &format!("{}-999", mock.epoch()),
    ] {
        let mut s = open_events(&c, &mock.url(), &bob, Some(stale)).await;
        let ev = s.next().await;
        assert_eq!(ev.event, "resync", "{stale}");
        assert_eq!(
            ev.id, newest,
            "resync carries the cursor of the newest event"
        );
        newest = mock.emit("bob", "marker", "m");
        let ev = s.next().await;
        assert_eq!(ev.event, "marker", "live follows the resync directly");
    }
}

#[tokio::test]
async fn streams_of_one_user_are_independent_of_others() {
    let mock = start().await;
    let c = client();
    let tokens: Vec<String> = (0..20)
        .map(|i| mock.create_session(&format!("user{i}")))
        .collect();
    let mut streams = Vec::new();
    for t in &tokens {
        streams.push(open_events(&c, &mock.url(), t, None).await);
    }
    assert!(
        mock.wait_until(SOON, |m| m.open_streams_total() == 20)
            .await
    );
    for i in 0..20 {
        mock.emit(&format!("user{i}"), "tick", &i.to_string());
    }
    let mut got = HashSet::new();
    for (i, s) in streams.iter_mut().enumerate() {
        let ev = s.next().await;
        assert_eq!(ev.data, i.to_string());
        assert_eq!(ev.seq(), 1, "seq is per user");
        got.insert(ev.data);
    }
    assert_eq!(got.len(), 20);
}

#[tokio::test]
async fn multi_line_data_is_framed_safely() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    mock.emit("alice", "evil\nevent: x", "a\nid: 9\r\nb");
    let ev = s.next().await;
    assert_eq!(ev.event, "evilevent: x");
    assert_eq!(ev.data, "a\nid: 9\nb");
    assert_eq!(ev.seq(), 1);
}
