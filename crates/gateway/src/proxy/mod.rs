//! Reverse proxy: owns forwarding of every request ssemux does not serve
//! itself to the one configured backend — request-target and framing checks,
//! hop-by-hop header removal in both directions, `X-Forwarded-*`, the request
//! body limit and the wait for the backend's response head. It exists so an
//! application can put ssemux in front of its whole origin: every route that
//! is not the events stream must behave as if ssemux were not there.
//!
//! Must never buffer a body (both directions stream frame by frame, so an SSE
//! response on any path passes through as it is produced), never contact any
//! host but the configured backend whatever the request says, and never panic
//! on anything a client or the backend sends.
//!
//! WebSocket (HTTP/1.1 `Upgrade: websocket`) is passed through by
//! [`websocket`] when the proxy is built [`Proxy::with_websockets`]: the
//! handshake headers reach the backend, its `101` reaches the client, then
//! bytes are relayed as they are. h2 extended CONNECT (RFC 8441) is not
//! supported. Any other `Upgrade` (and every upgrade without
//! `with_websockets`) is removed as a hop-by-hop header and the request
//! forwarded as an ordinary one (RFC 9110 §7.8 lets a server ignore
//! `Upgrade`); a `101` from the backend to such a request becomes a `502`.

mod websocket;

pub use websocket::WebsocketSetup;

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::backend::{BackendClient, BackendUrl};
use crate::body::{self, Body, BoxError};
use crate::config::{ProxyConfig, TrustedProxies};
use crate::cookie::cookie_header;

/// The client's request body broke while it was forwarded (a malformed
/// chunk, a cut connection): the client's fault, answered `400`, not a
/// backend failure. Found again in the client's error chain.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
struct ClientBodyError(BoxError);

/// A request body that streamed past [`ProxyConfig::max_request_body`]. Found
/// again in the client's error chain to answer `413` instead of `502`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured limit.
    pub limit: u64,
}

/// The reverse proxy. Cheap to clone; clones share the client and settings.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    /// Set by [`Proxy::with_websockets`].
    websockets: Option<Arc<websocket::Websockets>>,
}

struct Inner {
    target: BackendUrl,
    trusted: TrustedProxies,
    client: BackendClient,
    max_request_body: u64,
    response_timeout: Duration,
}

/// The backend URI for a request target. Only the path and query of the
/// client's target are used, so the authority is always the backend's.
fn backend_uri(target: &BackendUrl, client_target: &Uri) -> Result<Uri, Reject> {
    let pq = client_target
        .path_and_query()
        .map_or("/", PathAndQuery::as_str);
    let joined = if pq.starts_with('/') {
        target.join(pq)
    } else {
        target.join(&format!("/{pq}"))
    };
    joined.map_err(|_| Reject::Target)
}

impl Proxy {
    /// A proxy to `backend` through `client`, limited by `cfg` (`[proxy]`);
    /// forwarding headers are kept only from `trusted` peers.
    pub fn new(
        backend: BackendUrl,
        cfg: &ProxyConfig,
        trusted: &TrustedProxies,
        client: BackendClient,
    ) -> Self {
        Proxy {
            inner: Arc::new(Inner {
                target: backend,
                trusted: trusted.clone(),
                client,
                max_request_body: cfg.max_request_body,
                response_timeout: cfg.response_timeout,
            }),
            websockets: None,
        }
    }

    /// Relay WebSocket upgrades on proxied paths as `setup` says. `None`
    /// when an `https://` backend has no TLS configuration in `setup` or no
    /// host name a certificate can carry.
    pub fn with_websockets(mut self, setup: WebsocketSetup) -> Option<Self> {
        let ws = websocket::Websockets::new(&self.inner.target, setup)?;
        self.websockets = Some(Arc::new(ws));
        Some(self)
    }

