//! Channel: one per user. Owns the downstream sequence, the frame ring (the
//! replay buffer and the fan-out buffer in one), the wake-up signal to the
//! user's tabs and the credentials the tabs brought.
//! It encodes each trigger exactly once; it never parses HTTP, never talks to
//! the backend and never knows about other users.
//!
//! Fan-out is pull-based: a publish appends to the ring and wakes the tabs;
//! each tab ([`Follower`]) takes every frame after its cursor in one go. An
//! idle user costs no preallocated slots, and a tab that was busy writing
//! picks up everything that arrived meanwhile in one batch (one `writev`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::{GapPolicy, HubConfig};
use crate::credential::Credential;
use crate::events::resume::{Position, ResumeKey, split_id};
use crate::metrics::ResyncCause;
use crate::trigger::{self, Trigger};

/// Most frames moved as one batch: triggers published by one call, frames a
/// tab takes per wake-up, frames gathered into one `writev`. The bound keeps
/// one tab from holding the channel's lock for long, and a long burst (a
/// replay after reconnect) from being trimmed before any tab could take it.
pub const MAX_BATCH: usize = 64;

/// One encoded SSE frame as it travels to every tab of the user.
#[derive(Debug)]
pub struct Frame {
    /// Downstream sequence number (the part after `<epoch>-` in the id).
    pub seq: u64,
    /// The encoded bytes, shared by all tabs.
    pub bytes: Bytes,
    /// A gap under `hub.on_gap = "end"`: the bytes only move the tab's id
    /// past it, and a live tab's stream ends after it (a replaying tab is
    /// reconnecting anyway, so it goes on).
    pub ends: bool,
    /// The upstream position the frame came from, if the upstream has ids.
    pub pos: Option<Position>,
    /// When it was published: a live tab whose next frame is older than
    /// [`Lag::time`] is behind for real.
    pub at: Instant,
    /// Set for an idempotent trigger (see [`Frame::superseded`]).
    pub coalesce: Option<Coalesce>,
    /// A later frame is the same idempotent trigger (set when it is
    /// published, under the channel's lock).
    superseded: std::sync::atomic::AtomicBool,
}

/// What makes two frames the same trigger: everything after the id line.
/// The hash finds the candidate; the bytes decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    hash: u64,
    // Where the id line ends in the frame's bytes.
    body: usize,
}

impl Coalesce {
    fn of(bytes: &[u8]) -> Option<Coalesce> {
        use std::hash::{Hash, Hasher};
        let body = bytes.iter().position(|&b| b == b'\n')? + 1;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes[body..].hash(&mut h);
        Some(Coalesce {
            hash: h.finish(),
            body,
        })
    }
}

impl Frame {
    /// Whether a later frame is the same idempotent trigger: a tab that has
    /// not taken this one yet skips it and gets that one instead.
    pub fn superseded(&self) -> bool {
        self.superseded.load(Ordering::Relaxed)
    }

    fn same_trigger(&self, other: &Frame) -> bool {
        match (self.coalesce, other.coalesce) {
            (Some(a), Some(b)) => {
                a.hash == b.hash && self.bytes.get(a.body..) == other.bytes.get(b.body..)
            }
            _ => false,
        }
    }
}

/// Most frames a tab looks at in one take, sent or skipped as superseded:
/// bounds how long one take holds the channel's lock.
const MAX_SCAN: usize = 16 * 1024;

/// How far a live tab may fall behind before it gets `resync` instead of
/// the frames it missed (`hub.max_lag`, `hub.max_lag_bytes`). Time, not a
/// frame count: a tab that is a second behind at 2,000 frames a second is
/// only busy, one that has not caught up for five seconds is stuck. Bytes
/// bound what the slowest tab can make its channel hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// A live tab whose oldest frame not yet taken is older than this is
    /// lagged; frames that old are dropped once beyond the replay ring.
    pub time: Duration,
    /// Most bytes a channel keeps beyond its replay ring for tabs that have
    /// not taken them yet; the oldest go first, and their tabs are lagged.
    pub bytes: usize,
}

impl Lag {
    /// From the `[hub]` section.
    pub fn new(hub: &HubConfig) -> Lag {
        Lag {
            time: hub.max_lag,
            bytes: hub.max_lag_bytes,
        }
    }
}

impl Default for Lag {
    fn default() -> Self {
        Lag::new(&HubConfig::default())
    }
}

/// What the tabs of a channel are sent at a gap and around an upstream
/// outage (`[hub]`), encoded here once for every channel.
#[derive(Clone, Debug)]
pub struct Signals {
    /// `hub.on_gap`.
    pub on_gap: GapPolicy,
    /// `hub.resync_event` / `hub.resync_data`.
    pub resync: (String, String),
    /// `hub.upstream_down_after`.
    pub down_after: Duration,
    /// `hub.upstream_down_event` (empty: none).
    pub down_event: String,
    /// `hub.upstream_up_event` (empty: none).
    pub up_event: String,
    /// The resync a lagging tab gets (no id: its `Last-Event-ID` keeps
    /// pointing at the last frame it did get, so a reconnect replays from
    /// there or resyncs again); `None` under `on_gap = "end"`.
    lag_frame: Option<Bytes>,
    /// `down_event` without an id, for a tab attaching during an outage.
    down_frame: Option<Bytes>,
}

impl Signals {
    /// From the `[hub]` section.
    pub fn new(hub: &HubConfig) -> Signals {
        let resync = (hub.resync_event.clone(), hub.resync_data.clone());
        let lag_frame = (hub.on_gap == GapPolicy::Resync)
            .then(|| ssemux_sse::encode_event(None, Some(&resync.0), &resync.1).ok())
            .flatten();
        let down_frame = (!hub.upstream_down_event.is_empty())
            .then(|| ssemux_sse::encode_event(None, Some(&hub.upstream_down_event), "1").ok())
            .flatten();
        Signals {
            on_gap: hub.on_gap,
            resync,
            down_after: hub.upstream_down_after,
            down_event: hub.upstream_down_event.clone(),
            up_event: hub.upstream_up_event.clone(),
            lag_frame,
            down_frame,
        }
    }

