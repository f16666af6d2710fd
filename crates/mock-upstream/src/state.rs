//! The single owner of everything the mock knows: sessions, chat data, the
//! current epoch's feeds, fault controls, stream counts, and the change pulse
//! that `wait_until` listens to.
//!
//! Each concern has its own short-held std mutex. It must never hold a lock
//! across an `.await`, and never take locks in an order other than
//! chat → current → feed (so publishing under the chat lock cannot deadlock).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MockConfig;
use crate::chat::Chat;
use crate::feed::{Feed, lock};

/// How many `Last-Event-ID` records are kept per user; only the newest
/// survive so a long load test cannot grow this without bound.
const MAX_RECORDED_REQUESTS: usize = 65_536;

/// The shared state behind every `MockBackend` handle and request.
pub struct State {
    pub(crate) keepalive: Duration,
    log_capacity: usize,
    sessions: Mutex<HashMap<String, String>>,
    chat: Mutex<Chat>,
    current: Mutex<Current>,
    streams: Mutex<StreamCounts>,
    opened_total: AtomicU64,
    requests: Mutex<HashMap<String, VecDeque<Option<String>>>>,
    refuse: Mutex<Option<(StatusCode, Instant)>>,
    stall_until: Mutex<Option<Instant>>,
    closed: AtomicBool,
    changed: Notify,
}

/// The epoch and the token that ends every stream opened under it; swapped
/// together so a stream can never pair an old epoch with a live token.
struct Current {
    feed: Arc<Feed>,
    drop: CancellationToken,
}

#[derive(Default)]
struct StreamCounts {
    per_user: HashMap<String, usize>,
    total: usize,
}

