//! ScaiDrive, after its "Real-time WebSocket" page (seed 003): the UI
//! endpoint `/api/v1/realtime/ws` (a `connected` frame, explicit
//! `subscribe`/`unsubscribe` per `share_id` with their acks, `ping` →
//! `pong`, `file_*`/`folder_*` events for subscribed shares), the sync
//! endpoint `/api/v1/sync/ws/{device_id}` (one `subscribe` covers every
//! share; `change`, `sync_preference_updated`, `force_sync`), the JWT as
//! `?token=` or `Authorization: Bearer`, the `4401` close for a missing or
//! bad one, and the per-connection buffer whose overflow sends `force_sync`
//! and closes. It exists so ssemux's WebSocket modes (issue 18) meet a
//! backend that was not written for them; [`Client`] is the web UI's use of
//! the realtime socket (heartbeat, backoff reconnect, re-subscribe, pull).
//!
//! The mock must never send a frame to a socket not subscribed to its share
//! or to another user's socket, never keep a socket's state across
//! connections (the page: re-subscribe after a reconnect), never refuse a
//! token at the HTTP level (the page: the server *closes the connection*
//! with 4401, so the handshake completes first), and never send unprompted
//! anything but `connected` and the events a test emits.
//!
//! The seed's copy of the page lost its code blocks; the stored public page
//! shows `?token=` as the query parameter and a client that dispatches on
//! `event_type`, else `type`. Where the page still leaves a shape open the
//! mock follows the sync socket's tables: replies (`connected`,
//! `subscribed`, `unsubscribed`, `pong`) carry `type`, events carry
//! `event_type`, and every field the realtime table lists sits at the top
//! level beside it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::eventsource::Base;
use super::serve::{self, Resp, Server};
use super::{lock, wait_on};

/// The UI endpoint.
pub const REALTIME: &str = "/api/v1/realtime/ws";
/// The sync endpoint, followed by the device id.
pub const SYNC: &str = "/api/v1/sync/ws/";
/// The close code for a missing or invalid token.
pub const UNAUTHORIZED: u16 = 4401;
/// The page's default per-connection buffer, in frames.
pub const BUFFER: usize = 1000;
/// The close after a buffer overflow: the page says the server "may close"
/// without a code; 1013 (try again later) is the mock's choice.
pub const OVERFLOW_CLOSE: u16 = 1013;
/// The realtime socket's event types, as the page lists them.
pub const REALTIME_EVENTS: [&str; 5] = [
    "file_created",
    "file_updated",
    "file_deleted",
    "folder_created",
    "folder_deleted",
];

/// The largest frame the mock reads; a bigger one ends the socket (the
/// page sets no limit; this only keeps a test's mistake small).
const MAX_FRAME: usize = 1 << 20;
/// How long a closing socket waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Which endpoint a socket was opened on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Realtime,
    Sync { device_id: String },
}

/// One open socket as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketView {
    pub user: String,
    pub endpoint: Endpoint,
    /// A realtime socket's subscriptions, sorted.
    pub shares: Vec<String>,
    /// A sync socket that sent `subscribe` (it then gets every share).
    pub all_shares: bool,
    /// Text and binary frames received from the client.
    pub frames_received: usize,
}

/// What a socket's task is told to do, ahead of its queued events.
enum Control {
    /// A reply to the client's own frame (or `connected`): never dropped.
    Reply(String),
    /// Send a close frame with this code and end.
    Close(u16),
    /// The event buffer overflowed on this share: `force_sync`, then close.
    Overflow(String),
}

struct Socket {
    user: String,
    endpoint: Endpoint,
    shares: BTreeSet<String>,
    all_shares: bool,
    frames_received: usize,
    events: mpsc::Sender<String>,
    control: mpsc::UnboundedSender<Control>,
    overflowed: bool,
    abort: AbortHandle,
}