    /// What a tab that fell behind gets, or `None`: its stream ends.
    pub fn lag_frame(&self) -> Option<Bytes> {
        self.lag_frame.clone()
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new(&HubConfig::default())
    }
}

/// A frame as the ring holds it: tabs that have not sent it yet share it.
pub type SharedFrame = Arc<Frame>;

/// Why a [`Follower`] has no frame to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The tab fell behind by more than the channel's [`Lag`] (its next
    /// frame is too old, or left the ring for the byte budget); it skips
    /// this many (all it had not taken). Its cursor is now at the newest
    /// frame: it must be told `resync`, then it continues live.
    Lagged(u64),
    /// The channel was closed and every frame before the close was taken.
    Closed,
}

/// [`Follower::try_recv`] found nothing: `Empty`, or a [`RecvError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing new yet.
    Empty,
    /// See [`RecvError::Lagged`].
    Lagged(u64),
    /// See [`RecvError::Closed`].
    Closed,
}

/// What a tab gets when it attaches: the part of the ring it missed and its
/// follower, positioned under one lock so the seam has no gap or duplicate.
pub struct Attach {
    /// Frames after the tab's `Last-Event-ID`, oldest first.
    pub replay: Vec<Bytes>,
    /// The id could not be served: the tab must start with this `resync`
    /// frame, counted under its cause (another epoch or a malformed id:
    /// [`ResyncCause::Epoch`]; this epoch but out of the ring or from the
    /// future: [`ResyncCause::RingMiss`]).
    pub resync: Option<(Bytes, ResyncCause)>,
    /// For a tab that came without an id: an id-only frame (no event is
    /// dispatched) naming the current position, so that if this stream drops
    /// before its first trigger, the browser's reconnect still carries a
    /// `Last-Event-ID` and gets a replay instead of a silent gap.
    pub position: Option<Bytes>,
    /// The upstream is down right now: the tab is told first (no id).
    pub down: Option<Bytes>,
    /// Live frames after the replay.
    pub rx: Follower,
}

struct Held {
    key: u64,
    cred: Credential,
    // Tabs holding this cookie right now; 0 = kept only for grace.
    holders: usize,
    refused: bool,
    // The backend no longer knows this session: its tabs are logged out.
    revoked: bool,
}

struct State {
    seq: u64,
    ring: VecDeque<SharedFrame>,
    // Sum of the ring's frame sizes, and of those older than the replay
    // tail (the newest `ring_size`): what slow tabs hold, budgeted.
    ring_bytes: usize,
    beyond_bytes: usize,
    // Newest idempotent frame in the ring per trigger (hash → seq).
    latest: std::collections::HashMap<u64, u64>,
    // Each attached tab's cursor (the last seq it took); frames beyond the
    // replay size are kept only while some tab still needs them.
    cursors: Vec<Arc<AtomicU64>>,
    creds: Vec<Held>,
    next_key: u64,
    closed: bool,
    // The upstream has connected at least once.
    upstream_seen: bool,
    // A tab was answered before that first connect: what the backend sent
    // in between is unknown to it.
    answered_early: bool,
    // The tabs were told the upstream is down, and not yet that it is back.
    down: bool,
    // The upstream position of the newest frame that had one (or where the
    // channel started): what every id written from now on seals.
    last_pos: Option<Position>,
}

/// The per-user channel. Shared as `Arc<Channel>` by the hub entry, the
/// upstream task and every tab.
pub struct Channel {
    user: String,
    // The hub's key for this channel: the user plus any key parameters.
    key: String,
    // Path and query of the user's stream on the backend.
    path: Arc<str>,
    epoch: String,
    // Frames always kept for reconnecting tabs (`hub.ring_size`).
    ring_size: usize,
    // How far behind a live tab may fall.
    lag: Lag,
    wake: watch::Sender<()>,
    // Bumped by every credential revocation.
    revocations: AtomicU64,
    // Wakes tabs waiting for the first upstream connect (or the close).
    upstream_ready: Notify,
    signals: Arc<Signals>,
    // Seals upstream positions into ids (`None`: plain ids).
    resume: Option<Arc<ResumeKey>>,
    // The position the first tab came back with: the upstream resumes there.
    start: Option<Position>,
    state: Mutex<State>,
}

impl Channel {
    /// A new channel with a fresh random epoch.
    pub fn new(user: &str, ring_size: usize, lag: Lag) -> Arc<Channel> {
        Self::with_epoch(user, &format!("{:016x}", fastrand::u64(..)), ring_size, lag)
    }

    /// A new channel with a given epoch (tests). `ring_size` frames are kept
    /// for replay; a live tab may fall behind as far as `lag` allows.
    pub fn with_epoch(user: &str, epoch: &str, ring_size: usize, lag: Lag) -> Arc<Channel> {
        let signals = Arc::new(Signals::default());
        let subject = Subject::from(user);
        Self::build(&subject, epoch, ring_size, lag, signals, None)
    }

    /// A new channel for `subject`, with a fresh random epoch, sending
    /// `signals` at gaps and outages and sealing positions with `resume`.
    pub fn for_subject(
        subject: &Subject,
        ring_size: usize,
        lag: Lag,
        signals: Arc<Signals>,
        resume: Option<Arc<ResumeKey>>,
    ) -> Arc<Channel> {
        let epoch = format!("{:016x}", fastrand::u64(..));
        Self::build(subject, &epoch, ring_size, lag, signals, resume)
    }

