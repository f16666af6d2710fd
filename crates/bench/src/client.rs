//! Client: the simulated browser tabs. Each tab is one HTTP/1.1 connection
//! (hyper client) from its own loopback source address, reading an SSE stream
//! and timing every trigger whose data is an emit timestamp — or, in the
//! pass-through fan-out, every event whose data is its user's payload byte
//! for byte (anything else of ours is counted as a mismatch).
//!
//! Owns tab connections and SSE line splitting. It must never panic on what a
//! server sends, never loop without a bound, and never hold a lock while
//! reading: counters live in the shared [`Recorder`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::pass;
use crate::stats::{MIN_STAMP_US, Recorder, now_us};

/// Where and how one tab connects.
#[derive(Clone, Debug)]
pub struct TabSpec {
    /// Server address.
    pub addr: SocketAddr,
    /// Request path (with query).
    pub path: String,
    /// `Cookie` header, if the system needs one.
    pub cookie: Option<String>,
    /// Which of the 127.0.0.0/8 source addresses to bind.
    pub source: Ipv4Addr,
    /// Per-user open-tab bookkeeping (churn scenario), if wanted.
    pub user_gauge: Option<Arc<UserGauge>>,
    /// Pass-through fan-out: the user whose [`pass`] payloads this tab must
    /// receive byte for byte (`None`: timestamps as trigger data).
    pub pass_user: Option<usize>,
    /// Events whose data is exactly this are counted as sentinels (the
    /// bursty chat step's end-of-burst marker), nothing else.
    pub sentinel: Option<Arc<str>>,
    /// Held from connect to response head on the tab's *first* open, so a
    /// population opens with a bounded number of opens in flight (the same
    /// for every system; see `scenarios::OPEN_IN_FLIGHT`).
    pub open_gate: Option<Arc<Semaphore>>,
}

/// One user's open tabs, as the client sees them.
#[derive(Default, Debug)]
pub struct UserGauge {
    /// Streams of this user open now.
    pub open: AtomicUsize,
    /// When the user's last open stream closed (µs since the epoch).
    pub last_close_us: AtomicU64,
}

/// The source address for tab number `i`: spread over 127.0.0.2–127.0.0.250
/// and beyond so no single source runs out of ephemeral ports.
pub fn source_ip(i: usize) -> Ipv4Addr {
    let n = (i % 60_000) as u32;
    Ipv4Addr::new(127, 1 + (n / 240 % 250) as u8, 0, 2 + (n % 240) as u8)
}

/// Longest SSE line a tab accepts before giving up on the stream.
const MAX_LINE: usize = 64 * 1024;
/// Reconnects one tab attempts before it stays down (bounded loop).
const MAX_RECONNECTS: u32 = 50;
/// A browser's default reconnect delay when the stream sent no `retry:`.
const DEFAULT_RETRY_MS: u64 = 3000;

/// What a tab carries across its reconnects, as a browser's EventSource does
/// (`Last-Event-ID`, `retry:`), plus the marks it has already counted.
struct TabState {
    last_id: Option<String>,
    retry_ms: u64,
    /// The [`Recorder::resync_mark`] this tab already counted a resync for.
    resync_mark: u64,
    /// The [`Recorder::arrival_mark`] this tab already counted an arrival for.
    arrival_mark: u64,
}