impl Socket {
    /// Queues an event; a full buffer turns into one `Overflow`.
    fn queue(&mut self, share: &str, frame: &str) -> bool {
        match self.events.try_send(frame.to_string()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflowed {
                    self.overflowed = true;
                    let _ = self.control.send(Control::Overflow(share.to_string()));
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn reply(&self, frame: String) {
        let _ = self.control.send(Control::Reply(frame));
    }

    fn view(&self) -> SocketView {
        SocketView {
            user: self.user.clone(),
            endpoint: self.endpoint.clone(),
            shares: self.shares.iter().cloned().collect(),
            all_shares: self.all_shares,
            frames_received: self.frames_received,
        }
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Socket>,
    /// The user of every socket ever accepted, in order.
    history: Vec<String>,
}

struct State {
    /// Token to user.
    tokens: HashMap<String, String>,
    buffer: usize,
    sockets: Mutex<Registry>,
    refusals: AtomicUsize,
    frames: AtomicUsize,
    ignored: AtomicUsize,
    pongs: AtomicUsize,
    overflows: AtomicUsize,
}

/// The wire shape of an event: `event_type` first, then the share, then
/// whatever the event carries.
#[derive(Serialize)]
struct EventFrame<'a> {
    event_type: &'a str,
    share_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
}

/// The wire shape of a reply: `type` first.
#[derive(Serialize)]
struct ReplyFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    share_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a str>,
}

impl ReplyFrame<'_> {
    fn of(kind: &str) -> ReplyFrame<'_> {
        ReplyFrame {
            kind,
            share_id: None,
            user_id: None,
            timestamp: None,
        }
    }
}

fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl State {
    /// The user of the handshake's token: `?token=` if present (even
    /// empty), else `Authorization: Bearer`.
    fn user(&self, req: &Request<Incoming>) -> Option<String> {
        let token = match serve::query_param(req, "token") {
            Some(t) => t,
            None => {
                let auth = serve::header(req, "authorization")?;
                let (scheme, token) = auth.split_once(' ')?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return None;
                }
                token.trim().to_string()
            }
        };
        self.tokens.get(&token).cloned()
    }

    /// Queues `frame` on every open socket `wants`; how many took it.
    fn deliver(&self, share: &str, frame: &str, wants: impl Fn(&Socket) -> bool) -> usize {
        let mut r = lock(&self.sockets);
        r.open
            .values_mut()
            .filter(|s| wants(s))
            .map(|s| s.queue(share, frame))
            .filter(|took| *took)
            .count()
    }

    /// One client frame: counted, then answered as its endpoint documents,
    /// or ignored (the page names no error frame).
    fn on_frame(&self, id: u64, msg: &Message) {
        self.frames.fetch_add(1, Ordering::SeqCst);
        let mut r = lock(&self.sockets);
        let Some(s) = r.open.get_mut(&id) else { return };
        s.frames_received += 1;
        let parsed = match msg {
            Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).ok(),
            _ => None,
        };
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let share = field("share_id").filter(|s| !s.is_empty());
        let handled = match (&s.endpoint, field("action"), field("type")) {
            (Endpoint::Realtime, Some(action), _) => match (action.as_str(), share) {
                ("ping", _) => {
                    self.pongs.fetch_add(1, Ordering::SeqCst);
                    s.reply(to_json(&ReplyFrame::of("pong")));
                    true
                }
                ("subscribe", Some(share)) => {
                    s.reply(to_json(&ReplyFrame {
                        share_id: Some(&share),
                        ..ReplyFrame::of("subscribed")
                    }));
                    s.shares.insert(share);
                    true
                }
                ("unsubscribe", Some(share)) => {
                    s.reply(to_json(&ReplyFrame {
                        share_id: Some(&share),
                        ..ReplyFrame::of("unsubscribed")
                    }));
                    s.shares.remove(&share);
                    true
                }
                _ => false,
            },
            (Endpoint::Sync { .. }, _, Some(kind)) => match kind.as_str() {
                "ping" => {
                    self.pongs.fetch_add(1, Ordering::SeqCst);
                    s.reply(to_json(&ReplyFrame::of("pong")));
                    true
                }
                "subscribe" => {
                    s.all_shares = true;
                    s.reply(to_json(&ReplyFrame::of("subscribed")));
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !handled {
            self.ignored.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The ScaiDrive server's two WebSocket endpoints.
pub struct Mock {
    state: Arc<State>,
    server: Server,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.drop_all();
    }
}

impl Mock {
    /// Accepts exactly `tokens` (token, user); the page's 1000-frame buffer.
    pub async fn start(tokens: &[(&str, &str)]) -> Mock {
        Mock::with_buffer(tokens, BUFFER).await
    }

    /// As [`Mock::start`], with a per-connection buffer of `buffer` events.
    pub async fn with_buffer(tokens: &[(&str, &str)], buffer: usize) -> Mock {
        let state = Arc::new(State {
            tokens: tokens
                .iter()
                .map(|(t, u)| (t.to_string(), u.to_string()))
                .collect(),
            buffer: buffer.max(1),
            sockets: Mutex::default(),
            refusals: AtomicUsize::new(0),
            frames: AtomicUsize::new(0),
            ignored: AtomicUsize::new(0),
            pongs: AtomicUsize::new(0),
            overflows: AtomicUsize::new(0),
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

    /// `ws://addr` + `path_and_query`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.server.addr)
    }

    /// Sends the realtime event `event_type` (`file_created`...) with `data`
    /// to `user`'s realtime sockets subscribed to `share`; how many took it.
    pub fn emit(&self, user: &str, share: &str, event_type: &str, data: &Value) -> usize {
        let frame = to_json(&EventFrame {
            event_type,
            share_id: share,
            data: Some(data),
            device_id: None,
        });
        self.state.deliver(share, &frame, |s| {
            s.user == user && s.endpoint == Endpoint::Realtime && s.shares.contains(share)
        })
    }

    /// A `change` (the full change entry as `data`) to `user`'s subscribed
    /// sync sockets.
    pub fn change(&self, user: &str, share: &str, data: &Value) -> usize {
        let frame = to_json(&EventFrame {
            event_type: "change",
            share_id: share,
            data: Some(data),
            device_id: None,
        });
        self.state.deliver(share, &frame, |s| sync_wants(s, user))
    }

    /// A `sync_preference_updated` to `user`'s subscribed sync sockets.
    pub fn preference_updated(&self, user: &str, share: &str, device_id: &str) -> usize {
        let frame = to_json(&EventFrame {
            event_type: "sync_preference_updated",
            share_id: share,
            data: None,
            device_id: Some(device_id),
        });
        self.state.deliver(share, &frame, |s| sync_wants(s, user))
    }

    /// `{"event_type": "force_sync", "share_id": share}` to every socket of
    /// `user` that gets `share`'s events (realtime subscribed to it, sync
    /// subscribed); how many took it.
    pub fn force_sync(&self, user: &str, share: &str) -> usize {
        let frame = force_sync_frame(share);
        self.state.deliver(share, &frame, |s| {
            sync_wants(s, user) || (s.user == user && s.shares.contains(share))
        })
    }

    /// Ends every open socket at once, without a close frame: the TCP
    /// connection just goes (a crashed or restarted backend).
    pub fn drop_all(&self) {
        let gone: Vec<Socket> = lock(&self.state.sockets)
            .open
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in gone {
            s.abort.abort();
        }
    }

    /// Closes every open socket with a close frame of `code` (1001 for a
    /// backend going down cleanly); each counts as open until its client
    /// answers the close (at most 5 s).
    pub fn close_all(&self, code: u16) {
        for s in lock(&self.state.sockets).open.values() {
            let _ = s.control.send(Control::Close(code));
        }
    }

    /// Sockets open now (both endpoints).
    pub fn open_sockets(&self) -> usize {
        lock(&self.state.sockets).open.len()
    }

    /// `user`'s sockets open now (both endpoints).
    pub fn open_for(&self, user: &str) -> usize {
        lock(&self.state.sockets)
            .open
            .values()
            .filter(|s| s.user == user)
            .count()
    }

    /// Sockets accepted with a valid token so far.
    pub fn connects(&self) -> usize {
        lock(&self.state.sockets).history.len()
    }

    /// `user`'s sockets accepted so far.
    pub fn connects_for(&self, user: &str) -> usize {
        lock(&self.state.sockets)
            .history
            .iter()
            .filter(|u| *u == user)
            .count()
    }

    /// Handshakes completed and then closed with 4401.
    pub fn refusals(&self) -> usize {
        self.state.refusals.load(Ordering::SeqCst)
    }

    /// `user`'s open sockets, oldest first.
    pub fn sockets(&self, user: &str) -> Vec<SocketView> {
        let r = lock(&self.state.sockets);
        let mut ids: Vec<_> = r.open.iter().filter(|(_, s)| s.user == user).collect();
        ids.sort_by_key(|(id, _)| **id);
        ids.into_iter().map(|(_, s)| s.view()).collect()
    }

    /// `user`'s realtime sockets subscribed to `share`.
    pub fn subscribers(&self, user: &str, share: &str) -> usize {
        lock(&self.state.sockets)
            .open
            .values()
            .filter(|s| s.user == user && s.shares.contains(share))
            .count()
    }

    /// Frames received from clients (every socket, ignored ones included).
    pub fn frames_received(&self) -> usize {
        self.state.frames.load(Ordering::SeqCst)
    }

    /// Received frames that matched nothing the page documents.
    pub fn ignored_frames(&self) -> usize {
        self.state.ignored.load(Ordering::SeqCst)
    }

    /// `pong`s sent.
    pub fn pongs(&self) -> usize {
        self.state.pongs.load(Ordering::SeqCst)
    }

    /// Sockets closed because their buffer filled.
    pub fn overflows(&self) -> usize {
        self.state.overflows.load(Ordering::SeqCst)
    }
}

fn sync_wants(s: &Socket, user: &str) -> bool {
    s.user == user && s.all_shares && matches!(s.endpoint, Endpoint::Sync { .. })
}

fn force_sync_frame(share: &str) -> String {
    to_json(&EventFrame {
        event_type: "force_sync",
        share_id: share,
        data: None,
        device_id: None,
    })
}

/// The `Sec-WebSocket-Accept` for a valid upgrade request; None otherwise.
fn accept_key(req: &Request<Incoming>) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let ok = req.version() == http::Version::HTTP_11
        && has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && serve::header(req, "sec-websocket-version") == Some("13");
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY)?;
    ok.then(|| derive_accept_key(key.as_bytes()))
}

async fn handle(state: Arc<State>, mut req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    let endpoint = if path == REALTIME {
        Endpoint::Realtime
    } else if let Some(device) = path
        .strip_prefix(SYNC)
        .filter(|d| !d.is_empty() && !d.contains('/'))
    {
        Endpoint::Sync {
            device_id: device.to_string(),
        }
    } else {
        return serve::status(StatusCode::NOT_FOUND);
    };
    if req.method() != Method::GET {
        return serve::status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(accept) = accept_key(&req) else {
        return serve::status(StatusCode::BAD_REQUEST);
    };
    let user = state.user(&req);
    let upgrade = hyper::upgrade::on(&mut req);
    let (handle_tx, handle_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let Ok(abort) = handle_rx.await else { return };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_FRAME);
        config.max_frame_size = Some(MAX_FRAME);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match user {
            Some(user) => run(state, ws, user, endpoint, abort).await,
            None => {
                state.refusals.fetch_add(1, Ordering::SeqCst);
                close(ws, UNAUTHORIZED).await;
            }
        }
    });
    let _ = handle_tx.send(task.abort_handle());
    let mut resp = Response::new(Full::new(bytes::Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Sends a close frame with `code` and waits (a while) for the peer's.
async fn close(mut ws: Ws, code: u16) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::default(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// Unregisters a socket however its task ends (returned or aborted).
struct Guard {
    state: Arc<State>,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock(&self.state.sockets).open.remove(&self.id);
    }
}

/// One accepted socket: replies and controls first, then queued events,
/// then the client's frames.
async fn run(state: Arc<State>, mut ws: Ws, user: String, endpoint: Endpoint, abort: AbortHandle) {
    let (events_tx, mut events) = mpsc::channel(state.buffer);
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let id = {
        let mut r = lock(&state.sockets);
        let id = r.next_id;
        r.next_id += 1;
        r.history.push(user.clone());
        let socket = Socket {
            user: user.clone(),
            endpoint,
            shares: BTreeSet::new(),
            all_shares: false,
            frames_received: 0,
            events: events_tx,
            control: control_tx,
            overflowed: false,
            abort,
        };
        if socket.endpoint == Endpoint::Realtime {
            let now = timestamp(SystemTime::now());
            socket.reply(to_json(&ReplyFrame {
                user_id: Some(&user),
                timestamp: Some(&now),
                ..ReplyFrame::of("connected")
            }));
        }
        r.open.insert(id, socket);
        id
    };
    let _guard = Guard {
        state: state.clone(),
        id,
    };
    loop {
        tokio::select! {
            biased;
            Some(c) = control.recv() => match c {
                Control::Reply(frame) => {
                    if ws.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                Control::Close(code) => return close(ws, code).await,
                Control::Overflow(share) => {
                    state.overflows.fetch_add(1, Ordering::SeqCst);
                    if ws.send(Message::text(force_sync_frame(&share))).await.is_ok() {
                        close(ws, OVERFLOW_CLOSE).await;
                    }
                    return;
                }
            },
            Some(frame) = events.recv() => {
                if ws.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => state.on_frame(id, &m),
                // Protocol pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The client's close (tungstenite queues the reply, which the
                // next read flushes), EOF or a broken connection.
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(CLOSE_WAIT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    return;
                }
                None | Some(Err(_)) => return,
            },
        }
    }
}

/// `at` as RFC 3339 UTC to the second (`2026-04-23T10:15:02Z`), the
/// format of the page's change entries.
pub fn timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// ---- the web UI's client ----

/// How the client presents its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `?token=`, as a browser must.
    Query,
    /// `Authorization: Bearer`, as a non-browser client may.
    Bearer,
}

/// What the UI client has seen and done.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub connected: bool,
    pub opens: usize,
    /// Opens after the first.
    pub reconnects: usize,
    /// The `user_id` of the latest `connected` frame.
    pub user_id: Option<String>,
    /// Shares whose `subscribed` arrived on the current connection.
    pub subscribed: BTreeSet<String>,
    /// Every event frame (`event_type` present), in order, across
    /// connections.
    pub events: Vec<Value>,
    pub pongs: usize,
    pub force_syncs: usize,
    /// Change-stream pulls: one after every reconnect ("don't assume the
    /// WebSocket delivered every frame") and one per `force_sync`.
    pub pulls: usize,
    /// Heartbeats that got no `pong` in time (each ends the connection).
    pub dead_heartbeats: usize,
    /// Close codes the server sent, in order.
    pub close_codes: Vec<u16>,
    /// 4401 came: the token is bad, the client has stopped.
    pub refused: bool,
}

impl View {
    /// The events of `event_type`.
    pub fn events_of(&self, event_type: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e.get("event_type").and_then(Value::as_str) == Some(event_type))
            .collect()
    }
}

/// Timings of the UI client; the page's are 30 s and 1 s → 30 s.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Ping every this long; no `pong` within as long again is a dead
    /// connection.
    pub heartbeat: Duration,
    /// The first reconnect delay; it doubles per failed try.
    pub backoff: Duration,
    /// The delay never exceeds this.
    pub max_backoff: Duration,
}

impl Timing {
    /// The page's timings scaled down by `factor` (a test's 1000 makes them
    /// 30 ms and 1 ms → 30 ms).
    pub fn scaled(factor: u32) -> Timing {
        Timing {
            heartbeat: Duration::from_secs(30) / factor,
            backoff: Duration::from_secs(1) / factor,
            max_backoff: Duration::from_secs(30) / factor,
        }
    }
}

enum Cmd {
    Subscribe(String),
    Unsubscribe(String),
}

/// The web UI on the realtime socket: subscribes to the shares it shows,
/// pings on the heartbeat, reconnects with exponential backoff, and after
/// a reconnect re-subscribes and pulls the change stream.
pub struct Client {
    view: watch::Receiver<View>,
    cmd: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects to `base` (the server or a proxy) with `token`, showing
    /// `shares`.
    pub fn start(
        base: impl Into<Base>,
        token: &str,
        auth: Auth,
        shares: &[&str],
        timing: Timing,
    ) -> Client {
        let (tx, view) = watch::channel(View::default());
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let want = shares.iter().map(|s| s.to_string()).collect();
        let task = tokio::spawn(client_loop(
            base.into(),
            token.to_string(),
            auth,
            want,
            timing,
            tx,
            cmd_rx,
        ));
        Client { view, cmd, task }
    }

    /// Starts showing `share` (subscribes now if connected, else on open).
    pub fn subscribe(&self, share: &str) {
        let _ = self.cmd.send(Cmd::Subscribe(share.to_string()));
    }

    /// Stops showing `share`.
    pub fn unsubscribe(&self, share: &str) {
        let _ = self.cmd.send(Cmd::Unsubscribe(share.to_string()));
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

/// Opens a WebSocket to `path_and_query` via `base`, with `headers`.
pub async fn connect(
    base: &Base,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::Error;
    let url = format!("ws://{}{}", base.addr, base.target(path_and_query));
    let mut req = url.into_client_request()?;
    for (name, value) in headers {
        let name = header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Error::HttpFormat(e.into()))?;
        let value = http::HeaderValue::from_str(value).map_err(|e| Error::HttpFormat(e.into()))?;
        req.headers_mut().insert(name, value);
    }
    let tcp = TcpStream::connect(base.addr).await?;
    let (ws, _) = tokio::time::timeout(CLOSE_WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(ws)
}

/// Why one connection ended.
enum End {
    /// The server's close frame (its code), EOF or an error: reconnect.
    Lost,
    /// 4401: stop.
    Refused,
}

async fn client_loop(
    base: Base,
    token: String,
    auth: Auth,
    mut want: BTreeSet<String>,
    timing: Timing,
    view: watch::Sender<View>,
    mut cmd: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut delay = timing.backoff;
    loop {
        let bearer = format!("Bearer {token}");
        let (path, headers) = match auth {
            Auth::Query => (
                format!(
                    "{REALTIME}?token={}",
                    super::eventsource::encode_component(&token)
                ),
                vec![],
            ),
            Auth::Bearer => (
                REALTIME.to_string(),
                vec![("authorization", bearer.as_str())],
            ),
        };
        if let Ok(ws) = connect(&base, &path, &headers).await {
            view.send_modify(|v| {
                v.connected = true;
                v.opens += 1;
                v.reconnects = v.opens - 1;
                v.subscribed.clear();
            });
            delay = timing.backoff;
            let end = session(ws, &mut want, timing, &view, &mut cmd).await;
            view.send_modify(|v| v.connected = false);
            if let End::Refused = end {
                view.send_modify(|v| v.refused = true);
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(timing.max_backoff);
    }
}

async fn session(
    mut ws: WebSocketStream<TcpStream>,
    want: &mut BTreeSet<String>,
    timing: Timing,
    view: &watch::Sender<View>,
    cmd: &mut mpsc::UnboundedReceiver<Cmd>,
) -> End {
    let action = |action: &str, share: Option<&str>| {
        let mut v = serde_json::json!({ "action": action });
        if let Some(s) = share {
            v["share_id"] = Value::from(s);
        }
        Message::text(v.to_string())
    };
    // The server keeps nothing across connections: subscribe again, and
    // pull what the socket may have missed while down.
    for share in want.iter() {
        if ws.send(action("subscribe", Some(share))).await.is_err() {
            return End::Lost;
        }
    }
    if view.borrow().opens > 1 {
        view.send_modify(|v| v.pulls += 1);
    }
    let start = tokio::time::Instant::now() + timing.heartbeat;
    let mut heartbeat = tokio::time::interval_at(start, timing.heartbeat);
    let mut awaiting_pong: Option<tokio::time::Instant> = None;
    loop {
        let deadline = awaiting_pong.map(|sent| sent + timing.heartbeat);
        let pong_overdue = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = heartbeat.tick() => {
                if awaiting_pong.is_none() {
                    awaiting_pong = Some(tokio::time::Instant::now());
                    if ws.send(action("ping", None)).await.is_err() {
                        return End::Lost;
                    }
                }
            }
            _ = pong_overdue => {
                view.send_modify(|v| v.dead_heartbeats += 1);
                return End::Lost;
            }
            Some(c) = cmd.recv() => {
                let msg = match c {
                    Cmd::Subscribe(s) => {
                        want.insert(s.clone());
                        action("subscribe", Some(&s))
                    }
                    Cmd::Unsubscribe(s) => {
                        want.remove(&s);
                        action("unsubscribe", Some(&s))
                    }
                };
                if ws.send(msg).await.is_err() {
                    return End::Lost;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    if on_server_frame(&frame, view) {
                        awaiting_pong = None;
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.map(|c| u16::from(c.code));
                    if let Some(code) = code {
                        view.send_modify(|v| v.close_codes.push(code));
                    }
                    // Let tungstenite answer the close, then go.
                    let _ = tokio::time::timeout(CLOSE_WAIT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    return if code == Some(UNAUTHORIZED) { End::Refused } else { End::Lost };
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return End::Lost,
            },
        }
    }
}

/// Applies one server frame to the view, dispatching as the page's client
/// does (`event_type`, else `type`); whether it was a `pong`.
fn on_server_frame(frame: &Value, view: &watch::Sender<View>) -> bool {
    let field = |name: &str| frame.get(name).and_then(Value::as_str);
    let share = field("share_id").map(str::to_string);
    if let Some(event_type) = field("event_type") {
        let force = event_type == "force_sync";
        view.send_modify(|v| {
            v.events.push(frame.clone());
            if force {
                v.force_syncs += 1;
                v.pulls += 1;
            }
        });
        return false;
    }
    match field("type") {
        Some("pong") => {
            view.send_modify(|v| v.pongs += 1);
            true
        }
        Some("connected") => {
            let user = field("user_id").map(str::to_string);
            view.send_modify(|v| v.user_id = user);
            false
        }
        Some("subscribed") => {
            if let Some(s) = share {
                view.send_modify(|v| {
                    v.subscribed.insert(s);
                });
            }
            false
        }
        Some("unsubscribed") => {
            if let Some(s) = share {
                view.send_modify(|v| {
                    v.subscribed.remove(&s);
                });
            }
            false
        }
        _ => false,
    }
}
