//! Per-user event feeds for one epoch: id assignment, the bounded replay
//! log, live fan-out and the subscribe-then-replay seam.
//!
//! Owns SSE frame encoding and `<epoch>-<seq>` ids. It must never do I/O,
//! never await, and never hold a lock longer than a push or a snapshot: every
//! publish and every subscription of one user is serialized by that user's
//! lock, which is what makes the replay seam exact (no loss, no duplicate).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// One encoded event as it goes out on the wire.
#[derive(Clone, Debug)]
pub struct Event {
    /// Position in the user's sequence for this epoch.
    pub seq: u64,
    /// The complete SSE frame, encoded once and shared by every stream.
    pub frame: Bytes,
}

/// All users' feeds for one epoch; a restart replaces the whole `Feed`.
pub struct Feed {
    epoch: Arc<str>,
    log_capacity: usize,
    queue_capacity: usize,
    users: Mutex<HashMap<String, Arc<UserFeed>>>,
}

/// One user's sequence, log and live subscribers.
pub struct UserFeed {
    inner: Mutex<UserFeedInner>,
}

struct UserFeedInner {
    next_seq: u64,
    log: VecDeque<Event>,
    subs: Vec<(u64, mpsc::Sender<Event>)>,
    next_sub: u64,
}

/// What a new stream starts with, taken atomically with its subscription.
pub struct Subscription {
    /// The user's feed, kept so the stream can unsubscribe when it ends.
    pub feed: Arc<UserFeed>,
    /// Key for [`UserFeed::unsubscribe`].
    pub sub_id: u64,
    /// Live events published after the snapshot below.
    pub rx: mpsc::Receiver<Event>,
    /// Bytes to send before any live event: the replay, or a `resync`.
    pub first: Option<Bytes>,
}

/// Recovers the data from a poisoned lock: a panic elsewhere must not turn
/// the mock into a panic on every later request.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Feed {
    /// A fresh, empty epoch.
    pub fn new(epoch: String, log_capacity: usize) -> Feed {
        Feed {
            epoch: epoch.into(),
            log_capacity,
            // A stream that falls further behind than the log could replay is
            // cut off anyway; below 16 a burst would cut healthy streams.
            queue_capacity: log_capacity.max(16),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// The random identifier of this epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn user(&self, user: &str) -> Arc<UserFeed> {
        let mut users = lock(&self.users);
        if let Some(f) = users.get(user) {
            return f.clone();
        }
        let f = Arc::new(UserFeed {
            inner: Mutex::new(UserFeedInner {
                next_seq: 1,
                log: VecDeque::new(),
                subs: Vec::new(),
                next_sub: 0,
            }),
        });
        users.insert(user.to_owned(), f.clone());
        f
    }

    /// Appends an event to `user`'s log and hands it to every live stream.
    /// Returns its id.
    ///
    /// A stream whose queue is full loses its sender and so ends after what
    /// it already has; the client resumes by `Last-Event-ID` instead of
    /// silently skipping events.
    pub fn publish(&self, user: &str, event: &str, data: &str) -> String {
        let feed = self.user(user);
        let mut f = lock(&feed.inner);
        let seq = f.next_seq;
        f.next_seq += 1;
        let ev = Event {
            seq,
            frame: encode(&self.epoch, seq, event, data),
        };
        if self.log_capacity > 0 {
            if f.log.len() >= self.log_capacity {
                f.log.pop_front();
            }
            f.log.push_back(ev.clone());
        }
        f.subs.retain(|(_, tx)| tx.try_send(ev.clone()).is_ok());
        format_id(&self.epoch, seq)
    }

    /// Subscribes a new stream of `user`, resuming after `last_event_id`.
    ///
    /// No id: live only. A servable id (this epoch, still covered by the log):
    /// replay everything after it. Anything else: one `resync` whose id is the
    /// cursor of the newest event so far, then live.
    pub fn subscribe(&self, user: &str, last_event_id: Option<&str>) -> Subscription {
        let feed = self.user(user);
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let mut f = lock(&feed.inner);
        let sub_id = f.next_sub;
        f.next_sub += 1;
        f.subs.push((sub_id, tx));
        let newest = f.next_seq - 1;
        let first_logged = f.log.front().map_or(f.next_seq, |e| e.seq);
        let replay = match last_event_id.map(parse_id) {
            None => Ok(Vec::new()),
            Some(Some((epoch, seq)))
                if epoch == &*self.epoch && seq <= newest && seq + 1 >= first_logged =>
            {
                // Bounded by `seq <= newest`, so this fits the log's length.
                let skip = usize::try_from(seq + 1 - first_logged).unwrap_or(usize::MAX);
                Ok(f.log.iter().skip(skip).map(|e| e.frame.clone()).collect())
            }
            Some(_) => Err(newest),
        };
        drop(f);
        Subscription {
            feed,
            sub_id,
            rx,
            first: match replay {
                Ok(frames) => concat(frames),
                Err(cursor) => Some(encode(&self.epoch, cursor, "resync", "{}")),
            },
        }
    }
}

