//! Watermark: which peer each tab has open (its *active* peer) and the
//! highest read watermark ssemux has posted per (user, peer). Before an
//! upstream `inbound` for an active peer fans out, it advances the backend's
//! watermark. Owns only that state; it never writes to tabs and never decides
//! identity — the user always comes from auth, so one user's tab ids can never
//! reach another user's state.

pub mod read;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Uri, header};
use tokio::time::Instant;

use crate::backend::BackendClient;
use crate::body;
use crate::config::WatermarkConfig;
use crate::credential::Presented;
use crate::events::auth::Identity;
use crate::metrics::Metrics;

/// Longest tab id accepted from a browser.
pub const MAX_TAB_ID: usize = 64;

/// Whether a browser-supplied tab id is acceptable: short, and only
/// `[A-Za-z0-9_-]`, so it can never smuggle anything into a header or a log.
pub fn valid_tab_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TAB_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key of a tab's watermark state: its tab id, else its session.
pub fn tab_key(tab: Option<&str>, id: &Identity) -> String {
    match tab {
        Some(t) => format!("t:{t}"),
        None => format!("s:{}", id.session),
    }
}

/// Longest peer ssemux tracks; a read of a longer one is still proxied, but
/// marks nothing (peers are user ids or short paths).
pub const MAX_PEER_BYTES: usize = 512;

/// Most peers whose posted watermark ssemux remembers per user; the oldest
/// entry makes room. Forgetting one only means ssemux may post an advance
/// the backend already has.
pub const MAX_PEERS_PER_USER: usize = 64;

/// Most tab keys with a mark per user (open tabs and pending reads).
pub const MAX_MARKS_PER_USER: usize = 256;

/// How long a read posted by a tab whose stream is not open (yet) keeps its
/// peer active: a page that opens a thread while its stream is still
/// connecting must not lose the mark, but a tab that never connects must not
/// keep auto-reading messages nobody sees.
pub const PENDING_WINDOW: Duration = Duration::from_secs(10);

struct TabMark {
    streams: usize,
    peer: Option<String>,
    set_at: Instant,
}

impl Default for TabMark {
    fn default() -> Self {
        TabMark {
            streams: 0,
            peer: None,
            set_at: Instant::now(),
        }
    }
}

impl TabMark {
    fn active_peer(&self) -> Option<&str> {
        if self.streams > 0 || self.set_at.elapsed() < PENDING_WINDOW {
            self.peer.as_deref()
        } else {
            None
        }
    }
}

struct State {
    /// user → tab key → that tab's open streams and active peer. Keyed by
    /// user first: every upstream event asks about one user's tabs.
    tabs: HashMap<String, HashMap<String, TabMark>>,
    /// user → peer → highest rowId posted through or by ssemux. Kept only
    /// for users with a tab mark, at most [`MAX_PEERS_PER_USER`] peers each.
    posted: HashMap<String, HashMap<String, u64>>,
    /// When pending marks of tabs that never connected are next swept.
    next_sweep: Instant,
}

impl Default for State {
    fn default() -> Self {
        State {
            tabs: HashMap::new(),
            posted: HashMap::new(),
            next_sweep: Instant::now() + PENDING_WINDOW,
        }
    }
}

impl State {
    fn mark_mut(&mut self, user: &str, tab: &str) -> &mut TabMark {
        self.tabs
            .entry(user.to_string())
            .or_default()
            .entry(tab.to_string())
            .or_default()
    }

    fn user_has_active_peer(&self, user: &str) -> bool {
        self.tabs
            .get(user)
            .is_some_and(|t| t.values().any(|m| m.active_peer().is_some()))
    }

    fn peer_is_active(&self, user: &str, peer: &str) -> bool {
        self.tabs
            .get(user)
            .is_some_and(|t| t.values().any(|m| m.active_peer() == Some(peer)))
    }

    // Forget pending marks of tabs that never connected: at most once per
    // window, so posting a read never costs a walk over every user's tabs.
    fn sweep(&mut self) {
        let now = Instant::now();
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + PENDING_WINDOW;
        self.tabs.retain(|_, tabs| {
            tabs.retain(|_, m| m.streams > 0 || m.set_at.elapsed() < PENDING_WINDOW);
            !tabs.is_empty()
        });
        let tabs = &self.tabs;
        self.posted.retain(|user, _| tabs.contains_key(user));
    }

