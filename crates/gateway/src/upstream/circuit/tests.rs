//! Circuit tests on tokio's paused clock, driving the circuit directly.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

const MIN: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(1);

/// Runs `turn()` on its own task; the handle says whether it probes
/// (`true`) or was released (`false`), and when.
fn waiter(c: &Arc<Circuit>) -> tokio::task::JoinHandle<(bool, Instant)> {
    let c = c.clone();
    tokio::spawn(async move {
        match c.turn().await {
            Turn::Released => (false, Instant::now()),
            // Left unreported: the test reports through the circuit.
            Turn::Probe(p) => {
                std::mem::forget(p);
                (true, Instant::now())
            }
        }
    })
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn opens_only_after_failures_in_a_row() {
    let c = Circuit::new(3, MIN, MAX);
    assert_eq!(c.record(Outcome::Failed), Change::None);
    assert_eq!(c.record(Outcome::Failed), Change::None);
    // An answer in between starts the count again.
    assert_eq!(c.record(Outcome::Answered), Change::None);
    assert_eq!(c.record(Outcome::Failed), Change::None);
    assert_eq!(c.record(Outcome::Failed), Change::None);
    assert!(!c.is_open());
    assert_eq!(c.record(Outcome::Failed), Change::Opened);
    assert!(c.is_open());
    assert_eq!(c.record(Outcome::Failed), Change::None, "opens once");
    assert_eq!(c.record(Outcome::Answered), Change::Closed);
    assert!(!c.is_open());
    assert!(matches!(c.turn().await, Turn::Released));
}

#[tokio::test(start_paused = true)]
async fn off_never_opens() {
    let c = Circuit::off();
    for _ in 0..100 {
        assert_eq!(c.record(Outcome::Failed), Change::None);
    }
    assert!(!c.is_open());
}

/// While open: one probe at a time, the first after `MIN`, in arrival
/// order; an answered probe releases everyone at once.
#[tokio::test(start_paused = true)]
async fn one_probe_at_a_time_then_everyone_released() {
    let c = Arc::new(Circuit::new(1, MIN, MAX));
    let opened = Instant::now();
    assert_eq!(c.record(Outcome::Failed), Change::Opened);
    let first = waiter(&c);
    settle().await;
    let others: Vec<_> = (0..10).map(|_| waiter(&c)).collect();
    settle().await;
    let (probes, at) = first.await.expect("task");
    assert!(probes, "the first waiter probes");
    assert_eq!(at - opened, MIN, "not before the probe interval");
    // Nobody else probes while that probe is out, however long it takes.
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    assert!(others.iter().all(|h| !h.is_finished()));
    let back = Instant::now();
    assert_eq!(c.probe_done(Outcome::Answered), Change::Closed);
    for h in others {
        let (probed, at) = h.await.expect("task");
        assert!(!probed);
        assert_eq!(at, back, "released at once");
    }
}

/// Failed probes back off from `MIN` to `MAX` and no further, and the
/// prober goes to the back of the queue: the next probe is someone else's.
#[tokio::test(start_paused = true)]
async fn failed_probes_rotate_and_back_off_to_the_cap() {
    let c = Arc::new(Circuit::new(1, MIN, MAX));
    c.record(Outcome::Failed);
    let mut last = Instant::now();
    let mut gaps = Vec::new();
    // Two users taking turns, as their upstream loops would.
    let mut a = waiter(&c);
    settle().await;
    let mut b = waiter(&c);
    settle().await;
    for round in 0..8 {
        let (probed, at) = a.await.expect("task");
        assert!(probed, "round {round}: the front waiter probes");
        assert!(!b.is_finished(), "round {round}: one probe at a time");
        gaps.push(at - last);
        last = at;
        assert_eq!(c.probe_done(Outcome::Failed), Change::None);
        // The failed prober queues again, behind the other.
        let again = waiter(&c);
        settle().await;
        a = b;
        b = again;
    }
    assert_eq!(gaps, [MIN, MIN * 2, MAX, MAX, MAX, MAX, MAX, MAX]);
    drop((a, b));
}

/// A prober that leaves without a word (its tabs closed) does not stall the
/// queue: the next waiter probes.
#[tokio::test(start_paused = true)]
async fn abandoned_probe_passes_the_turn_on() {
    let c = Arc::new(Circuit::new(1, MIN, MAX));
    c.record(Outcome::Failed);
    let turn = c.turn().await;
    assert!(matches!(turn, Turn::Probe(_)));
    let next = waiter(&c);
    settle().await;
    assert!(!next.is_finished());
    drop(turn);
    let (probed, _) = next.await.expect("task");
    assert!(probed);
}

/// A waiter that gives up (cancelled while queued) leaves the queue, so the
/// one behind it becomes first.
#[tokio::test(start_paused = true)]
async fn cancelled_waiter_leaves_the_queue() {
    let c = Arc::new(Circuit::new(1, MIN, MAX));
    c.record(Outcome::Failed);
    let gone = waiter(&c);
    settle().await;
    let stays = waiter(&c);
    settle().await;
    gone.abort();
    let (probed, _) = stays.await.expect("task");
    assert!(probed);
}
