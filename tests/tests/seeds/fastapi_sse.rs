//! The FastAPI SSE service of the "Server-Sent Events (SSE) Developer Guide"
//! (seed 002): `SSEService.send_event` to a session's queue, read through
//! `GET /api/v1/sse/subscribe`, and the front end's `app/src/plugins/sse.js`
//! (listeners by event type, exponential-backoff reconnect, `readyState`).
//!
//! The mock must never send what the guide does not: named events with
//! `data:` lines only, no ids, no `retry:`, no keepalive comments. An
//! unknown session is always a 401, never a stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::eventsource::{self, Base, EventSource, Update};
use super::serve::{self, Resp, Server, Streams};
use super::{lock, wait_on};

/// The subscribe path, mounted under `/api/v1` as in the guide.
pub const SUBSCRIBE: &str = "/api/v1/sse/subscribe";
/// The guide's test helper endpoint: a JSON array of strings, each sent to
/// the caller's session as a `test` event.
pub const ECHO: &str = "/api/v1/sse/test/echo";

struct State {
    /// Session id to user.
    sessions: Mutex<HashMap<String, String>>,
    streams: Streams<String>,
    refusals: AtomicUsize,
}

impl State {
    fn send(&self, session_id: &str, event_type: &str, data: &str) -> usize {
        self.streams
            .send(|s| s == session_id, &Bytes::from(frame(event_type, data)))
    }
}

/// The backend: sessions and their SSE queues.
pub struct Mock {
    state: Arc<State>,
    server: Server,
}

impl Mock {
    /// A service with no sessions yet.
    pub async fn start() -> Mock {
        let state = Arc::new(State {
            sessions: Mutex::default(),
            streams: Streams::default(),
            refusals: AtomicUsize::new(0),
        });
        let s = state.clone();
        let server = serve::start(move |req| handle(s.clone(), req)).await;
        Mock { state, server }
    }

    /// The listening address (127.0.0.1).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// `http://addr`, a base for clients and gateways.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Logs `user` in; returns the new `sessionId`.
    pub fn create_session(&self, user: &str) -> String {
        let id = super::random_hex();
        lock(&self.state.sessions).insert(id.clone(), user.to_string());
        id
    }

    /// Logs the session out: its open streams end ("connection is cleaned
    /// up") and later subscribes get 401.
    pub fn revoke(&self, session_id: &str) {
        lock(&self.state.sessions).remove(session_id);
        self.state.streams.drop_where(|s| s == session_id);
    }

    /// `SSEService.send_event`: to every open stream of the session (none
    /// open: the event is lost, as the queue only exists while subscribed).
    /// Returns how many streams took it. `event_type` must be one line.
    pub fn send_event(&self, session_id: &str, event_type: &str, data: &str) -> usize {
        self.state.send(session_id, event_type, data)
    }

    /// Ends every open stream (sessions stay valid).
    pub fn drop_streams(&self) {
        self.state.streams.drop_all();
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.state.streams.open_where(|_| true)
    }

    /// Streams accepted so far.
    pub fn streams_opened(&self) -> usize {
        self.state.streams.opened_where(|_| true)
    }

    /// Streams accepted so far for one session.
    pub fn streams_opened_for(&self, session_id: &str) -> usize {
        self.state.streams.opened_where(|s| s == session_id)
    }

    /// Requests refused with 401 (unknown, missing or revoked session).
    pub fn refusals(&self) -> usize {
        self.state.refusals.load(Ordering::SeqCst)
    }

    /// Streams of one session open now.
    pub fn open_streams_for(&self, session_id: &str) -> usize {
        self.state.streams.open_where(|s| s == session_id)
    }
}

/// `event: <type>`, then one `data:` line per line of `data` (CRLF, LF and CR
/// all end a line, as the SSE spec reads them), then the blank line. Empty
/// data still gets its one `data:` line, so the event is dispatched.
pub fn frame(event_type: &str, data: &str) -> String {
    let mut out = format!("event: {event_type}\n");
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if path != SUBSCRIBE && path != ECHO {
        return serve::status(StatusCode::NOT_FOUND);
    }
    let expected = if path == SUBSCRIBE {
        Method::GET
    } else {
        Method::POST
    };
    if req.method() != expected {
        return serve::status(StatusCode::METHOD_NOT_ALLOWED);
    }
    // The app's flow puts it in the query, the guide's test in a header.
    let session = serve::query_param(&req, "sessionId")
        .or_else(|| serve::header(&req, "x-session-id").map(str::to_string))
        .filter(|s| lock(&state.sessions).contains_key(s));
    let Some(session) = session else {
        state.refusals.fetch_add(1, Ordering::SeqCst);
        return serve::status(StatusCode::UNAUTHORIZED);
    };
    if path == SUBSCRIBE {
        return state.streams.open(session, 4096, None);
    }
    let messages = serve::read_body(req)
        .await
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok());
    let Some(messages) = messages else {
        return serve::status(StatusCode::BAD_REQUEST);
    };
    for m in &messages {
        state.send(&session, "test", m);
    }
    serve::json(&json!({ "sent": messages.len() }))
}

/// How the client presents its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `?sessionId=`, the plugin's main flow.
    Query,
    /// `X-Session-Id`, as the guide's test does.
    Header,
}

/// The plugin's `MAX_RECONNECT_ATTEMPTS`.
pub const MAX_RECONNECT_ATTEMPTS: u32 = 5;

