//! Arbitrary bytes from a client through the gateway's HTTP server and
//! router (the proxy's request-target, Host and framing checks, `/events`,
//! the read path), over an in-memory connection. The backend address is a
//! closed local port, so anything forwarded fails fast with a 5xx. Must
//! never panic or hang, and every answer must be well-formed HTTP.
#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use libfuzzer_sys::fuzz_target;
use ssemux_gateway::Config;
use ssemux_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let sets = [
            "backend=http://127.0.0.1:9".to_string(),
            "auth.timeout=200ms".to_string(),
            "upstream.connect_timeout=200ms".to_string(),
            "proxy.response_timeout=200ms".to_string(),
            "server.events_connects_per_second=0".to_string(),
        ];
        let cfg = Config::from_parts("", Vec::new(), &sets).expect("config");
        let gateway = rt.block_on(async { Gateway::new(cfg).expect("gateway") });
        World { rt, gateway }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let gw = w.gateway.clone();
    w.rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = ([127, 0, 0, 1], 4242).into();
        let svc = service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(gw.handle(req, peer).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(500));
        let conn = tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "gateway hung on {:?}", String::from_utf8_lossy(data));
        conn.abort();
        if !out.is_empty() && !out.starts_with(b"\x00\x00") {
            // h1 answers start with a status line; h2 frames start with a
            // length, which the check above lets through.
            assert!(
                out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 ") || data.starts_with(b"PRI "),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    });
});
