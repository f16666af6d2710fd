//! The accept loop: TCP connections served with hyper (HTTP/1.1 or h2).
//!
//! Owns sockets and connection tasks. It must never interpret requests (that
//! is `routes`) and never block the loop on one connection; on shutdown it
//! stops accepting and lets open connections close gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::routes;
use crate::state::State;

/// Accepts until `shutdown` fires, one task per connection.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(connection(stream, peer, state.clone(), shutdown.clone()));
            }
            Err(e) => {
                // Usually fd exhaustion under load: back off briefly instead
                // of spinning; the loop keeps serving once fds free up.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    // Events are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(routes::handle(state, req, peer).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
}