    fn build(
        subject: &Subject,
        epoch: &str,
        ring_size: usize,
        lag: Lag,
        signals: Arc<Signals>,
        resume: Option<Arc<ResumeKey>>,
    ) -> Arc<Channel> {
        let ring_size = ring_size.max(1);
        Arc::new(Channel {
            user: subject.user.clone(),
            key: subject.key.clone(),
            path: subject.path.clone(),
            epoch: epoch.to_string(),
            ring_size,
            lag,
            wake: watch::Sender::new(()),
            revocations: AtomicU64::new(0),
            upstream_ready: Notify::new(),
            signals,
            // A position with nowhere to resume from must not pass for one.
            start: subject
                .from
                .clone()
                .filter(|p| resume.is_some() && p.resume_point().is_some()),
            resume,
            state: Mutex::new(State {
                seq: 0,
                ring: VecDeque::new(),
                ring_bytes: 0,
                beyond_bytes: 0,
                latest: std::collections::HashMap::new(),
                cursors: Vec::new(),
                creds: Vec::new(),
                next_key: 0,
                closed: false,
                upstream_seen: false,
                answered_early: false,
                down: false,
                last_pos: subject.from.clone(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the ring half-updated
        // in a way that matters more than losing the process, so recover.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Last-Event-ID` the upstream resumes with: the position the
    /// channel's first tab came back with, if it can be resumed from.
    pub fn resume_point(&self) -> Option<Arc<str>> {
        self.start.as_ref()?.resume_point()
    }

    /// `<epoch>-<seq>`, and the sealed position when there is one: every id
    /// a tab can hold says where in the upstream it stands.
    fn id_for(&self, seq: u64, pos: Option<&Position>) -> String {
        let sealed = self
            .resume
            .as_ref()
            .zip(pos)
            .and_then(|(k, p)| k.seal(&self.key, p));
        match sealed {
            Some(t) => format!("{}-{}.{}", self.epoch, seq, t),
            None => format!("{}-{}", self.epoch, seq),
        }
    }

    /// What the channel's tabs get at gaps and outages.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// The user this channel belongs to.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The hub's key for this channel (the user, plus key parameters).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Path and query of this channel's stream on the backend.
    pub fn path(&self) -> &Arc<str> {
        &self.path
    }

    /// Epoch part of downstream ids; changes whenever a channel is recreated.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Highest sequence number published so far.
    pub fn last_seq(&self) -> u64 {
        self.lock().seq
    }

    /// Number of tabs currently attached (live followers).
    pub fn receivers(&self) -> usize {
        self.lock().cursors.len()
    }

    /// Bytes held by the ring: the replay tail plus whatever a slow tab has
    /// not taken yet — beyond the replay tail at most [`Lag::bytes`].
    pub fn ring_bytes(&self) -> usize {
        self.lock().ring_bytes
    }

    /// Frames the slowest attached tab has not taken yet. Bounded by the
    /// [`Lag`] however far a tab falls behind: a tab that lags past it gets
    /// `resync` instead of pinning more memory.
    pub fn backlog(&self) -> usize {
        let st = self.lock();
        let held = st.ring.len() as u64;
        let slowest = st
            .cursors
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(st.seq);
        st.seq.saturating_sub(slowest).min(held) as usize
    }

    /// Whether the channel was closed (every credential refused) before its
    /// upstream ever connected: its tabs were never authorised.
    pub fn refused_before_up(&self) -> bool {
        let st = self.lock();
        st.closed && !st.upstream_seen
    }

    /// Whether [`Channel::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Assign ids, encode once, append to the ring, then wake the tabs once
    /// for the whole batch. Ids and ring order are assigned under one lock.
    pub fn publish(&self, triggers: &[Trigger]) {
        self.publish_from(triggers, &[]);
    }

    /// [`Channel::publish`], each trigger with the upstream position it came
    /// from (`positions[i]` for `triggers[i]`; missing ones have none).
    pub fn publish_from(&self, triggers: &[Trigger], positions: &[Option<Position>]) {
        let mut st = self.lock();
        if self.append(&mut st, triggers, positions) {
            drop(st);
            self.wake.send_replace(());
        }
    }

    // Append under the caller's lock; whether anything was appended (the
    // caller then wakes the tabs, after unlocking).
    fn append(&self, st: &mut State, triggers: &[Trigger], positions: &[Option<Position>]) -> bool {
        if st.closed {
            return false;
        }
        let before = st.seq;
        let at = Instant::now();
        for (i, t) in triggers.iter().enumerate() {
            let pos = positions.get(i).cloned().flatten();
            if pos.is_some() {
                st.last_pos.clone_from(&pos);
            }
            let seq = st.seq + 1;
            // Sealing costs a cipher call and ~70 bytes on every tab's
            // wire: only the last frame of a publish carries the position.
            // A tab writes a publish in one go, so that is where its
            // `Last-Event-ID` lands; one cut inside a batch gets `resync`
            // if its channel is gone by then.
            let id = if i + 1 == triggers.len() {
                self.id_for(seq, st.last_pos.as_ref())
            } else {
                self.id_for(seq, None)
            };
            // A resync is how the configured gap policy is told: the channel
            // decides what the tabs see of it.
            let gap = t.name == trigger::RESYNC;
            if gap && self.signals.on_gap == GapPolicy::End {
                st.seq = seq;
                let bytes = Bytes::from(format!("id: {id}\n\n"));
                self.push(
                    st,
                    Frame {
                        seq,
                        bytes,
                        ends: true,
                        pos,
                        at,
                        coalesce: None,
                        superseded: false.into(),
                    },
                );
                continue;
            }
            let (name, data) = if gap {
                let (n, d) = &self.signals.resync;
                (Some(n.as_str()), d.as_str())
            } else {
                // `message` is what an event without a name is called.
                let n = (t.name != trigger::UNNAMED).then_some(t.name.as_str());
                (n, t.data.as_str())
            };
            let bytes = match ssemux_sse::encode_event(Some(&id), name, data) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(user = %self.user, trigger = %t.name, error = %e, "trigger not encodable, dropped");
                    continue;
                }
            };
            st.seq = seq;
            let coalesce = if t.coalesce {
                Coalesce::of(&bytes)
            } else {
                None
            };
            self.push(
                st,
                Frame {
                    seq,
                    bytes,
                    ends: false,
                    pos,
                    at,
                    coalesce,
                    superseded: false.into(),
                },
            );
        }
        if st.seq == before {
            return false;
        }
        self.trim(st, at);
        true
    }

    // Append one frame, keeping the byte sums; an idempotent trigger
    // supersedes its previous copy still in the ring.
    fn push(&self, st: &mut State, f: Frame) {
        if let Some(c) = f.coalesce {
            let oldest = st.ring.front().map_or(f.seq, |o| o.seq);
            let prev = st
                .latest
                .insert(c.hash, f.seq)
                .and_then(|seq| seq.checked_sub(oldest))
                .and_then(|i| st.ring.get(i as usize));
            if let Some(p) = prev.filter(|p| p.same_trigger(&f)) {
                p.superseded.store(true, Ordering::Relaxed);
            }
        }
        st.ring_bytes += f.bytes.len();
        st.ring.push_back(Arc::new(f));
        // The frame that just left the replay tail now counts as held.
        if let Some(i) = st.ring.len().checked_sub(self.ring_size + 1) {
            st.beyond_bytes += st.ring[i].bytes.len();
        }
    }

    // Drop the oldest frame, keeping the byte sums.
    fn pop(&self, st: &mut State) {
        let beyond = st.ring.len() > self.ring_size;
        if let Some(f) = st.ring.pop_front() {
            if let Some(c) = f.coalesce
                && st.latest.get(&c.hash) == Some(&f.seq)
            {
                st.latest.remove(&c.hash);
            }
            st.ring_bytes -= f.bytes.len();
            if beyond {
                st.beyond_bytes -= f.bytes.len();
            }
        }
    }

    // Keep `ring_size` frames for replay; beyond that, only frames some tab
    // has not taken yet, while they are younger than the lag time and fit
    // the lag budget. A tab whose frames go for the budget or the time is
    // lagged when it next takes.
    fn trim(&self, st: &mut State, now: Instant) {
        if st.ring.len() <= self.ring_size {
            return;
        }
        let slowest = st
            .cursors
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(st.seq);
        let too_old = now.checked_sub(self.lag.time);
        while st.ring.len() > self.ring_size {
            let Some(f) = st.ring.front() else { break };
            let keep = f.seq > slowest
                && st.beyond_bytes <= self.lag.bytes
                && too_old.is_none_or(|old| f.at >= old);
            if keep {
                break;
            }
            self.pop(st);
        }
    }

    /// Send `logout` and end every tab stream. Later publishes are ignored.
    pub fn close(&self) {
        let st = self.lock();
        self.close_locked(st);
    }

    /// [`Channel::close`], but only if no usable credential is left — one
    /// lock, so a tab adding its credential meanwhile keeps the channel
    /// open (and is never refused with a credential nobody tried).
    pub fn close_if_no_credential(&self) -> bool {
        let st = self.lock();
        if st.creds.iter().any(|c| !c.refused) {
            return false;
        }
        self.close_locked(st);
        true
    }

    fn close_locked(&self, mut st: MutexGuard<'_, State>) {
        // One lock: no publish can land between the logout and the close.
        self.append(&mut st, &[Trigger::new(trigger::LOGOUT, "1")], &[]);
        st.closed = true;
        drop(st);
        self.wake.send_replace(());
        self.upstream_ready.notify_waiters();
    }

    /// The upstream reset its ids (an explicit empty `id:`): ids written
    /// from now on carry no position until it sends a new one.
    pub fn forget_position(&self) {
        self.lock().last_pos = None;
    }

    /// The upstream has been failing for `signals().down_after`: the tabs
    /// are told (once per outage), and tabs attaching until it is back get
    /// told first thing.
    pub fn upstream_down(&self) {
        let mut st = self.lock();
        if st.down || st.closed {
            return;
        }
        st.down = true;
        let name = self.signals.down_event.clone();
        if !name.is_empty() && self.append(&mut st, &[Trigger::new(&name, "1")], &[]) {
            drop(st);
            self.wake.send_replace(());
        }
    }

    /// Whether the tabs were told the upstream is down (and not yet back).
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// The upstream task's connection is up. Returns whether a `resync` is
    /// owed: the first connect came after some tab was already answered, so
    /// whatever the backend sent between that tab's page load and this
    /// connect never reached it.
    pub fn upstream_connected(&self) -> bool {
        let mut st = self.lock();
        let first = !st.upstream_seen;
        st.upstream_seen = true;
        let owed = first && std::mem::take(&mut st.answered_early);
        let woke = std::mem::take(&mut st.down) && {
            let name = self.signals.up_event.clone();
            !name.is_empty() && self.append(&mut st, &[Trigger::new(&name, "1")], &[])
        };
        drop(st);
        if woke {
            self.wake.send_replace(());
        }
        if first {
            self.upstream_ready.notify_waiters();
        }
        owed
    }

    /// Wait (at most `limit`) until the upstream has connected once, so an
    /// attached tab's stream opens when the whole path is up: a page that
    /// refreshes on open then misses nothing. Past the limit the tab is
    /// answered anyway and the first connect owes it a `resync`.
    pub async fn wait_for_upstream(&self, limit: Duration) {
        let ready = self.upstream_ready.notified();
        tokio::pin!(ready);
        // Registered before looking, so a connect right after is not missed.
        ready.as_mut().enable();
        {
            let st = self.lock();
            if st.upstream_seen || st.closed {
                return;
            }
        }
        if tokio::time::timeout(limit, ready).await.is_err() {
            let mut st = self.lock();
            if !st.upstream_seen {
                st.answered_early = true;
            }
        }
    }

    /// Attach a tab. `last_event_id` is what the browser sent, if anything.
    pub fn attach(self: &Arc<Self>, last_event_id: Option<&str>) -> Attach {
        let mut st = self.lock();
        let cursor = Arc::new(AtomicU64::new(st.seq));
        st.cursors.push(cursor.clone());
        let rx = Follower {
            channel: self.clone(),
            cursor,
            wake: self.wake.subscribe(),
            ended: false,
            coalesced: 0,
        };
        let down = st.down.then(|| self.signals.down_frame.clone()).flatten();
        let Some(last) = last_event_id.map(str::trim).filter(|s| !s.is_empty()) else {
            // Epoch, digits and base64url only: nothing here needs escaping.
            let id = self.id_for(st.seq, st.last_pos.as_ref());
            return Attach {
                replay: Vec::new(),
                resync: None,
                position: Some(Bytes::from(format!("id: {id}\n\n"))),
                down,
                rx,
            };
        };
        let (head, token) = split_id(last);
        let this_epoch = head
            .rsplit_once('-')
            .filter(|(epoch, _)| *epoch == self.epoch);
        let servable = this_epoch
            // Digits only: `+0` is not an id ssemux wrote.
            .filter(|(_, seq)| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(_, seq)| seq.parse::<u64>().ok())
            .filter(|&seq| {
                let oldest_kept = st.ring.front().map_or(st.seq + 1, |f| f.seq);
                // Everything after `seq` must still be in the ring.
                seq <= st.seq && seq + 1 >= oldest_kept
            })
            // Not ours by sequence: maybe by upstream position (a channel
            // created since, here or on another instance).
            .or_else(|| self.after_position(&st, token?));
        match servable {
            Some(seq) => Attach {
                replay: Self::replay_after(&st.ring, seq),
                resync: None,
                position: None,
                down,
                rx,
            },
            None => {
                let id = self.id_for(st.seq, st.last_pos.as_ref());
                let cause = if this_epoch.is_some() {
                    ResyncCause::RingMiss
                } else {
                    ResyncCause::Epoch
                };
                // Under `on_gap = "end"` the tab just reconnected, so its
                // own refresh has run: it only learns its new position.
                let frame = match self.signals.on_gap {
                    GapPolicy::Resync => {
                        let (name, data) = &self.signals.resync;
                        ssemux_sse::encode_event(Some(&id), Some(name), data).ok()
                    }
                    GapPolicy::End => Some(Bytes::from(format!("id: {id}\n\n"))),
                };
                Attach {
                    replay: Vec::new(),
                    resync: frame.map(|f| (f, cause)),
                    position: None,
                    down,
                    rx,
                }
            }
        }
    }

    /// The frames after `seq`, oldest first, without the superseded ones,
    /// as a live tab that far behind would take them.
    fn replay_after(ring: &VecDeque<SharedFrame>, seq: u64) -> Vec<Bytes> {
        ring.iter()
            .filter(|f| f.seq > seq && !f.superseded())
            .map(|f| f.bytes.clone())
            .collect()
    }

    /// The seq after which a tab holding the sealed position `token` is
    /// served from this ring: the frame with that position, or the start
    /// of a channel that began there (while its ring still holds seq 1).
    fn after_position(&self, st: &State, token: &str) -> Option<u64> {
        let pos = self.resume.as_ref()?.open(&self.key, token)?;
        if let Some(f) = st.ring.iter().rev().find(|f| f.pos.as_ref() == Some(&pos)) {
            return Some(f.seq);
        }
        let from_start = st.ring.front().map_or(st.seq == 0, |f| f.seq == 1);
        (self.start.as_ref() == Some(&pos) && from_start).then_some(0)
    }

    fn detach(&self, cursor: &Arc<AtomicU64>) {
        let mut st = self.lock();
        st.cursors.retain(|c| !Arc::ptr_eq(c, cursor));
        // A slow tab leaving releases what only it held now, not at the
        // next publish (which, in grace, may never come).
        self.trim(&mut st, Instant::now());
    }

    /// Remember a tab's credential. Returns the key to release it with. Tabs
    /// of one session share one entry, counted, so the session stays usable
    /// until its last tab leaves.
    pub fn add_credential(&self, cred: impl Into<Credential>) -> u64 {
        let cred = cred.into();
        let mut st = self.lock();
        if let Some(c) = st.creds.iter_mut().find(|c| c.cred == cred) {
            c.holders += 1;
            // The tab just authenticated with it: worth trying again.
            c.refused = false;
            c.revoked = false;
            return c.key;
        }
        let key = st.next_key;
        st.next_key += 1;
        st.creds.push(Held {
            key,
            cred,
            holders: 1,
            refused: false,
            revoked: false,
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
    pub fn credential(&self) -> Option<(u64, Credential)> {
        let st = self.lock();
        let usable = || st.creds.iter().filter(|c| !c.refused);
        usable()
            .find(|c| c.holders > 0)
            .or_else(|| usable().next())
            .map(|c| (c.key, c.cred.clone()))
    }

    /// The live credentials (held by a tab, not refused), to re-check.
    pub fn live_credentials(&self) -> Vec<(u64, Credential)> {
        self.lock()
            .creds
            .iter()
            .filter(|c| c.holders > 0 && !c.refused)
            .map(|c| (c.key, c.cred.clone()))
            .collect()
    }

    /// The backend no longer accepts credential `key` (a revoked session):
    /// it is not used again, and the tabs holding it are woken to log out.
    pub fn revoke_credential(&self, key: u64) {
        let mut st = self.lock();
        let Some(c) = st.creds.iter_mut().find(|c| c.key == key) else {
            return;
        };
        c.refused = true;
        c.revoked = true;
        drop(st);
        self.revocations.fetch_add(1, Ordering::Release);
        self.wake.send_replace(());
    }

    /// Revocations so far: a tab compares it with what it saw last, so the
    /// check on its hot path is one atomic load.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Whether credential `key` was revoked.
    pub fn is_revoked(&self, key: u64) -> bool {
        self.lock().creds.iter().any(|c| c.key == key && c.revoked)
    }

    /// The backend refused these credentials.
    pub fn refuse_credential(&self, key: u64) {
        let mut st = self.lock();
        if let Some(c) = st.creds.iter_mut().find(|c| c.key == key) {
            c.refused = true;
        }
    }
}

/// Whose stream a channel is: the hub's key, the user, and the path and
/// query of the stream on the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The hub's key: the user, plus the key parameters' values.
    pub key: String,
    /// The user (for logs, watermarks and the credential re-check).
    pub user: String,
    /// Path and query of the stream on the backend.
    pub path: Arc<str>,
    /// Where the tab that asks for it stands in the upstream (from its
    /// `Last-Event-ID`): a channel it creates resumes the upstream there.
    pub from: Option<Position>,
}

impl From<&Subject> for Subject {
    fn from(s: &Subject) -> Subject {
        s.clone()
    }
}

impl From<&String> for Subject {
    fn from(user: &String) -> Subject {
        Subject::from(user.as_str())
    }
}

impl From<&str> for Subject {
    /// A user keyed by identity alone, streaming from the default events path.
    fn from(user: &str) -> Subject {
        Subject {
            key: user.to_string(),
            user: user.to_string(),
            path: crate::config::UpstreamConfig::default().events_path.into(),
            from: None,
        }
    }
}

/// One tab's place in its channel: a cursor into the ring (the last seq the
/// tab took) and the wake-up it waits on. Dropping it detaches the tab.
pub struct Follower {
    channel: Arc<Channel>,
    cursor: Arc<AtomicU64>,
    wake: watch::Receiver<()>,
    // It took a frame that ends live streams (`on_gap = "end"`).
    ended: bool,
    // Frames skipped for an identical later one, not yet reported.
    coalesced: u64,
}

impl Follower {
    /// Move the next frames after the cursor (at most `max`) into `out` as
    /// shared bytes and return how many. `Ok(0)`: nothing new yet, wait on
    /// [`Follower::changed`].
    pub fn take_into(&mut self, out: &mut VecDeque<Bytes>, max: usize) -> Result<usize, RecvError> {
        self.take(max, |f| out.push_back(f.bytes.clone()))
    }

    fn take(&mut self, max: usize, mut each: impl FnMut(&SharedFrame)) -> Result<usize, RecvError> {
        // Seen before looking: a publish after this point wakes `changed`.
        self.wake.mark_unchanged();
        let st = self.channel.lock();
        let cursor = self.cursor.load(Ordering::Relaxed);
        if cursor >= st.seq {
            return if st.closed {
                Err(RecvError::Closed)
            } else {
                Ok(0)
            };
        }
        // Ring seqs are contiguous: the frame after the cursor is at a fixed
        // offset from the front, or already gone.
        let oldest = st.ring.front().map_or(st.seq + 1, |f| f.seq);
        let start = (cursor + 1).checked_sub(oldest).map(|i| i as usize);
        // Gone for the budget, or still here but older than the lag time:
        // behind for real.
        let stale = |i: usize| {
            st.ring.get(i).is_some_and(|f| {
                Instant::now()
                    .checked_sub(self.channel.lag.time)
                    .is_some_and(|old| f.at < old)
            })
        };
        let Some(start) = start.filter(|&i| !stale(i)) else {
            self.cursor.store(st.seq, Ordering::Relaxed);
            return Err(RecvError::Lagged(st.seq - cursor));
        };
        let max = max.max(1);
        let mut taken = 0;
        let mut last = cursor;
        for f in st.ring.range(start..).take(MAX_SCAN) {
            // Moving past it loses nothing: the same trigger is further on.
            last = f.seq;
            if f.superseded() {
                self.coalesced += 1;
                continue;
            }
            each(f);
            taken += 1;
            if f.ends {
                self.ended = true;
                break;
            }
            if taken == max {
                break;
            }
        }
        self.cursor.store(last, Ordering::Relaxed);
        Ok(taken)
    }

    /// Frames skipped since the last call because an identical idempotent
    /// one followed (for the tab's metrics).
    pub fn take_coalesced(&mut self) -> u64 {
        std::mem::take(&mut self.coalesced)
    }

    /// Whether a frame it took ends the stream (a gap under `hub.on_gap =
    /// "end"`): the tab writes what it has, then ends.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next frame if one is ready.
    pub fn try_recv(&mut self) -> Result<SharedFrame, TryRecvError> {
        let mut got = None;
        match self.take(1, |f| got = Some(f.clone())) {
            Ok(_) => got.ok_or(TryRecvError::Empty),
            Err(RecvError::Lagged(n)) => Err(TryRecvError::Lagged(n)),
            Err(RecvError::Closed) => Err(TryRecvError::Closed),
        }
    }

    /// The next frame, waiting for one.
    pub async fn recv(&mut self) -> Result<SharedFrame, RecvError> {
        loop {
            match self.try_recv() {
                Ok(f) => return Ok(f),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => self.changed().await,
            }
        }
    }

    /// Resolves once something was published (or the channel closed) since
    /// the last take. Cancel-safe.
    pub async fn changed(&mut self) {
        // The sender lives in the channel this follower holds: it cannot be
        // dropped while we wait, so an error here cannot happen; treat it as
        // a wake-up and let the next take find out.
        let _ = self.wake.changed().await;
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.channel.detach(&self.cursor);
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
        let ch = Channel::with_epoch("alice", "e1", 4, Lag::default());
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
        // The attach says why: this epoch but not servable is a ring miss,
        // anything else (another epoch, garbage) an epoch change.
        for (bad, cause) in [
            ("e1-1", ResyncCause::RingMiss),
            ("e0-5", ResyncCause::Epoch),
            ("e1-7", ResyncCause::RingMiss),
            ("garbage", ResyncCause::Epoch),
            ("e1-x", ResyncCause::RingMiss),
            ("e1-+5", ResyncCause::RingMiss),
        ] {
            let a = ch.attach(Some(bad));
            assert!(a.replay.is_empty(), "{bad}");
            let (r, why) = a.resync.expect("resync");
            assert_eq!(why, cause, "{bad}");
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
        let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
        ch.publish(&[t(1), t(2)]);
        let mut a = ch.attach(Some("e1-1"));
        ch.publish(&[t(3)]);
        assert_eq!(ids(&a.replay), vec!["e1-2"]);
        let live = a.rx.try_recv().expect("live frame");
        assert_eq!(live.seq, 3);
    }

    #[test]
    fn credentials_prefer_live_and_drop_refused() {
        let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
        let k1 = ch.add_credential(Credential::cookies("session=a"));
        let k2 = ch.add_credential(Credential::cookies("session=b"));
        assert_eq!(ch.credential().map(|c| c.0), Some(k1));
        ch.refuse_credential(k1);
        assert_eq!(
            ch.credential().map(|c| c.1),
            Some(Credential::cookies("session=b"))
        );
        ch.remove_credential(k1);
        ch.remove_credential(k2);
        // Last one kept for grace reconnects.
        assert_eq!(
            ch.credential().map(|c| c.1),
            Some(Credential::cookies("session=b"))
        );
        ch.refuse_credential(k2);
        assert_eq!(ch.credential(), None);
    }

    #[test]
    fn a_session_stays_usable_until_its_last_tab_leaves() {
        let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
        let first = ch.add_credential(Credential::cookies("session=a"));
        let other = ch.add_credential(Credential::cookies("session=b"));
        let second = ch.add_credential(Credential::cookies("session=a"));
        assert_eq!(first, second, "one entry per session");
        // The later tab of session a leaves; the earlier one is still here.
        ch.remove_credential(second);
        ch.refuse_credential(other);
        assert_eq!(
            ch.credential().map(|c| c.1),
            Some(Credential::cookies("session=a"))
        );
        ch.remove_credential(first);
        // Only b's tab is left, and b was refused: nothing usable (logout).
        assert_eq!(ch.credential(), None);
        // When b's tab leaves too, b is kept for grace (the last one).
        ch.remove_credential(other);
        assert_eq!(ch.lock().creds.len(), 1);
    }

    #[test]
    fn close_sends_logout_then_end() {
        let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
        let mut a = ch.attach(None);
        ch.close();
        let f = a.rx.try_recv().expect("logout");
        assert!(String::from_utf8_lossy(&f.bytes).contains("event: logout"));
        assert_eq!(a.rx.try_recv().map(|f| f.seq), Err(TryRecvError::Closed));
        ch.publish(&[t(9)]);
        assert_eq!(a.rx.try_recv().map(|f| f.seq), Err(TryRecvError::Closed));
    }

    #[test]
    fn a_slow_tab_keeps_frames_within_the_byte_budget_then_lags() {
        // Replay keeps 4; beyond them, 200 bytes (about five frames) are
        // kept for tabs that have not taken them; no time limit here.
        let lag = Lag {
            time: Duration::from_secs(3600),
            bytes: 200,
        };
        let ch = Channel::with_epoch("alice", "e1", 4, lag);
        let mut fast = ch.attach(None).rx;
        let mut slow = ch.attach(None).rx;
        for n in 1..=8 {
            ch.publish(&[t(n)]);
            assert_eq!(fast.try_recv().map(|f| f.seq), Ok(u64::from(n)));
        }
        // The slow tab has taken nothing: all 8 are kept for it.
        assert_eq!(ch.backlog(), 8);
        let mut out = VecDeque::new();
        assert_eq!(slow.take_into(&mut out, 3), Ok(3));
        assert_eq!(
            ids(&out.drain(..).collect::<Vec<_>>()),
            ["e1-1", "e1-2", "e1-3"]
        );
        ch.publish(&[t(9)]);
        // Taken by both and beyond the replay size: trimmed.
        assert_eq!(ch.backlog(), 6);
        assert_eq!(fast.try_recv().map(|f| f.seq), Ok(9));
        // Past the budget the oldest untaken frames go; the slow tab skips
        // everything it had not taken (4..=14), then follows live.
        for n in 10..=14 {
            ch.publish(&[t(n)]);
            let st = ch.lock();
            assert!(st.beyond_bytes <= 200, "{} bytes held", st.beyond_bytes);
            let sum: usize = st.ring.iter().map(|f| f.bytes.len()).sum();
            assert_eq!(st.ring_bytes, sum);
        }
        assert!(ch.backlog() < 11);
        assert_eq!(
            slow.try_recv().map(|f| f.seq),
            Err(TryRecvError::Lagged(11))
        );
        assert_eq!(slow.try_recv().map(|f| f.seq), Err(TryRecvError::Empty));
        ch.publish(&[t(15)]);
        assert_eq!(slow.try_recv().map(|f| f.seq), Ok(15));
        // Once everyone took everything, only the replay size is kept.
        while fast.try_recv().is_ok() {}
        ch.publish(&[t(16)]);
        let st = ch.lock();
        assert_eq!(st.ring.len(), 4);
        assert_eq!(st.beyond_bytes, 0);
    }

    /// Lag is time, not a count: a tab far behind in frames that keeps
    /// taking is served everything; one whose next frame has waited longer
    /// than the lag time is lagged, and frames that old are not kept for it.
    #[tokio::test(start_paused = true)]
    async fn a_tab_lags_when_its_next_frame_is_older_than_the_lag_time() {
        let lag = Lag {
            time: Duration::from_secs(5),
            bytes: 1 << 20,
        };
        let ch = Channel::with_epoch("alice", "e1", 4, lag);
        let mut busy = ch.attach(None).rx;
        let mut stuck = ch.attach(None).rx;
        // A burst of 5,000 frames at once: a tab taking them in batches
        // gets every one, although it is thousands of frames behind.
        for n in 0..5000 {
            ch.publish(&[t(n)]);
        }
        let mut out = VecDeque::new();
        let mut got = 0;
        loop {
            match busy.take_into(&mut out, MAX_BATCH) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("busy tab: {e:?}"),
            }
        }
        assert_eq!(got, 5000);
        // The stuck tab is 4.9 s behind: still served.
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert_eq!(stuck.try_recv().map(|f| f.seq), Ok(1));
        // Past 5 s its next frame is too old: lagged, all it had not taken.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            stuck.try_recv().map(|f| f.seq),
            Err(TryRecvError::Lagged(4999))
        );
        // A newer frame is served live again.
        ch.publish(&[t(5000)]);
        assert_eq!(stuck.try_recv().map(|f| f.seq), Ok(5001));
        while busy.try_recv().is_ok() {}
        // Frames older than the lag time are not kept for a tab that took
        // none of them: past it the ring is back to its replay size.
        let idle = ch.attach(None).rx;
        for n in 0..10 {
            ch.publish(&[t(n)]);
        }
        assert_eq!(ch.lock().ring.len(), 10);
        tokio::time::sleep(Duration::from_secs(6)).await;
        ch.publish(&[t(10)]);
        assert_eq!(ch.lock().ring.len(), 4);
        drop(idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_tab_waits_for_the_upstream_and_a_late_one_is_owed_a_resync() {
        let limit = Duration::from_secs(2);
        // The upstream connects while the tab waits: no resync owed.
        let ch = Channel::with_epoch("alice", "e1", 4, Lag::default());
        let waiter = tokio::spawn({
            let ch = ch.clone();
            async move { ch.wait_for_upstream(limit).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "answered before the upstream was up");
        assert!(!ch.upstream_connected());
        tokio::time::timeout(Duration::from_millis(1), waiter)
            .await
            .expect("woken by the connect")
            .expect("join");
        // Later tabs do not wait at all.
        tokio::time::timeout(Duration::ZERO, ch.wait_for_upstream(limit))
            .await
            .expect("no wait once connected");

        // The upstream is slower than the limit: the tab is answered, and
        // the first connect owes a resync (once).
        let ch = Channel::with_epoch("bob", "e1", 4, Lag::default());
        ch.wait_for_upstream(limit).await;
        assert!(ch.upstream_connected());
        assert!(!ch.upstream_connected(), "owed once, on the first connect");

        // A close (every credential refused) releases waiting tabs.
        let ch = Channel::with_epoch("carol", "e1", 4, Lag::default());
        let waiter = tokio::spawn({
            let ch = ch.clone();
            async move { ch.wait_for_upstream(limit).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        ch.close();
        tokio::time::timeout(Duration::from_millis(1), waiter)
            .await
            .expect("woken by the close")
            .expect("join");
    }

    #[test]
    fn a_dropped_follower_releases_the_frames_it_held() {
        let ch = Channel::with_epoch("alice", "e1", 2, Lag::default());
        let slow = ch.attach(None).rx;
        for n in 1..=20 {
            ch.publish(&[t(n)]);
        }
        assert_eq!(ch.lock().ring.len(), 20);
        assert_eq!(ch.receivers(), 1);
        drop(slow);
        assert_eq!(ch.receivers(), 0);
        // Released at once, without waiting for another publish.
        assert_eq!(ch.lock().ring.len(), 2);
    }

    fn idem(name: &str, data: &str) -> Trigger {
        Trigger::new(name, data).coalesced()
    }

    fn events(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|b| {
                let s = String::from_utf8_lossy(b);
                let name = s.lines().find_map(|l| l.strip_prefix("event: "));
                let data = s.lines().find_map(|l| l.strip_prefix("data: "));
                format!("{}={}", name.unwrap_or("message"), data.unwrap_or(""))
            })
            .collect()
    }

    fn take_all(rx: &mut Follower) -> Vec<Bytes> {
        let mut out = VecDeque::new();
        while rx.take_into(&mut out, MAX_BATCH).is_ok_and(|n| n > 0) {}
        out.into_iter().collect()
    }

    /// A tab taking a burst at once gets each idempotent trigger once, at
    /// the place of its last copy; everything else as it came.
    #[test]
    fn a_burst_of_identical_triggers_costs_a_tab_one_frame() {
        let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
        let mut live = ch.attach(None).rx;
        for _ in 0..1000 {
            ch.publish(&[
                idem("thread-updated", "bob"),
                idem("contact-changed", "bob"),
            ]);
        }
        let got = take_all(&mut live);
        assert_eq!(events(&got), ["thread-updated=bob", "contact-changed=bob"]);
        // The last copies: the tab's id is the newest.
        assert_eq!(ids(&got), ["e1-1999", "e1-2000"]);
        assert_eq!(live.take_coalesced(), 1998);

        // Order is that of the last copies; triggers that are not
        // idempotent (a passed event) are never dropped.
        ch.publish(&[
            idem("t", "a"),
            idem("t", "b"),
            Trigger::pass("note", "x"),
            idem("t", "a"),
            Trigger::pass("note", "x"),
            idem("t", "c"),
            idem("t", "b"),
        ]);
        assert_eq!(
            events(&take_all(&mut live)),
            ["note=x", "t=a", "note=x", "t=c", "t=b"]
        );
        // A tab keeping up takes each as it comes: nothing to coalesce.
        for _ in 0..3 {
            ch.publish(&[idem("t", "a")]);
            assert_eq!(events(&take_all(&mut live)), ["t=a"]);
        }
    }

    /// Coalescing never moves the tab past what it has not been sent: with
    /// more distinct triggers than a take holds, the rest come next time.
    #[test]
    fn coalescing_respects_the_batch_size() {
        let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
        let mut live = ch.attach(None).rx;
        for round in 0..3 {
            for n in 0..100 {
                ch.publish(&[idem("row", &format!("{n}-{}", round % 2))]);
            }
        }
        let mut out = VecDeque::new();
        assert_eq!(live.take_into(&mut out, MAX_BATCH), Ok(MAX_BATCH));
        let mut rest = take_all(&mut live);
        let mut all: Vec<Bytes> = out.into_iter().collect();
        all.append(&mut rest);
        // Rounds 0 and 2 are the same triggers: only round 2's are sent,
        // after round 1's, and every distinct trigger exactly once.
        let want: Vec<String> = (0..100)
            .map(|n| format!("row={n}-1"))
            .chain((0..100).map(|n| format!("row={n}-0")))
            .collect();
        assert_eq!(events(&all), want);
        let seqs: Vec<u64> = ids(&all)
            .iter()
            .map(|id| {
                id.rsplit('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }

    /// A replay from the ring is coalesced the same way.
    #[test]
    fn a_replay_is_coalesced() {
        let ch = Channel::with_epoch("alice", "e1", 64, Lag::default());
        ch.publish(&[idem("t", "x")]);
        for _ in 0..20 {
            ch.publish(&[idem("t", "a"), Trigger::new("plain", "p"), idem("t", "b")]);
        }
        let a = ch.attach(Some("e1-1"));
        assert_eq!(
            events(&a.replay),
            std::iter::repeat_n("plain=p", 19)
                .chain(["t=a", "plain=p", "t=b"])
                .collect::<Vec<_>>()
        );
        assert_eq!(ids(&a.replay).last().map(String::as_str), Some("e1-61"));
    }

    #[tokio::test]
    async fn one_wake_per_publish_and_none_missed() {
        let ch = Channel::with_epoch("alice", "e1", 8, Lag::default());
        let mut a = ch.attach(None).rx;
        ch.publish(&[t(1), t(2), t(3)]);
        // Published before waiting: `changed` must not sleep.
        a.changed().await;
        let mut out = VecDeque::new();
        assert_eq!(a.take_into(&mut out, 64), Ok(3));
        let waiter = tokio::spawn(async move {
            a.changed().await;
            a.try_recv().map(|f| f.seq)
        });
        tokio::task::yield_now().await;
        ch.publish(&[t(4)]);
        assert_eq!(waiter.await.ok(), Some(Ok(4)));
    }
}