    /// Remember that `row` was posted for (`user`, `peer`), within the
    /// per-user bound.
    fn record_posted(&mut self, user: &str, peer: &str, row: u64) {
        let peers = self.posted.entry(user.to_string()).or_default();
        if let Some(hi) = peers.get_mut(peer) {
            *hi = (*hi).max(row);
            return;
        }
        if peers.len() >= MAX_PEERS_PER_USER {
            // The lowest watermark is the oldest read, most likely.
            if let Some(k) = peers
                .iter()
                .min_by_key(|(_, r)| **r)
                .map(|(k, _)| k.clone())
            {
                peers.remove(&k);
            }
        }
        peers.insert(peer.to_string(), row);
    }

    fn posted_for(&self, user: &str, peer: &str) -> u64 {
        self.posted
            .get(user)
            .and_then(|p| p.get(peer))
            .copied()
            .unwrap_or(0)
    }
}

/// An advance [`Watermarks::wanted`] found due: post it with
/// [`Watermarks::advance`] before the event's triggers fan out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    peer: String,
    row: u64,
}

struct Inner {
    client: BackendClient,
    url: Uri,
    inbound_event: String,
    timeout: Duration,
    state: Mutex<State>,
    metrics: Metrics,
}

/// Shared handle to the watermark state.
#[derive(Clone)]
pub struct Watermarks {
    inner: Arc<Inner>,
}

/// Keeps a tab counted as open; dropping it (the tab's stream ended) clears the
/// tab's active peer once no stream of that tab key is left.
pub struct TabMarkGuard {
    marks: Watermarks,
    key: (String, String),
}

impl Drop for TabMarkGuard {
    fn drop(&mut self) {
        let mut st = self.marks.lock();
        let (user, tab) = &self.key;
        let Some(tabs) = st.tabs.get_mut(user) else {
            return;
        };
        if let Some(m) = tabs.get_mut(tab) {
            m.streams = m.streams.saturating_sub(1);
            if m.streams == 0 {
                tabs.remove(tab);
            }
        }
        if tabs.is_empty() {
            // The user's last tab: what was posted goes with it.
            st.tabs.remove(user);
            st.posted.remove(user);
        }
    }
}

