//! Channel: one per user. Owns the downstream sequence, the replay ring, the
//! broadcast sender to the user's tabs and the credentials the tabs brought.
//! It encodes each trigger exactly once; it never parses HTTP, never talks to
//! the backend and never knows about other users.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::translate::{self, Trigger};

/// One encoded SSE frame as it travels to every tab of the user.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Downstream sequence number (the part after `<epoch>-` in the id).
    pub seq: u64,
    /// The encoded bytes, shared by all tabs.
    pub bytes: Bytes,
    /// The channel is ending: deliver nothing after this frame.
    pub close: bool,
}

/// A frame as the ring and the broadcast buffer hold it. The broadcast
/// buffer preallocates every slot for every user, idle or not; a pointer per
/// slot instead of the whole frame halves what an idle user costs.
pub type SharedFrame = Arc<Frame>;

/// What a tab gets when it attaches: the part of the ring it missed and the
/// live receiver, taken under one lock so the seam has no gap or duplicate.
pub struct Attach {
    /// Frames after the tab's `Last-Event-ID`, oldest first.
    pub replay: Vec<Bytes>,
    /// The id could not be served (unknown epoch, fell out of the ring, or
    /// from the future): the tab must start with a `resync`.
    pub resync: Option<Bytes>,
    /// For a tab that came without an id: an id-only frame (no event is
    /// dispatched) naming the current position, so that if this stream drops
    /// before its first trigger, the browser's reconnect still carries a
    /// `Last-Event-ID` and gets a replay instead of a silent gap.
    pub position: Option<Bytes>,
    /// Live frames after the replay.
    pub rx: broadcast::Receiver<SharedFrame>,
}

struct Credential {
    key: u64,
    cookie: String,
    // Tabs holding this cookie right now; 0 = kept only for grace.
    holders: usize,
    refused: bool,
}

struct State {
    seq: u64,
    ring: VecDeque<SharedFrame>,
    creds: Vec<Credential>,
    next_key: u64,
    closed: bool,
}

/// The per-user channel. Shared as `Arc<Channel>` by the hub entry, the
/// upstream task and every tab.
pub struct Channel {
    user: String,
    epoch: String,
    ring_size: usize,
    tx: broadcast::Sender<SharedFrame>,
    state: Mutex<State>,
}

impl Channel {
    /// A new channel with a fresh random epoch.
    pub fn new(user: &str, ring_size: usize, broadcast_buffer: usize) -> Arc<Channel> {
        Self::with_epoch(
            user,
            &format!("{:016x}", fastrand::u64(..)),
            ring_size,
            broadcast_buffer,
        )
    }

