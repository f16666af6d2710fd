//! Tabs that come and go, end to end against the mock backend: replay after
//! `Last-Event-ID` (header and query), resync for ids the gateway cannot
//! serve, the replay/live seam under concurrent publishing, slow and stalled
//! tabs, and the per-user, total and per-address limits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Env, Ev, Tab, WAIT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// Emit one upstream event that translates to exactly one trigger
/// (`contact-changed`, data = `peer`).
fn emit_one(env: &Env, user: &str, peer: &str) {
    let data = serde_json::json!({ "peer": peer, "rowId": 1 }).to_string();
    env.backend.emit(user, "read-watermark-changed", &data);
}

/// An id's `<epoch>-<seq>` part (before its sealed position, if any).
fn head(id: &str) -> &str {
    id.split_once('.').map_or(id, |(h, _)| h)
}

/// The downstream sequence number of an event id `<epoch>-<seq>[.<pos>]`.
fn seq(ev: &Ev) -> u64 {
    head(&ev.id)
        .rsplit_once('-')
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or_else(|| panic!("not a downstream id: {ev:?}"))
}

fn epoch(ev: &Ev) -> String {
    head(&ev.id)
        .rsplit_once('-')
        .map(|(e, _)| e.to_string())
        .unwrap_or_default()
}

/// Wait until `cond` holds, polling; false if `wait` passes first.
async fn wait_for(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// A user with one open tab and its upstream connected.
async fn connected(env: &Env, user: &str) -> (String, Tab) {
    let cookie = env.cookie(user);
    let tab = env.tab(&cookie).await;
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams(user) == 1)
            .await,
        "upstream for {user} connects"
    );
    (cookie, tab)
}

/// The channel's newest sequence number (0 when there is no channel).
fn last_seq(env: &Env, user: &str) -> u64 {
    env.gateway.hub().channel(user).map_or(0, |c| c.last_seq())
}

