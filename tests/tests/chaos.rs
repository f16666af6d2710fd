//! Chaos: 200 users × 3 tabs while the backend drops streams, restarts,
//! answers 5xx, stalls and sends slowly, switching every 200 ms, and
//! messages keep flowing. Afterwards: no panic; each tab saw its user's
//! messages in order, with gaps only right after a `resync`; once the tabs
//! close and the grace passes, no channel, no upstream and no extra file
//! descriptor is left.
//!
//! The short profile (30 s) runs in `make test`; `make chaos` sets
//! `SSEMUX_CHAOS_SECS` for a longer run.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Env, Tab, WAIT};
use http::StatusCode;
use ssemux_mock_upstream::{MockBackend, MockConfig};

const USERS: usize = 200;
const TABS_PER_USER: usize = 3;

/// Inbound messages become a `msg` trigger carrying the row id, so each
/// tab's sequence can be checked against what the backend sent.
const RULES: &str = r#"
[[translate.rules]]
event = "inbound"
triggers = [{ name = "msg", data_field = "rowId" }]

[[translate.rules]]
event = "resync"
triggers = [{ name = "resync", data = "1" }]
"#;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Drop,
    Restart,
    Refuse,
    Stall,
    Slow,
    LongStall,
}

const CYCLE: [Fault; 6] = [
    Fault::Drop,
    Fault::Slow,
    Fault::Refuse,
    Fault::Stall,
    Fault::Restart,
    Fault::LongStall,
];

fn inject(backend: &MockBackend, f: Fault) {
    match f {
        Fault::Drop => backend.drop_streams(),
        Fault::Restart => backend.restart(),
        Fault::Refuse => {
            backend.refuse_streams(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(150))
        }
        Fault::Stall => backend.stall_streams(Duration::from_millis(150)),
        // A slow body: bytes held back briefly, then released in a burst.
        Fault::Slow => backend.stall_streams(Duration::from_millis(40)),
        // Longer than the idle timeout: the gateway must declare it dead.
        Fault::LongStall => backend.stall_streams(Duration::from_millis(700)),
    }
}

