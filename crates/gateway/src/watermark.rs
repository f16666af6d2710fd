//! Watermark: which peer each tab has open (its *active* peer) and the
//! highest read watermark ssemux has posted per (user, peer). Before an
//! upstream `inbound` for an active peer fans out, it advances the backend's
//! watermark. Owns only that state; it never writes to tabs and never decides
//! identity — the user always comes from auth, so one user's tab ids can never
//! reach another user's state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Uri, header};
use tokio::time::Instant;

use crate::body;
use crate::channel::Channel;
use crate::client::BackendClient;

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

#[derive(Default)]
struct State {
    /// (user, tab key) → that tab's open streams and active peer.
    tabs: HashMap<(String, String), TabMark>,
    /// (user, peer) → highest rowId posted through or by ssemux.
    posted: HashMap<(String, String), u64>,
}

struct Inner {
    client: BackendClient,
    url: Uri,
    inbound_event: String,
    timeout: Duration,
    state: Mutex<State>,
    advances: AtomicU64,
    failures: AtomicU64,
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
        if let Some(m) = st.tabs.get_mut(&self.key) {
            m.streams = m.streams.saturating_sub(1);
            if m.streams == 0 {
                st.tabs.remove(&self.key);
            }
        }
    }
}

impl Watermarks {
    /// `url` is the backend's read-watermark endpoint; `inbound_event` the
    /// upstream event name that may advance it.
    pub fn new(client: BackendClient, url: Uri, inbound_event: &str, timeout: Duration) -> Self {
        Watermarks {
            inner: Arc::new(Inner {
                client,
                url,
                inbound_event: inbound_event.to_string(),
                timeout,
                state: Mutex::new(State::default()),
                advances: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tab stream of `user` keyed `tab` opened.
    pub fn tab_opened(&self, user: &str, tab: &str) -> TabMarkGuard {
        let key = (user.to_string(), tab.to_string());
        self.lock().tabs.entry(key.clone()).or_default().streams += 1;
        TabMarkGuard {
            marks: self.clone(),
            key,
        }
    }

    /// The backend accepted a read of `peer` up to `row_id` from this tab:
    /// the peer becomes the tab's active one.
    pub fn set_active(&self, user: &str, tab: &str, peer: &str, row_id: u64) {
        let mut st = self.lock();
        // Forget pending marks of tabs that never connected.
        st.tabs
            .retain(|_, m| m.streams > 0 || m.set_at.elapsed() < PENDING_WINDOW);
        let mark = st
            .tabs
            .entry((user.to_string(), tab.to_string()))
            .or_default();
        mark.peer = Some(peer.to_string());
        mark.set_at = Instant::now();
        let hi = st
            .posted
            .entry((user.to_string(), peer.to_string()))
            .or_insert(0);
        *hi = (*hi).max(row_id);
    }

    /// "No thread open" in this tab.
    pub fn clear_active(&self, user: &str, tab: &str) {
        if let Some(m) = self
            .lock()
            .tabs
            .get_mut(&(user.to_string(), tab.to_string()))
        {
            m.peer = None;
        }
    }

    /// Peers currently active in any tab of `user` (sorted, deduplicated).
    pub fn active_peers(&self, user: &str) -> Vec<String> {
        let st = self.lock();
        let mut v: Vec<String> = st
            .tabs
            .iter()
            .filter(|((u, _), _)| u == user)
            .filter_map(|(_, m)| m.active_peer().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Automatic advances done so far.
    pub fn advances(&self) -> u64 {
        self.inner.advances.load(Ordering::Relaxed)
    }

    /// Automatic advances that failed (after their one retry).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Called by the upstream task for every translated event before its
    /// triggers are published. Advances the backend watermark if `event` is an
    /// inbound message for a peer some tab of the user has open. Failures are
    /// logged and counted; they never hold back the fan-out beyond the retry.
    pub async fn before_fanout(&self, channel: &Channel, event: &str, data: &str) {
        if event != self.inner.inbound_event {
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            return;
        };
        let (Some(peer), Some(row)) = (
            v.get("peer").and_then(|p| p.as_str()),
            v.get("rowId").and_then(|r| r.as_u64()),
        ) else {
            return;
        };
        let user = channel.user();
        {
            let st = self.lock();
            let active = st
                .tabs
                .iter()
                .any(|((u, _), m)| u == user && m.active_peer() == Some(peer));
            let posted = st
                .posted
                .get(&(user.to_string(), peer.to_string()))
                .copied()
                .unwrap_or(0);
            if !active || row <= posted {
                return;
            }
        }
        let Some((_, cookie)) = channel.credential() else {
            return;
        };
        let payload = serde_json::json!({ "peer": peer, "rowId": row }).to_string();
        for attempt in 0..2 {
            match self.post(&cookie, &payload).await {
                Ok(()) => {
                    let mut st = self.lock();
                    let hi = st
                        .posted
                        .entry((user.to_string(), peer.to_string()))
                        .or_insert(0);
                    *hi = (*hi).max(row);
                    self.inner.advances.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!(user, attempt, error = %e, "watermark advance failed");
                }
            }
        }
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
    }

    async fn post(&self, cookie: &str, payload: &str) -> Result<(), String> {
        let req = Request::post(self.inner.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, cookie)
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

    #[test]
    fn tab_ids() {
        assert!(valid_tab_id("tab-1_A"));
        for bad in ["", "a b", "a\r\nb", "é", &"x".repeat(65)] {
            assert!(!valid_tab_id(bad), "{bad:?}");
        }
    }
}