fn new_epoch() -> String {
    format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

impl State {
    /// Fresh state with a random epoch.
    pub fn new(cfg: &MockConfig) -> State {
        State {
            keepalive: cfg.keepalive,
            log_capacity: cfg.log_capacity,
            sessions: Mutex::default(),
            chat: Mutex::default(),
            current: Mutex::new(Current {
                feed: Arc::new(Feed::new(new_epoch(), cfg.log_capacity)),
                drop: CancellationToken::new(),
            }),
            streams: Mutex::default(),
            opened_total: AtomicU64::new(0),
            requests: Mutex::default(),
            refuse: Mutex::new(None),
            stall_until: Mutex::new(None),
            closed: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Wakes every `wait_until` so it re-checks its condition.
    pub fn pulse(&self) {
        self.changed.notify_waiters();
    }

    /// The pulse `wait_until` subscribes to.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    // ---- sessions ----

    /// Creates a session for `user` and returns its token.
    pub fn create_session(&self, user: &str) -> String {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        lock(&self.sessions).insert(token.clone(), user.to_owned());
        self.pulse();
        token
    }

    /// The user a session token belongs to.
    pub fn session_user(&self, token: &str) -> Option<String> {
        lock(&self.sessions).get(token).cloned()
    }

    /// Forgets every session, as a restarted process would.
    pub fn forget_sessions(&self) {
        lock(&self.sessions).clear();
        self.pulse();
    }

    /// Forgets a session; unknown tokens are ignored.
    pub fn revoke_session(&self, token: &str) {
        lock(&self.sessions).remove(token);
        self.pulse();
    }

    // ---- chat ----

    /// Stores a message and tells both parties, each with the other as peer.
    pub fn send_message(&self, from: &str, to: &str, text: &str) -> u64 {
        let row_id = {
            let mut chat = lock(&self.chat);
            let row_id = chat.send(from, to, text);
            // Published under the chat lock so each user sees row ids in order.
            let feed = self.feed();
            feed.publish(
                from,
                "outbound-state",
                &json!({"peer": to, "rowId": row_id, "state": "sent"}).to_string(),
            );
            feed.publish(
                to,
                "inbound",
                &json!({"peer": from, "rowId": row_id}).to_string(),
            );
            row_id
        };
        self.pulse();
        row_id
    }

    /// Raises `user`'s watermark for `peer`. If it moved, emits
    /// `read-watermark-changed` to `user`, and, when it covered messages
    /// `peer` sent, `outbound-state` with state `read` to `peer` (their
    /// messages up to that row id have been seen). Returns the stored value.
    pub fn mark_read(&self, user: &str, peer: &str, row_id: u64) -> u64 {
        let stored = {
            let mut chat = lock(&self.chat);
            let old = chat.watermark(user, peer);
            let (stored, changed) = chat.mark_read(user, peer, row_id);
            if changed {
                let feed = self.feed();
                feed.publish(
                    user,
                    "read-watermark-changed",
                    &json!({"peer": peer, "rowId": stored}).to_string(),
                );
                if let Some(seen) = chat.newest_from(peer, user, old, stored) {
                    feed.publish(
                        peer,
                        "outbound-state",
                        &json!({"peer": user, "rowId": seen, "state": "read"}).to_string(),
                    );
                }
            }
            stored
        };
        self.pulse();
        stored
    }

    /// `user`'s watermark for `peer`, 0 if none.
    pub fn read_watermark(&self, user: &str, peer: &str) -> u64 {
        lock(&self.chat).watermark(user, peer)
    }

    /// Runs `f` over the chat data; keep `f` short, it holds the lock.
    pub fn with_chat<R>(&self, f: impl FnOnce(&Chat) -> R) -> R {
        f(&lock(&self.chat))
    }

    // ---- feeds ----

    fn feed(&self) -> Arc<Feed> {
        lock(&self.current).feed.clone()
    }

    /// The current epoch's feeds and the token that ends its streams.
    pub fn current(&self) -> (Arc<Feed>, CancellationToken) {
        let c = lock(&self.current);
        (c.feed.clone(), c.drop.clone())
    }

    /// Publishes a raw event to `user`; returns its id.
    pub fn emit(&self, user: &str, event: &str, data: &str) -> String {
        let id = self.feed().publish(user, event, data);
        self.pulse();
        id
    }

    /// The current epoch.
    pub fn epoch(&self) -> String {
        self.feed().epoch().to_owned()
    }

    /// Ends every open stream (they see a clean EOF).
    pub fn drop_streams(&self) {
        {
            let mut c = lock(&self.current);
            c.drop.cancel();
            c.drop = CancellationToken::new();
        }
        self.pulse();
    }

    /// New epoch, empty logs, every open stream ended. Returns the new epoch.
    pub fn restart(&self) -> String {
        let epoch = {
            let mut c = lock(&self.current);
            let mut epoch = new_epoch();
            while epoch == c.feed.epoch() {
                epoch = new_epoch();
            }
            c.feed = Arc::new(Feed::new(epoch.clone(), self.log_capacity));
            c.drop.cancel();
            c.drop = CancellationToken::new();
            epoch
        };
        self.pulse();
        epoch
    }

    // ---- fault controls ----

    /// New events requests get `status` for `for_` from now.
    pub fn refuse_streams(&self, status: StatusCode, for_: Duration) {
        *lock(&self.refuse) = Some((status, Instant::now() + for_));
        self.pulse();
    }

    /// The status to refuse an events request with, if a refusal is active.
    pub fn refusal(&self) -> Option<StatusCode> {
        let mut r = lock(&self.refuse);
        match *r {
            Some((status, until)) if Instant::now() < until => Some(status),
            Some(_) => {
                *r = None;
                None
            }
            None => None,
        }
    }

    /// Silences every stream until `for_` from now. Extends an active stall
    /// but never shortens it: a stalled stream only re-checks when its own
    /// stall timer fires.
    pub fn stall_streams(&self, for_: Duration) {
        let until = Instant::now() + for_;
        {
            let mut s = lock(&self.stall_until);
            *s = Some(s.map_or(until, |old| old.max(until)));
        }
        self.pulse();
    }

    /// When the active stall ends, if one is active.
    pub fn stalled_until(&self) -> Option<Instant> {
        let until = (*lock(&self.stall_until))?;
        (Instant::now() < until).then_some(until)
    }

    // ---- stream bookkeeping ----

    /// Records the `Last-Event-ID` of an authenticated events request.
    pub fn record_request(&self, user: &str, last_event_id: Option<&str>) {
        {
            let mut reqs = lock(&self.requests);
            let list = reqs.entry(user.to_owned()).or_default();
            if list.len() >= MAX_RECORDED_REQUESTS {
                list.pop_front();
            }
            list.push_back(last_event_id.map(str::to_owned));
        }
        self.pulse();
    }

    /// Every recorded `Last-Event-ID` of `user`, oldest first.
    pub fn stream_requests(&self, user: &str) -> Vec<Option<String>> {
        lock(&self.requests)
            .get(user)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Counts a newly opened stream.
    pub fn stream_opened(&self, user: &str) {
        {
            let mut s = lock(&self.streams);
            *s.per_user.entry(user.to_owned()).or_default() += 1;
            s.total += 1;
        }
        self.opened_total.fetch_add(1, Ordering::Relaxed);
        self.pulse();
    }

    /// Uncounts a stream; called once from its drop guard.
    pub fn stream_closed(&self, user: &str) {
        {
            let mut s = lock(&self.streams);
            if let Some(n) = s.per_user.get_mut(user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.per_user.remove(user);
                }
            }
            s.total = s.total.saturating_sub(1);
        }
        self.pulse();
    }

    /// Open streams of `user`.
    pub fn open_streams(&self, user: &str) -> usize {
        lock(&self.streams).per_user.get(user).copied().unwrap_or(0)
    }

    /// Open streams of everyone.
    pub fn open_streams_total(&self) -> usize {
        lock(&self.streams).total
    }

    /// Streams ever opened.
    pub fn streams_opened_total(&self) -> u64 {
        self.opened_total.load(Ordering::Relaxed)
    }

    /// The admin stats document.
    pub fn stats_json(&self) -> serde_json::Value {
        let (per_user, total) = {
            let s = lock(&self.streams);
            (s.per_user.clone(), s.total)
        };
        json!({
            "epoch": self.epoch(),
            "openStreams": per_user,
            "openStreamsTotal": total,
            "streamsOpenedTotal": self.streams_opened_total(),
        })
    }

    // ---- lifecycle ----

    /// Marks the backend shut down and ends every stream.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.drop_streams();
    }

    /// Whether [`State::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}
