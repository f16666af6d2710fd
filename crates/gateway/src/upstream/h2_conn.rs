//! The h2 connector (`upstream.http_version = "http2"`): users' streams
//! multiplexed over h2 connections of their own — never the pool proxied
//! requests use — at most `upstream.h2_streams_per_connection` streams per
//! connection, opening another connection when every one is full. A backend
//! queues streams past its `SETTINGS_MAX_CONCURRENT_STREAMS` forever, so one
//! shared connection would starve every user past that limit. This module
//! never retries, never follows a redirect and never judges an answer other
//! than through [`super::connector`]'s checks.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{Stream, StreamExt};
use http::{HeaderValue, Request, Uri, header};
use http_body_util::BodyDataStream;

use super::connector::{
    ByteStream, ConnectError, ConnectRequest, Connector, check_content_type, check_status,
};
use crate::backend::{BackendClient, ClientConfig, ClientError, backend_client};
use crate::body::{self, BoxError};

/// One h2 connection's client and how many streams it carries.
struct Shard {
    client: BackendClient,
    streams: Arc<AtomicUsize>,
}

/// The h2 connector: `GET <backend><events_path>` with the user's cookie.
pub struct H2Connector {
    cfg: ClientConfig,
    url: Uri,
    response_timeout: Duration,
    per_connection: usize,
    shards: Mutex<Vec<Shard>>,
}

impl H2Connector {
    /// A connector for `url` (the full events URL); `cfg` is how each of its
    /// connections is made (`http2_only` is set here).
    pub fn new(
        cfg: &ClientConfig,
        url: Uri,
        response_timeout: Duration,
        per_connection: usize,
    ) -> Result<Self, ClientError> {
        let cfg = ClientConfig {
            http2_only: true,
            ..cfg.clone()
        };
        // Checked once here: every later shard is built the same way.
        let first = backend_client(&cfg)?;
        Ok(H2Connector {
            shards: Mutex::new(vec![Shard {
                client: first,
                streams: Arc::new(AtomicUsize::new(0)),
            }]),
            cfg,
            url,
            response_timeout,
            per_connection: per_connection.max(1),
        })
    }

    /// A connection with room for one more stream, the room taken.
    fn reserve(&self) -> Result<(BackendClient, Slot), ConnectError> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let free = shards
            .iter()
            .position(|s| s.streams.load(Ordering::Relaxed) < self.per_connection);
        let i = match free {
            Some(i) => i,
            None => {
                let client = backend_client(&self.cfg)
                    .map_err(|e| ConnectError::Transport(e.to_string()))?;
                shards.push(Shard {
                    client,
                    streams: Arc::new(AtomicUsize::new(0)),
                });
                shards.len() - 1
            }
        };
        let shard = &shards[i];
        shard.streams.fetch_add(1, Ordering::Relaxed);
        Ok((shard.client.clone(), Slot(shard.streams.clone())))
    }

    /// h2 connections opened so far.
    #[cfg(test)]
    fn connections(&self) -> usize {
        self.shards.lock().map_or(0, |s| s.len())
    }
}

/// A stream's place on its connection, given back when the stream ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The body stream, holding its slot for as long as it lives.
struct Held {
    inner: ByteStream,
    _slot: Slot,
}

impl Stream for Held {
    type Item = Result<Bytes, BoxError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Connector for H2Connector {
    fn connect(&self, req: ConnectRequest) -> BoxFuture<'static, Result<ByteStream, ConnectError>> {
        let reserved = self.reserve();
        let mut url = self.url.clone().into_parts();
        let wait = self.response_timeout;
        Box::pin(async move {
            let (client, slot) = reserved?;
            url.path_and_query = Some(
                req.credential
                    .path(&req.path)
                    .parse()
                    .map_err(|_| ConnectError::Transport("unusable stream path".into()))?,
            );
            let url = Uri::from_parts(url)
                .map_err(|_| ConnectError::Transport("unusable stream path".into()))?;
            let builder = req.credential.header_into(
                Request::get(url)
                    .header(header::ACCEPT, "text/event-stream")
                    .header(header::CACHE_CONTROL, "no-cache"),
            );
            let mut builder = builder;
            if let Some(id) = req.last_event_id.as_deref() {
                // An id the backend sent but HTTP cannot carry is dropped
                // rather than failing the reconnect; the backend then
                // answers with a resync, which is the honest outcome.
                if let Ok(v) = HeaderValue::from_str(id) {
                    builder = builder.header("last-event-id", v);
                }
            }
            let request = builder
                .body(body::empty())
                .map_err(|e| ConnectError::Transport(e.to_string()))?;
            let resp = tokio::time::timeout(wait, client.request(request))
                .await
                .map_err(|_| ConnectError::Timeout)?
                .map_err(|e| ConnectError::Transport(e.to_string()))?;
            check_status(resp.status())?;
            check_content_type(
                resp.headers()
                    .get(header::CONTENT_TYPE)
                    .map_or(&[][..], |v| v.as_bytes()),
            )?;
            let stream = BodyDataStream::new(resp.into_body())
                .map(|r| r.map_err(|e| Box::new(e) as BoxError));
            Ok(Box::pin(Held {
                inner: Box::pin(stream),
                _slot: slot,
            }) as ByteStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_connection_gets_a_sibling_and_slots_come_back() {
        let url: Uri = "http://127.0.0.1:9/e".parse().expect("uri");
        let c = H2Connector::new(&ClientConfig::default(), url, Duration::from_secs(1), 2)
            .expect("connector");
        let a = c.reserve().expect("a");
        let b = c.reserve().expect("b");
        assert_eq!(c.connections(), 1);
        let third = c.reserve().expect("c");
        assert_eq!(c.connections(), 2, "two streams fill a connection");
        drop(a);
        // The freed slot on the first connection is taken before a new one.
        let d = c.reserve().expect("d");
        assert_eq!(c.connections(), 2);
        drop((b, third, d));
    }
}
