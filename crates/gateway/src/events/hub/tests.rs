//! Hub tests on tokio's paused clock, driving the hub directly with a
//! scripted upstream connector (no sockets).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::body::BoxError;
use crate::config::UpstreamConfig;
use crate::upstream::connector::{ByteStream, ConnectError, ConnectRequest, Connector};
use crate::upstream::translate::Rules;
use std::time::Duration;

type Tx = mpsc::UnboundedSender<Result<Bytes, BoxError>>;

/// A connector whose streams the test feeds by hand.
#[derive(Default)]
struct Script {
    calls: Mutex<Vec<(Instant, ConnectRequest)>>,
    /// Outcomes for the next connects; empty → success.
    fail: Mutex<VecDeque<ConnectError>>,
    /// Sender of each successful connect's stream, in order.
    streams: Mutex<Vec<(String, Tx)>>,
    /// While set, every connect is refused with 503 (the backend is down).
    down: std::sync::atomic::AtomicBool,
}

impl Script {
    fn calls(&self) -> Vec<(Instant, ConnectRequest)> {
        self.calls.lock().expect("lock").clone()
    }
    fn call_count(&self) -> usize {
        self.calls.lock().expect("lock").len()
    }
    fn fail_next(&self, e: ConnectError) {
        self.fail.lock().expect("lock").push_back(e);
    }
    fn stream(&self, i: usize) -> Tx {
        self.streams.lock().expect("lock")[i].1.clone()
    }
    fn last_stream(&self) -> Tx {
        let s = self.streams.lock().expect("lock");
        s[s.len() - 1].1.clone()
    }
    /// Streams the upstream side still holds open, per user.
    fn open_streams(&self, user: &str) -> usize {
        self.streams
            .lock()
            .expect("lock")
            .iter()
            .filter(|(u, tx)| u == user && !tx.is_closed())
            .count()
    }
}

struct Conn(Arc<Script>);

impl Connector for Conn {
    fn connect(
        &self,
        req: ConnectRequest,
    ) -> futures_util::future::BoxFuture<'static, Result<ByteStream, ConnectError>> {
        let script = self.0.clone();
        Box::pin(async move {
            script
                .calls
                .lock()
                .expect("lock")
                .push((Instant::now(), req.clone()));
            if let Some(e) = script.fail.lock().expect("lock").pop_front() {
                return Err(e);
            }
            if script.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ConnectError::Status(http::StatusCode::SERVICE_UNAVAILABLE));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            script.streams.lock().expect("lock").push((req.user, tx));
            let s = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Ok(Box::pin(s) as ByteStream)
        })
    }
}

fn settings() -> UpstreamConfig {
    UpstreamConfig {
        idle_timeout: Duration::from_secs(45),
        backoff_min: Duration::from_millis(250),
        backoff_max: Duration::from_secs(30),
        backoff_reset_after: Duration::from_secs(60),
        max_event_bytes: 64 * 1024,
        ..UpstreamConfig::default()
    }
}

fn hub_with(script: &Arc<Script>, grace: Duration) -> Hub {
    let upstream = Upstream::new(
        Arc::new(Conn(script.clone())),
        Arc::new(Rules::default()),
        settings(),
        None,
    );
    Hub::new(
        HubConfig {
            grace,
            ring_size: 64,
            max_lag_bytes: 1 << 20,
            max_tabs_per_user: 64,
            max_total_tabs: 100,
            ..HubConfig::default()
        },
        upstream,
    )
}

/// Let every ready task run without moving the clock.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

fn send(tx: &Tx, text: &str) {
    let _ = tx.send(Ok(Bytes::from(text.to_string())));
}

fn event_names(rx: &mut crate::events::channel::Follower) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(f) = rx.try_recv() {
        let text = String::from_utf8_lossy(&f.bytes).to_string();
        if let Some(name) = text.lines().find_map(|l| l.strip_prefix("event: ")) {
            out.push(name.to_string());
        }
    }
    out
}

