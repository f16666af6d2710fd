//! The shared circuit over every user's upstream connects. When the backend
//! is down for everyone (a restart, an outage), users backing off each on
//! their own (full jitter up to `backoff_max`) means a herd of failing
//! connects meanwhile and a long random wait after the backend is back. Once
//! enough connects in a row have failed, the circuit opens: waiting users
//! queue here, one of them at a time probes the backend with its own connect
//! at a short bounded interval, and the first probe the backend answers
//! closes the circuit and releases them all (the pacer then spaces their
//! connects at `upstream.connects_per_second`).
//!
//! It only orders waiters: it never connects, never sleeps a user longer
//! than the next probe, and never knows who a user is. A failed prober goes
//! to the back of the queue, so one user whose own stream keeps failing
//! cannot keep the others waiting.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::Backoff;

/// How a connect attempt went, as far as the circuit cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered (a stream, or a refusal about this request such
    /// as 401 or 404): it is up.
    Answered,
    /// No answer, or the backend failed (transport error, timeout, 5xx, not
    /// an event stream): it may be down.
    Failed,
}

/// A change of the circuit's state, for the caller's metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// The circuit opened: users queue from now on.
    Opened,
    /// The circuit closed: every waiting user was released.
    Closed,
}

/// What a queued user may do now.
#[derive(Debug)]
pub enum Turn<'a> {
    /// The circuit is closed: connect as usual.
    Released,
    /// This user probes the backend: connect now and report the outcome
    /// with [`Probe::finish`]. Dropped unreported (the user left), the next
    /// waiter probes instead.
    Probe(Probe<'a>),
}

/// The one probe in flight.
#[derive(Debug)]
pub struct Probe<'a> {
    circuit: &'a Circuit,
    done: bool,
}

impl Probe<'_> {
    /// Report the probe's outcome: [`Outcome::Answered`] closes the circuit.
    pub fn finish(mut self, outcome: Outcome) -> Change {
        self.done = true;
        self.circuit.probe_done(outcome)
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut st = self.circuit.lock();
            st.probing = false;
            drop(st);
            self.circuit.changed.send_replace(());
        }
    }
}

struct State {
    /// Connects failed in a row, across users, since the backend last
    /// answered.
    failures: u32,
    open: bool,
    probing: bool,
    /// When the next probe may start.
    next_probe: Instant,
    /// The probe interval grows from `min` to `max` while probes fail.
    probe_backoff: Backoff,
    /// Waiters in arrival order; the front one probes next.
    queue: VecDeque<u64>,
    next_waiter: u64,
}

/// One circuit per gateway, shared by every user's upstream task.
pub struct Circuit {
    open_after: u32,
    min: Duration,
    max: Duration,
    state: Mutex<State>,
    /// Sent on every change a waiter might be waiting for (a probe ended,
    /// a waiter left, the circuit closed).
    changed: watch::Sender<()>,
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit")
            .field("open_after", &self.open_after)
            .field("open", &self.is_open())
            .finish()
    }
}

/// Removes a waiter from the queue when its wait ends (any way).
struct InQueue<'a> {
    circuit: &'a Circuit,
    id: u64,
}

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        let mut st = self.circuit.lock();
        if let Some(i) = st.queue.iter().position(|w| *w == self.id) {
            st.queue.remove(i);
            drop(st);
            self.circuit.changed.send_replace(());
        }
    }
}

impl Circuit {
    /// Opens after `open_after` failed connects in a row (`0`: never);
    /// while open, probes start `min` apart and back off to `max`.
    pub fn new(open_after: u32, min: Duration, max: Duration) -> Circuit {
        let max = max.max(min);
        Circuit {
            open_after,
            min,
            max,
            state: Mutex::new(State {
                failures: 0,
                open: false,
                probing: false,
                next_probe: Instant::now(),
                probe_backoff: Backoff::new(min, max),
                queue: VecDeque::new(),
                next_waiter: 0,
            }),
            changed: watch::Sender::new(()),
        }
    }

    /// A circuit that never opens.
    pub fn off() -> Circuit {
        Circuit::new(0, Duration::from_millis(250), Duration::from_secs(1))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether users queue here before connecting.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Record the outcome of a connect that was not a probe.
    pub fn record(&self, outcome: Outcome) -> Change {
        let mut st = self.lock();
        match outcome {
            Outcome::Answered => self.close(st),
            Outcome::Failed => {
                st.failures = st.failures.saturating_add(1);
                if self.open_after == 0 || st.open || st.failures < self.open_after {
                    return Change::None;
                }
                st.open = true;
                st.probe_backoff = Backoff::new(self.min, self.max);
                st.next_probe = Instant::now() + st.probe_backoff.next_ceiling();
                Change::Opened
            }
        }
    }

    fn close(&self, mut st: MutexGuard<'_, State>) -> Change {
        st.failures = 0;
        if !st.open {
            return Change::None;
        }
        st.open = false;
        st.probing = false;
        drop(st);
        self.changed.send_replace(());
        Change::Closed
    }

    fn probe_done(&self, outcome: Outcome) -> Change {
        let mut st = self.lock();
        match outcome {
            Outcome::Answered => self.close(st),
            Outcome::Failed => {
                st.probing = false;
                st.next_probe = Instant::now() + st.probe_backoff.next_ceiling();
                drop(st);
                self.changed.send_replace(());
                Change::None
            }
        }
    }

    /// Wait for this user's turn: released when the circuit closes (or is
    /// not open), or chosen to probe when it is first in the queue and the
    /// probe interval has passed.
    pub async fn turn(&self) -> Turn<'_> {
        let mut changed = self.changed.subscribe();
        let me = {
            let mut st = self.lock();
            if !st.open {
                return Turn::Released;
            }
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.queue.push_back(id);
            InQueue { circuit: self, id }
        };
        loop {
            // Marked seen before looking, so a change right after is not missed.
            changed.borrow_and_update();
            let wait_until = {
                let mut st = self.lock();
                if !st.open {
                    return Turn::Released;
                }
                let first = st.queue.front() == Some(&me.id);
                if first && !st.probing {
                    if Instant::now() >= st.next_probe {
                        st.queue.pop_front();
                        st.probing = true;
                        return Turn::Probe(Probe {
                            circuit: self,
                            done: false,
                        });
                    }
                    Some(st.next_probe)
                } else {
                    None
                }
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed.changed() => {}
                    }
                }
                None => {
                    // The sender lives as long as `self`.
                    let _ = changed.changed().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
