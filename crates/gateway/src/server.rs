//! Server: the listener, the router and the wiring of one gateway instance
//! (auth → hub → channel → tab for `/events`, the watermark hook on the read
//! path, the proxy for everything else) plus graceful shutdown. Owns the
//! connections; it holds handles to every other part and no state of theirs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthError, AuthSettings, Identity};
use crate::body::{self, Body};
use crate::client::{BackendClient, ClientConfig, backend_client};
use crate::config::Config;
use crate::hub::{Hub, HubError, HubSettings};
use crate::limit::{self, ConnectLimiter};
use crate::proxy::{Proxy, ProxyConfig};
use crate::socket::WriteDeadline;
use crate::tab::{self, TabHold, TabSettings};
use crate::upstream::{HttpConnector, Upstream, UpstreamSettings};
use crate::watermark::{self, Watermarks};

/// Largest read-watermark request body ssemux inspects.
const MAX_READ_BODY: usize = 64 * 1024;

/// A gateway that cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The backend client could not be built (TLS roots, CA file).
    #[error("backend client: {0}")]
    Client(String),
}

/// One running gateway: every part, wired.
pub struct Gateway {
    cfg: Config,
    hub: Hub,
    auth: Auth,
    proxy: Proxy,
    watermarks: Watermarks,
    connects: ConnectLimiter,
    shutdown: CancellationToken,
}

impl Gateway {
    /// Build every part from the configuration.
    pub fn new(cfg: Config) -> Result<Arc<Gateway>, GatewayError> {
        cfg.validate()?;
        let client: BackendClient = backend_client(&ClientConfig {
            connect_timeout: cfg.upstream.connect_timeout.0,
            extra_ca_pem: cfg.upstream.extra_ca_pem.clone(),
            ..ClientConfig::default()
        })
        .map_err(|e| GatewayError::Client(e.to_string()))?;
        let watermarks = Watermarks::new(
            client.clone(),
            cfg.backend_url(&cfg.watermark.read_path)?,
            &cfg.watermark.inbound_event,
            cfg.watermark.timeout.0,
        );
        let connector = HttpConnector::new(
            client.clone(),
            cfg.backend_url(&cfg.upstream.events_path)?,
            cfg.upstream.response_timeout.0,
        );
        let upstream = Upstream::new(
            Arc::new(connector),
            Arc::new(cfg.translate.clone()),
            UpstreamSettings::from(&cfg.upstream),
            Some(watermarks.clone()),
        );
        let hub = Hub::new(HubSettings::from(&cfg.hub), upstream);
        let auth = Auth::new(
            client.clone(),
            cfg.backend_url(&cfg.auth.me_path)?,
            AuthSettings::from(&cfg.auth),
        );
        let backend = cfg.backend_url("/")?;
        let proxy = Proxy::new(
            ProxyConfig {
                backend,
                max_request_body: cfg.proxy.max_request_body,
                response_timeout: cfg.proxy.response_timeout.0,
            },
            client,
        );
        Ok(Arc::new(Gateway {
            connects: ConnectLimiter::new(cfg.server.events_connects_per_second),
            cfg,
            hub,
            auth,
            proxy,
            watermarks,
            shutdown: CancellationToken::new(),
        }))
    }

    /// The hub (for tests and metrics).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The watermark state (for tests and metrics).
    pub fn watermarks(&self) -> &Watermarks {
        &self.watermarks
    }