/// One tab: open the stream, read it until `stop`, reconnecting like a
/// browser's EventSource (after `retry:` ms, with `Last-Event-ID`).
pub async fn run_tab(spec: TabSpec, rec: Arc<Recorder>, stop: CancellationToken) {
    let mut st = TabState {
        last_id: None,
        retry_ms: DEFAULT_RETRY_MS,
        resync_mark: rec.resync_mark.load(Ordering::SeqCst),
        arrival_mark: 0,
    };
    let mut gate = spec.open_gate.clone();
    for _ in 0..=MAX_RECONNECTS {
        if stop.is_cancelled() {
            return;
        }
        let permit = match gate.take() {
            Some(g) => tokio::select! {
                _ = stop.cancelled() => return,
                p = g.acquire_owned() => p.ok(),
            },
            None => None,
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = one_stream(&spec, &rec, &mut st, permit) => r,
        };
        match outcome {
            Ok(()) => {
                rec.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => rec.fail(&e.to_string()),
        }
        // Browsers wait `retry` before reconnecting; add a little jitter so
        // thousands of tabs do not land in the same millisecond.
        let wait = st.retry_ms + fastrand::u64(0..=st.retry_ms / 10 + 1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
}

/// Decrements the open-tab gauges when a stream ends, however it ends.
struct OpenGuard<'a>(&'a Recorder, Option<&'a UserGauge>);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.1 {
            g.last_close_us.store(now_us(), Ordering::SeqCst);
            g.open.fetch_sub(1, Ordering::SeqCst);
        }
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One stream of a tab, until it ends. `permit` (first open only) is given
/// back once the response head is in, whatever it says.
async fn one_stream(
    spec: &TabSpec,
    rec: &Recorder,
    st: &mut TabState,
    permit: Option<OwnedSemaphorePermit>,
) -> anyhow::Result<()> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(spec.source, 0)))?;
    let stream = tokio::time::timeout(Duration::from_secs(10), sock.connect(spec.addr)).await??;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::Builder::new()
        // Small read buffer: 20k idle tabs must not cost the bench gigabytes.
        .read_buf_exact_size(Some(4096))
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::get(spec.path.as_str())
        .header(http::header::HOST, spec.addr.to_string())
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache");
    if let Some(c) = &spec.cookie {
        req = req.header(http::header::COOKIE, c.as_str());
    }
    if let Some(id) = st.last_id.as_deref() {
        req = req.header("last-event-id", id);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await??;
    drop(permit);
    if resp.status() != http::StatusCode::OK {
        anyhow::bail!("status {}", resp.status());
    }
    rec.open.fetch_add(1, Ordering::SeqCst);
    rec.opened.fetch_add(1, Ordering::Relaxed);
    if let Some(g) = &spec.user_gauge {
        g.open.fetch_add(1, Ordering::SeqCst);
    }
    let _guard = OpenGuard(rec, spec.user_gauge.as_deref());
    let mut body = resp.into_body();
    let mut parser = SseReader::default();
    let mut scratch = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = now_us();
        rec.wire_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        rec.chunks.fetch_add(1, Ordering::Relaxed);
        parser.feed(&data, |ev| match ev {
            Item::Id(id) => st.last_id = Some(id),
            Item::Retry(ms) => st.retry_ms = ms,
            Item::Event { name, data } => on_event(spec, rec, st, now, &name, &data, &mut scratch),
        })?;
    }
    Ok(())
}

