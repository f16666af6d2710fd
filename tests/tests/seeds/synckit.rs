//! SyncKit, after "SyncKit SSE Push Notifications" (seed 004): the
//! JWT-protected `GET /api/sync/subscribe?app_id=` stream of empty `changed`
//! events and `: keepalive` comments, and the Rust SDK's `SyncNotifyStream`
//! loop (pull on `changed`, reconnect, pull once after a reconnect).
//!
//! The mock must never put a payload in an event (the page: data is E2E
//! encrypted and never sent over SSE) and never open a stream without a
//! valid token and an `app_id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::eventsource::{self, Base, EventSource, Failure, Update};
use super::serve::{self, Resp, Server, Streams};
use super::{lock, wait_on};

/// The page's endpoint.
pub const SUBSCRIBE: &str = "/api/sync/subscribe";
/// The page says "call the pull endpoint" without naming it; this path and
/// its `{"changes": n}` answer are the mock's choice.
pub const PULL: &str = "/api/sync/pull";
/// Likewise unnamed: how "another device pushes changes" over HTTP, so a
/// push can go through a proxy too. Answers like [`PULL`].
pub const PUSH: &str = "/api/sync/push";

/// The `iss` the mock mints and requires.
pub const ISSUER: &str = "synckit";
/// The `aud` the mock mints and requires.
pub const AUDIENCE: &str = "synckit-api";

/// The page's broadcast channel size: a stream further behind skips events.
const BUFFER: usize = 16;

const CHANGED: &[u8] = b"event: changed\ndata:\n\n";
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// (app, user).
type Pair = (String, String);

struct State {
    secret: Vec<u8>,
    keepalive: Duration,
    changes: Mutex<HashMap<Pair, u64>>,
    streams: Streams<Pair>,
    pulls: AtomicUsize,
}

impl State {
    fn push(&self, app: &str, user: &str) -> u64 {
        let key = (app.to_string(), user.to_string());
        let n = {
            let mut changes = lock(&self.changes);
            let n = changes.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        self.streams
            .send(|k| *k == key, &Bytes::from_static(CHANGED));
        n
    }

    fn changes(&self, app: &str, user: &str) -> u64 {
        let key = (app.to_string(), user.to_string());
        lock(&self.changes).get(&key).copied().unwrap_or(0)
    }

    /// The token's `sub`, if it is a valid, unexpired SyncKit token.
    fn user(&self, req: &Request<Incoming>) -> Option<String> {
        let auth = serve::header(req, "authorization")?;
        let (scheme, token) = auth.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        v.set_required_spec_claims(&["exp", "sub"]);
        let key = DecodingKey::from_secret(&self.secret);
        let data = jsonwebtoken::decode::<Value>(token.trim(), &key, &v).ok()?;
        Some(data.claims.get("sub")?.as_str()?.to_string())
    }
}

/// The SyncKit server's notification side.
pub struct Mock {
    state: Arc<State>,
    server: Server,
}

impl Mock {
    /// `keepalive` is the page's 30 s comment interval (zero: none).
    pub async fn start(keepalive: Duration) -> Mock {
        let state = Arc::new(State {
            secret: format!("{}{}", super::random_hex(), super::random_hex()).into_bytes(),
            keepalive,
            changes: Mutex::default(),
            streams: Streams::default(),
            pulls: AtomicUsize::new(0),
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

    /// The HS256 key, for a gateway that verifies the same tokens.
    pub fn secret(&self) -> &[u8] {
        &self.state.secret
    }

    /// Writes the key (raw bytes, no newline) to `path`.
    pub fn write_secret(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, &self.state.secret)
    }

    /// A valid token for `user`, one hour long.
    pub fn token(&self, user: &str) -> String {
        let now = now();
        self.token_with(&json!({
            "sub": user, "iat": now, "exp": now + 3600, "iss": ISSUER, "aud": AUDIENCE,
        }))
    }

    /// Any claims (expired, wrong audience...) signed with the mock's key.
    pub fn token_with(&self, claims: &Value) -> String {
        sign(&self.state.secret, claims)
    }

    /// Records a change for (app, user) and tells that pair's streams only;
    /// returns the pair's change count.
    pub fn push(&self, user: &str, app: &str) -> u64 {
        self.state.push(app, user)
    }

    /// Changes recorded for (app, user).
    pub fn changes(&self, user: &str, app: &str) -> u64 {
        self.state.changes(app, user)
    }

    /// Ends every open stream.
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

    /// Streams of (app, user) open now.
    pub fn streams_for(&self, user: &str, app: &str) -> usize {
        self.state
            .streams
            .open_where(|(a, u)| a == app && u == user)
    }

    /// Pull requests answered (any user).
    pub fn pull_requests(&self) -> usize {
        self.state.pulls.load(Ordering::SeqCst)
    }
}

/// `claims` as an HS256 JWT under `key` (a different key makes a token the
/// mock refuses).
pub fn sign(key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .expect("HS256 signing cannot fail")
}

/// Seconds since the epoch, the JWT clock.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    let expected = match path {
        SUBSCRIBE | PULL => Method::GET,
        PUSH => Method::POST,
        _ => return serve::status(StatusCode::NOT_FOUND),
    };
    if req.method() != expected {
        return serve::status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(user) = state.user(&req) else {
        return serve::status(StatusCode::UNAUTHORIZED);
    };
    let Some(app) = serve::query_param(&req, "app_id").filter(|a| !a.is_empty()) else {
        return serve::status(StatusCode::BAD_REQUEST);
    };
    match path {
        SUBSCRIBE => {
            let keepalive = (!state.keepalive.is_zero())
                .then(|| (state.keepalive, Bytes::from_static(KEEPALIVE)));
            state.streams.open((app, user), BUFFER, keepalive)
        }
        PULL => {
            state.pulls.fetch_add(1, Ordering::SeqCst);
            serve::json(&json!({ "changes": state.changes(&app, &user) }))
        }
        _ => serve::json(&json!({ "changes": state.push(&app, &user) })),
    }
}

/// What the SDK loop has seen and done.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub connected: bool,
    pub opens: usize,
    /// Opens after the first.
    pub reconnects: usize,
    pub changed_events: usize,
    /// Keepalive comments seen (and otherwise ignored).
    pub keepalives: usize,
    /// Successful pulls, and the change count the latest one returned.
    pub pulls: usize,
    pub pulled: u64,
    pub pull_errors: usize,
    /// The status that refused the subscription; the loop has stopped.
    pub refused: Option<u16>,
}

/// The `SyncNotifyStream` sync loop of one app.
pub struct Client {
    view: watch::Receiver<View>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Subscribes `app_id` with `token` via `base` (the server or a proxy);
    /// reconnects `reconnect_delay` after a drop.
    pub fn start(
        base: impl Into<Base>,
        token: &str,
        app_id: &str,
        reconnect_delay: Duration,
    ) -> Client {
        let base = base.into();
        let (tx, view) = watch::channel(View::default());
        let task = tokio::spawn(run(
            base,
            format!("Bearer {token}"),
            format!("?app_id={}", eventsource::encode_component(app_id)),
            reconnect_delay,
            tx,
        ));
        Client { view, task }
    }

