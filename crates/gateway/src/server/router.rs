//! Routing: which part serves a request — the events handler, the admin
//! endpoints, the read path, or the proxy — and the request id every answer
//! and log line of the request carries. It decides by method and path only;
//! it never reads a body and never answers for another part.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Gateway;
use super::client_ip::client_ip;
use crate::body::{self, Body};
use crate::cookie::{cookie_count, cookie_header};

impl Gateway {
    /// Route one request that hyper parsed.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        if let Some(refused) = self.ambiguous_session(&req) {
            return refused;
        }
        let path = req.uri().path();
        if path == self.cfg.events_path {
            let client = client_ip(
                peer.ip(),
                req.headers(),
                &self.cfg.server.client_ip_header,
                &self.cfg.server.trusted_proxies,
            );
            return self.events.serve(req, client).await;
        }
        if self.cfg.admin.listen.is_none()
            && let Some(r) = self.admin(path).await
        {
            return r;
        }
        if path == self.cfg.watermark.read_path
            && (req.method() == Method::POST || req.method() == Method::DELETE)
        {
            let client = client_ip(
                peer.ip(),
                req.headers(),
                &self.cfg.server.client_ip_header,
                &self.cfg.server.trusted_proxies,
            );
            return self.read.serve(req, peer, client, self.scheme).await;
        }
        let started = tokio::time::Instant::now();
        let resp = self.proxy.forward(req, peer, self.scheme).await;
        self.metrics.proxied(resp.status(), started.elapsed());
        resp
    }
}

impl Gateway {
    /// A request whose cookies name the session cookie twice is refused: the
    /// backend might pick the other one, and so another user than ssemux
    /// authenticated.
    pub(super) fn ambiguous_session<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let cookies = cookie_header(req.headers())?;
        (cookie_count(&cookies, &self.cfg.auth.session_cookie) > 1)
            .then(|| body::text(StatusCode::BAD_REQUEST, "session cookie sent twice"))
    }
}

/// The request's id and the span its log lines go into. The id is a sane
/// `X-Request-Id` from the proxy in front (so one id follows the request
/// through nginx and ssemux), else a fresh one. The span names the path
/// only: queries may carry credentials, and header values are never logged.
pub(super) fn request_span<B>(req: &Request<B>) -> (String, tracing::Span) {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_string);
    let span = tracing::info_span!(
        "request",
        id = %rid,
        method = %req.method(),
        path = %req.uri().path(),
    );
    (rid, span)
}

/// Echo the request id in the response.
pub(super) fn tag_request_id(resp: &mut Response<Body>, rid: &str) {
    if let Ok(v) = HeaderValue::from_str(rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
}