    /// A new channel with a given epoch (tests).
    pub fn with_epoch(
        user: &str,
        epoch: &str,
        ring_size: usize,
        broadcast_buffer: usize,
    ) -> Arc<Channel> {
        let (tx, _) = broadcast::channel(broadcast_buffer.max(1));
        Arc::new(Channel {
            user: user.to_string(),
            epoch: epoch.to_string(),
            ring_size: ring_size.max(1),
            tx,
            state: Mutex::new(State {
                seq: 0,
                ring: VecDeque::new(),
                creds: Vec::new(),
                next_key: 0,
                closed: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the ring half-updated
        // in a way that matters more than losing the process, so recover.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user this channel belongs to.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Epoch part of downstream ids; changes whenever a channel is recreated.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Highest sequence number published so far.
    pub fn last_seq(&self) -> u64 {
        self.lock().seq
    }

    /// Number of tabs currently attached (broadcast receivers).
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Bytes held by the replay ring (bounded by `ring_size` frames).
    pub fn ring_bytes(&self) -> usize {
        self.lock().ring.iter().map(|f| f.bytes.len()).sum()
    }

    /// Frames the broadcast buffer still holds for its slowest tab. Bounded
    /// by `broadcast_buffer` however far a tab falls behind: a tab that
    /// lags past it gets `resync` instead of pinning more memory.
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }

    /// Whether [`Channel::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Assign ids, encode once, remember in the ring and broadcast, in that
    /// order and under one lock, so ring order equals broadcast order.
    pub fn publish(&self, triggers: &[Trigger]) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        for t in triggers {
            let seq = st.seq + 1;
            let id = format!("{}-{}", self.epoch, seq);
            let bytes = match ssemux_sse::encode_event(Some(&id), Some(&t.name), &t.data) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(user = %self.user, trigger = %t.name, error = %e, "trigger not encodable, dropped");
                    continue;
                }
            };
            st.seq = seq;
            let frame = Arc::new(Frame {
                seq,
                bytes,
                close: false,
            });
            if st.ring.len() == self.ring_size {
                st.ring.pop_front();
            }
            st.ring.push_back(frame.clone());
            // No receivers is normal during grace.
            let _ = self.tx.send(frame);
        }
    }

    /// Send `logout` and end every tab stream. Later publishes are ignored.
    pub fn close(&self) {
        self.publish(&[Trigger::new(translate::LOGOUT, "1")]);
        let mut st = self.lock();
        st.closed = true;
        let _ = self.tx.send(Arc::new(Frame {
            seq: st.seq,
            bytes: Bytes::new(),
            close: true,
        }));
    }

    /// Attach a tab. `last_event_id` is what the browser sent, if anything.
    pub fn attach(&self, last_event_id: Option<&str>) -> Attach {
        let st = self.lock();
        let rx = self.tx.subscribe();
        let Some(last) = last_event_id.map(str::trim).filter(|s| !s.is_empty()) else {
            // Epoch and digits only: nothing here needs escaping.
            let position = Bytes::from(format!("id: {}-{}\n\n", self.epoch, st.seq));
            return Attach {
                replay: Vec::new(),
                resync: None,
                position: Some(position),
                rx,
            };
        };
        let servable = last
            .rsplit_once('-')
            .filter(|(epoch, _)| *epoch == self.epoch)
            .and_then(|(_, seq)| seq.parse::<u64>().ok())
            .filter(|&seq| {
                let oldest_kept = st.ring.front().map_or(st.seq + 1, |f| f.seq);
                // Everything after `seq` must still be in the ring.
                seq <= st.seq && seq + 1 >= oldest_kept
            });
        match servable {
            Some(seq) => Attach {
                replay: st
                    .ring
                    .iter()
                    .filter(|f| f.seq > seq)
                    .map(|f| f.bytes.clone())
                    .collect(),
                resync: None,
                position: None,
                rx,
            },
            None => {
                let id = format!("{}-{}", self.epoch, st.seq);
                let resync = ssemux_sse::encode_event(Some(&id), Some(translate::RESYNC), "1").ok();
                Attach {
                    replay: Vec::new(),
                    resync,
                    position: None,
                    rx,
                }
            }
        }
    }

    /// Remember a tab's credentials (its `Cookie` header). Returns the key to
    /// release them with. Tabs of one session share one entry, counted, so
    /// the session stays usable until its last tab leaves.
    pub fn add_credential(&self, cookie: &str) -> u64 {
        let mut st = self.lock();
        if let Some(c) = st.creds.iter_mut().find(|c| c.cookie == cookie) {
            c.holders += 1;
            // The tab just authenticated with it: worth trying again.
            c.refused = false;
            return c.key;
        }
        let key = st.next_key;
        st.next_key += 1;
        st.creds.push(Credential {
            key,
            cookie: cookie.to_string(),
            holders: 1,
            refused: false,
        });
        key
    }

    /// A tab that brought `key` left. When no tab holds the credential any
    /// more it is dropped, except the last one, which is kept (not live) so
    /// the upstream can still reconnect during grace.
    pub fn remove_credential(&self, key: u64) {
        let mut st = self.lock();
        let Some(i) = st.creds.iter().position(|c| c.key == key) else {
            return;
        };
        let c = &mut st.creds[i];
        c.holders = c.holders.saturating_sub(1);
        if c.holders == 0 && st.creds.len() > 1 {
            st.creds.remove(i);
        }
    }

    /// Credentials to open the upstream with: a live, not yet refused one
    /// first, then any not refused. `None` once every one was refused.
    pub fn credential(&self) -> Option<(u64, String)> {
        let st = self.lock();
        let usable = || st.creds.iter().filter(|c| !c.refused);
        usable()
            .find(|c| c.holders > 0)
            .or_else(|| usable().next())
            .map(|c| (c.key, c.cookie.clone()))
    }

    /// The backend refused these credentials.
    pub fn refuse_credential(&self, key: u64) {
        let mut st = self.lock();
        if let Some(c) = st.creds.iter_mut().find(|c| c.key == key) {
            c.refused = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u32) -> Trigger {
        Trigger::new("thread-updated", &format!("p{n}"))
    }

    fn ids(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|b| {
                let s = String::from_utf8_lossy(b);
                s.lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn replay_after_id_and_resync_when_unservable() {
        let ch = Channel::with_epoch("alice", "e1", 4, 16);
        for n in 1..=6 {
            ch.publish(&[t(n)]);
        }
        // Ring holds 3..=6.
        let a = ch.attach(Some("e1-4"));
        assert_eq!(ids(&a.replay), vec!["e1-5", "e1-6"]);
        assert!(a.resync.is_none());
        let a = ch.attach(Some("e1-2"));
        assert!(a.resync.is_none(), "2 is servable: 3.. are kept");
        assert_eq!(a.replay.len(), 4);
        for bad in ["e1-1", "e0-5", "e1-7", "garbage", "e1-x"] {
            let a = ch.attach(Some(bad));
            assert!(a.replay.is_empty(), "{bad}");
            let r = a.resync.expect("resync");
            let text = String::from_utf8_lossy(&r).to_string();
            assert!(
                text.contains("event: resync") && text.contains("id: e1-6"),
                "{text}"
            );
        }
        let a = ch.attach(None);
        assert!(a.replay.is_empty() && a.resync.is_none());
    }

    #[test]
    fn live_follows_replay_without_gap() {
        let ch = Channel::with_epoch("alice", "e1", 8, 16);
        ch.publish(&[t(1), t(2)]);
        let mut a = ch.attach(Some("e1-1"));
        ch.publish(&[t(3)]);
        assert_eq!(ids(&a.replay), vec!["e1-2"]);
        let live = a.rx.try_recv().expect("live frame");
        assert_eq!(live.seq, 3);
    }

    #[test]
    fn credentials_prefer_live_and_drop_refused() {
        let ch = Channel::with_epoch("alice", "e1", 8, 16);
        let k1 = ch.add_credential("session=a");
        let k2 = ch.add_credential("session=b");
        assert_eq!(ch.credential().map(|c| c.0), Some(k1));
        ch.refuse_credential(k1);
        assert_eq!(ch.credential().map(|c| c.1), Some("session=b".into()));
        ch.remove_credential(k1);
        ch.remove_credential(k2);
        // Last one kept for grace reconnects.
        assert_eq!(ch.credential().map(|c| c.1), Some("session=b".into()));
        ch.refuse_credential(k2);
        assert_eq!(ch.credential(), None);
    }

    #[test]
    fn a_session_stays_usable_until_its_last_tab_leaves() {
        let ch = Channel::with_epoch("alice", "e1", 8, 16);
        let first = ch.add_credential("session=a");
        let other = ch.add_credential("session=b");
        let second = ch.add_credential("session=a");
        assert_eq!(first, second, "one entry per session");
        // The later tab of session a leaves; the earlier one is still here.
        ch.remove_credential(second);
        ch.refuse_credential(other);
        assert_eq!(ch.credential().map(|c| c.1), Some("session=a".into()));
        ch.remove_credential(first);
        // Only b's tab is left, and b was refused: nothing usable (logout).
        assert_eq!(ch.credential(), None);
        // When b's tab leaves too, b is kept for grace (the last one).
        ch.remove_credential(other);
        assert_eq!(ch.lock().creds.len(), 1);
    }

    #[test]
    fn close_sends_logout_then_end() {
        let ch = Channel::with_epoch("alice", "e1", 8, 16);
        let mut a = ch.attach(None);
        ch.close();
        let f = a.rx.try_recv().expect("logout");
        assert!(String::from_utf8_lossy(&f.bytes).contains("event: logout"));
        assert!(a.rx.try_recv().expect("close").close);
        ch.publish(&[t(9)]);
        assert!(a.rx.try_recv().is_err());
    }
}
