//! Accepting connections: the one accept loop (the main listener and the
//! admin listener both run it), the TLS handshake, the write deadline, and
//! the choice between the lean tab connection and hyper for each connection.
//! It never looks at a request beyond that choice and never holds a lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Gateway;
use super::client_ip::client_ip;
use super::deadline::WriteDeadline;
use super::router::{request_span, tag_request_id};
use crate::body;
use crate::events::tab_conn::{self, Sniffed};
use crate::metrics::Metrics;

/// How long accepting pauses after a failed accept (EMFILE and friends).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accept on `listener` until `stop`, handing each connection to `start`,
/// which spawns the connection's task. (It spawns, not this loop: a plain
/// and a TLS connection are tasks of different sizes, and a task as big as
/// the TLS one for every plain tab would cost each tab the TLS state.) A
/// failed accept is logged and retried after a short pause: the listener
/// keeps serving.
async fn accept_loop<F>(listener: &TcpListener, stop: &CancellationToken, what: &str, start: F)
where
    F: Fn(TcpStream, SocketAddr),
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => start(stream, peer),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// How a client connection ended, logged and counted the same way whoever
/// served it.
fn connection_ended(metrics: &Metrics, peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
    if is_write_stall(e) {
        metrics.slow_tab_cut();
        tracing::info!(%peer, "connection cut: peer stopped reading");
    } else {
        tracing::debug!(error = %e, "connection ended with error");
    }
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

impl Gateway {
    /// Serve on `listener` until the shutdown token is cancelled, then stop
    /// accepting, end tab streams and let in-flight requests finish for at
    /// most the drain timeout.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.cfg.server.header_read_timeout);
        // Shared, not cloned per connection: every tab's task holds it.
        let builder = Arc::new(builder);
        // The admin listener outlives the drain so /readyz can say 503.
        let admin_stop = CancellationToken::new();
        if let Some(addr) = self.cfg.admin.listen {
            let admin = TcpListener::bind(addr).await?;
            tokio::spawn(self.clone().serve_admin(admin, admin_stop.clone()));
        }
        self.listening.store(true, Ordering::Release);
        let shutdown = self.shutdown_token();
        accept_loop(&listener, &shutdown, "main", |stream, peer| {
            self.accepted(stream, peer, &builder, graceful.watcher());
        })
        .await;
        drop(listener);
        self.hub().shutdown();
        let drain = self.cfg.server.drain_timeout;
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(?drain, "drain timeout passed with requests still open");
        }
        admin_stop.cancel();
        Ok(())
    }

    /// One accepted connection: the write deadline, then TLS if configured,
    /// in a task of its own. The handshake runs in the connection's task so
    /// a slow client cannot hold up accepting; it gets the same deadline as
    /// a request head.
    fn accepted(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        builder: &Arc<auto::Builder<TokioExecutor>>,
        watcher: Watcher,
    ) {
        let _ = stream.set_nodelay(true);
        let io = WriteDeadline::new(stream, self.cfg.server.write_timeout);
        let (gw, builder) = (self.clone(), builder.clone());
        let Some(acceptor) = self.tls.clone() else {
            tokio::spawn(async move { gw.serve_conn(&builder, watcher, io, peer).await });
            return;
        };
        let limit = self.cfg.server.header_read_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(limit, Box::pin(acceptor.accept(io))).await {
                Ok(Ok(tls)) => gw.serve_conn(&builder, watcher, tls, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }

    /// Serve one connection (plain or TLS) until it ends: a connection that
    /// starts with the events request is a tab connection (see
    /// [`tab_conn`]), every other one is hyper's. Holding `watcher` makes
    /// the drain wait for this connection.
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
        if let Err(e) = tab_conn::respond(&mut io, resp).instrument(span).await {
            connection_ended(&self.metrics, peer, &e);
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
    ) -> Option<(I, http::Response<body::Body>, tracing::Span, Watcher)>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shutdown = self.shutdown_token();
        let head_timeout = self.cfg.server.header_read_timeout;
        let sniffed = tokio::select! {
            // An idle connection must not hold up the drain.
            _ = shutdown.cancelled() => return None,
            s = tab_conn::sniff(io, &self.cfg.events_path, head_timeout) => s,
        };
        let (mut io, req) = match sniffed {
            Sniffed::Gone => return None,
            Sniffed::Other(io) => {
                self.serve_hyper(builder, watcher, TokioIo::new(io), peer)
                    .await;
                return None;
            }
            Sniffed::Malformed(io) => {
                let refused = body::text(http::StatusCode::BAD_REQUEST, "malformed request head");
                return Some((io, refused, tracing::Span::none(), watcher));
            }
            Sniffed::Events(io, req) => (io, req),
        };
        let (rid, span) = request_span(&req);
        if let Some(mut refused) = self.ambiguous_session(&req) {
            tag_request_id(&mut refused, &rid);
            return Some((io, refused, span, watcher));
        }
        let client = client_ip(
            peer.ip(),
            req.headers(),
            &self.cfg.server.client_ip_header,
            &self.cfg.server.trusted_proxies,
        );
        // Auth and the first tab's wait for its upstream take time; a client
        // that leaves meanwhile lets go of its subscription at once, not
        // when its answer is ready.
        let events = self.events.serve(req, client).instrument(span.clone());
        tokio::pin!(events);
        let mut unsolicited = 0usize;
        let mut resp = tokio::select! {
            resp = &mut events => resp,
            // Gone, failed or flooding: nothing to answer.
            _ = tab_conn::until_peer_gone(&mut io, &mut unsolicited) => return None,
        };
        tag_request_id(&mut resp, &rid);
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
            let (rid, span) = request_span(&req);
            async move {
                let mut resp = gw.handle(req, peer).await;
                tag_request_id(&mut resp, &rid);
                Ok::<_, std::convert::Infallible>(resp)
            }
            .instrument(span)
        });
        // With upgrades: a WebSocket handshake on a proxied path hands its
        // connection to the proxy's relay once the `101` is written.
        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
        if let Err(e) = watcher.watch(conn).await {
            connection_ended(&self.metrics, peer, &*e);
        }
    }

    /// The separate admin listener: metrics, liveness, readiness only.
    async fn serve_admin(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let head_timeout = self.cfg.server.header_read_timeout;
        accept_loop(&listener, &stop, "admin", |stream, _| {
            let gw = self.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let gw = gw.clone();
                async move {
                    let resp = match gw.admin(req.uri().path()).await {
                        Some(r) => r,
                        None => body::text(http::StatusCode::NOT_FOUND, "not found"),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        })
        .await;
    }
}