/// `EventSource.readyState` values.
pub const CONNECTING: u8 = 0;
/// `EventSource.OPEN`.
pub const OPEN: u8 = 1;
/// `EventSource.CLOSED` (also while waiting to retry).
pub const CLOSED: u8 = 2;

/// What the plugin exposes and what its listeners heard.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub ready_state: u8,
    pub reconnect_attempts: u32,
    /// Successful opens.
    pub opens: usize,
    /// Per event type with a listener, the `event.data` of each, in order.
    pub received: HashMap<String, Vec<String>>,
    /// Events that arrived while no listener for their type was registered.
    pub unheard: usize,
    /// All attempts used up; only `reconnect()` tries again.
    pub gave_up: bool,
}

/// The `sse` plugin: one EventSource, listeners by type, reconnects.
pub struct Client {
    view: watch::Receiver<View>,
    tx: Arc<watch::Sender<View>>,
    url: String,
    manual: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// `establishConnection(sessionId)` against `base` (the service or a
    /// proxy). `reconnect_interval` is the plugin's `RECONNECT_INTERVAL`
    /// (2 s in the guide).
    pub fn start(
        base: impl Into<Base>,
        session_id: &str,
        via: Via,
        reconnect_interval: Duration,
    ) -> Client {
        let es = match via {
            Via::Query => EventSource::new(
                base,
                &format!(
                    "{SUBSCRIBE}?sessionId={}",
                    eventsource::encode_component(session_id)
                ),
            ),
            Via::Header => EventSource::new(base, SUBSCRIBE).header("x-session-id", session_id),
        };
        let (tx, view) = watch::channel(View::default());
        let tx = Arc::new(tx);
        let manual = Arc::new(Notify::new());
        let url = es.url();
        let task = tokio::spawn(run(es, reconnect_interval, tx.clone(), manual.clone()));
        Client {
            view,
            tx,
            url,
            manual,
            task,
        }
    }

    /// `sse.addEventListener(type, ...)`: from now on, `type` events are
    /// kept (before or after the connection opens, as the plugin allows).
    pub fn add_event_listener(&self, event_type: &str) {
        self.tx.send_modify(|v| {
            v.received.entry(event_type.to_string()).or_default();
        });
    }

    /// `sse.removeEventListener`: forgets the type and what it heard.
    pub fn remove_event_listener(&self, event_type: &str) {
        self.tx.send_modify(|v| {
            v.received.remove(event_type);
        });
    }

    /// The data of every `event_type` event heard so far.
    pub fn events(&self, event_type: &str) -> Vec<String> {
        self.view
            .borrow()
            .received
            .get(event_type)
            .cloned()
            .unwrap_or_default()
    }

    /// The progress bar's value: `parseInt` of the last `syncProgress`.
    pub fn progress(&self) -> Option<i64> {
        self.events("syncProgress")
            .last()
            .and_then(|d| parse_int(d))
    }

    /// `sse.reconnect()`: drop the current connection or wait, connect now.
    pub fn reconnect(&self) {
        self.manual.notify_one();
    }

    /// `sse.readyState`.
    pub fn ready_state(&self) -> u8 {
        self.view.borrow().ready_state
    }

    /// `sse.reconnectAttempts`.
    pub fn reconnect_attempts(&self) -> u32 {
        self.view.borrow().reconnect_attempts
    }

    /// `sse.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything at once, for assertion messages.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Waits up to `within` for `cond` on the view; whether it held.
    pub async fn wait_for(&self, within: Duration, cond: impl FnMut(&View) -> bool) -> bool {
        wait_on(&self.view, within, cond).await
    }
}

/// The plugin's loop. Every end of a connection (refused, failed, or closed
/// by the server) is its `onerror`: close, then retry after
/// `interval * 2^attempts` while attempts < 5; after that, only
/// `reconnect()` tries again.
async fn run(
    es: EventSource,
    interval: Duration,
    view: Arc<watch::Sender<View>>,
    manual: Arc<Notify>,
) {
    loop {
        view.send_modify(|v| v.ready_state = CONNECTING);
        let mut conn = es.connect();
        let forced = loop {
            let update = tokio::select! {
                u = conn.next() => u,
                _ = manual.notified() => break true,
            };
            match update {
                Some(Update::Open) => view.send_modify(|v| {
                    v.ready_state = OPEN;
                    v.gave_up = false;
                    v.reconnect_attempts = 0;
                    v.opens += 1;
                }),
                Some(Update::Event(m)) => {
                    view.send_modify(|v| match v.received.get_mut(&m.event) {
                        Some(heard) => heard.push(m.data),
                        None => v.unheard += 1,
                    })
                }
                Some(Update::Retry(_) | Update::Comment) => {}
                Some(Update::Error(_) | Update::Closed) | None => break false,
            }
        };
        drop(conn);
        view.send_modify(|v| v.ready_state = CLOSED);
        if forced {
            continue;
        }
        let attempts = view.borrow().reconnect_attempts;
        if attempts < MAX_RECONNECT_ATTEMPTS {
            view.send_modify(|v| v.reconnect_attempts += 1);
            let delay = interval.saturating_mul(2u32.saturating_pow(attempts));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = manual.notified() => {}
            }
        } else {
            view.send_modify(|v| v.gave_up = true);
            manual.notified().await;
            view.send_modify(|v| v.gave_up = false);
        }
    }
}

/// JavaScript's `parseInt(s)` (radix 10): leading whitespace, a sign, then
/// as many digits as there are; None where JS gives `NaN`.
pub fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<i64>().ok().map(|n| sign * n)
}