    /// Forward one request to the backend and return its response, or a short
    /// `text/plain` error of ssemux's own (400, 405, 413, 502, 504; 503 for a
    /// WebSocket upgrade over `proxy.max_websockets`).
    ///
    /// `client_addr` is the TCP peer, `scheme` is `"http"` or `"https"` as the
    /// client used. The body may be hyper's `Incoming` or any other streaming
    /// body; it is never collected.
    pub async fn forward<B>(
        &self,
        mut req: Request<B>,
        client_addr: SocketAddr,
        scheme: &str,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &*self.inner;
        let target = &inner.target;
        let upgrade = match &self.websockets {
            Some(ws) if websocket::is_upgrade(&req) => Some((
                ws.clone(),
                hyper::upgrade::on(&mut req),
                websocket::request_handshake(req.headers()),
            )),
            _ => None,
        };
        let (mut parts, incoming) = req.into_parts();
        if let Err(reject) = prepare_request(
            &mut parts,
            target,
            &inner.trusted,
            client_addr,
            scheme,
            inner.max_request_body,
        ) {
            // Path only: a query string may carry tokens, which must never be logged.
            tracing::debug!(reason = %reject, method = %parts.method, path = %parts.uri.path(), "request refused");
            return reject.response();
        }
        if let Some((ws, on_client, kept)) = upgrade {
            websocket::restore(&mut parts.headers, kept);
            return ws.relay(parts, on_client, inner.response_timeout).await;
        }

        let progress = Arc::new(Progress::new());
        let limited = LimitedBody {
            inner: incoming,
            remaining: inner.max_request_body,
            limit: inner.max_request_body,
            progress: progress.clone(),
            done: false,
        };
        let req = Request::from_parts(parts, limited.boxed_unsync());

        let resp = match self.response_head(req, &progress).await {
            Ok(r) => r,
            Err(f) => return f.response(),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            tracing::warn!("backend answered 101 to a request sent without Upgrade");
            return body::text(StatusCode::BAD_GATEWAY, "bad gateway");
        }
        let (mut parts, incoming) = resp.into_parts();
        prepare_response_headers(&mut parts.headers);
        // Backend extensions (connection info, reason phrase) stay on this hop.
        parts.extensions = http::Extensions::new();
        // hyper's h1 server only writes 1.0/1.1 and downgrades for 1.0 peers.
        parts.version = Version::HTTP_11;
        Response::from_parts(
            parts,
            incoming.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
        )
    }

