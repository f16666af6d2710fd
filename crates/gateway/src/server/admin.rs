//! Admin endpoints: `/metrics`, `/healthz`, `/readyz` (paths from
//! `[admin]`). They read state, never change it, and never take longer than
//! one bounded probe of the backend.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

use super::Gateway;
use crate::body::{self, Body};

impl Gateway {
    /// The admin endpoints (metrics, liveness, readiness), if `path` is one.
    pub async fn admin(&self, path: &str) -> Option<Response<Body>> {
        let a = &self.cfg.admin;
        if path == a.metrics_path {
            let mut r = Response::new(body::full(Bytes::from(self.metrics_text())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return Some(r);
        }
        if path == a.healthz_path {
            return Some(body::text(StatusCode::OK, "ok"));
        }
        if path == a.readyz_path {
            return Some(match self.not_ready().await {
                None => body::text(StatusCode::OK, "ready"),
                Some(why) => body::text(StatusCode::SERVICE_UNAVAILABLE, why),
            });
        }
        None
    }

    /// Why this instance should get no new traffic, if it should not:
    /// draining, not listening yet, or the backend not answering at all (any
    /// HTTP answer, even 401, means it is reachable).
    async fn not_ready(&self) -> Option<&'static str> {
        if self.events.shutdown.is_cancelled() {
            return Some("draining");
        }
        if !self.listening.load(Ordering::Acquire) {
            return Some("not listening");
        }
        let Ok(url) = self.cfg.backend_url(&self.cfg.auth.me_path) else {
            return Some("backend misconfigured");
        };
        let Ok(req) = Request::get(url).body(body::empty()) else {
            return Some("backend misconfigured");
        };
        match tokio::time::timeout(self.cfg.auth.timeout, self.client.request(req)).await {
            Ok(Ok(_)) => None,
            _ => Some("backend unreachable"),
        }
    }
}