    /// The change count of the latest pull.
    pub fn pulled(&self) -> u64 {
        self.view.borrow().pulled
    }

    /// Successful pulls.
    pub fn pulls(&self) -> usize {
        self.view.borrow().pulls
    }

    /// Successful opens after the first.
    pub fn reconnects(&self) -> usize {
        self.view.borrow().reconnects
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

async fn run(base: Base, auth: String, query: String, delay: Duration, view: watch::Sender<View>) {
    let headers = [("authorization".to_string(), auth)];
    let pull_path = format!("{PULL}{query}");
    let es = EventSource::new(base.clone(), &format!("{SUBSCRIBE}{query}"))
        .header("authorization", &headers[0].1);
    loop {
        let mut conn = es.connect();
        while let Some(update) = conn.next().await {
            match update {
                Update::Open => {
                    view.send_modify(|v| {
                        v.connected = true;
                        v.opens += 1;
                        v.reconnects = v.opens - 1;
                    });
                    // Changes made while we were away sent no event to us:
                    // "the next pull will catch up regardless".
                    if view.borrow().opens > 1 {
                        pull(&base, &pull_path, &headers, &view).await;
                    }
                }
                Update::Event(m) if m.event == "changed" => {
                    view.send_modify(|v| v.changed_events += 1);
                    pull(&base, &pull_path, &headers, &view).await;
                }
                Update::Comment => view.send_modify(|v| v.keepalives += 1),
                Update::Error(Failure::Status(s)) if eventsource::refuses(s) => {
                    // The SDK would refresh its token here; this emulation
                    // has none to refresh, so it stops.
                    view.send_modify(|v| v.refused = Some(s));
                }
                Update::Event(_) | Update::Retry(_) | Update::Error(_) | Update::Closed => {}
            }
        }
        view.send_modify(|v| v.connected = false);
        if view.borrow().refused.is_some() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

async fn pull(base: &Base, path: &str, headers: &[(String, String)], view: &watch::Sender<View>) {
    let changes = match eventsource::fetch(base, "GET", path, headers, Bytes::new()).await {
        Ok((200, body)) => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("changes")?.as_u64()),
        _ => None,
    };
    view.send_modify(|v| match changes {
        Some(n) => {
            v.pulls += 1;
            v.pulled = n;
        }
        None => v.pull_errors += 1,
    });
}