    /// Send and wait for the response head, allowing `response_timeout` of
    /// silence after the last request body progress.
    async fn response_head(
        &self,
        req: Request<Body>,
        progress: &Progress,
    ) -> Result<Response<hyper::body::Incoming>, Failure> {
        let timeout = self.inner.response_timeout;
        let fut = self.inner.client.request(req);
        tokio::pin!(fut);
        let mut deadline = Instant::now() + timeout;
        loop {
            tokio::select! {
                res = &mut fut => return res.map_err(|e| Failure::classify(&e)),
                () = tokio::time::sleep_until(deadline) => {
                    let next = progress.last() + timeout;
                    if next <= Instant::now() {
                        // Dropping `fut` aborts the request and its connection.
                        return Err(Failure::Timeout);
                    }
                    deadline = next;
                }
            }
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus the obsolete `Proxy-Connection` and `Keep-Alive`.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Why a request is answered by the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Reject {
    #[error("CONNECT is not supported")]
    Connect,
    #[error("absolute-form target for another host")]
    ForeignTarget,
    #[error("unsupported request target")]
    Target,
    #[error("missing or repeated Host header")]
    Host,
    #[error("{0}")]
    Framing(&'static str),
    #[error("declared body too large")]
    TooLarge,
}

impl Reject {
    fn response(self) -> Response<Body> {
        match self {
            Reject::Connect => {
                let mut r = body::text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT not allowed");
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
                r
            }
            Reject::TooLarge => body::text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            other => body::text(StatusCode::BAD_REQUEST, &format!("bad request: {other}")),
        }
    }
}

/// Why no backend response head arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Unreachable,
    Backend,
    TooLarge,
    Timeout,
    ClientBody,
}

impl Failure {
    fn classify(err: &hyper_util::client::legacy::Error) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = source {
            if e.is::<BodyTooLarge>() {
                return Failure::TooLarge;
            }
            if e.is::<ClientBodyError>() {
                tracing::debug!(error = %e, "client request body broke");
                return Failure::ClientBody;
            }
            source = e.source();
        }
        let failure = if err.is_connect() {
            Failure::Unreachable
        } else {
            Failure::Backend
        };
        // The causes as one line of text, not the client's `Debug` dump.
        let mut why = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            why.push_str(": ");
            why.push_str(&c.to_string());
            cause = c.source();
        }
        tracing::warn!(error = %why, "backend request failed");
        failure
    }

    fn response(self) -> Response<Body> {
        match self {
            Failure::Unreachable => {
                body::text(StatusCode::BAD_GATEWAY, "bad gateway: backend unreachable")
            }
            Failure::Backend => body::text(StatusCode::BAD_GATEWAY, "bad gateway"),
            Failure::ClientBody => body::text(StatusCode::BAD_REQUEST, "malformed request body"),
            Failure::TooLarge => {
                body::text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            Failure::Timeout => body::text(StatusCode::GATEWAY_TIMEOUT, "gateway timeout"),
        }
    }
}

/// Check a request and rewrite its head for the backend. Pure, so every rule
/// is unit-testable without sockets.
fn prepare_request(
    parts: &mut Parts,
    target: &BackendUrl,
    trusted: &TrustedProxies,
    client_addr: SocketAddr,
    scheme: &str,
    max_body: u64,
) -> Result<(), Reject> {
    if parts.method == Method::CONNECT {
        return Err(Reject::Connect);
    }
    let is_h1 = matches!(
        parts.version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() || (parts.version == Version::HTTP_11 && host.is_none()) {
        return Err(Reject::Host);
    }
    // Over h2/h3 every request carries :authority in its URI; only an h1
    // request line can be absolute-form.
    if is_h1 && (parts.uri.scheme().is_some() || parts.uri.authority().is_some()) {
        let same = host
            .as_ref()
            .is_some_and(|h| same_authority(&parts.uri, h, scheme));
        if !same {
            return Err(Reject::ForeignTarget);
        }
    }
    if parts.uri.path() == "*" {
        return Err(Reject::Target);
    }

    let declared = check_framing(&parts.headers, parts.version)?;
    if declared.is_some_and(|n| n > max_body) {
        return Err(Reject::TooLarge);
    }

    let original_host = if is_h1 {
        host
    } else {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or(host)
    };

    parts.uri = backend_uri(target, &parts.uri)?;
    // A fresh hop: hyper's client picks h1 or h2 by ALPN and frames the body.
    parts.version = Version::HTTP_11;
    // Server-side extensions (upgrade handles, h2 :protocol) stay on this hop.
    parts.extensions = http::Extensions::new();

    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    // One field, as authenticated: a backend that reads only the first of
    // several `Cookie` fields would see another session than ssemux did.
    if let Some(joined) = cookie_header(headers).and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::COOKIE, joined);
    }
    if let Some(n) = declared {
        // Collapses repeated identical values into one.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if !trusted.contains(client_addr.ip()) {
        // The client's own claims about where it comes from are dropped:
        // the backend sees the address ssemux saw.
        headers.remove(X_FORWARDED_FOR);
        headers.remove(header::FORWARDED);
        headers.remove(X_REAL_IP);
    }
    append_forwarded_for(headers, client_addr);
    match HeaderValue::from_str(scheme) {
        Ok(v) => {
            headers.insert(X_FORWARDED_PROTO, v);
        }
        Err(_) => {
            headers.remove(X_FORWARDED_PROTO);
        }
    }
    match original_host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    // The authority travels in the URI only: the client writes `Host` from
    // it on an HTTP/1.1 connection and `:authority` on h2. A `Host` header
    // here as well would reach an h2 backend twice (nginx: "duplicate host
    // header", 400).
    headers.remove(header::HOST);
    Ok(())
}

/// Reject ambiguous message framing (request smuggling, RFC 9112 §6.3): both
/// `Content-Length` and `Transfer-Encoding`, differing or malformed
/// `Content-Length` values, or a transfer coding that does not end in
/// `chunked`. hyper's h1 server already refuses most of these and normalises
/// CL+TE before we see it; this is the proxy's own guarantee regardless of
/// which server or version hands it the request. Returns the declared length.
fn check_framing(headers: &HeaderMap, version: Version) -> Result<Option<u64>, Reject> {
    let mut declared: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let n =
                parse_length(item.trim_ascii()).ok_or(Reject::Framing("invalid Content-Length"))?;
            match declared {
                Some(prev) if prev != n => {
                    return Err(Reject::Framing("conflicting Content-Length values"));
                }
                _ => declared = Some(n),
            }
        }
    }
    let codings: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .collect();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if declared.is_some() {
            return Err(Reject::Framing("both Content-Length and Transfer-Encoding"));
        }
        if version != Version::HTTP_11 {
            return Err(Reject::Framing("Transfer-Encoding outside HTTP/1.1"));
        }
        if !codings
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        {
            return Err(Reject::Framing("Transfer-Encoding must end in chunked"));
        }
    }
    Ok(declared)
}

