//! The read path: a tab's `POST`/`DELETE` on `watermark.read_path`. A read
//! is proxied to the backend and, once the backend accepted it, marks the
//! peer active for the tab; "no thread open" (`DELETE`, or `peer: null`) is
//! answered here without bothering the backend. It never changes what the
//! backend receives beyond re-sending the body it read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::{Watermarks, tab_key, valid_tab_id};
use crate::body::{self, Body};
use crate::events::auth::Auth;
use crate::events::limit::{ConnectLimiter, too_many};
use crate::proxy::Proxy;

/// Largest read-watermark request body ssemux inspects.
const MAX_READ_BODY: usize = 64 * 1024;

/// The read handler: handles to what a read passes through.
pub struct ReadPath {
    /// Identity lookup (shared with the events path).
    pub auth: Arc<Auth>,
    /// Forwards the read to the backend.
    pub proxy: Proxy,
    /// Where the active peer is recorded.
    pub watermarks: Watermarks,
    /// Reads per second per client address (`watermark.reads_per_second`),
    /// checked before the identity lookup: a flood of junk credentials
    /// cannot turn into one backend call each.
    pub limiter: ConnectLimiter,
}

impl ReadPath {
    /// Serve one read from `peer` (`client`: its address as the server
    /// judged it); `scheme` is what the client used.
    pub async fn serve<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        client: IpAddr,
        scheme: &str,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        if let Err(wait) = self.limiter.admit(client) {
            return too_many(wait, "too many reads");
        }
        let query = req.uri().query().unwrap_or("");
        let Ok(id) = self.auth.identify_or_refuse(req.headers(), query).await else {
            // Let the backend give its own answer to an unknown user.
            return self.proxy.forward(req, peer, scheme).await;
        };
        let tab = match req.headers().get("x-tab-id").map(|v| v.to_str()) {
            None => None,
            Some(Ok(t)) if valid_tab_id(t) => Some(t.to_string()),
            Some(_) => return body::text(StatusCode::BAD_REQUEST, "invalid X-Tab-Id"),
        };
        let key = tab_key(tab.as_deref(), &id);
        if req.method() == Method::DELETE {
            self.watermarks.clear_active(&id.user, &key);
            return no_content();
        }
        let (parts, incoming) = req.into_parts();
        let bytes = match http_body_util::Limited::new(incoming, MAX_READ_BODY)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(_) => return body::text(StatusCode::PAYLOAD_TOO_LARGE, "read body too large"),
        };
        let read = parse_read(&bytes);
        if let Some(ReadBody::Clear) = read {
            self.watermarks.clear_active(&id.user, &key);
            return no_content();
        }
        let req = Request::from_parts(parts, body::full(bytes));
        let resp = self.proxy.forward(req, peer, scheme).await;
        if let (true, Some(ReadBody::Peer(p, row))) = (resp.status().is_success(), read) {
            self.watermarks.set_active(&id.user, &key, &p, row);
        }
        resp
    }
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

enum ReadBody {
    Peer(String, u64),
    Clear,
}

fn parse_read(bytes: &Bytes) -> Option<ReadBody> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    match v.get("peer") {
        Some(serde_json::Value::Null) => Some(ReadBody::Clear),
        Some(serde_json::Value::String(p)) => {
            let row = v.get("rowId").and_then(|r| r.as_u64()).unwrap_or(0);
            Some(ReadBody::Peer(p.clone(), row))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_bodies() {
        let b = |s: &str| Bytes::from(s.to_string());
        assert!(matches!(
            parse_read(&b(r#"{"peer":null}"#)),
            Some(ReadBody::Clear)
        ));
        assert!(matches!(
            parse_read(&b(r#"{"peer":"bob","rowId":5}"#)),
            Some(ReadBody::Peer(p, 5)) if p == "bob"
        ));
        assert!(parse_read(&b("nope")).is_none());
    }
}
