//! Server: the listener, the router and the wiring of one gateway instance
//! (auth → hub → channel → tab for `/events`, the watermark hook on the read
//! path, the proxy for everything else) plus graceful shutdown. Owns the
//! connections; it holds handles to every other part and no state of theirs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{Auth, AuthError, AuthSettings, Identity};
use crate::body::{self, Body};
use crate::client::{BackendClient, ClientConfig, backend_client};
use crate::config::Config;
use crate::hub::{Hub, HubError, HubSettings};
use crate::limit::{self, ConnectLimiter};
use crate::metrics::{Metrics, ResyncCause, Sample};
use crate::proxy::{Proxy, ProxyConfig};
use crate::socket::WriteDeadline;
use crate::tab::{self, TabHold, TabSettings};
use crate::tab_conn::{self, Sniffed};
use crate::tls::TlsAcceptor;
use crate::upstream::{Connector, HttpConnector, SharedRules, Upstream, UpstreamSettings};
use crate::upstream_conn::PlainConnector;
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
    /// The listener's certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// What a configuration reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Sections applied to the running gateway.
    pub applied: Vec<&'static str>,
    /// Sections that differ from the running ones but only take effect on
    /// restart.
    pub need_restart: Vec<&'static str>,
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
    metrics: Metrics,
    /// The rules the upstream tasks translate with (swapped on reload).
    rules: SharedRules,
    /// The configuration last applied (startup, then reloads).
    live: std::sync::Mutex<Config>,
    tls: Option<TlsAcceptor>,
    /// `https` with TLS, for X-Forwarded-Proto.
    scheme: &'static str,
    /// Set once [`Gateway::serve`] holds its listener.
    listening: AtomicBool,
    /// Used by the readiness probe.
    client: BackendClient,
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
        let events_url = cfg.backend_url(&cfg.upstream.events_path)?;
        // Plain http: the lean per-user connection (upstream_conn); https:
        // the shared hyper client, where ALPN h2 multiplexes the users.
        let connector: Arc<dyn Connector> = match PlainConnector::for_url(
            &events_url,
            cfg.upstream.connect_timeout.0,
            cfg.upstream.response_timeout.0,
        ) {
            Some(plain) => Arc::new(plain),
            None => Arc::new(HttpConnector::new(
                client.clone(),
                events_url,
                cfg.upstream.response_timeout.0,
            )),
        };
        let metrics = Metrics::new();
        let tls = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let upstream = Upstream::new(
            connector,
            Arc::new(cfg.translate.clone()),
            UpstreamSettings::from(&cfg.upstream),
            Some(watermarks.clone()),
        )
        .with_metrics(metrics.clone())
        .with_connect_rate(cfg.upstream.connects_per_second);
        let rules = upstream.rules_handle();
        let hub = Hub::new(HubSettings::from(&cfg.hub), upstream);
        let auth = Auth::new(
            client.clone(),
            cfg.backend_url(&cfg.auth.me_path)?,
            AuthSettings::from(&cfg.auth),
        )
        .with_metrics(metrics.clone());
        let backend = cfg.backend_url("/")?;
        let proxy = Proxy::new(
            ProxyConfig {
                backend,
                max_request_body: cfg.proxy.max_request_body,
                response_timeout: cfg.proxy.response_timeout.0,
            },
            client.clone(),
        );
        Ok(Arc::new(Gateway {
            connects: ConnectLimiter::new(cfg.server.events_connects_per_second),
            live: std::sync::Mutex::new(cfg.clone()),
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            metrics,
            rules,
            listening: AtomicBool::new(false),
            client,
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

    /// This gateway's metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus text exposition, with the hub and watermark values
    /// sampled now.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(Sample {
            tabs: self.hub.total_tabs(),
            channels: self.hub.channels(),
            channels_in_grace: self.hub.channels_in_grace(),
            watermark_advances: self.watermarks.advances(),
            watermark_failures: self.watermarks.failures(),
        })
    }

    /// Apply a new configuration to the running gateway: the translation
    /// rules take effect for the next upstream event, the tab limits
    /// (`hub.max_tabs_per_user`, `hub.max_total_tabs`) for the next tab; open
    /// streams keep running. Sections that cannot change at run time are reported, not
    /// applied. A configuration that does not validate changes nothing.
    pub fn reload(&self, new: &Config) -> Result<Reloaded, crate::config::ConfigError> {
        new.validate()?;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Reloaded::default();
        if new.translate != live.translate {
            *self.rules.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(new.translate.clone());
            live.translate = new.translate.clone();
            out.applied.push("translate");
        }
        if (new.hub.max_tabs_per_user, new.hub.max_total_tabs)
            != (live.hub.max_tabs_per_user, live.hub.max_total_tabs)
        {
            let s = HubSettings::from(&new.hub);
            self.hub.set_limits(s.max_tabs_per_user, s.max_total_tabs);
            live.hub.max_tabs_per_user = new.hub.max_tabs_per_user;
            live.hub.max_total_tabs = new.hub.max_total_tabs;
            out.applied.push("hub limits");
        }
        let l = &*live;
        for (section, same) in [
            ("listen", new.listen == l.listen),
            ("backend", new.backend == l.backend),
            ("events_path", new.events_path == l.events_path),
            ("auth", new.auth == l.auth),
            ("upstream", new.upstream == l.upstream),
            ("hub", new.hub == l.hub),
            ("watermark", new.watermark == l.watermark),
            ("proxy", new.proxy == l.proxy),
            ("server", new.server == l.server),
            ("tls", new.tls == l.tls),
            ("admin", new.admin == l.admin),
        ] {
            if !same {
                out.need_restart.push(section);
            }
        }
        Ok(out)
    }

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
        if self.shutdown.is_cancelled() {
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
        match tokio::time::timeout(self.cfg.auth.timeout.0, self.client.request(req)).await {
            Ok(Ok(_)) => None,
            _ => Some("backend unreachable"),
        }
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
        if self.cfg.admin.listen.is_none()
            && let Some(r) = self.admin(path).await
        {
            return r;
        }
        if path == self.cfg.watermark.read_path
            && (req.method() == Method::POST || req.method() == Method::DELETE)
        {
            return self.read(req, peer).await;
        }
        let started = tokio::time::Instant::now();
        let resp = self.proxy.forward(req, peer, self.scheme).await;
        self.metrics.proxied(resp.status(), started.elapsed());
        resp
    }

    async fn identify(&self, headers: &http::HeaderMap) -> Result<Identity, Response<Body>> {
        self.auth.identify(headers).await.map_err(|e| match e {
            AuthError::Unauthenticated => body::text(StatusCode::UNAUTHORIZED, "not authenticated"),
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
    async fn events<B>(self: &Arc<Self>, req: Request<B>, peer: SocketAddr) -> Response<Body> {
        if req.method() != Method::GET {
            let mut r = body::text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        // Refused before asking the backend: a Cookie header this large is
        // a broken or hostile client, not a session to look up.
        if crate::auth::cookie_header(req.headers())
            .is_some_and(|c| c.len() > crate::auth::MAX_COOKIE_BYTES)
        {
            return body::text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "cookie header too large",
            );
        }
        let client = limit::client_ip(peer.ip(), req.headers(), &self.cfg.server.client_ip_header);
        if let Err(wait) = self.connects.admit(client) {
            let mut r = body::text(StatusCode::TOO_MANY_REQUESTS, "too many connects");
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        let id = match self.identify(req.headers()).await {
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
        if attach.resync.is_some() {
            let same_epoch = last_event_id
                .as_deref()
                .and_then(|l| l.trim().rsplit_once('-'))
                .is_some_and(|(epoch, _)| epoch == subscription.channel().epoch());
            self.metrics.resync(if same_epoch {
                ResyncCause::RingMiss
            } else {
                ResyncCause::Epoch
            });
        }
        // A user's first tab opens its stream once the upstream is up (or
        // after a short wait, then with a `resync` owed): the page refreshes
        // when its stream opens, and nothing may fall between the two.
        subscription
            .channel()
            .wait_for_upstream(FIRST_UPSTREAM_WAIT)
            .await;
        let settings = TabSettings {
            keepalive: self.cfg.hub.keepalive.0,
            retry_ms: self.retry_ms(),
            metrics: self.metrics.clone(),
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
        let id = match self.identify(req.headers()).await {
            Ok(id) => id,
            // Let the backend give its own answer to an unknown user.
            Err(_) => return self.proxy.forward(req, peer, self.scheme).await,
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
        let resp = self.proxy.forward(req, peer, self.scheme).await;
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
        // Shared, not cloned per connection: every tab's task holds it.
        let builder = Arc::new(builder);
        let write_timeout = self.cfg.server.write_timeout.0;
        // The admin listener outlives the drain so /readyz can say 503.
        let admin_stop = CancellationToken::new();
        if let Some(addr) = self.cfg.admin.listen {
            let admin = TcpListener::bind(addr).await?;
            tokio::spawn(self.clone().serve_admin(admin, admin_stop.clone()));
        }
        self.listening.store(true, Ordering::Release);
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
            let io = WriteDeadline::new(stream, write_timeout);
            let (gw, builder, watcher) = (self.clone(), builder.clone(), graceful.watcher());
            let Some(acceptor) = self.tls.clone() else {
                tokio::spawn(async move { gw.serve_conn(&builder, watcher, io, peer).await });
                continue;
            };
            // The handshake runs in the connection's task so a slow client
            // cannot hold up accepting; it gets the same deadline as a
            // request head.
            let limit = self.cfg.server.header_read_timeout.0;
            tokio::spawn(async move {
                match tokio::time::timeout(limit, Box::pin(acceptor.accept(io))).await {
                    Ok(Ok(tls)) => gw.serve_conn(&builder, watcher, tls, peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
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
        admin_stop.cancel();
        Ok(())
    }

    /// Serve one accepted connection (plain or TLS) until it ends: a
    /// connection that starts with the events request is a tab connection
    /// (see [`tab_conn`]), every other one is hyper's. Holding `watcher`
    /// makes the drain wait for this connection.
    async fn serve_conn<I>(
        self: &Arc<Self>,
        builder: &auto::Builder<TokioExecutor>,
        watcher: Watcher,
        io: I,
        peer: SocketAddr,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // This task lives as long as the tab, and a future is as big as its
        // biggest step: the steps before the stream (sniffing, auth,
        // subscribe, or a whole hyper connection) run boxed, so an idle tab
        // holds only what streaming needs.
        let opened = Box::pin(self.open_conn(builder, watcher, io, peer)).await;
        let Some((mut io, resp, span, watcher)) = opened else {
            return;
        };
        match tab_conn::respond(&mut io, resp).instrument(span).await {
            Ok(()) => {}
            Err(e) if is_write_stall(&e) => {
                self.metrics.slow_tab_cut();
                tracing::info!(%peer, "connection cut: peer stopped reading");
            }
            Err(e) => tracing::debug!(error = %e, "tab connection ended with error"),
        }
        drop(watcher);
    }

    /// The start of a connection: an events request gets its response (to
    /// stream), anything else is served by hyper here to the end (`None`).
    async fn open_conn<I>(
        self: &Arc<Self>,
        builder: &auto::Builder<TokioExecutor>,
        watcher: Watcher,
        io: I,
        peer: SocketAddr,
    ) -> Option<(I, Response<Body>, tracing::Span, Watcher)>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let sniffed = tokio::select! {
            // An idle connection must not hold up the drain.
            _ = self.shutdown.cancelled() => return None,
            s = tab_conn::sniff(io, &self.cfg.events_path, self.cfg.server.header_read_timeout.0) => s,
        };
        let (mut io, req) = match sniffed {
            Sniffed::Gone => return None,
            Sniffed::Other(io) => {
                self.serve_hyper(builder, watcher, TokioIo::new(io), peer)
                    .await;
                return None;
            }
            Sniffed::Events(io, req) => (io, req),
        };
        let rid = request_id(&req);
        let span = tracing::info_span!(
            "request",
            id = %rid,
            method = %req.method(),
            path = %req.uri().path(),
        );
        // Auth and the first tab's wait for its upstream take time; a client
        // that leaves meanwhile lets go of its subscription at once, not
        // when its answer is ready.
        let events = self.events(req, peer).instrument(span.clone());
        tokio::pin!(events);
        let mut unsolicited = 0usize;
        let mut resp = tokio::select! {
            resp = &mut events => resp,
            // Gone, failed or flooding: nothing to answer.
            _ = tab_conn::until_peer_gone(&mut io, &mut unsolicited) => return None,
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            resp.headers_mut().insert("x-request-id", v);
        }
        Some((io, resp, span, watcher))
    }

    /// Serve a connection with hyper until it ends. Every request runs in a
    /// span carrying its request id, so each log line of the request names
    /// it.
    async fn serve_hyper<I>(
        self: &Arc<Self>,
        builder: &auto::Builder<TokioExecutor>,
        watcher: Watcher,
        io: I,
        peer: SocketAddr,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let gw = self.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let gw = gw.clone();
            let rid = request_id(&req);
            // Path only: queries may carry ids, never log header values.
            let span = tracing::info_span!(
                "request",
                id = %rid,
                method = %req.method(),
                path = %req.uri().path(),
            );
            async move {
                let mut resp = gw.handle(req, peer).await;
                if let Ok(v) = HeaderValue::from_str(&rid) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                Ok::<_, Infallible>(resp)
            }
            .instrument(span)
        });
        let conn = builder.serve_connection(io, svc).into_owned();
        if let Err(e) = watcher.watch(conn).await {
            if is_write_stall(&*e) {
                self.metrics.slow_tab_cut();
                tracing::info!(%peer, "connection cut: peer stopped reading");
            } else {
                tracing::debug!(error = %e, "connection ended with error");
            }
        }
    }

    /// The separate admin listener: metrics, liveness, readiness only.
    async fn serve_admin(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let gw = self.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let gw = gw.clone();
                async move {
                    let resp = match gw.admin(req.uri().path()).await {
                        Some(r) => r,
                        None => body::text(StatusCode::NOT_FOUND, "not found"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(self.cfg.server.header_read_timeout.0)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
}

/// The request's id: a sane `X-Request-Id` from the proxy in front (so one
/// id follows the request through nginx and ssemux), else a fresh one.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_string)
}

/// Whether a connection error is the write deadline cutting a stalled peer.
fn is_write_stall(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Longest a tab's stream waits for its user's first upstream connect.
const FIRST_UPSTREAM_WAIT: Duration = Duration::from_secs(2);

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