/// Strict `1*DIGIT`: no sign, no spaces inside, no overflow.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Does an absolute-form target name the same host and port as `Host`?
fn same_authority(uri: &Uri, host: &HeaderValue, conn_scheme: &str) -> bool {
    let Some(target) = uri.authority() else {
        return false;
    };
    let Ok(host) = host.to_str().unwrap_or("").parse::<Authority>() else {
        return false;
    };
    let target_port = target
        .port_u16()
        .or_else(|| default_port(uri.scheme_str().unwrap_or(conn_scheme)));
    let host_port = host.port_u16().or_else(|| default_port(conn_scheme));
    target.host().eq_ignore_ascii_case(host.host()) && target_port == host_port
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

/// Remove hop-by-hop headers, including every header `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Response head from the backend, made fit for the client.
fn prepare_response_headers(headers: &mut HeaderMap) {
    // A Content-Length next to Transfer-Encoding is void (RFC 9112 §6.3) and
    // must not be forwarded once the Transfer-Encoding is gone.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
}

/// Append the client's address to `X-Forwarded-For`, keeping any earlier hops
/// (as one comma-separated value).
fn append_forwarded_for(headers: &mut HeaderMap, client_addr: SocketAddr) {
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    let ip = client_addr.ip().to_canonical().to_string();
    let mut list: Vec<u8> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            list.extend_from_slice(v);
            list.extend_from_slice(b", ");
        }
    }
    list.extend_from_slice(ip.as_bytes());
    let value = HeaderValue::from_bytes(&list)
        .or_else(|_| HeaderValue::from_str(&ip))
        .ok();
    match value {
        Some(v) => {
            headers.insert(X_FORWARDED_FOR, v);
        }
        None => {
            headers.remove(X_FORWARDED_FOR);
        }
    }
}