const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn refcount_lifecycle_and_exact_grace() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tabs: Vec<_> = (0..3)
        .map(|i| {
            hub.subscribe("alice", &format!("session=s{i}"))
                .expect("sub")
        })
        .collect();
    settle().await;
    assert_eq!(script.call_count(), 1, "three tabs share one upstream");
    assert_eq!(hub.tabs("alice"), 3);
    assert_eq!(script.open_streams("alice"), 1);

    drop(tabs);
    settle().await;
    assert_eq!(hub.tabs("alice"), 0);
    assert_eq!(hub.channels_in_grace(), 1);

    tokio::time::advance(Duration::from_millis(9_900)).await;
    settle().await;
    assert_eq!(hub.channels(), 1, "still open at 9.9 s");
    assert_eq!(script.open_streams("alice"), 1);

    tokio::time::advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(hub.channels(), 0, "closed at 10 s");
    assert_eq!(script.open_streams("alice"), 0, "upstream closed");

    let _again = hub.subscribe("alice", "session=s9").expect("sub");
    settle().await;
    assert_eq!(script.call_count(), 2, "reopen starts a new upstream");
    assert_eq!(hub.upstreams_started(), 2);
}

#[tokio::test(start_paused = true)]
async fn resubscribe_within_grace_keeps_the_upstream() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let first = hub.subscribe("alice", "session=a").expect("sub");
    settle().await;
    let channel = first.channel().clone();
    drop(first);
    tokio::time::advance(Duration::from_secs(9)).await;
    settle().await;
    let second = hub.subscribe("alice", "session=a").expect("sub");
    assert!(Arc::ptr_eq(second.channel(), &channel), "same channel");
    // Well past the first grace deadline: the old timer must not close it.
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(hub.channels(), 1);
    assert_eq!(script.call_count(), 1);
    assert_eq!(script.open_streams("alice"), 1);
    drop(second);
    settle().await;
    tokio::time::advance(GRACE).await;
    settle().await;
    assert_eq!(hub.channels(), 0);
}

#[tokio::test(start_paused = true)]
async fn reconnect_backoff_grows_is_capped_and_resets_after_healthy_minute() {
    let script = Arc::new(Script::default());
    for _ in 0..12 {
        script.fail_next(ConnectError::Status(http::StatusCode::SERVICE_UNAVAILABLE));
    }
    let hub = hub_with(&script, GRACE);
    let _tab = hub.subscribe("alice", "session=a").expect("sub");
    // 12 failures then a success: let the schedule run on the paused clock.
    while script.call_count() < 13 {
        tokio::time::advance(Duration::from_millis(50)).await;
        settle().await;
    }
    let at: Vec<Instant> = script.calls().iter().map(|c| c.0).collect();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let min = Duration::from_millis(250);
    for (k, g) in gaps.iter().enumerate() {
        let ceiling = (min * 2u32.pow(k as u32)).min(Duration::from_secs(30));
        // +50 ms: the test's own clock steps.
        assert!(
            *g >= min && *g <= ceiling + Duration::from_millis(50),
            "gap {k}: {g:?}"
        );
    }
    assert!(
        gaps.iter().any(|g| *g > Duration::from_secs(8)),
        "delays grow: {gaps:?}"
    );
    let distinct: std::collections::BTreeSet<_> = gaps.iter().collect();
    assert!(distinct.len() > 6, "jittered: {gaps:?}");

    // Healthy for over a minute (keepalives beat the idle timeout), then drop.
    let tx = script.last_stream();
    for _ in 0..3 {
        send(&tx, ": keepalive\n\n");
        tokio::time::advance(Duration::from_secs(25)).await;
        settle().await;
    }
    assert_eq!(script.call_count(), 13);
    drop(tx);
    script.streams.lock().expect("lock").clear();
    settle().await;
    let dropped_at = Instant::now();
    while script.call_count() < 14 {
        tokio::time::advance(Duration::from_millis(10)).await;
        settle().await;
    }
    let gap = script.calls()[13].0 - dropped_at;
    assert!(gap <= Duration::from_millis(260), "backoff reset: {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_field_is_honoured_and_last_event_id_sent_on_reconnect() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    let tx = script.stream(0);
    send(
        &tx,
        "retry: 5000\n\nid: ep-7\nevent: inbound\ndata: {\"peer\":\"bob\",\"rowId\":7}\n\n",
    );
    settle().await;
    assert_eq!(
        event_names(&mut rx),
        vec!["thread-updated", "contact-changed"]
    );
    drop(tx);
    script.streams.lock().expect("lock").clear();
    settle().await;
    let dropped_at = Instant::now();
    while script.call_count() < 2 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let calls = script.calls();
    assert!(
        calls[1].0 - dropped_at >= Duration::from_secs(5),
        "retry: honoured"
    );
    assert_eq!(calls[1].1.last_event_id.as_deref(), Some("ep-7"));
    assert_eq!(cookie_of(&calls[1].1), "session=a");
    assert_eq!(calls[0].1.last_event_id, None);
    // A resumable reconnect is not a resync; the 5 s away (past
    // `hub.upstream_down_after`) was an outage the tabs heard of.
    settle().await;
    assert_eq!(event_names(&mut rx), vec!["upstream-down", "upstream-up"]);
}

#[tokio::test(start_paused = true)]
async fn upstream_resync_reaches_every_tab_exactly_once() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tabs: Vec<_> = (0..3)
        .map(|_| hub.subscribe("alice", "session=a").expect("sub"))
        .collect();
    let mut rxs: Vec<_> = tabs.iter().map(|t| t.channel().attach(None).rx).collect();
    let other = hub.subscribe("bob", "session=b").expect("sub");
    let mut bob_rx = other.channel().attach(None).rx;
    settle().await;
    send(&script.stream(0), "id: 1\nevent: resync\ndata: {}\n\n");
    settle().await;
    for rx in &mut rxs {
        assert_eq!(event_names(rx), vec!["resync"]);
    }
    assert!(
        event_names(&mut bob_rx).is_empty(),
        "bob hears nothing of alice"
    );
}

