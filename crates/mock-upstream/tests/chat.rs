//! Read watermarks, HTML fragments and admin routes over HTTP.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn watermark_only_moves_forward_and_emits_on_change() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let url = format!("{}/api/v1/contacts/read", mock.url());
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );

    let r = post_json(&c, &url, Some(&alice), r#"{"peer":"bob","rowId":5}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"peer": "bob", "rowId": 5}));
    let ev = s.next().await;
    assert_eq!(ev.event, "read-watermark-changed");
    assert_eq!(ev.json(), json!({"peer": "bob", "rowId": 5}));

    let r = post_json(&c, &url, Some(&alice), r#"{"peer":"bob","rowId":3}"#).await;
    assert_eq!(r.json(), json!({"peer": "bob", "rowId": 5}));
    let r = post_json(&c, &url, Some(&alice), r#"{"peer":"bob","rowId":5}"#).await;
    assert_eq!(r.json(), json!({"peer": "bob", "rowId": 5}));
    assert_eq!(mock.read_watermark("alice", "bob"), 5);
    assert_eq!(mock.read_watermark("bob", "alice"), 0);

    // No event for the non-changes: the next thing on the stream is the marker.
    mock.emit("alice", "marker", "m");
    assert_eq!(s.next().await.event, "marker");

    for bad in [
        "{",
        r#"{"peer":"bob"}"#,
        r#"{"peer":"bob","rowId":-1}"#,
        r#"{"peer":"bob","rowId":"7"}"#,
        r#"{"peer":"zed","rowId":1}"#,
        r#"{"rowId":1}"#,
    ] {
        assert_eq!(
            post_json(&c, &url, Some(&alice), bad).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        post_json(&c, &url, None, r#"{"peer":"bob","rowId":9}"#)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn reading_tells_the_sender_which_messages_were_seen() {
    let mock = start().await;
    let c = client();
    let (alice, bob) = (mock.create_session("alice"), mock.create_session("bob"));
    let url = format!("{}/api/v1/contacts/read", mock.url());
    let b1 = mock.send_message("bob", "alice", "one");
    let b2 = mock.send_message("bob", "alice", "two");
    let a3 = mock.send_message("alice", "bob", "three");
    let mut a = open_events(&c, &mock.url(), &alice, None).await;
    let mut b = open_events(&c, &mock.url(), &bob, None).await;
    assert!(mock.wait_until(SOON, |m| m.open_streams_total() == 2).await);

    // Alice reads bob's first message: bob hears it was seen, with alice as
    // the peer (the same shape as his `sent`), so his view of the thread
    // with alice can re-render.
    post_json(
        &c,
        &url,
        Some(&alice),
        &format!(r#"{{"peer":"bob","rowId":{b1}}}"#),
    )
    .await;
    assert_eq!(a.next().await.event, "read-watermark-changed");
    let ev = b.next().await;
    assert_eq!(ev.event, "outbound-state");
    assert_eq!(
        ev.json(),
        json!({"peer": "alice", "rowId": b1, "state": "read"})
    );

    // Up to her own later message: bob's b2 is the newest of his now read.
    post_json(
        &c,
        &url,
        Some(&alice),
        &format!(r#"{{"peer":"bob","rowId":{a3}}}"#),
    )
    .await;
    assert_eq!(
        b.next().await.json(),
        json!({"peer": "alice", "rowId": b2, "state": "read"})
    );
    assert_eq!(a.next().await.json(), json!({"peer": "bob", "rowId": a3}));

    // A move that covers none of bob's messages (only alice's own, or none
    // at all) and a non-move tell bob nothing.
    let a4 = mock.send_message("alice", "bob", "four");
    assert_eq!(b.next().await.event, "inbound");
    for row in [a4, a4, a4 + 5] {
        post_json(
            &c,
            &url,
            Some(&alice),
            &format!(r#"{{"peer":"bob","rowId":{row}}}"#),
        )
        .await;
    }
    mock.emit("bob", "marker", "m");
    assert_eq!(b.next().await.event, "marker");
    // Bob reading alice's messages tells alice, not bob.
    post_json(
        &c,
        &url,
        Some(&bob),
        &format!(r#"{{"peer":"alice","rowId":{a4}}}"#),
    )
    .await;
    mock.emit("bob", "marker", "m2");
    assert_eq!(b.next().await.event, "read-watermark-changed");
    assert_eq!(b.next().await.data, "m2");
    loop {
        let ev = a.next().await;
        if ev.event == "outbound-state" && ev.json()["state"] == "read" {
            assert_eq!(
                ev.json(),
                json!({"peer": "bob", "rowId": a4, "state": "read"})
            );
            break;
        }
    }
}

#[tokio::test]
async fn fragments_render_unread_counts_and_threads() {
    let mock = start().await;
    let c = client();
    let alice = mock.create_session("alice");
    let r1 = mock.send_message("bob", "alice", "one");
    let r2 = mock.send_message("alice", "bob", "<two>");
    let r3 = mock.send_message("bob", "alice", "three");
    mock.send_message("carol", "alice", "c1");
    let url = format!("{}/api/v1/contacts/read", mock.url());
    post_json(
        &c,
        &url,
        Some(&alice),
        &format!(r#"{{"peer":"bob","rowId":{r1}}}"#),
    )
    .await;

    let side = get(
        &c,
        &format!("{}/fragments/sidebar", mock.url()),
        Some(&alice),
    )
    .await;
    assert_eq!(side.status, StatusCode::OK);
    assert!(
        side.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        !side.body.contains("data-peer=\"alice\""),
        "self is not a contact"
    );
    assert!(side.body.contains("data-peer=\"bob\""));
    let bob_row = side
        .body
        .lines()
        .find(|l| l.contains("data-peer=\"bob\""))
        .unwrap();
    assert!(bob_row.contains("data-unread=\"1\""), "{bob_row}");
    let carol_row = side
        .body
        .lines()
        .find(|l| l.contains("data-peer=\"carol\""))
        .unwrap();
    assert!(carol_row.contains("data-unread=\"1\""), "{carol_row}");

    let t = get(
        &c,
        &format!("{}/fragments/thread/bob", mock.url()),
        Some(&alice),
    )
    .await;
    assert_eq!(t.status, StatusCode::OK);
    let positions: Vec<usize> = [r1, r2, r3]
        .iter()
        .map(|r| {
            t.body
                .find(&format!("data-row-id=\"{r}\""))
                .expect("row present")
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(t.body.contains("&lt;two&gt;") && !t.body.contains("<two>"));
    assert!(!t.body.contains("c1"));

    let bad = get(
        &c,
        &format!("{}/fragments/thread/%3Cx%3E", mock.url()),
        Some(&alice),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let page = get(&c, &format!("{}/", mock.url()), Some(&alice)).await;
    assert!(page.body.contains("id=\"sidebar\"") && page.body.contains("id=\"thread\""));
    let login = get(&c, &format!("{}/", mock.url()), None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains("action=\"/login\"") && login.body.contains("name=\"user\""));
}

#[tokio::test]
async fn admin_answers_loopback_without_forwarded_for_only() {
    let mock = start().await;
    let c = client();
    let stats = format!("{}/__admin/stats", mock.url());
    let r = send(
        &c,
        request(
            Method::GET,
            &stats,
            None,
            &[("x-forwarded-for", "127.0.0.1")],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        &c,
        request(
            Method::POST,
            &format!("{}/__admin/restart", mock.url()),
            None,
            &[("x-forwarded-for", "1.2.3.4")],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let alice = mock.create_session("alice");
    let _s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    let r = get(&c, &stats, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({
            "epoch": mock.epoch(),
            "openStreams": {"alice": 1},
            "openStreamsTotal": 1,
            "streamsOpenedTotal": 1,
        })
    );
}

#[tokio::test]
async fn admin_controls_over_http() {
    let mock = start().await;
    let c = client();
    let base = mock.url();
    let post =
        |path: &str, body: &str| request(Method::POST, &format!("{base}{path}"), None, &[], body);
    let alice = mock.create_session("alice");
    let mut s = open_events(&c, &base, &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );

    let r = send(
        &c,
        post("/__admin/emit?user=alice&event=resync", "{\"why\":1}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let ev = s.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("resync", "{\"why\":1}")
    );
    assert_eq!(r.json(), json!({"id": ev.id}));

    assert_eq!(
        send(&c, post("/__admin/drop", "")).await.status,
        StatusCode::OK
    );
    assert!(s.ends().await);

    assert_eq!(
        send(&c, post("/__admin/refuse?status=502&ms=60000", ""))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        open_events(&c, &base, &alice, None).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        send(&c, post("/__admin/refuse?ms=0", "")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        open_events(&c, &base, &alice, None).await.status,
        StatusCode::OK
    );

    assert_eq!(
        send(&c, post("/__admin/stall?ms=1", "")).await.status,
        StatusCode::OK
    );

    let old = mock.epoch();
    let r = send(&c, post("/__admin/restart", "")).await;
    assert_eq!(r.json(), json!({"epoch": mock.epoch()}));
    assert_ne!(mock.epoch(), old);

    for bad in [
        "/__admin/refuse?status=abc",
        "/__admin/refuse?status=99",
        "/__admin/refuse?ms=-5",
        "/__admin/stall?ms=x",
        "/__admin/emit?user=zed&event=x",
        "/__admin/emit?user=alice",
        "/__admin/emit?user=alice&event=a%0Ab",
        "/__admin/drop?%zz",
    ] {
        assert_eq!(
            send(&c, post(bad, "")).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let r = get(&c, &format!("{base}/__admin/drop"), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}
