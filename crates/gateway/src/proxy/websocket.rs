//! WebSocket pass-through on proxied paths: an HTTP/1.1 `GET` with
//! `Connection: upgrade` and `Upgrade: websocket` is sent to the backend with
//! its handshake headers on a dedicated HTTP/1.1 connection (the pooled
//! client may speak h2 and cannot hand a connection over); a `101` answer is
//! relayed and then the bytes of both upgraded connections are copied as
//! they are — frames, masks and close codes untouched — until either side
//! closes, the connection is idle for `proxy.websocket_idle_timeout`, or the
//! gateway shuts down. Any other answer is relayed as a normal response.
//!
//! Must never parse or rewrite a frame, never hold more than
//! `proxy.max_websockets` relays open, and never contact any host but the
//! configured backend. h2 extended CONNECT (RFC 8441) is not supported: an
//! h2 request never carries `Upgrade` and is proxied as any other.
//!
//! On shutdown both sockets are closed without a close frame of ssemux's own:
//! the relay does not track frame boundaries, and a close frame written into
//! the middle of a relayed frame would corrupt the stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderName};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{Progress, prepare_response_headers};
use crate::backend::BackendUrl;
use crate::body::{self, Body, BoxError};
use crate::metrics::{Metrics, UpgradeOutcome};

/// Handshake headers of the request kept past the hop-by-hop removal.
const REQUEST_HANDSHAKE: [HeaderName; 5] = [
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// Handshake headers of the backend's `101` kept past the hop-by-hop removal.
const RESPONSE_HANDSHAKE: [HeaderName; 4] = [
    header::UPGRADE,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// `Retry-After` seconds sent with the `503` over `proxy.max_websockets`.
const RETRY_AFTER_SECS: u32 = 5;

/// How long the other direction may go on once one side closed, and how long
/// closing a socket may take once the relay ended.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What [`super::Proxy::with_websockets`] needs to relay WebSocket upgrades.
pub struct WebsocketSetup {
    /// The TLS client for an `https://` backend (its ALPN is set to
    /// `http/1.1` here); ignored for `http://`.
    pub tls: Option<rustls::ClientConfig>,
    /// Limit for the TCP connect and the TLS handshake.
    pub connect_timeout: Duration,
    /// Most relays open at once (`proxy.max_websockets`).
    pub max: usize,
    /// `proxy.websocket_idle_timeout`.
    pub idle_timeout: Duration,
    /// Cancelled when the gateway shuts down: every relay ends.
    pub shutdown: CancellationToken,
    /// Where upgrades and open relays are counted.
    pub metrics: Metrics,
}

/// The relay's settings and state, shared by every upgrade.
pub(super) struct Websockets {
    host: String,
    port: u16,
    /// `Host` of the backend request.
    authority: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    metrics: Metrics,
}

/// Why the backend's handshake answer did not arrive.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl Websockets {
    /// The relay for `backend`; `None` when an `https://` backend has no
    /// TLS configuration or no name a certificate can carry.
    pub(super) fn new(backend: &BackendUrl, setup: WebsocketSetup) -> Option<Websockets> {
        let https = backend.is_https();
        let authority = &backend.authority;
        let (host, port) = crate::backend::socket_target(authority, https);
        let tls = match (https, setup.tls) {
            (false, _) => None,
            (true, None) => return None,
            // An upgrade needs HTTP/1.1; h2 would need extended CONNECT.
            (true, Some(cfg)) => Some(crate::backend::h1_tls(cfg, &host)?),
        };
        Some(Websockets {
            host,
            port,
            authority: HeaderValue::from_str(authority.as_str()).ok()?,
            tls,
            connect_timeout: setup.connect_timeout,
            permits: Arc::new(Semaphore::new(setup.max.min(Semaphore::MAX_PERMITS))),
            idle_timeout: setup.idle_timeout,
            shutdown: setup.shutdown,
            metrics: setup.metrics,
        })
    }

    /// Forward the handshake in `parts` (already prepared as any proxied
    /// request, see [`restore_request_handshake`]) and relay the answer; on
    /// `101`, start relaying bytes once the client's side (`on_client`) is
    /// upgraded too.
    pub(super) async fn relay(
        &self,
        parts: Parts,
        on_client: OnUpgrade,
        response_timeout: Duration,
    ) -> Response<Body> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.websocket_upgrade(UpgradeOutcome::Limited);
            let mut r = body::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many WebSocket connections",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            return r;
        };
        let resp = match tokio::time::timeout(response_timeout, self.handshake(parts)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                self.metrics.websocket_upgrade(UpgradeOutcome::Failed);
                tracing::warn!(error = %e, "backend WebSocket handshake failed");
                return match e {
                    DialError::Http(_) => body::text(StatusCode::BAD_GATEWAY, "bad gateway"),
                    _ => body::text(StatusCode::BAD_GATEWAY, "bad gateway: backend unreachable"),
                };
            }
            Err(_) => {
                self.metrics.websocket_upgrade(UpgradeOutcome::Failed);
                return body::text(StatusCode::GATEWAY_TIMEOUT, "gateway timeout");
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.metrics.websocket_upgrade(UpgradeOutcome::Declined);
            let (mut parts, incoming) = resp.into_parts();
            prepare_response_headers(&mut parts.headers);
            parts.extensions = http::Extensions::new();
            return Response::from_parts(
                parts,
                incoming.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
            );
        }
        if !has_token(resp.headers(), &header::UPGRADE, "websocket") {
            self.metrics.websocket_upgrade(UpgradeOutcome::Failed);
            tracing::warn!("backend answered 101 without Upgrade: websocket");
            return body::text(StatusCode::BAD_GATEWAY, "bad gateway");
        }
        let mut resp = resp;
        let on_backend = hyper::upgrade::on(&mut resp);
        let mut out = Response::new(body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let mut headers = std::mem::take(resp.headers_mut());
        let kept = saved(&headers, &RESPONSE_HANDSHAKE);
        prepare_response_headers(&mut headers);
        restore(&mut headers, kept);
        *out.headers_mut() = headers;

        self.metrics.websocket_upgrade(UpgradeOutcome::Upgraded);
        let open = OpenRelay::new(self.metrics.clone());
        let (idle, shutdown) = (self.idle_timeout, self.shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let both = async { tokio::try_join!(on_client, on_backend) };
            let upgraded = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(response_timeout, both) => r,
            };
            match upgraded {
                Ok(Ok((client, backend))) => {
                    pump(TokioIo::new(client), TokioIo::new(backend), idle, &shutdown).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
                Err(_) => tracing::debug!("WebSocket upgrade did not complete in time"),
            }
        });
        out
    }

    /// Open a connection of its own to the backend, send the handshake and
    /// wait for the answer's head.
    async fn handshake(&self, parts: Parts) -> Result<Response<hyper::body::Incoming>, DialError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| DialError::ConnectTimeout)?
        .map_err(DialError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let req = origin_form(parts, &self.authority);
        match &self.tls {
            None => send(TokioIo::new(tcp), req).await,
            Some((tls, name)) => {
                let stream =
                    tokio::time::timeout(self.connect_timeout, tls.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| DialError::ConnectTimeout)?
                        .map_err(DialError::Connect)?;
                send(TokioIo::new(stream), req).await
            }
        }
    }
}