#[tokio::test(start_paused = true)]
async fn silent_upstream_is_reconnected_after_idle_timeout() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let _tab = hub.subscribe("alice", "session=a").expect("sub");
    settle().await;
    tokio::time::advance(Duration::from_secs(44)).await;
    settle().await;
    assert_eq!(script.open_streams("alice"), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(script.open_streams("alice"), 0, "dead stream dropped");
    tokio::time::advance(Duration::from_millis(300)).await;
    settle().await;
    assert_eq!(script.call_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn oversize_event_becomes_resync_and_unresumable_reconnect_resyncs() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    let big = format!("event: inbound\ndata: {}\n\n", "x".repeat(70 * 1024));
    send(&script.stream(0), &big);
    settle().await;
    assert_eq!(event_names(&mut rx), vec!["resync"]);
    // No id was ever seen: a reconnect cannot resume, so tabs resync.
    script.streams.lock().expect("lock").clear();
    settle().await;
    tokio::time::advance(Duration::from_millis(300)).await;
    settle().await;
    assert_eq!(script.call_count(), 2);
    assert_eq!(event_names(&mut rx), vec!["resync"]);
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_fall_back_then_log_out() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    script.fail_next(ConnectError::Unauthorized(http::StatusCode::UNAUTHORIZED));
    let a = hub.subscribe("alice", "session=old").expect("sub");
    let b = hub.subscribe("alice", "session=new").expect("sub");
    let mut rx = a.channel().attach(None).rx;
    settle().await;
    let calls = script.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(cookie_of(&calls[0].1), "session=old");
    assert_eq!(
        cookie_of(&calls[1].1),
        "session=new",
        "another tab's credentials"
    );
    assert_eq!(script.open_streams("alice"), 1);

    // Both refused now: tabs get logout, the stream ends, channel is gone.
    script.fail_next(ConnectError::Unauthorized(http::StatusCode::UNAUTHORIZED));
    script.streams.lock().expect("lock").clear();
    settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(event_names(&mut rx), vec!["logout"]);
    assert_eq!(hub.channels(), 0);
    drop((a, b));
    settle().await;
    assert_eq!(hub.channels(), 0);
}

#[tokio::test(start_paused = true)]
async fn tab_limit() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tabs: Vec<_> = (0..64)
        .map(|_| hub.subscribe("alice", "session=a").expect("sub"))
        .collect();
    assert_eq!(
        hub.subscribe("alice", "session=a").err(),
        Some(HubError::TooManyTabs(64))
    );
    let bob: Vec<_> = (0..36)
        .map(|_| hub.subscribe("bob", "session=b").expect("per user"))
        .collect();
    assert_eq!(hub.total_tabs(), 100);
    assert_eq!(
        hub.subscribe("carol", "session=c").err(),
        Some(HubError::Full(100))
    );
    drop(bob);
    assert_eq!(hub.total_tabs(), 64);
    assert!(hub.subscribe("carol", "session=c").is_ok());
    drop(tabs);
}