async fn replay_after_reconnect(query_form: bool) {
    let env = Env::start(&[]).await;
    let (cookie, mut tab) = connected(&env, "alice").await;
    let mut seen = Vec::new();
    for i in 1..=10 {
        emit_one(&env, "alice", &format!("p{i}"));
        seen.push(tab.next().await);
    }
    assert_eq!(
        seen.iter().map(seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    drop(tab);
    assert!(wait_for(WAIT, || env.gateway.hub().tabs("alice") == 0).await);
    for i in 11..=15 {
        emit_one(&env, "alice", &format!("p{i}"));
    }
    assert!(wait_for(WAIT, || last_seq(&env, "alice") == 15).await);

    let last = &seen[9].id;
    let mut tab = if query_form {
        Tab::open(
            env.addr,
            &format!("/events?lastEventId={last}"),
            &cookie,
            None,
        )
        .await
    } else {
        Tab::open(env.addr, "/events", &cookie, Some(last)).await
    }
    .expect("reconnects");
    let mut replayed = Vec::new();
    for _ in 11..=15 {
        replayed.push(tab.next().await);
    }
    assert_eq!(
        replayed.iter().map(seq).collect::<Vec<_>>(),
        (11..=15).collect::<Vec<_>>()
    );
    let datas: Vec<&str> = replayed.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(datas, ["p11", "p12", "p13", "p14", "p15"]);
    assert!(replayed.iter().all(|e| epoch(e) == epoch(&seen[0])));
    // Then live, with nothing in between.
    emit_one(&env, "alice", "live");
    let ev = tab.next().await;
    assert_eq!((seq(&ev), ev.data.as_str()), (16, "live"));
}

#[tokio::test]
async fn replay_by_last_event_id_header() {
    replay_after_reconnect(false).await;
}

#[tokio::test]
async fn replay_by_last_event_id_query_parameter() {
    replay_after_reconnect(true).await;
}

#[tokio::test]
async fn unservable_ids_get_one_resync_then_live() {
    let env = Env::start(&["hub.ring_size=4"]).await;
    let (cookie, mut tab) = connected(&env, "alice").await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        emit_one(&env, "alice", &format!("p{i}"));
        ids.push(tab.next().await.id);
    }
    let this_epoch = epoch(&tab_ev(&ids[0]));
    let other_epoch = format!("{}ff-3", this_epoch);
    for stale in [
        other_epoch.as_str(),         // another epoch (gateway restarted, grace passed)
        ids[2].as_str(),              // older than the 4-frame ring
        "garbage",                    // not an id at all
        &format!("{this_epoch}-999"), // from the future
    ] {
        let mut t = Tab::open(env.addr, "/events", &cookie, Some(stale))
            .await
            .expect("opens");
        let first = t.next().await;
        assert_eq!(first.event, "resync", "{stale}");
        assert_eq!(first.data, "1");
        // The resync carries the current position, so a reconnect after it
        // resumes from there instead of resyncing again.
        let at = last_seq(&env, "alice");
        assert_eq!(seq(&first), at, "{stale}");
        // Distinct each time: identical ones would coalesce in the replay
        // below.
        emit_one(&env, "alice", &format!("after {stale}"));
        let next = t.next().await;
        assert_eq!(
            (next.event.as_str(), seq(&next)),
            ("contact-changed", at + 1),
            "{stale}"
        );
        // The other tab, untouched, got it too and nothing else.
        assert_eq!(seq(&tab.next().await), at + 1);
    }
    // An id still in the ring replays without resync.
    let newest = last_seq(&env, "alice");
    let mut t = Tab::open(
        env.addr,
        "/events",
        &cookie,
        Some(&format!("{this_epoch}-{}", newest - 2)),
    )
    .await
    .expect("opens");
    assert_eq!(seq(&t.next().await), newest - 1);
    assert_eq!(seq(&t.next().await), newest);
}

fn tab_ev(id: &str) -> Ev {
    Ev {
        event: String::new(),
        data: String::new(),
        id: id.to_string(),
    }
}

/// Triggers flow without pause while tabs keep reconnecting with their last
/// id: each tab's sequence is gapless and duplicate-free except right after a
/// `resync`.
#[tokio::test]
async fn seam_has_no_gap_and_no_duplicate_under_reconnect_churn() {
    let env = Arc::new(Env::start(&["hub.grace=30s"]).await);
    let (cookie, keeper) = connected(&env, "alice").await;
    let stop = Arc::new(AtomicBool::new(false));
    let emitter = {
        let env = env.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded: stops when told, or after 20k events at most.
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                emit_one(&env, "alice", &format!("e{n}"));
                if n.is_multiple_of(4) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            n
        })
    };
    let mut checkers = Vec::new();
    for _ in 0..3 {
        let addr = env.addr;
        let cookie = cookie.clone();
        checkers.push(tokio::spawn(async move {
            let mut last: Option<String> = None;
            let mut expect: Option<u64> = None;
            let mut checked = 0usize;
            let mut resyncs = 0usize;
            for round in 0..30 {
                let mut tab = Tab::open(addr, "/events", &cookie, last.as_deref())
                    .await
                    .expect("reconnects");
                // Read a few events per connection, then drop mid-stream.
                for _ in 0..(3 + round % 5) {
                    let ev = tab.next().await;
                    if ev.event == "resync" {
                        resyncs += 1;
                        expect = Some(seq(&ev) + 1);
                    } else {
                        let s = seq(&ev);
                        if let Some(want) = expect {
                            assert_eq!(s, want, "gap or duplicate at the seam (round {round})");
                        }
                        expect = Some(s + 1);
                        checked += 1;
                    }
                    last = Some(ev.id);
                }
            }
            (checked, resyncs)
        }));
    }
    let mut total = 0;
    for c in checkers {
        let (checked, resyncs) = c.await.expect("checker");
        assert_eq!(resyncs, 0, "every reconnect was within the ring");
        total += checked;
    }
    stop.store(true, Ordering::Relaxed);
    let emitted = emitter.await.expect("emitter");
    assert!(total > 0 && emitted > 0);
    drop(keeper);
}

/// A browser tab that reads nothing: a hyper client connection with a tiny
/// receive buffer whose body is not polled until the test says so.
struct SlowTab {
    body: hyper::body::Incoming,
    parser: ssemux_sse::Parser,
    _conn: tokio::task::JoinHandle<()>,
}

