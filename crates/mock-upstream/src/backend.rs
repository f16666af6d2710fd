//! The public handle: start a mock backend, drive its fault controls and
//! inspect it from tests.
//!
//! Owns the listener's lifetime and the public API names other crates code
//! against. It must never keep state of its own: everything lives in
//! [`State`], so every clone of a handle sees the same backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server;
use crate::state::State;

/// Tunables of one mock backend.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Events kept per user for `Last-Event-ID` replay (default 1024).
    pub log_capacity: usize,
    /// Idle time after which a stream sends `: keepalive` (default 15 s);
    /// zero disables keepalives.
    pub keepalive: Duration,
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            log_capacity: 1024,
            keepalive: Duration::from_secs(15),
        }
    }
}

/// A running mock backend. Cheap to clone; all clones control the same one.
#[derive(Clone)]
pub struct MockBackend {
    state: Arc<State>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl MockBackend {
    /// Binds `addr` (use port 0 for any) and serves in a spawned task, with
    /// the default config. Must be called inside a tokio runtime.
    pub async fn start(addr: SocketAddr) -> std::io::Result<MockBackend> {
        MockBackend::start_with(addr, MockConfig::default()).await
    }

    /// Like [`MockBackend::start`] with an explicit config.
    pub async fn start_with(addr: SocketAddr, cfg: MockConfig) -> std::io::Result<MockBackend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(&cfg));
        let shutdown = CancellationToken::new();
        tokio::spawn(server::serve(listener, state.clone(), shutdown.clone()));
        Ok(MockBackend {
            state,
            addr,
            shutdown,
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a session and returns its token (the `session` cookie value).
    /// The name is trusted and not validated, unlike `POST /login`.
    pub fn create_session(&self, user: &str) -> String {
        self.state.create_session(user)
    }

    /// Revokes a session; its open streams are not ended.
    pub fn revoke_session(&self, token: &str) {
        self.state.revoke_session(token);
    }

    /// Forgets every session (as a restarted process would): requests with
    /// an old cookie get 401; open streams are not ended.
    pub fn forget_sessions(&self) {
        self.state.forget_sessions();
    }

    /// Currently open `/api/v1/events` streams of `user`.
    pub fn open_streams(&self, user: &str) -> usize {
        self.state.open_streams(user)
    }

    /// Currently open events streams of all users.
    pub fn open_streams_total(&self) -> usize {
        self.state.open_streams_total()
    }

    /// Events streams ever opened (refused requests are not counted).
    pub fn streams_opened_total(&self) -> u64 {
        self.state.streams_opened_total()
    }

    /// The `Last-Event-ID` of each authenticated events request of `user`,
    /// in arrival order, including refused ones (newest 65 536 kept).
    pub fn stream_requests(&self, user: &str) -> Vec<Option<String>> {
        self.state.stream_requests(user)
    }

    /// Ends every open events stream now, with a clean EOF.
    pub fn drop_streams(&self) {
        self.state.drop_streams();
    }

    /// New events requests get `status` (text body) for `for_` from now.
    /// A later call replaces the earlier one; `Duration::ZERO` lifts it.
    pub fn refuse_streams(&self, status: StatusCode, for_: Duration) {
        self.state.refuse_streams(status, for_);
    }

    /// Every stream, open or opened meanwhile, sends no bytes at all (not
    /// even keepalives) for `for_`, then continues with what queued up.
    /// Overlapping stalls extend; a stall is never shortened.
    pub fn stall_streams(&self, for_: Duration) {
        self.state.stall_streams(for_);
    }

    /// New epoch, all per-user event logs lost, open streams ended.
    /// Sessions, messages and watermarks persist.
    pub fn restart(&self) {
        self.state.restart();
    }

    /// Same as `POST /api/v1/messages` from `from`; returns the row id.
    pub fn send_message(&self, from: &str, to: &str, text: &str) -> u64 {
        self.state.send_message(from, to, text)
    }

    /// `user`'s read watermark for `peer`; 0 if none.
    pub fn read_watermark(&self, user: &str, peer: &str) -> u64 {
        self.state.read_watermark(user, peer)
    }

    /// Appends a raw event to `user`'s log and open streams; returns its id.
    /// Line breaks in `data` become separate `data:` lines; line breaks in
    /// `event` are removed.
    pub fn emit(&self, user: &str, event: &str, data: &str) -> String {
        self.state.emit(user, event, data)
    }

    /// The current epoch (the part of every event id before the last `-`).
    pub fn epoch(&self) -> String {
        self.state.epoch()
    }

    /// Waits until `cond` holds, re-checking after every state change
    /// (sessions, streams, requests, messages, controls). Returns `false` if
    /// it still does not hold after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&MockBackend) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed().notified();
            tokio::pin!(notified);
            // Registered before checking, so a change in between still wakes us.
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(self);
            }
        }
    }

    /// Stops accepting, ends every stream and closes idle connections.
    /// Later events requests on surviving connections get 503.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.state.close();
    }
}

impl std::fmt::Debug for MockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBackend")
            .field("addr", &self.addr)
            .field("epoch", &self.state.epoch())
            .finish()
    }
}