/// When the backend last accepted request body bytes.
struct Progress {
    base: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The client's body on its way to the backend: passes frames through one by
/// one, fails once more than `limit` data bytes went by, and records progress
/// for the response timeout.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    progress: Arc<Progress>,
    done: bool,
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if n > this.remaining {
                        this.done = true;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                    this.remaining -= n;
                }
                this.progress.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into())))))
            }
            None => {
                this.done = true;
                this.progress.touch();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn target(base: &'static str) -> BackendUrl {
        match BackendUrl::parse(base) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40000)
    }

    fn parts(builder: http::request::Builder) -> Parts {
        match builder.body(()) {
            Ok(r) => r.into_parts().0,
            Err(e) => panic!("{e}"),
        }
    }

    fn prepare(p: &mut Parts) -> Result<(), Reject> {
        prepare_request(
            p,
            &target("http://backend:8081/base/"),
            &TrustedProxies::parse("192.0.2.0/24").expect("trusted"),
            peer(),
            "https",
            1000,
        )
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_another_address() {
        let mut p = parts(
            Request::get("/x")
                .header("host", "f")
                .header("x-forwarded-for", "6.6.6.6")
                .header("forwarded", "for=6.6.6.6")
                .header("x-real-ip", "6.6.6.6"),
        );
        let nobody = TrustedProxies::default();
        let t = target("http://backend:8081/");
        assert_eq!(
            prepare_request(&mut p, &t, &nobody, peer(), "http", 1000),
            Ok(())
        );
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
        assert!(!p.headers.contains_key("forwarded"));
        assert!(!p.headers.contains_key("x-real-ip"));
    }

    #[test]
    fn rewrites_target_host_and_forwarding_headers() {
        let mut p = parts(
            Request::get("/x/y?q=1")
                .header("host", "front.example")
                .header("x-forwarded-for", "203.0.113.1")
                .header("x-forwarded-for", "198.51.100.2")
                .header("x-forwarded-proto", "gopher")
                .header("cookie", "a=1")
                .header("cookie", "b=2"),
        );
        assert_eq!(prepare(&mut p), Ok(()));
        assert_eq!(p.uri, "http://backend:8081/base/x/y?q=1");
        // Only in the URI: the client writes Host (h1) or :authority (h2).
        assert!(!p.headers.contains_key("host"));
        assert_eq!(p.headers["x-forwarded-host"], "front.example");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(
            p.headers["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 192.0.2.7"
        );
        // Joined into the one value ssemux authenticates (issue 16: a
        // backend reading only the first field would see another session).
        assert_eq!(p.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(p.headers["cookie"], "a=1; b=2");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut p = parts(
            Request::post("/")
                .header("host", "f")
                .header("connection", "keep-alive, X-Custom")
                .header("connection", "x-other")
                .header("x-custom", "1")
                .header("x-other", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("proxy-authorization", "Basic Zm9vOmJhcg==")
                .header("te", "trailers")
                .header("trailer", "x-t")
                .header("transfer-encoding", "chunked")
                .header("upgrade", "websocket")
                .header("x-keep", "yes"),
        );
        assert_eq!(prepare(&mut p), Ok(()));
        for h in [
            "connection",
            "x-custom",
            "x-other",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!p.headers.contains_key(h), "{h} forwarded");
        }
        assert_eq!(p.headers["x-keep"], "yes");
    }

    #[test]
    fn response_drops_content_length_next_to_transfer_encoding() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-b"));
        h.insert("x-b", HeaderValue::from_static("1"));
        prepare_response_headers(&mut h);
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(!h.contains_key(header::TRANSFER_ENCODING));
        assert!(!h.contains_key("x-b"));
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), 2);
    }

    #[test]
    fn framing_rules() {
        let check = |pairs: &[(&'static str, &'static str)], v: Version| {
            let mut h = HeaderMap::new();
            for (n, val) in pairs {
                h.append(*n, HeaderValue::from_static(val));
            }
            check_framing(&h, v)
        };
        let h11 = Version::HTTP_11;
        assert_eq!(check(&[("content-length", "5")], h11), Ok(Some(5)));
        assert_eq!(
            check(&[("content-length", "5"), ("content-length", "5")], h11),
            Ok(Some(5))
        );
        assert_eq!(check(&[("content-length", "5, 5")], h11), Ok(Some(5)));
        assert_eq!(check(&[("transfer-encoding", "chunked")], h11), Ok(None));
        assert_eq!(
            check(&[("transfer-encoding", "gzip, chunked")], h11),
            Ok(None)
        );
        for bad in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "5, 6")],
            &[("content-length", "+5")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999999")],
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked, gzip")],
            &[("transfer-encoding", "identity")],
        ] {
            assert!(
                matches!(check(bad, h11), Err(Reject::Framing(_))),
                "{bad:?}"
            );
        }
        assert!(check(&[("transfer-encoding", "chunked")], Version::HTTP_10).is_err());
    }

    #[test]
    fn declared_length_over_limit_is_413() {
        let mut p = parts(
            Request::post("/")
                .header("host", "f")
                .header("content-length", "1001"),
        );
        assert_eq!(prepare(&mut p), Err(Reject::TooLarge));
        let mut p = parts(
            Request::post("/")
                .header("host", "f")
                .header("content-length", "1000"),
        );
        assert_eq!(prepare(&mut p), Ok(()));
        assert_eq!(p.headers["content-length"], "1000");
    }

    #[test]
    fn absolute_form_only_for_own_host() {
        let mut p =
            parts(Request::get("http://other.example/steal").header("host", "front.example"));
        assert_eq!(prepare(&mut p), Err(Reject::ForeignTarget));

        let mut p =
            parts(Request::get("http://FRONT.example:443/ok").header("host", "front.example"));
        // The connection is https (see `prepare`), so a bare Host means 443.
        assert_eq!(prepare(&mut p), Ok(()));
        assert_eq!(p.uri, "http://backend:8081/base/ok");

        let mut p =
            parts(Request::get("http://front.example:8080/x").header("host", "front.example"));
        assert_eq!(prepare(&mut p), Err(Reject::ForeignTarget));
    }

    #[test]
    fn h2_authority_is_not_absolute_form() {
        let mut p = parts(Request::get("https://front.example/x").version(Version::HTTP_2));
        assert_eq!(prepare(&mut p), Ok(()));
        assert_eq!(p.uri, "http://backend:8081/base/x");
        assert_eq!(p.headers["x-forwarded-host"], "front.example");
        assert!(!p.headers.contains_key("host"));
    }

    #[test]
    fn connect_asterisk_and_host_rules() {
        let mut p = parts(Request::connect("other.example:443").header("host", "f"));
        assert_eq!(prepare(&mut p), Err(Reject::Connect));
        assert_eq!(
            Reject::Connect.response().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let mut p = parts(Request::options("*").header("host", "f"));
        assert_eq!(prepare(&mut p), Err(Reject::Target));
        let mut p = parts(Request::get("/"));
        assert_eq!(prepare(&mut p), Err(Reject::Host));
        let mut p = parts(Request::get("/").header("host", "a").header("host", "b"));
        assert_eq!(prepare(&mut p), Err(Reject::Host));
        let mut p = parts(Request::get("/").version(Version::HTTP_10));
        assert_eq!(prepare(&mut p), Ok(()));
        assert!(!p.headers.contains_key("x-forwarded-host"));
    }

    #[test]
    fn forwarded_for_canonicalises_mapped_ipv4() {
        let mut h = HeaderMap::new();
        let v6 = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped();
        append_forwarded_for(&mut h, SocketAddr::new(IpAddr::V6(v6), 1));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1));
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn backend_uri_validation() {
        for (base, ok) in [
            ("http://127.0.0.1:8081", true),
            ("https://chat.internal/app", true),
            ("ftp://x", false),
            ("/relative", false),
            ("http://user:pw@x", false),
            ("http://x/?q=1", false),
        ] {
            assert_eq!(BackendUrl::parse(base).is_ok(), ok, "{base}");
        }
        let t = target("https://chat.internal");
        assert_eq!(
            backend_uri(&t, &Uri::from_static("/a?b")).ok(),
            Some(Uri::from_static("https://chat.internal/a?b"))
        );
        // A path that looks like an authority stays a path on the backend.
        assert_eq!(
            backend_uri(&t, &Uri::from_static("//evil.example/x"))
                .map(|u| u.host().map(str::to_owned)),
            Ok(Some("chat.internal".to_owned()))
        );
    }
}