/// One HTTP/1.1 request on `io`, the connection driven with upgrades on in a
/// task of its own (it ends when the response is done or handed over).
async fn send<I>(io: I, req: Request<Body>) -> Result<Response<hyper::body::Incoming>, DialError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend WebSocket connection ended with error");
        }
    });
    Ok(sender.send_request(req).await?)
}

/// The prepared request as HTTP/1.1 writes it on its own connection: the
/// origin-form target, `Host` from the backend's authority, no body.
fn origin_form(mut parts: Parts, authority: &HeaderValue) -> Request<Body> {
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    if let Ok(uri) = pq.parse() {
        parts.uri = uri;
    }
    parts.version = Version::HTTP_11;
    parts.headers.insert(header::HOST, authority.clone());
    parts.headers.remove(header::CONTENT_LENGTH);
    Request::from_parts(parts, body::empty())
}

/// Whether a request is a WebSocket handshake this module relays: HTTP/1.1,
/// `GET`, `Connection` naming `upgrade`, `Upgrade` naming `websocket` (both
/// case-insensitive), and no body.
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && has_token(h, &header::CONNECTION, "upgrade")
        && has_token(h, &header::UPGRADE, "websocket")
        && !h.contains_key(header::TRANSFER_ENCODING)
        && h.get_all(header::CONTENT_LENGTH).iter().all(|v| v == "0")
}