/// Check one tab's events against the rows sent to its user. Returns the
/// number of messages seen and of resyncs.
fn check_tab(
    who: &str,
    events: &[common::Ev],
    sent: &[u64],
    index: &HashMap<u64, usize>,
) -> (usize, usize) {
    // The tab was connected before the first message, so the first one
    // must be sent[0] unless a resync came first.
    let mut next = 0usize;
    let mut resync_since = false;
    let (mut msgs, mut resyncs) = (0, 0);
    for ev in events {
        match ev.event.as_str() {
            "resync" => {
                resync_since = true;
                resyncs += 1;
            }
            "msg" => {
                let row: u64 = ev.data.parse().unwrap_or_else(|_| panic!("{who}: {ev:?}"));
                let Some(&j) = index.get(&row) else {
                    panic!("{who}: row {row} was never sent to this user");
                };
                assert!(
                    j >= next,
                    "{who}: row {row} (#{j}) after #{}: repeated or out of order",
                    next.saturating_sub(1)
                );
                assert!(
                    j == next || resync_since,
                    "{who}: gap before row {row} (#{j}, expected #{next}) without a resync"
                );
                next = j + 1;
                resync_since = false;
                msgs += 1;
            }
            other => panic!("{who}: unexpected event {other:?}"),
        }
    }
    assert!(
        msgs > 0 && next == sent.len(),
        "{who}: ended at #{next} of {}",
        sent.len()
    );
    (msgs, resyncs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_users_three_tabs_each_through_a_flapping_backend() {
    let secs: u64 = std::env::var("SSEMUX_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let panics = Arc::new(AtomicUsize::new(0));
    {
        let panics = panics.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    }

    let backend = MockBackend::start_with(
        ([127, 0, 0, 1], 0).into(),
        MockConfig {
            keepalive: Duration::from_millis(100),
            ..MockConfig::default()
        },
    )
    .await
    .expect("mock backend");
    let env = Env::start_for_with_file(
        backend,
        RULES,
        &[
            "hub.grace=300ms",
            "hub.keepalive=500ms",
            "upstream.backoff_min=20ms",
            "upstream.backoff_max=400ms",
            "upstream.idle_timeout=500ms",
            "server.events_connects_per_second=0",
            // 600 tabs opening at once on a loaded machine: be patient.
            "auth.timeout=60s",
        ],
    )
    .await;
    let fds_before = open_fds();

    let users: Vec<String> = (0..USERS).map(|i| format!("c{i}")).collect();
    let cookies: Vec<String> = users.iter().map(|u| env.cookie(u)).collect();
    let mut opening = Vec::new();
    for (u, c) in cookies.iter().enumerate() {
        for _ in 0..TABS_PER_USER {
            let (addr, c) = (env.addr, c.clone());
            opening.push((
                u,
                tokio::spawn(async move {
                    Tab::open_within(addr, "/events", &c, None, Duration::from_secs(60))
                        .await
                        .expect("tab")
                }),
            ));
        }
    }
    let mut tabs: Vec<(usize, Tab)> = Vec::new();
    for (u, t) in opening {
        tabs.push((u, t.await.expect("tab opens")));
    }
    assert!(
        env.backend
            .wait_until(Duration::from_secs(30), |b| b.open_streams_total() == USERS)
            .await,
        "one upstream per user"
    );
    let opened_before = env.backend.streams_opened_total();

    // Messages flow from a producer while faults cycle every 200 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (backend, users, stop) = (env.backend.clone(), users.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent: Vec<Vec<u64>> = vec![Vec::new(); USERS];
            let mut u = 0;
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..10 {
                    let row = backend.send_message("src", &users[u], "m");
                    sent[u].push(row);
                    u = (u + 1) % USERS;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    let chaos = {
        let (backend, stop) = (env.backend.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut injected = 0;
            while !stop.load(Ordering::SeqCst) {
                inject(&backend, CYCLE[n % CYCLE.len()]);
                injected += 1;
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            injected
        })
    };
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = producer.await.expect("producer");
    let faults = chaos.await.expect("chaos");

    // Calm: every user reconnects, then one last message each proves the
    // path is live end to end.
    env.backend.refuse_streams(StatusCode::OK, Duration::ZERO);
    assert!(
        env.backend
            .wait_until(Duration::from_secs(30), |b| b.open_streams_total() == USERS)
            .await,
        "not every user reconnected: {}",
        env.backend.open_streams_total()
    );
    for (u, user) in users.iter().enumerate() {
        sent[u].push(env.backend.send_message("src", user, "last"));
    }

    let indexes: Vec<HashMap<u64, usize>> = sent
        .iter()
        .map(|rows| rows.iter().enumerate().map(|(i, r)| (*r, i)).collect())
        .collect();
    let (mut total_msgs, mut total_resyncs) = (0, 0);
    for (n, (u, tab)) in tabs.iter_mut().enumerate() {
        let last = *sent[*u].last().expect("rows");
        let mut events = Vec::new();
        loop {
            let Some(ev) = tab.next_within(Duration::from_secs(20)).await else {
                panic!("user {u} tab {n}: final row {last} never arrived");
            };
            let done = ev.event == "msg" && ev.data == last.to_string();
            events.push(ev);
            if done {
                break;
            }
        }
        let (m, r) = check_tab(
            &format!("user {u} tab {n}"),
            &events,
            &sent[*u],
            &indexes[*u],
        );
        total_msgs += m;
        total_resyncs += r;
    }
    let rows: usize = sent.iter().map(Vec::len).sum();
    eprintln!(
        "chaos {secs}s: {faults} faults, {rows} messages, {total_msgs} delivered to tabs \
         ({:.1}% of {} possible), {total_resyncs} resyncs, {} upstream reconnects",
        100.0 * total_msgs as f64 / (rows * TABS_PER_USER) as f64,
        rows * TABS_PER_USER,
        env.backend.streams_opened_total() - opened_before
    );

    // Close everything; after the grace nothing may be left.
    drop(tabs);
    let hub = env.gateway.hub().clone();
    assert!(
        common::eventually(Duration::from_secs(10), || hub.total_tabs() == 0).await,
        "{} tabs still held",
        hub.total_tabs()
    );
    assert!(
        common::eventually(WAIT, || hub.channels() == 0).await,
        "{} channels left",
        hub.channels()
    );
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams_total() == 0)
            .await,
        "{} upstream connections left",
        env.backend.open_streams_total()
    );
    // Idle pooled backend connections close after the client's 30 s pool
    // idle timeout, so allow for that.
    let mut fds = open_fds();
    assert!(
        common::eventually(Duration::from_secs(45), || {
            fds = open_fds();
            fds <= fds_before
        })
        .await,
        "open fds {fds}, baseline {fds_before}"
    );
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a task panicked");
}
