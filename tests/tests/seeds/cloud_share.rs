//! Cloud Share, after its "Real-Time Updates" page (seed 000): the sender's
//! `GET /events?secret=` stream and `GET /queue?secret=`, and the receiver
//! UI's use of them (queue model, status badge, 3-second reconnect, queue
//! refresh after a reconnect).
//!
//! The mock must never send anything the page does not show: unnamed
//! `data: {json}` events only, no ids, no `retry:`, no comments.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::eventsource::{self, Base, EventSource, Failure, Update};
use super::serve::{self, Resp, Server, Streams};
use super::{lock, wait_on};

/// One queue entry, with the page's field names and order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub size_bytes: u64,
    /// `Queued` or `Received`.
    pub status: String,
    pub has_zip_password: bool,
}

/// The three events of the page, `type` first as it shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    NewItem { item: Item },
    ItemReceived { id: String },
    ItemDeleted { id: String },
}

struct State {
    secret: String,
    queue: Mutex<Vec<Item>>,
    next_id: AtomicUsize,
    streams: Streams<()>,
    queue_requests: AtomicUsize,
}

/// The sender side: its queue and event stream.
pub struct Mock {
    state: Arc<State>,
    server: Server,
}

impl Mock {
    /// A sender with a random secret.
    pub async fn start() -> Mock {
        Mock::with_secret(&super::random_hex()).await
    }

    /// A sender whose receivers must present `secret`.
    pub async fn with_secret(secret: &str) -> Mock {
        let state = Arc::new(State {
            secret: secret.to_string(),
            queue: Mutex::default(),
            next_id: AtomicUsize::new(1),
            streams: Streams::default(),
            queue_requests: AtomicUsize::new(0),
        });
        let s = state.clone();
        let server = serve::start(move |req| handle(s.clone(), req)).await;
        Mock { state, server }
    }

    /// The secret receivers must send.
    pub fn secret(&self) -> &str {
        &self.state.secret
    }

    /// The listening address (127.0.0.1).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// `http://addr`, a base for clients and gateways.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Queues a file named `name` and tells every open stream; returns its id.
    pub fn add_item(&self, name: &str) -> String {
        self.add_item_with("file", name, 204_800)
    }

    /// Queues an item of `kind` (`file`, `text`, `zip`) and size.
    pub fn add_item_with(&self, kind: &str, name: &str, size_bytes: u64) -> String {
        let n = self.state.next_id.fetch_add(1, Ordering::SeqCst);
        let item = Item {
            // UUID-shaped, as the page's example, but predictable in logs.
            id: format!("00000000-0000-4000-8000-{n:012x}"),
            kind: kind.to_string(),
            name: name.to_string(),
            size_bytes,
            status: "Queued".to_string(),
            has_zip_password: false,
        };
        let id = item.id.clone();
        lock(&self.state.queue).push(item.clone());
        self.emit(&Event::NewItem { item });
        id
    }

    /// Marks `id` received (as a download would); false if unknown.
    pub fn receive(&self, id: &str) -> bool {
        let found = lock(&self.state.queue)
            .iter_mut()
            .find(|i| i.id == id)
            .map(|i| i.status = "Received".to_string())
            .is_some();
        if found {
            self.emit(&Event::ItemReceived { id: id.to_string() });
        }
        found
    }

    /// Deletes `id` from the queue; false if unknown.
    pub fn delete(&self, id: &str) -> bool {
        let found = {
            let mut q = lock(&self.state.queue);
            let before = q.len();
            q.retain(|i| i.id != id);
            q.len() != before
        };
        if found {
            self.emit(&Event::ItemDeleted { id: id.to_string() });
        }
        found
    }

    /// Ends every open event stream (the "connection lost" of the page).
    pub fn drop_streams(&self) {
        self.state.streams.drop_all();
    }

    /// Event streams open now.
    pub fn open_streams(&self) -> usize {
        self.state.streams.open_where(|_| true)
    }

    /// Event streams accepted so far (refused ones not counted).
    pub fn streams_opened(&self) -> usize {
        self.state.streams.opened_where(|_| true)
    }

    /// `GET /queue` requests with the right secret.
    pub fn queue_requests(&self) -> usize {
        self.state.queue_requests.load(Ordering::SeqCst)
    }

    /// The sender's queue now.
    pub fn queue(&self) -> Vec<Item> {
        lock(&self.state.queue).clone()
    }