    /// Cancel this token to shut the gateway down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Route one request.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let path = req.uri().path();
        if path == self.cfg.events_path {
            return self.events(req, peer).await;
        }
        if path == self.cfg.watermark.read_path
            && (req.method() == Method::POST || req.method() == Method::DELETE)
        {
            return self.read(req, peer).await;
        }
        self.proxy.forward(req, peer, "http").await
    }

    async fn identify(&self, req: &Request<Incoming>) -> Result<Identity, Response<Body>> {
        self.auth
            .identify(req.headers())
            .await
            .map_err(|e| match e {
                AuthError::Unauthenticated => {
                    body::text(StatusCode::UNAUTHORIZED, "not authenticated")
                }
                AuthError::Unavailable(why) => {
                    tracing::warn!(%why, "identity lookup failed");
                    let mut r = body::text(StatusCode::SERVICE_UNAVAILABLE, "backend unavailable");
                    r.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(self.cfg.auth.retry_after_secs),
                    );
                    r
                }
            })
    }

    /// `GET /events`: one tab's multiplexed stream.
    async fn events(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if req.method() != Method::GET {
            let mut r = body::text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        let client = limit::client_ip(peer.ip(), req.headers(), &self.cfg.server.client_ip_header);
        if let Err(wait) = self.connects.admit(client) {
            let mut r = body::text(StatusCode::TOO_MANY_REQUESTS, "too many connects");
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        let id = match self.identify(&req).await {
            Ok(id) => id,
            Err(resp) => return resp,
        };
        let query = req.uri().query().unwrap_or("");
        let tab = match query_param(query, "tab") {
            Some(t) if !watermark::valid_tab_id(t) => {
                return body::text(StatusCode::BAD_REQUEST, "invalid tab id");
            }
            t => t,
        };
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .or_else(|| query_param(query, "lastEventId"))
            .map(str::to_string);
        let subscription = match self.hub.subscribe(&id.user, &id.cookie) {
            Ok(s) => s,
            Err(HubError::TooManyTabs(_)) => {
                let mut r = body::text(StatusCode::TOO_MANY_REQUESTS, "too many tabs");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return r;
            }
            Err(HubError::Full(_)) => {
                let mut r = body::text(StatusCode::SERVICE_UNAVAILABLE, "gateway full");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return r;
            }
            Err(HubError::ShuttingDown) => {
                // Not a 5xx: EventSource gives up for good on an error
                // status. An empty stream that ends makes the browser come
                // back after `retry:` with its Last-Event-ID, to whichever
                // instance then answers.
                let retry = ssemux_sse::encode_retry(self.retry_ms());
                return event_stream(body::full(retry));
            }
        };
        let mark = self.watermarks.tab_opened(&id.user, &tab_key(tab, &id));
        let attach = subscription.channel().attach(last_event_id.as_deref());
        let settings = TabSettings {
            keepalive: self.cfg.hub.keepalive.0,
            retry_ms: self.retry_ms(),
        };
        let hold = TabHold {
            subscription,
            mark: Some(mark),
        };
        event_stream(tab::stream(hold, attach, settings, self.shutdown.clone()))
    }

    /// The `retry:` hint for one connection: the configured base plus up to
    /// as much again at random, so tabs cut at the same moment (a deploy, a
    /// network blip) come back spread out instead of in one burst.
    fn retry_ms(&self) -> u64 {
        let base = self.cfg.hub.retry_hint.0.as_millis() as u64;
        base + fastrand::u64(0..=base)
    }

    /// The read-watermark path: proxied, and on success marks the peer
    /// active for the tab. "No thread open" (DELETE, or `peer: null`) is
    /// answered here without bothering the backend.
    async fn read(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let id = match self.identify(&req).await {
            Ok(id) => id,
            // Let the backend give its own answer to an unknown user.
            Err(_) => return self.proxy.forward(req, peer, "http").await,
        };
        let tab = match req.headers().get("x-tab-id").map(|v| v.to_str()) {
            None => None,
            Some(Ok(t)) if watermark::valid_tab_id(t) => Some(t.to_string()),
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
        let resp = self.proxy.forward(req, peer, "http").await;
        if let (true, Some(ReadBody::Peer(p, row))) = (resp.status().is_success(), read) {
            self.watermarks.set_active(&id.user, &key, &p, row);
        }
        resp
    }

    /// Serve on `listener` until the shutdown token is cancelled, then stop
    /// accepting, end tab streams and let in-flight requests finish for at
    /// most the drain timeout.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.cfg.server.header_read_timeout.0);
        let write_timeout = self.cfg.server.write_timeout.0;
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let gw = self.clone();
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(req, peer).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(WriteDeadline::new(stream, write_timeout)), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with error");
                }
            });
        }
        drop(listener);
        self.hub.shutdown();
        let drain = self.cfg.server.drain_timeout.0;
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(?drain, "drain timeout passed with requests still open");
        }
        Ok(())
    }
}

/// A `200 text/event-stream` response around `body`.
fn event_stream(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    // nginx in front must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// The key of a tab's watermark state: its tab id, else its session.
fn tab_key(tab: Option<&str>, id: &Identity) -> String {
    match tab {
        Some(t) => format!("t:{t}"),
        None => format!("s:{}", id.session),
    }
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

/// A query parameter's raw value (ids and tab ids never need decoding).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("tab=a&lastEventId=e-1", "lastEventId"),
            Some("e-1")
        );
        assert_eq!(query_param("tab=a", "lastEventId"), None);
        assert_eq!(query_param("", "tab"), None);
    }

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