/// Many tasks subscribing and leaving in random order on a multi-threaded
/// runtime. Invariants: a live tab's channel is always the one in the map
/// (never an orphan), and when everyone has left and the grace has passed,
/// no channel and no upstream stream is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribe_unsubscribe_races() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, Duration::from_millis(5));
    let users = ["u0", "u1", "u2"];
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            let mut orphans = 0;
            for _ in 0..200 {
                let user = users[rng.usize(..users.len())];
                let sub = hub.subscribe(user, "session=x").expect("sub");
                for _ in 0..rng.usize(0..4) {
                    tokio::task::yield_now().await;
                }
                match hub.channel(user) {
                    Some(c) if Arc::ptr_eq(&c, sub.channel()) => {}
                    _ => orphans += 1,
                }
                if rng.bool() {
                    tokio::time::sleep(Duration::from_millis(rng.u64(0..8))).await;
                }
                drop(sub);
            }
            orphans
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.expect("task"),
            0,
            "a tab held a channel not in the map"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open: usize = users.iter().map(|u| script.open_streams(u)).sum();
        if hub.channels() == 0 && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaked: {} channels, {open} streams",
            hub.channels()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hub.upstreams_started() >= 3);
}

/// A hub over `script` whose upstream `with` configures, and one tab for
/// each of `users` users (`user0`, `user1`, …).
fn users_one_tab_each(
    script: &Arc<Script>,
    users: usize,
    with: impl FnOnce(Upstream) -> Upstream,
) -> (Hub, Vec<Subscription>) {
    let upstream = with(Upstream::new(
        Arc::new(Conn(script.clone())),
        Arc::new(Rules::default()),
        settings(),
        None,
    ));
    let hub = Hub::new(
        HubConfig {
            grace: GRACE,
            ring_size: 8,
            max_tabs_per_user: 1,
            max_total_tabs: users,
            ..HubConfig::default()
        },
        upstream,
    );
    let tabs = (0..users)
        .map(|i| hub.subscribe(&format!("user{i}"), "c").expect("tab"))
        .collect();
    (hub, tabs)
}