    fn emit(&self, event: &Event) {
        let json = serde_json::to_string(event).unwrap_or_default();
        let frame = Bytes::from(format!("data: {json}\n\n"));
        self.state.streams.send(|_| true, &frame);
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if path != "/events" && path != "/queue" {
        return serve::status(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::GET {
        return serve::status(StatusCode::METHOD_NOT_ALLOWED);
    }
    if serve::query_param(&req, "secret").as_deref() != Some(state.secret.as_str()) {
        return serve::status(StatusCode::UNAUTHORIZED);
    }
    if path == "/queue" {
        state.queue_requests.fetch_add(1, Ordering::SeqCst);
        let queue = lock(&state.queue).clone();
        return serve::json(&queue);
    }
    state.streams.open((), 4096, None)
}

/// The receiver header's connection badge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Badge {
    /// Green: the stream is open.
    Connected,
    /// Yellow: an attempt is in progress or due (also before the first open).
    Reconnecting,
    /// Red: the sender refused us (a 4xx such as 401 for a wrong secret; no
    /// more attempts), or
    /// [`UNREACHABLE_AFTER`] attempts in a row failed (attempts go on).
    Disconnected,
}

/// Consecutive failed attempts after which the badge turns red.
pub const UNREACHABLE_AFTER: usize = 3;

/// What the receiver UI shows and has done.
#[derive(Clone, Debug)]
pub struct View {
    pub queue: Vec<Item>,
    pub badge: Badge,
    /// Successful opens after the first.
    pub reconnects: usize,
    /// Successful `GET /queue` loads, the initial one included.
    pub refreshes: usize,
    /// Events whose data was not an event this page knows.
    pub ignored: usize,
}

/// The receiver UI: loads the queue, follows `/events`, reconnects.
pub struct Receiver {
    view: watch::Receiver<View>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts the UI against `base` (the sender or a proxy in front of it).
    /// `reconnect_delay` is the page's 3 s wait, shorter in tests.
    pub fn start(base: impl Into<Base>, secret: &str, reconnect_delay: Duration) -> Receiver {
        let base = base.into();
        let (tx, view) = watch::channel(View {
            queue: Vec::new(),
            badge: Badge::Reconnecting,
            reconnects: 0,
            refreshes: 0,
            ignored: 0,
        });
        let task = tokio::spawn(run(base, secret.to_string(), reconnect_delay, tx));
        Receiver { view, task }
    }

    /// The receiver's queue model now.
    pub fn queue(&self) -> Vec<Item> {
        self.view.borrow().queue.clone()
    }

    /// The connection badge now.
    pub fn badge(&self) -> Badge {
        self.view.borrow().badge
    }

    /// Successful opens after the first.
    pub fn reconnects(&self) -> usize {
        self.view.borrow().reconnects
    }

    /// Successful `GET /queue` loads, the initial one included.
    pub fn refreshes(&self) -> usize {
        self.view.borrow().refreshes
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

async fn run(base: Base, secret: String, delay: Duration, view: watch::Sender<View>) {
    let query = format!("?secret={}", eventsource::encode_component(&secret));
    let queue_path = format!("/queue{query}");
    // The page says the UI loads the queue when it opens; assumed to be this.
    refresh(&base, &queue_path, &view).await;
    let es = EventSource::new(base.clone(), &format!("/events{query}"));
    let (mut opened, mut failures) = (0usize, 0usize);
    loop {
        let mut conn = es.connect();
        let mut refused = false;
        while let Some(update) = conn.next().await {
            match update {
                Update::Open => {
                    opened += 1;
                    failures = 0;
                    view.send_modify(|v| {
                        v.badge = Badge::Connected;
                        v.reconnects = opened - 1;
                    });
                    if opened > 1 {
                        // Catch what was queued while we were away.
                        refresh(&base, &queue_path, &view).await;
                    }
                }
                Update::Event(m) => view.send_modify(|v| apply(v, &m.data)),
                Update::Error(Failure::Status(s)) if eventsource::refuses(s) => refused = true,
                Update::Error(_) => failures += 1,
                Update::Closed | Update::Retry(_) | Update::Comment => {}
            }
        }
        if refused {
            view.send_modify(|v| v.badge = Badge::Disconnected);
            return;
        }
        view.send_modify(|v| {
            v.badge = if failures >= UNREACHABLE_AFTER {
                Badge::Disconnected
            } else {
                Badge::Reconnecting
            }
        });
        tokio::time::sleep(delay).await;
    }
}

async fn refresh(base: &Base, path: &str, view: &watch::Sender<View>) {
    let Ok((200, body)) = eventsource::fetch(base, "GET", path, &[], Bytes::new()).await else {
        return;
    };
    if let Ok(queue) = serde_json::from_slice::<Vec<Item>>(&body) {
        view.send_modify(|v| {
            v.queue = queue;
            v.refreshes += 1;
        });
    }
}

/// `JSON.parse(data)` and the page's three event types.
fn apply(v: &mut View, data: &str) {
    match serde_json::from_str::<Event>(data) {
        Ok(Event::NewItem { item }) => {
            // After a refresh the item may already be listed.
            v.queue.retain(|i| i.id != item.id);
            v.queue.push(item);
        }
        Ok(Event::ItemReceived { id }) => {
            if let Some(i) = v.queue.iter_mut().find(|i| i.id == id) {
                i.status = "Received".to_string();
            }
        }
        Ok(Event::ItemDeleted { id }) => v.queue.retain(|i| i.id != id),
        Err(_) => v.ignored += 1,
    }
}