impl UserFeed {
    /// Forgets a stream's sender; called from the stream's drop guard.
    pub fn unsubscribe(&self, sub_id: u64) {
        lock(&self.inner).subs.retain(|(id, _)| *id != sub_id);
    }
}

fn concat(frames: Vec<Bytes>) -> Option<Bytes> {
    match frames.len() {
        0 => None,
        1 => frames.into_iter().next(),
        _ => {
            let mut buf = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
            for f in &frames {
                buf.extend_from_slice(f);
            }
            Some(buf.freeze())
        }
    }
}

/// The wire id of event `seq` in `epoch`.
pub fn format_id(epoch: &str, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

/// Splits `<epoch>-<seq>`; `None` for anything else.
pub fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.trim().rsplit_once('-')?;
    if epoch.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((epoch, seq.parse().ok()?))
}

/// Encodes one SSE frame. Line breaks in `data` become separate `data:`
/// fields and are stripped from the name, so no value can start a new field.
pub fn encode(epoch: &str, seq: u64, event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(32 + epoch.len() + event.len() + data.len());
    out.push_str("id: ");
    out.push_str(epoch);
    out.push('-');
    out.push_str(&seq.to_string());
    out.push_str("\nevent: ");
    out.extend(event.chars().filter(|c| *c != '\r' && *c != '\n'));
    out.push('\n');
    let data = data.replace("\r\n", "\n");
    for line in data.split(['\r', '\n']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn encodes_safely() {
        let f = encode("e1", 7, "in\nbound", "a\r\nb\rc");
        assert_eq!(
            text(&f),
            "id: e1-7\nevent: inbound\ndata: a\ndata: b\ndata: c\n\n"
        );
    }

    #[test]
    fn parses_ids() {
        assert_eq!(parse_id("abc-12"), Some(("abc", 12)));
        assert_eq!(parse_id("abc-"), None);
        assert_eq!(parse_id("-3"), None);
        assert_eq!(parse_id("abc-+3"), None);
        assert_eq!(parse_id("garbage"), None);
        assert_eq!(parse_id("a-99999999999999999999999"), None);
    }

    #[test]
    fn replays_after_id_then_live() {
        let feed = Feed::new("ep".into(), 8);
        for i in 0..3 {
            feed.publish("alice", "x", &i.to_string());
        }
        let mut sub = feed.subscribe("alice", Some("ep-1"));
        let first = sub.first.take().unwrap();
        assert_eq!(
            text(&first),
            "id: ep-2\nevent: x\ndata: 1\n\nid: ep-3\nevent: x\ndata: 2\n\n"
        );
        feed.publish("alice", "x", "3");
        assert_eq!(sub.rx.try_recv().unwrap().seq, 4);
    }

    #[test]
    fn resync_for_unservable_ids() {
        let feed = Feed::new("ep".into(), 2);
        for _ in 0..5 {
            feed.publish("bob", "x", "{}");
        }
        for id in ["other-5", "ep-2", "ep-6", "junk"] {
            let sub = feed.subscribe("bob", Some(id));
            assert_eq!(
                text(&sub.first.unwrap()),
                "id: ep-5\nevent: resync\ndata: {}\n\n",
                "{id}"
            );
        }
        // The oldest servable cursor is the one just before the log starts.
        assert_eq!(
            text(&feed.subscribe("bob", Some("ep-3")).first.unwrap())
                .matches("id:")
                .count(),
            2
        );
        assert!(feed.subscribe("bob", Some("ep-5")).first.is_none());
        assert!(feed.subscribe("bob", None).first.is_none());
    }

    #[test]
    fn empty_feed_cursor_zero_is_servable() {
        let feed = Feed::new("ep".into(), 4);
        assert!(feed.subscribe("carol", Some("ep-0")).first.is_none());
    }

    #[test]
    fn lagging_subscriber_is_cut_off() {
        let feed = Feed::new("ep".into(), 1);
        let mut sub = feed.subscribe("alice", None);
        for _ in 0..17 {
            feed.publish("alice", "x", "{}");
        }
        let mut got = 0;
        while sub.rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 16);
        assert!(matches!(
            sub.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