/// A backend restart drops every user's stream at once: the reconnects reach
/// the backend at the configured pace, not all in the same instant, and
/// every user is back.
#[tokio::test(start_paused = true)]
async fn reconnect_storm_is_paced_across_users() {
    const USERS: usize = 3000;
    const RATE: u32 = 1000;
    let script = Arc::new(Script::default());
    let (_hub, tabs) = users_one_tab_each(&script, USERS, |u| u.with_connect_rate(RATE));
    // The first connects are paced too; let them all happen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(script.call_count(), USERS);
    let before = script.call_count();
    // The restart: every stream ends at the same moment.
    let dropped_at = Instant::now();
    script.streams.lock().expect("lock").clear();
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    let calls = script.calls();
    let storm: Vec<Instant> = calls[before..].iter().map(|(t, _)| *t).collect();
    assert_eq!(storm.len(), USERS, "every user reconnected");
    let mut sorted = storm.clone();
    sorted.sort();
    let peak = sorted
        .iter()
        .enumerate()
        .map(|(i, t)| {
            sorted[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    // rate + a burst of a tenth of a second's worth (+1 for the window edge).
    assert!(peak <= 1101, "{peak} reconnects in one second");
    let last = *sorted.last().expect("calls");
    assert!(
        last - dropped_at < Duration::from_secs(4),
        "{:?}",
        last - dropped_at
    );
    drop(tabs);
}

/// The backend is down for everyone for 30 s. With the circuit, the users
/// stop retrying each on their own: during the outage the backend sees about
/// one failed connect per user plus one probe a second, and once it is back
/// every user is connected within a probe interval plus users ÷ rate.
#[tokio::test(start_paused = true)]
async fn long_outage_is_probed_from_one_place_and_users_come_back_paced() {
    const USERS: usize = 500;
    const RATE: u32 = 100;
    const PROBE: Duration = Duration::from_secs(1);
    let outage = Duration::from_secs(30);
    for circuit in [true, false] {
        let script = Arc::new(Script::default());
        let (_hub, tabs) = users_one_tab_each(&script, USERS, |u| {
            u.with_connect_rate(RATE)
                .with_circuit(if circuit { 3 } else { 0 }, PROBE)
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(script.call_count(), USERS);
        script.down.store(true, std::sync::atomic::Ordering::SeqCst);
        script.streams.lock().expect("lock").clear();
        tokio::time::sleep(outage).await;
        settle().await;
        let during = script.call_count() - USERS;
        let back = Instant::now();
        script
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let users: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
        let all_back = |script: &Script| users.iter().all(|u| script.open_streams(u) == 1);
        let limit = back + Duration::from_secs(60);
        while !all_back(&script) && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = Instant::now() - back;
        assert!(all_back(&script), "circuit {circuit}: every user is back");
        if circuit {
            // One failed connect each (those already paced when it
            // opened), then one probe a second at most.
            assert!(
                during <= USERS + outage.as_secs() as usize + 2,
                "{during} connects during the outage"
            );
            let goal = PROBE
                + Duration::from_secs(USERS as u64 / u64::from(RATE))
                + Duration::from_millis(200);
            assert!(took <= goal, "all back after {took:?}, goal {goal:?}");
        } else {
            // What the circuit is for: each user retries on its own, and
            // the last ones wait out most of a 30 s backoff.
            assert!(during > 2 * USERS, "{during} connects during the outage");
            assert!(took > Duration::from_secs(10), "all back after {took:?}");
        }
        drop(tabs);
    }
}

/// A custom rule set that forgot `resync` still forwards the upstream's
/// resync: the delivery guarantee does not depend on the configuration.
#[tokio::test(start_paused = true)]
async fn upstream_resync_survives_rules_without_it() {
    let script = Arc::new(Script::default());
    let rules = Rules {
        rules: Rules::default()
            .rules
            .into_iter()
            .filter(|r| r.event != "resync")
            .collect(),
    };
    let upstream = Upstream::new(
        Arc::new(Conn(script.clone())),
        Arc::new(rules),
        settings(),
        None,
    );
    let hub = Hub::new(
        HubConfig {
            grace: GRACE,
            ring_size: 8,
            max_lag_bytes: 1 << 20,
            max_tabs_per_user: 4,
            max_total_tabs: 4,
            ..HubConfig::default()
        },
        upstream,
    );
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    send(
        &script.stream(0),
        "id: 1\nevent: resync\ndata: {}\n\nid: 2\nevent: custom\ndata: x\n\n",
    );
    settle().await;
    assert_eq!(
        event_names(&mut rx),
        vec!["resync"],
        "unmatched others still dropped"
    );
}

/// A tab arriving between a logout (channel closed) and the removal of that
/// channel gets a fresh channel and upstream, not a dead one.
#[tokio::test(start_paused = true)]
async fn a_tab_racing_a_logout_gets_a_fresh_channel() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let old = hub.subscribe("alice", "session=a").expect("sub");
    settle().await;
    old.channel().close();
    let new = hub.subscribe("alice", "session=b").expect("sub");
    assert!(!Arc::ptr_eq(old.channel(), new.channel()));
    assert!(!new.channel().is_closed());
    settle().await;
    assert_eq!(hub.upstreams_started(), 2);
    assert_eq!(
        script.open_streams("alice"),
        1,
        "the dead channel's upstream is cancelled"
    );
    drop(old);
    assert_eq!(
        hub.tabs("alice"),
        1,
        "the old tab's leaving does not count against the new channel"
    );
    let mut rx = new.channel().attach(None).rx;
    send(&script.last_stream(), "id: 1\nevent: resync\ndata: {}\n\n");
    settle().await;
    assert_eq!(event_names(&mut rx), vec!["resync"]);
}

/// A credential check that refuses the cookies it is told to.
#[derive(Default)]
struct Revoked {
    refused: Mutex<Vec<String>>,
    asked: Mutex<Vec<String>>,
}

impl crate::upstream::connector::CredentialCheck for Revoked {
    fn still_valid(
        &self,
        _user: &str,
        cred: &crate::credential::Credential,
    ) -> futures_util::future::BoxFuture<'static, Option<bool>> {
        let cookie = cred.value();
        self.asked.lock().expect("lock").push(cookie.to_string());
        let ok = !self
            .refused
            .lock()
            .expect("lock")
            .iter()
            .any(|c| c == cookie);
        Box::pin(async move { Some(ok) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_revoked_session_loses_its_tabs_and_the_others_stay() {
    use http_body_util::BodyExt;
    let script = Arc::new(Script::default());
    let check = Arc::new(Revoked::default());
    let upstream = Upstream::new(
        Arc::new(Conn(script.clone())),
        Arc::new(Rules::default()),
        settings(),
        None,
    )
    .with_recheck(check.clone(), Duration::from_secs(60));
    let hub = Hub::new(
        HubConfig {
            grace: GRACE,
            ..HubConfig::default()
        },
        upstream,
    );
    let keep = hub.subscribe("alice", "session=kept").expect("sub");
    let gone = hub.subscribe("alice", "session=revoked").expect("sub");
    settle().await;
    let tab = |sub: Subscription| {
        let attach = sub.channel().attach(None);
        let hold = crate::events::tab::TabHold {
            subscription: sub,
            mark: None,
        };
        let settings = crate::events::tab::TabSettings {
            keepalive: Duration::from_secs(3600),
            retry_ms: 1000,
            metrics: crate::metrics::Metrics::default(),
        };
        crate::events::tab::stream(hold, attach, settings, CancellationToken::new())
    };
    let mut kept_body = tab(keep);
    let mut gone_body = tab(gone);
    check
        .refused
        .lock()
        .expect("lock")
        .push("session=revoked".into());
    // Before the interval nothing is asked; after it, the next wake of the
    // stream (a keepalive comment) re-checks both sessions.
    tokio::time::advance(Duration::from_secs(30)).await;
    send(&script.stream(0), ": ka\n\n");
    settle().await;
    assert!(check.asked.lock().expect("lock").is_empty());
    tokio::time::advance(Duration::from_secs(31)).await;
    send(&script.stream(0), ": ka\n\n");
    settle().await;
    assert_eq!(check.asked.lock().expect("lock").len(), 2);
    // The revoked session's tab: retry, position, then logout, then the end.
    let mut texts = Vec::new();
    while let Some(f) = gone_body.frame().await {
        if let Ok(d) = f.expect("frame").into_data() {
            texts.push(String::from_utf8_lossy(&d).to_string());
        }
    }
    assert!(
        texts.last().is_some_and(|t| t.contains("event: logout")),
        "{texts:?}"
    );
    // The other session's tab goes on: it still gets triggers.
    send(&script.stream(0), "event: resync\ndata: 1\n\n");
    settle().await;
    let mut got = String::new();
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_millis(10), kept_body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    got.push_str(&String::from_utf8_lossy(&d));
                }
            }
            _ => break,
        }
    }
    assert!(got.contains("event: resync"), "{got:?}");
    assert!(!got.contains("logout"), "{got:?}");
    // A reconnect re-checks too, once the interval has passed (a backend
    // restart must not also be a burst of identity calls).
    tokio::time::advance(Duration::from_secs(61)).await;
    let asked = check.asked.lock().expect("lock").len();
    script.streams.lock().expect("lock").clear();
    settle().await;
    tokio::time::advance(Duration::from_secs(31)).await;
    settle().await;
    assert!(
        check.asked.lock().expect("lock").len() > asked,
        "no re-check after the reconnect"
    );
}

/// The `Cookie` header a connect presented.
fn cookie_of(req: &ConnectRequest) -> String {
    req.credential
        .header
        .as_ref()
        .map(|(_, v)| v.to_str().expect("text").to_string())
        .unwrap_or_default()
}

fn hub_configured(script: &Arc<Script>, hub: HubConfig) -> Hub {
    let upstream = Upstream::new(
        Arc::new(Conn(script.clone())),
        Arc::new(Rules::default()),
        settings(),
        None,
    );
    Hub::new(
        HubConfig {
            ring_size: 64,
            max_lag_bytes: 1 << 20,
            max_total_tabs: 100,
            ..hub
        },
        upstream,
    )
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_told_after_down_after_and_its_end_too() {
    let script = Arc::new(Script::default());
    // The backend is down for the first eight connects.
    for _ in 0..8 {
        script.fail_next(ConnectError::Status(http::StatusCode::BAD_GATEWAY));
    }
    let hub = hub_configured(&script, HubConfig::default());
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    tokio::time::advance(Duration::from_millis(1900)).await;
    settle().await;
    assert!(event_names(&mut rx).is_empty(), "not yet: under 2 s");
    tokio::time::advance(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(event_names(&mut rx), vec!["upstream-down"]);
    // A tab arriving during the outage hears of it first.
    let late = tab.channel().attach(None);
    let down = late.down.expect("told it is down");
    assert!(String::from_utf8_lossy(&down).contains("event: upstream-down"));
    // Once a connect succeeds: `upstream-up`, once, before anything else.
    while script.streams.lock().expect("lock").is_empty() {
        tokio::time::advance(Duration::from_millis(250)).await;
        settle().await;
    }
    settle().await;
    let names = event_names(&mut rx);
    assert_eq!(
        names.first().map(String::as_str),
        Some("upstream-up"),
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| *n == "upstream-down").count(), 0);
    assert!(tab.channel().attach(None).down.is_none());
}

#[tokio::test(start_paused = true)]
async fn on_gap_end_ends_live_streams_where_resync_would_be_sent() {
    let script = Arc::new(Script::default());
    let hub = hub_configured(
        &script,
        HubConfig {
            on_gap: crate::config::GapPolicy::End,
            ..HubConfig::default()
        },
    );
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut a = tab.channel().attach(None);
    settle().await;
    // An id-less upstream drops and comes back: it cannot resume.
    send(
        &script.stream(0),
        "event: inbound\ndata: {\"peer\":\"bob\"}\n\n",
    );
    settle().await;
    drop(script.streams.lock().expect("lock").remove(0));
    while script.streams.lock().expect("lock").is_empty() {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    settle().await;
    let mut frames = VecDeque::new();
    a.rx.take_into(&mut frames, 64).expect("frames");
    let text: String = frames.iter().map(|b| String::from_utf8_lossy(b)).collect();
    assert!(text.contains("event: thread-updated"), "{text}");
    assert!(
        !text.contains("resync"),
        "no resync under on_gap = end: {text}"
    );
    assert!(a.rx.ended(), "the live stream ends at the gap");
    // The gap's id moves a reconnecting tab past it: replay goes on, and
    // the replayed gap does not end the new stream.
    let last_id = text
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("id: "))
        .next()
        .expect("an id")
        .to_string();
    let mut again = tab.channel().attach(Some(&last_id));
    assert!(again.resync.is_none() && again.replay.is_empty());
    send(
        &script.last_stream(),
        "event: inbound\ndata: {\"peer\":\"carol\"}\n\n",
    );
    settle().await;
    assert_eq!(
        event_names(&mut again.rx),
        vec!["thread-updated", "contact-changed"]
    );
    assert!(!again.rx.ended());
    // An unservable id under `end`: only the new position, no resync event.
    let stale = tab.channel().attach(Some("other-epoch-1"));
    let (frame, _) = stale.resync.expect("position");
    assert!(String::from_utf8_lossy(&frame).starts_with("id: "));
    assert!(!String::from_utf8_lossy(&frame).contains("event:"));
}

#[tokio::test(start_paused = true)]
async fn the_resync_event_is_configurable() {
    let script = Arc::new(Script::default());
    let hub = hub_configured(
        &script,
        HubConfig {
            resync_event: "changed".into(),
            resync_data: String::new(),
            ..HubConfig::default()
        },
    );
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    drop(script.streams.lock().expect("lock").remove(0));
    while script.streams.lock().expect("lock").is_empty() {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    settle().await;
    let f = rx.try_recv().expect("a gap frame");
    let text = String::from_utf8_lossy(&f.bytes);
    assert!(text.contains("event: changed\ndata: \n"), "{text}");
    let stale = tab.channel().attach(Some("x-1")).resync.expect("resync");
    assert!(String::from_utf8_lossy(&stale.0).contains("event: changed\n"));
}

/// The ids of `rx`'s frames, in order.
fn frame_ids(rx: &mut crate::events::channel::Follower) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Ok(f) = rx.try_recv() {
        let text = String::from_utf8_lossy(&f.bytes).to_string();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .unwrap_or_default()
            .to_string();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or_default()
            .to_string();
        out.push((name, id));
    }
    out
}

/// The subject a tab coming back with `last_id` asks for (as the events
/// handler builds it).
fn returning(hub: &Hub, user: &str, last_id: &str) -> Subject {
    let mut s = Subject::from(user);
    s.from = crate::events::resume::split_id(last_id)
        .1
        .and_then(|t| hub.resume_key()?.open(&s.key, t));
    s
}

#[tokio::test(start_paused = true)]
async fn a_tab_back_after_its_channel_is_gone_resumes_from_the_upstream() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    send(
        &script.stream(0),
        "id: u1\nevent: inbound\ndata: {\"peer\":\"bob\"}\n\nid: u2\nevent: inbound\ndata: {\"peer\":\"carol\"}\n\n",
    );
    settle().await;
    let seen = frame_ids(&mut rx);
    assert_eq!(seen.len(), 4, "{seen:?}");
    let (_, last) = seen.last().expect("a frame").clone();
    assert!(
        last.contains('.'),
        "the id carries a sealed position: {last}"
    );
    // The tab goes (hidden); the channel outlives it by the grace only.
    drop(rx);
    drop(tab);
    settle().await;
    tokio::time::advance(GRACE + Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(hub.channels(), 0);

    // It comes back: a new channel, whose upstream resumes after u2.
    let back = hub
        .subscribe(returning(&hub, "alice", &last), "session=a")
        .expect("sub");
    let mut a = back.channel().attach(Some(&last));
    assert!(a.resync.is_none(), "no resync: the backend has the history");
    settle().await;
    let calls = script.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].1.last_event_id.as_deref(), Some("u2"));
    send(
        &script.last_stream(),
        "id: u3\nevent: inbound\ndata: {\"peer\":\"dave\"}\n\n",
    );
    settle().await;
    let names: Vec<String> = frame_ids(&mut a.rx).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec!["thread-updated", "contact-changed"],
        "exactly the missed ones"
    );

    // A second tab of the same moment, arriving now, is served from the ring.
    let mut b = back.channel().attach(Some(&last));
    assert!(b.resync.is_none() && b.replay.len() == 2, "{:?}", b.replay);
    assert!(frame_ids(&mut b.rx).is_empty());
    // A forged or foreign token is garbage: resync, as before.
    let forged = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        last.split('.').next().unwrap_or("")
    );
    assert!(back.channel().attach(Some(&forged)).resync.is_some());
    assert!(
        returning(&hub, "bob", &last).from.is_none(),
        "alice's id is nothing to bob"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tab_cut_inside_a_publish_is_resynced_never_silently_short() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    // One read, one publish of four frames: only its last is sealed (the
    // cipher and the bytes are paid once per publish, not per frame).
    send(
        &script.stream(0),
        "id: u1\nevent: inbound\ndata: {\"peer\":\"bob\"}\n\nid: u2\nevent: inbound\ndata: {\"peer\":\"carol\"}\n\n",
    );
    settle().await;
    let seen = frame_ids(&mut rx);
    let sealed: Vec<bool> = seen.iter().map(|(_, id)| id.contains('.')).collect();
    assert_eq!(sealed, vec![false, false, false, true], "{seen:?}");
    // The tab got only part of the publish, then its channel went.
    let (_, cut) = seen[2].clone();
    drop(rx);
    drop(tab);
    settle().await;
    tokio::time::advance(GRACE + Duration::from_secs(1)).await;
    settle().await;
    let back = hub
        .subscribe(returning(&hub, "alice", &cut), "session=a")
        .expect("sub");
    let a = back.channel().attach(Some(&cut));
    assert!(
        a.resync.is_some(),
        "nothing to resume from: a resync, never a gap"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_id_reset_stops_sealing_the_old_position() {
    let script = Arc::new(Script::default());
    let hub = hub_with(&script, GRACE);
    let tab = hub.subscribe("alice", "session=a").expect("sub");
    let mut rx = tab.channel().attach(None).rx;
    settle().await;
    send(
        &script.stream(0),
        "id: u1\nevent: inbound\ndata: {\"peer\":\"bob\"}\n\n",
    );
    settle().await;
    assert!(
        frame_ids(&mut rx)
            .last()
            .is_some_and(|(_, id)| id.contains('.'))
    );
    // An explicit empty id: the backend's ids start over.
    send(
        &script.stream(0),
        "id:\nevent: inbound\ndata: {\"peer\":\"carol\"}\n\n",
    );
    settle().await;
    let after = frame_ids(&mut rx);
    assert!(
        !after.is_empty() && after.iter().all(|(_, id)| !id.contains('.')),
        "{after:?}"
    );
}

#[test]
fn a_channel_closes_only_when_no_credential_is_left() {
    let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
    let a = ch.add_credential("session=a");
    ch.refuse_credential(a);
    // A tab brought a fresh one just before the upstream gave up.
    let _b = ch.add_credential("session=b");
    assert!(!ch.close_if_no_credential());
    assert!(!ch.is_closed());
    ch.refuse_credential(_b);
    assert!(ch.close_if_no_credential());
    assert!(ch.is_closed());
}
