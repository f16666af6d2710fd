//! Tap: a counting HTTP/1.1 relay between ssemux and the mock backend, for
//! the outage scenario. The mock counts the streams it opened, not the
//! requests it refused; the tap sees every events request at the backend's
//! door — refused or not — with its time and the status it got.
//!
//! Owns its listener and its counters. It forwards requests and responses
//! unchanged (bodies streamed), never answers anything itself except a 502
//! when the mock cannot be reached, and never keeps more than
//! [`MAX_STAMPS`] timestamps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::stats::now_us;

/// Attempt timestamps kept (one per events request); more are counted, not
/// stamped.
const MAX_STAMPS: usize = 2_000_000;

/// What the tap has seen of events requests.
#[derive(Default)]
pub struct Counts {
    /// Events requests that reached the backend's door.
    pub attempts: AtomicU64,
    /// Of those, answered 2xx.
    pub ok: AtomicU64,
    /// Of those, answered anything else (or not at all).
    pub refused: AtomicU64,
    /// When each attempt arrived (µs since the epoch), in arrival order.
    stamps: Mutex<Vec<u64>>,
}

impl Counts {
    fn stamp(&self, at: u64) {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let mut s = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        if s.len() < MAX_STAMPS {
            s.push(at);
        }
    }

    /// Attempts that arrived in `[from, to)` (µs since the epoch).
    pub fn attempts_between(&self, from: u64, to: u64) -> u64 {
        let s = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        s.iter().filter(|&&t| t >= from && t < to).count() as u64
    }

    /// Most attempts in any `window_us` window starting at an attempt in
    /// `[from, to)`, per second.
    pub fn peak_per_s(&self, from: u64, to: u64, window_us: u64) -> f64 {
        let mut s: Vec<u64> = {
            let g = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
            g.iter().copied().filter(|&t| t >= from && t < to).collect()
        };
        s.sort_unstable();
        let mut best = 0usize;
        let mut j = 0;
        for i in 0..s.len() {
            if j < i {
                j = i;
            }
            while j < s.len() && s[j] < s[i] + window_us {
                j += 1;
            }
            best = best.max(j - i);
        }
        best as f64 * 1e6 / window_us.max(1) as f64
    }
}

/// A running tap; stops when dropped.
pub struct Tap {
    /// Its counters.
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Relay = Client<HttpConnector, Incoming>;

impl Tap {
    /// Listen on `listen` and relay to `backend`; requests for
    /// `events_path` are counted.
    pub async fn start(
        listen: SocketAddr,
        backend: SocketAddr,
        events_path: &'static str,
    ) -> anyhow::Result<Tap> {
        let listener = TcpListener::bind(listen).await?;
        let counts = Arc::new(Counts::default());
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let relay: Relay = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        let c2 = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    // Out of fds: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let (relay, counts) = (relay.clone(), c2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        forward(relay.clone(), counts.clone(), backend, events_path, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Ok(Tap { counts, task })
    }
}

type TapBody = Either<Incoming, Full<Bytes>>;

async fn forward(
    relay: Relay,
    counts: Arc<Counts>,
    backend: SocketAddr,
    events_path: &'static str,
    req: http::Request<Incoming>,
) -> Result<http::Response<TapBody>, std::convert::Infallible> {
    let counted = req.method() == http::Method::GET && req.uri().path() == events_path;
    if counted {
        counts.stamp(now_us());
    }
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = format!("http://{backend}{pq}").parse::<http::Uri>();
    let answer = match uri {
        Ok(uri) => {
            parts.uri = uri;
            relay
                .request(http::Request::from_parts(parts, body))
                .await
                .ok()
        }
        Err(_) => None,
    };
    let Some(resp) = answer else {
        if counted {
            counts.refused.fetch_add(1, Ordering::SeqCst);
        }
        let mut r = http::Response::new(Either::Right(Full::new(Bytes::from_static(
            b"tap: backend unreachable\n",
        ))));
        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
        return Ok(r);
    };
    if counted {
        if resp.status().is_success() {
            counts.ok.fetch_add(1, Ordering::SeqCst);
        } else {
            counts.refused.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(resp.map(Either::Left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_the_busiest_window() {
        let c = Counts::default();
        for t in [0, 100, 200, 2_000_000, 2_000_050, 2_000_100, 2_000_150] {
            c.stamp(t);
        }
        // Four attempts within 1 s from 2_000_000; the three before are
        // 2 s away.
        assert_eq!(c.peak_per_s(0, u64::MAX, 1_000_000), 4.0);
        assert_eq!(c.attempts_between(0, 2_000_000), 3);
        assert_eq!(c.peak_per_s(0, 2_000_000, 1_000_000), 3.0);
        // 100 ms windows: four in one → 40/s.
        assert_eq!(c.peak_per_s(0, u64::MAX, 100_000), 40.0);
        assert_eq!(c.peak_per_s(3_000_000, u64::MAX, 100_000), 0.0);
    }
}