/// Whether a comma-separated header names `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The values of `names` in `headers`, to put back after the hop-by-hop
/// removal.
pub(super) fn saved(headers: &HeaderMap, names: &[HeaderName]) -> Vec<(HeaderName, HeaderValue)> {
    names
        .iter()
        .flat_map(|n| headers.get_all(n).iter().map(|v| (n.clone(), v.clone())))
        .collect()
}

/// Put the handshake headers back, with `Connection: upgrade`.
pub(super) fn restore(headers: &mut HeaderMap, kept: Vec<(HeaderName, HeaderValue)>) {
    for (name, _) in &kept {
        headers.remove(name);
    }
    for (name, value) in kept {
        headers.append(name, value);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// The request handshake headers of `headers`, to keep past
/// [`super::prepare_request`].
pub(super) fn request_handshake(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    saved(headers, &REQUEST_HANDSHAKE)
}

/// Counts one open relay in the gauge for as long as it lives.
struct OpenRelay(Metrics);

impl OpenRelay {
    fn new(metrics: Metrics) -> Self {
        metrics.websocket_opened();
        OpenRelay(metrics)
    }
}

impl Drop for OpenRelay {
    fn drop(&mut self) {
        self.0.websocket_closed();
    }
}

/// Copy bytes both ways until either side closes (the other direction then
/// gets [`CLOSE_GRACE`] to finish, e.g. the answering close frame), a
/// direction fails, nothing moved for `idle`, or `shutdown`; then close both
/// sockets.
async fn pump<C, S>(client: C, backend: S, idle: Duration, shutdown: &CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Progress::new());
    let client = Active {
        io: client,
        seen: activity.clone(),
    };
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut backend_r, mut backend_w) = tokio::io::split(backend);
    let why = {
        let up = async {
            let r = tokio::io::copy(&mut client_r, &mut backend_w).await;
            let _ = backend_w.shutdown().await;
            r
        };
        let down = async {
            let r = tokio::io::copy(&mut backend_r, &mut client_w).await;
            let _ = client_w.shutdown().await;
            r
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut idle_at = Instant::now() + idle;
        let mut grace: Option<Instant> = None;
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    if r.is_err() {
                        break "error";
                    }
                    up_done = true;
                }
                r = &mut down, if !down_done => {
                    if r.is_err() {
                        break "error";
                    }
                    down_done = true;
                }
                () = shutdown.cancelled() => break "shutdown",
                () = tokio::time::sleep_until(grace.unwrap_or(idle_at)), if grace.is_some() => {
                    break "closed";
                }
                () = tokio::time::sleep_until(idle_at) => {
                    let next = activity.last() + idle;
                    if next <= Instant::now() {
                        break "idle";
                    }
                    idle_at = next;
                }
            }
            if up_done && down_done {
                break "closed";
            }
            if grace.is_none() && (up_done || down_done) {
                grace = Some(Instant::now() + CLOSE_GRACE);
            }
        }
    };
    tracing::debug!(end = why, "WebSocket relay ended");
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = tokio::join!(client_w.shutdown(), backend_w.shutdown());
    })
    .await;
}

/// The client's side of a relay, recording every byte that moves either way.
struct Active<T> {
    io: T,
    seen: Arc<Progress>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.seen.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.seen.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&'static str, &'static str)]) -> Request<()> {
        let mut b = Request::get("/ws");
        for (n, v) in pairs {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn upgrade_detection_is_case_insensitive_and_needs_both_tokens() {
        assert!(is_upgrade(&req(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket")
        ])));
        assert!(!is_upgrade(&req(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&req(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(!is_upgrade(&req(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("content-length", "5")
        ])));
        let mut post = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *post.method_mut() = Method::POST;
        assert!(!is_upgrade(&post));
        let mut h2 = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *h2.version_mut() = Version::HTTP_2;
        assert!(!is_upgrade(&h2));
    }

    #[test]
    fn handshake_headers_survive_hop_by_hop_removal() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let kept = request_handshake(&h);
        super::super::strip_hop_by_hop(&mut h);
        restore(&mut h, kept);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::SEC_WEBSOCKET_KEY], "k");
        assert_eq!(h[header::SEC_WEBSOCKET_PROTOCOL], "chat");
        assert!(!h.contains_key("x-hop"));
        assert!(!h.contains_key("keep-alive"));
    }
}