impl SlowTab {
    async fn open(env: &Env, cookie: &str) -> SlowTab {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = sock.connect(env.addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get("/events")
            .header("host", env.addr.to_string())
            .header("cookie", cookie)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        SlowTab {
            body: resp.into_body(),
            parser: ssemux_sse::Parser::new(1 << 20),
            _conn: conn,
        }
    }

    /// Read on: every event from here on, through the first that `done`
    /// accepts.
    async fn read_until(&mut self, done: impl Fn(&Ev) -> bool) -> Vec<Ev> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT * 4;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("slow tab gets its events in time")
                .expect("stream still open")
                .expect("frame");
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.parser.push(&data);
            while let Some(item) = self.parser.next_item() {
                if let Ok(ssemux_sse::Item::Event(e)) = item {
                    out.push(Ev {
                        event: e.event,
                        data: e.data,
                        id: e.last_event_id,
                    });
                    if out.last().is_some_and(&done) {
                        return out;
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_slow_tab_gets_resync_and_never_holds_back_the_others() {
    // The write timeout must not cut the slow tab during this test.
    let env = Env::start(&["server.write_timeout=5m", "hub.max_lag_bytes=262144"]).await;
    let (cookie, mut fast1) = connected(&env, "alice").await;
    let mut fast2 = env.tab(&cookie).await;
    let slow = SlowTab::open(&env, &cookie).await;
    assert!(wait_for(WAIT, || env.gateway.hub().tabs("alice") == 3).await);

    // Large triggers, so the slow tab's socket and the server's write buffer
    // fill long before the channel's lag budget (256 KiB) is passed.
    let pad = "x".repeat(400);
    let total = 10_000u64;
    let batch = 250u64;
    let channel = env.gateway.hub().channel("alice").expect("channel");
    let mut max_backlog = 0;
    for b in 0..total / batch {
        for i in 0..batch {
            emit_one(&env, "alice", &format!("{}-{pad}", b * batch + i));
        }
        for tab in [&mut fast1, &mut fast2] {
            for i in 0..batch {
                let ev = tab.next().await;
                assert_eq!(seq(&ev), b * batch + i + 1, "a fast tab missed a trigger");
            }
        }
        max_backlog = max_backlog.max(channel.backlog());
    }
    // What the slow tab pins in the channel is bounded by configuration, not
    // by how far behind it is: the replay ring (hub.ring_size = 256 frames
    // of < 640 B: a ~420 B trigger and its id with the sealed upstream
    // position) plus hub.max_lag_bytes.
    let bound = 256 * 640 + 262_144;
    assert!(max_backlog <= bound / 400, "backlog {max_backlog}");
    assert!(
        channel.ring_bytes() <= bound,
        "ring {}",
        channel.ring_bytes()
    );

    // The slow tab reads again: what it was sent before falling behind,
    // then the resync (everything after its last trigger was skipped: the
    // resync re-renders the current state, so replaying stale triggers would
    // be wasted), then live triggers.
    let mut slow = slow;
    let mut got = slow.read_until(|e| e.event == "resync").await;
    emit_one(&env, "alice", "final");
    got.extend(slow.read_until(|e| e.data == "final").await);
    let resync_at = got
        .iter()
        .position(|e| e.event == "resync")
        .expect("the slow tab was told it missed triggers");
    // Before the resync: a gapless prefix from the start.
    for (i, ev) in got[..resync_at].iter().enumerate() {
        assert_eq!(seq(ev), i as u64 + 1, "silent skip before the resync");
    }
    // After it: gapless from wherever live was, ending with the final one.
    let after = &got[resync_at + 1..];
    assert!(!after.is_empty());
    for w in after.windows(2) {
        assert_eq!(seq(&w[1]), seq(&w[0]) + 1, "silent skip after the resync");
    }
    assert_eq!(seq(after.last().expect("final")), total + 1);
    assert!(
        got.len() < total as usize,
        "the slow tab skipped the backlog rather than buffering it all"
    );
}

#[tokio::test]
async fn a_stalled_tab_is_cut_after_the_write_timeout() {
    let env = Env::start(&["server.write_timeout=1s"]).await;
    let cookie = env.cookie("alice");
    let slow = SlowTab::open(&env, &cookie).await;
    assert!(wait_for(WAIT, || env.gateway.hub().tabs("alice") == 1).await);
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    let pad = "y".repeat(500);
    let mut cut = false;
    // Bounded: at most 40 batches (≈10 MB of triggers) over ≤ 20 s.
    for round in 0..40 {
        for i in 0..500 {
            emit_one(&env, "alice", &format!("{round}-{i}-{pad}"));
        }
        if wait_for(Duration::from_millis(500), || {
            env.gateway.hub().tabs("alice") == 0
        })
        .await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the stalled tab still holds its slot");
    assert_eq!(env.gateway.hub().total_tabs(), 0);
    drop(slow);
    // The user is not punished: a new tab works.
    let mut tab = env.tab(&cookie).await;
    emit_one(&env, "alice", "again");
    assert_eq!(
        tab.until("contact-changed")
            .await
            .last()
            .map(|e| e.data.clone()),
        Some("again".into())
    );
}

#[tokio::test]
async fn the_65th_tab_of_a_user_gets_429() {
    let env = Env::start(&[]).await;
    let cookie = env.cookie("alice");
    let mut tabs = Vec::new();
    for _ in 0..64 {
        tabs.push(env.tab(&cookie).await);
    }
    let err = Tab::open(env.addr, "/events", &cookie, None)
        .await
        .err()
        .expect("65th refused");
    assert_eq!(err, StatusCode::TOO_MANY_REQUESTS);
    let (status, headers, _) =
        common::request(env.addr, "GET", "/events", &[("cookie", &cookie)], "").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    // Another user is unaffected, and a freed slot is usable again.
    let bob = env.cookie("bob");
    drop(env.tab(&bob).await);
    tabs.pop();
    assert!(wait_for(WAIT, || env.gateway.hub().tabs("alice") == 63).await);
    tabs.push(env.tab(&cookie).await);
}

#[tokio::test]
async fn the_total_tab_limit_answers_503() {
    let env = Env::start(&["hub.max_total_tabs=3"]).await;
    let (a, b) = (env.cookie("alice"), env.cookie("bob"));
    let _t = [env.tab(&a).await, env.tab(&b).await, env.tab(&b).await];
    let (status, headers, _) =
        common::request(env.addr, "GET", "/events", &[("cookie", &a)], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(env.gateway.hub().total_tabs(), 3);
}

#[tokio::test]
async fn connects_per_address_are_rate_limited() {
    let env = Env::start(&[
        "server.events_connects_per_second=1",
        "server.client_ip_header=x-forwarded-for",
        // The test's requests come from a proxy on loopback.
        "server.trusted_proxies=127.0.0.1",
    ])
    .await;
    let cookie = env.cookie("alice");
    let from = |ip: &'static str| [("cookie", cookie.as_str()), ("x-forwarded-for", ip)];
    // Burst of two, then refused; streams are dropped at once.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(status_of(&env, &from("203.0.113.7")).await);
    }
    let statuses: Vec<StatusCode> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(&statuses[..2], [StatusCode::OK, StatusCode::OK]);
    let refused = seen
        .iter()
        .find(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .unwrap_or_else(|| panic!("never refused: {statuses:?}"));
    assert!(refused.1.contains_key("retry-after"));
    // Another client address is not affected.
    assert_eq!(
        status_of(&env, &from("203.0.113.8")).await.0,
        StatusCode::OK
    );
}

/// The status of a `GET /events`, without reading the body.
async fn status_of(env: &Env, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap) {
    let stream = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let mut b = Request::get("/events").header("host", env.addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        WAIT,
        send.send_request(b.body(Empty::<Bytes>::new()).expect("req")),
    )
    .await
    .expect("in time")
    .expect("response");
    conn.abort();
    (resp.status(), resp.headers().clone())
}

/// A `/events` request that lands while the hub is already shutting down
/// (a keep-alive connection racing the drain) gets an empty stream with a
/// `retry:` hint, never an error status: EventSource would give up for good.
#[tokio::test]
async fn events_during_drain_get_a_retry_hint_not_an_error() {
    let env = Env::start(&["hub.retry_hint=3s"]).await;
    let cookie = env.cookie("alice");
    env.gateway.hub().shutdown();
    let (status, headers, body) =
        common::request(env.addr, "GET", "/events", &[("cookie", &cookie)], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let mut parser = ssemux_sse::Parser::new(1024);
    parser.push(body.as_bytes());
    match parser.next_item() {
        Some(Ok(ssemux_sse::Item::Retry(ms))) => assert!((3000..=6000).contains(&ms), "{ms}"),
        other => panic!("expected a retry hint, got {other:?} in {body:?}"),
    }
    assert!(parser.next_item().is_none(), "nothing else: {body:?}");
}

/// A tab that arrives without an id is told its position at once (an id-only
/// frame, no event), so a drop before its first trigger still resumes by
/// replay instead of losing what happened in between.
#[tokio::test]
async fn a_fresh_tab_learns_its_position_before_any_trigger() {
    let env = Env::start(&[]).await;
    let (cookie, _keeper) = connected(&env, "alice").await;
    emit_one(&env, "alice", "before");
    assert!(wait_for(WAIT, || last_seq(&env, "alice") == 1).await);

    let stream = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("/events")
        .header("host", env.addr.to_string())
        .header("cookie", &cookie)
        .body(Empty::<Bytes>::new())
        .expect("req");
    let mut body = send.send_request(req).await.expect("response").into_body();
    let mut parser = ssemux_sse::Parser::new(1 << 16);
    let position = tokio::time::timeout(WAIT, async {
        loop {
            let frame = body.frame().await.expect("open").expect("frame");
            parser.push(&frame.into_data().unwrap_or_default());
            while let Some(item) = parser.next_item() {
                assert!(
                    !matches!(item, Ok(ssemux_sse::Item::Event(_))),
                    "no event is dispatched for the position"
                );
            }
            if !parser.last_event_id().is_empty() {
                return parser.last_event_id().to_string();
            }
        }
    })
    .await
    .expect("position in time");
    assert!(head(&position).ends_with("-1"), "{position}");
    drop(body);
    conn.abort();

    // Dropped before any trigger; two happen; the browser reconnects with
    // the id it was given and gets exactly those two.
    emit_one(&env, "alice", "missed-1");
    emit_one(&env, "alice", "missed-2");
    assert!(wait_for(WAIT, || last_seq(&env, "alice") == 3).await);
    let mut back = Tab::open(env.addr, "/events", &cookie, Some(&position))
        .await
        .expect("reconnects");
    assert_eq!(back.next().await.data, "missed-1");
    assert_eq!(back.next().await.data, "missed-2");
}

/// Read one event from a raw response body, within [`WAIT`].
async fn next_event(
    body: &mut hyper::body::Incoming,
    parser: &mut ssemux_sse::Parser,
    name: &str,
) -> Ev {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(item) = parser.next_item() {
            if let Ok(ssemux_sse::Item::Event(e)) = item
                && e.event == name
            {
                return Ev {
                    event: e.event,
                    data: e.data,
                    id: e.last_event_id,
                };
            }
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {name} in time"))
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            parser.push(&data);
        }
    }
}

#[tokio::test]
async fn events_work_on_a_fresh_connection_and_after_other_requests_on_a_kept_alive_one() {
    let env = Env::start(&[]).await;
    let cookie = env.cookie("alice");
    for reuse in [false, true] {
        let stream = tokio::net::TcpStream::connect(env.addr)
            .await
            .expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(conn);
        let get = |path: &str| {
            Request::get(path)
                .header("host", env.addr.to_string())
                .header("cookie", &cookie)
                .body(Empty::<Bytes>::new())
                .expect("request")
        };
        if reuse {
            // A proxied request first: the connection is hyper's from here
            // on, and the events request that follows must still work.
            let resp = send.send_request(get("/api/v1/me")).await.expect("me");
            assert_eq!(resp.status(), StatusCode::OK);
            resp.into_body().collect().await.expect("me body");
        }
        let resp = send.send_request(get("/events")).await.expect("events");
        assert_eq!(resp.status(), StatusCode::OK, "reuse={reuse}");
        assert_eq!(
            resp.headers()["content-type"],
            "text/event-stream",
            "reuse={reuse}"
        );
        // Only a connection that starts with the events request is served
        // by the lean path, which says it will not take another request.
        assert_eq!(
            resp.headers()
                .get("connection")
                .is_some_and(|v| v == "close"),
            !reuse,
            "reuse={reuse}"
        );
        let mut body = resp.into_body();
        let mut parser = ssemux_sse::Parser::new(1 << 16);
        assert!(
            env.backend
                .wait_until(WAIT, |b| b.open_streams("alice") == 1)
                .await
        );
        assert!(wait_for(WAIT, || env.gateway.hub().tabs("alice") == 1).await);
        let data = format!("peer-{reuse}");
        emit_one(&env, "alice", &data);
        assert_eq!(
            next_event(&mut body, &mut parser, "contact-changed")
                .await
                .data,
            data
        );
        drop(body);
        drop(send);
        conn.abort();
        // Closing the connection releases the tab on either path.
        assert!(
            wait_for(WAIT, || env.gateway.hub().tabs("alice") == 0).await,
            "reuse={reuse}: the tab was not released"
        );
    }
}

/// A user's first tab opens its stream only once the upstream is connected:
/// the page refreshes when its stream opens, so an event the backend sends
/// right after can no longer fall between the refresh and the upstream.
#[tokio::test]
async fn a_first_tab_opens_once_its_upstream_is_connected() {
    let env = Env::start(&[]).await;
    // The upstream's first attempts are refused, so it connects only after
    // a retry or two (well inside the gateway's 2 s wait).
    env.backend
        .refuse_streams(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(300));
    let cookie = env.cookie("alice");
    let mut tab = env.tab(&cookie).await;
    assert_eq!(
        env.backend.open_streams("alice"),
        1,
        "the tab's stream opened before its upstream"
    );
    emit_one(&env, "alice", "bob");
    let ev = tab.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("contact-changed", "bob")
    );
}

/// If the upstream is not up within the gateway's short wait, the tab is
/// answered anyway, and whatever the backend sent before the upstream came
/// up reaches it as a `resync` — never as a silent gap.
#[tokio::test]
async fn a_tab_answered_before_its_upstream_gets_a_resync_when_it_connects() {
    let env = Env::start(&[]).await;
    env.backend
        .refuse_streams(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(2500));
    let cookie = env.cookie("alice");
    let mut tab = env.tab(&cookie).await;
    assert_eq!(env.backend.open_streams("alice"), 0, "still refused");
    // Sent while ssemux has no stream for alice: it cannot be forwarded.
    emit_one(&env, "alice", "bob");
    // The 2.5 s outage is told as one (upstream-down, then -up); the
    // gap as a resync.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e: &String| e != "resync") {
        let ev = tab
            .next_within(WAIT * 2)
            .await
            .expect("a resync once the upstream connects");
        seen.push(ev.event);
    }
    assert!(
        seen.iter()
            .all(|e| ["upstream-down", "upstream-up", "resync"].contains(&e.as_str())),
        "{seen:?}"
    );
}

/// A tab that leaves while its answer is still pending (its user's first
/// upstream not up yet) lets go of its subscription at once.
#[tokio::test]
async fn a_tab_leaving_before_its_answer_is_released_at_once() {
    use tokio::io::AsyncWriteExt;
    let env = Env::start(&[]).await;
    env.backend
        .refuse_streams(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(10));
    let cookie = env.cookie("alice");
    let mut sock = tokio::net::TcpStream::connect(env.addr)
        .await
        .expect("connect");
    let head = format!("GET /events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n");
    sock.write_all(head.as_bytes()).await.expect("request");
    assert!(wait_for(WAIT, || env.gateway.hub().tabs("alice") == 1).await);
    drop(sock);
    // Well inside the 2 s the answer would otherwise wait.
    assert!(
        wait_for(Duration::from_millis(1500), || env
            .gateway
            .hub()
            .tabs("alice")
            == 0)
        .await,
        "the subscription outlived its tab"
    );
}