/// Count (and time) one dispatched event.
fn on_event(
    spec: &TabSpec,
    rec: &Recorder,
    st: &mut TabState,
    now: u64,
    name: &str,
    data: &[u8],
    scratch: &mut Vec<u8>,
) {
    rec.events.fetch_add(1, Ordering::Relaxed);
    if spec
        .sentinel
        .as_deref()
        .is_some_and(|s| s.as_bytes() == data)
    {
        rec.sentinels.fetch_add(1, Ordering::SeqCst);
        return;
    }
    match name {
        "resync" => {
            rec.resyncs.fetch_add(1, Ordering::Relaxed);
            let mark = rec.resync_mark.load(Ordering::SeqCst);
            if mark > st.resync_mark {
                st.resync_mark = mark;
                rec.resynced_tabs.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        "upstream-down" => {
            rec.upstream_down.fetch_add(1, Ordering::Relaxed);
            return;
        }
        "upstream-up" => {
            rec.upstream_up.fetch_add(1, Ordering::Relaxed);
            return;
        }
        _ => {}
    }
    if let Some(user) = spec.pass_user {
        if name != pass::EVENT && !pass::looks_like(data) {
            rec.other.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let exact = pass::check(data, user, scratch).filter(|_| name == pass::EVENT);
        match exact {
            Some(ts) => {
                rec.delivered.fetch_add(1, Ordering::Relaxed);
                rec.latency.record(now.saturating_sub(ts));
            }
            None => {
                rec.mismatched.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let stamp = std::str::from_utf8(data)
        .ok()
        // `<ts>` or `<ts>.<n>` (ssemux's events are made distinct).
        .and_then(|s| s.trim().split('.').next()?.parse::<u64>().ok())
        .filter(|&ts| ts >= MIN_STAMP_US);
    let Some(ts) = stamp else {
        rec.other.fetch_add(1, Ordering::Relaxed);
        return;
    };
    rec.delivered.fetch_add(1, Ordering::Relaxed);
    rec.latency.record(now.saturating_sub(ts));
    let mark = rec.arrival_mark.load(Ordering::SeqCst);
    if mark > 0 && ts >= mark && st.arrival_mark < mark {
        st.arrival_mark = mark;
        let back = rec.back_at_us.load(Ordering::SeqCst);
        rec.recovery.record(now.saturating_sub(back));
        rec.arrived_tabs.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the SSE reader reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// An `id:` field.
    Id(String),
    /// A `retry:` field.
    Retry(u64),
    /// A dispatched event (name defaults to `message`).
    Event {
        /// `event:` name.
        name: String,
        /// `data:` lines joined by `\n`.
        data: Vec<u8>,
    },
}

/// Incremental SSE reader: just enough of the format to time triggers.
#[derive(Default)]
pub struct SseReader {
    buf: BytesMut,
    name: String,
    data: Vec<u8>,
    has_data: bool,
}

impl SseReader {
    /// Feed a chunk; `on` gets each field/event as it completes. Fails only
    /// on a line longer than [`MAX_LINE`].
    pub fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Item)) -> anyhow::Result<()> {
        self.buf.extend_from_slice(chunk);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line = self.buf.split_to(nl + 1);
            let mut line = &line[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line(line, &mut on);
        }
        if self.buf.len() > MAX_LINE {
            anyhow::bail!("SSE line over {MAX_LINE} bytes");
        }
        if self.buf.is_empty() && self.buf.capacity() > 8192 {
            // Keep idle tabs small after a burst.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], on: &mut impl FnMut(Item)) {
        if line.is_empty() {
            if self.has_data {
                let name = if self.name.is_empty() {
                    "message".to_string()
                } else {
                    std::mem::take(&mut self.name)
                };
                on(Item::Event {
                    name,
                    data: std::mem::take(&mut self.data),
                });
            }
            self.name.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, mut value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &line[line.len()..]),
        };
        if value.first() == Some(&b' ') {
            value.advance(1);
        }
        match field {
            b"event" => self.name = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" => on(Item::Id(String::from_utf8_lossy(value).into_owned())),
            b"retry" => {
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()) {
                    on(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<Item> {
        let mut r = SseReader::default();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, |i| out.push(i)).expect("feed");
        }
        out
    }

    #[test]
    fn reads_split_events_and_fields() {
        let items = all(&[
            b"retry: 2500\r\n: keepalive\n\nid: e-1\nevent: thread-upd",
            b"ated\ndata: 123\n\nevent: resync\ndata: 1\n\n",
        ]);
        assert_eq!(
            items,
            vec![
                Item::Retry(2500),
                Item::Id("e-1".into()),
                Item::Event {
                    name: "thread-updated".into(),
                    data: b"123".to_vec()
                },
                Item::Event {
                    name: "resync".into(),
                    data: b"1".to_vec()
                },
            ]
        );
    }

    #[test]
    fn refuses_endless_line() {
        let mut r = SseReader::default();
        let big = vec![b'x'; MAX_LINE + 1];
        assert!(r.feed(&big, |_| {}).is_err());
    }

    #[test]
    fn sources_stay_in_loopback() {
        for i in [0, 1, 239, 240, 59_999, 60_000, 1_000_000] {
            let ip = source_ip(i);
            assert!(ip.is_loopback() && ip.octets()[3] >= 2, "{ip}");
        }
    }
}