impl Watermarks {
    /// `url` is the backend's read-watermark endpoint (`watermark.read_path`);
    /// advances are counted in `metrics`.
    pub fn new(client: BackendClient, url: Uri, cfg: &WatermarkConfig, metrics: Metrics) -> Self {
        Watermarks {
            inner: Arc::new(Inner {
                client,
                url,
                inbound_event: cfg.inbound_event.clone(),
                timeout: cfg.timeout,
                state: Mutex::new(State::default()),
                metrics,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tab stream of `user` keyed `tab` opened.
    pub fn tab_opened(&self, user: &str, tab: &str) -> TabMarkGuard {
        let mut st = self.lock();
        let mark = st.mark_mut(user, tab);
        if mark.streams == 0 && mark.set_at.elapsed() >= PENDING_WINDOW {
            // A read posted long before this stream opened (not yet swept)
            // must not come back to life with it.
            mark.peer = None;
        }
        mark.streams += 1;
        drop(st);
        TabMarkGuard {
            marks: self.clone(),
            key: (user.to_string(), tab.to_string()),
        }
    }

    /// The backend accepted a read of `peer` up to `row_id` from this tab:
    /// the peer becomes the tab's active one.
    /// A peer over [`MAX_PEER_BYTES`], or a new tab key past
    /// [`MAX_MARKS_PER_USER`], marks nothing.
    pub fn set_active(&self, user: &str, tab: &str, peer: &str, row_id: u64) {
        if peer.len() > MAX_PEER_BYTES {
            return;
        }
        let mut st = self.lock();
        st.sweep();
        let known = st.tabs.get(user).is_some_and(|t| t.contains_key(tab));
        if !known
            && st
                .tabs
                .get(user)
                .is_some_and(|t| t.len() >= MAX_MARKS_PER_USER)
        {
            return;
        }
        let mark = st.mark_mut(user, tab);
        mark.peer = Some(peer.to_string());
        mark.set_at = Instant::now();
        st.record_posted(user, peer, row_id);
    }

    /// "No thread open" in this tab.
    pub fn clear_active(&self, user: &str, tab: &str) {
        if let Some(m) = self.lock().tabs.get_mut(user).and_then(|t| t.get_mut(tab)) {
            m.peer = None;
        }
    }

    /// Peers currently active in any tab of `user` (sorted, deduplicated).
    pub fn active_peers(&self, user: &str) -> Vec<String> {
        let st = self.lock();
        let mut v: Vec<String> = st
            .tabs
            .get(user)
            .into_iter()
            .flat_map(|t| t.values())
            .filter_map(|m| m.active_peer().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Automatic advances done so far.
    pub fn advances(&self) -> u64 {
        self.inner.metrics.watermark_advances()
    }

    /// Automatic advances that failed (after their one retry).
    pub fn failures(&self) -> u64 {
        self.inner.metrics.watermark_failures()
    }

    /// Called by the upstream task for every translated event before its
    /// triggers are published: whether `event` is an inbound message for a
    /// peer some tab of the user has open, newer than what was posted. Cheap
    /// when nothing is due (one map lookup; the data is only parsed while a
    /// tab of the user has a thread open).
    pub fn wanted(&self, user: &str, event: &str, data: &str) -> Option<Advance> {
        if event != self.inner.inbound_event || !self.lock().user_has_active_peer(user) {
            return None;
        }
        let v = serde_json::from_str::<serde_json::Value>(data).ok()?;
        let peer = v.get("peer").and_then(|p| p.as_str())?;
        let row = v.get("rowId").and_then(|r| r.as_u64())?;
        let st = self.lock();
        let posted = st.posted_for(user, peer);
        (st.peer_is_active(user, peer) && row > posted).then(|| Advance {
            peer: peer.to_string(),
            row,
        })
    }

    /// Advance `user`'s watermark as [`Watermarks::wanted`] found due, with
    /// the credential the user's upstream is open with. Failures are logged
    /// and counted; they never hold back the fan-out beyond the one retry.
    pub async fn advance(&self, user: &str, shown: &Presented, due: Advance) {
        let Advance { peer, row } = due;
        let peer = peer.as_str();
        let payload = serde_json::json!({ "peer": peer, "rowId": row }).to_string();
        for attempt in 0..2 {
            match self.post(shown, &payload).await {
                Ok(()) => {
                    self.lock().record_posted(user, peer, row);
                    self.inner.metrics.watermark_advanced();
                    return;
                }
                Err(e) => {
                    tracing::warn!(user, attempt, error = %e, "watermark advance failed");
                }
            }
        }
        self.inner.metrics.watermark_failed();
    }

    async fn post(&self, shown: &Presented, payload: &str) -> Result<(), String> {
        let url = shown
            .uri(&self.inner.url)
            .ok_or_else(|| "unusable watermark URL".to_string())?;
        let req = shown
            .header_into(Request::post(url).header(header::CONTENT_TYPE, "application/json"))
            .body(body::full(payload.to_string()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(self.inner.timeout, self.inner.client.request(req))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("backend answered {}", resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks() -> Watermarks {
        let client = crate::backend::backend_client(&crate::backend::ClientConfig::default())
            .expect("client");
        let url: Uri = "http://127.0.0.1:9/read".parse().expect("uri");
        let cfg = WatermarkConfig {
            timeout: Duration::from_secs(1),
            ..WatermarkConfig::default()
        };
        Watermarks::new(client, url, &cfg, Metrics::default())
    }

    #[tokio::test(start_paused = true)]
    async fn due_only_for_an_open_peer_newer_than_posted_and_per_user() {
        let w = marks();
        let inbound = |peer: &str, row: u64| format!(r#"{{"peer":"{peer}","rowId":{row}}}"#);
        assert_eq!(w.wanted("alice", "inbound", &inbound("bob", 5)), None);
        let _tab = w.tab_opened("alice", "t1");
        w.set_active("alice", "t1", "bob", 3);
        let due = |u: &str, ev: &str, data: &str| w.wanted(u, ev, data).map(|a| (a.peer, a.row));
        assert_eq!(
            due("alice", "inbound", &inbound("bob", 5)),
            Some(("bob".into(), 5))
        );
        assert_eq!(
            due("alice", "inbound", &inbound("bob", 3)),
            None,
            "not newer"
        );
        assert_eq!(
            due("alice", "inbound", &inbound("carol", 9)),
            None,
            "not open"
        );
        assert_eq!(due("alice", "outbound-state", &inbound("bob", 9)), None);
        assert_eq!(due("alice", "inbound", "not json"), None);
        // Another user with the same tab id and peer is untouched.
        assert_eq!(due("carol", "inbound", &inbound("bob", 9)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn posted_state_stays_bounded_however_many_peers_are_posted() {
        let w = marks();
        let _tab = w.tab_opened("alice", "t1");
        // 3,000 reads, each of a different 30 KB peer: none is tracked.
        let big = "p".repeat(30 * 1024);
        for i in 0..3000 {
            w.set_active("alice", "t1", &format!("{big}{i}"), i);
        }
        // 3,000 distinct short peers and 3,000 tab keys: bounded.
        for i in 0..3000u64 {
            w.set_active("alice", &format!("k{i}"), &format!("peer{i}"), i);
        }
        {
            let st = w.lock();
            let peers = st.posted.get("alice").map_or(0, HashMap::len);
            assert!(peers <= MAX_PEERS_PER_USER, "{peers} peers kept");
            let bytes: usize = st.posted.values().flatten().map(|(p, _)| p.len()).sum();
            assert!(bytes <= MAX_PEERS_PER_USER * MAX_PEER_BYTES, "{bytes} B");
            let marks = st.tabs.get("alice").map_or(0, HashMap::len);
            assert!(marks <= MAX_MARKS_PER_USER, "{marks} marks");
        }
        // A read from an open tab is still tracked, and the newest peer is
        // kept: it is the one an advance needs.
        w.set_active("alice", "t1", "latest", 5000);
        assert_eq!(w.lock().posted_for("alice", "latest"), 5000);
        // Gone with the user's last tab and the pending window.
        drop(_tab);
        tokio::time::advance(PENDING_WINDOW * 2).await;
        w.set_active("bob", "t", "x", 1);
        assert!(
            !w.lock().posted.contains_key("alice"),
            "alice's state stayed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_marks_of_tabs_that_never_connect_are_swept() {
        let w = marks();
        // A read posted by a tab whose stream never opens.
        w.set_active("alice", "ghost", "bob", 1);
        assert_eq!(w.active_peers("alice"), ["bob"]);
        tokio::time::advance(PENDING_WINDOW + Duration::from_secs(1)).await;
        assert!(w.active_peers("alice").is_empty(), "expired, not active");
        // The next read (by anyone) sweeps the expired entry away.
        let _tab = w.tab_opened("carol", "t");
        w.set_active("carol", "t", "dave", 1);
        assert!(!w.lock().tabs.contains_key("alice"));
        assert!(w.lock().tabs.contains_key("carol"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_pending_mark_does_not_revive_when_the_stream_opens() {
        let w = marks();
        w.set_active("alice", "t1", "bob", 1);
        tokio::time::advance(PENDING_WINDOW + Duration::from_secs(5)).await;
        // Not swept yet (no other read was posted), then the stream opens.
        let _tab = w.tab_opened("alice", "t1");
        assert!(w.active_peers("alice").is_empty());
        // A read within the window before the stream opens still counts.
        w.set_active("alice", "t2", "carol", 1);
        let _t2 = w.tab_opened("alice", "t2");
        assert_eq!(w.active_peers("alice"), ["carol"]);
    }

    #[test]
    fn tab_ids() {
        assert!(valid_tab_id("tab-1_A"));
        for bad in ["", "a b", "a\r\nb", "é", &"x".repeat(65)] {
            assert!(!valid_tab_id(bad), "{bad:?}");
        }
    }
}
