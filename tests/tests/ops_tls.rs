//! Native TLS with ALPN: h2 for browsers that offer it, http/1.1 for those
//! that do not; and h2c (prior knowledge) on a plain listener. Uses the
//! test-only CA and `localhost`/`127.0.0.1` certificate in
//! `crates/gateway/tests/data` (see `make-test-certs.sh` there).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use common::{Env, WAIT};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/gateway/tests/data")
        .join(name)
}

async fn tls_env() -> Env {
    let cert = format!("tls.cert={}", data("server.pem").display());
    let key = format!("tls.key={}", data("server.key").display());
    Env::start(&[&cert, &key]).await
}

/// A TLS connection to `addr` offering `alpn`; returns it and what the
/// server picked.
async fn connect(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(data("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    let picked = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, picked)
}

fn get(addr: SocketAddr, path: &str, cookie: &str, scheme: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("{scheme}://{addr}{path}"))
        .header("cookie", cookie)
        .body(Empty::new())
        .expect("request")
}

#[tokio::test]
async fn https_negotiates_h2_and_serves_events_and_proxy_over_it() {
    let env = tls_env().await;
    let alice = env.cookie("alice");
    let (tls, picked) = connect(env.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(picked.as_deref(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);

    // Proxied request over h2, forwarded as https.
    let resp = send
        .send_request(get(env.addr, "/api/v1/me", &alice, "https"))
        .await
        .expect("response");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("alice"));

    // Two tabs' streams multiplexed on the one connection.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let resp = send
            .send_request(get(env.addr, "/events", &alice, "https"))
            .await
            .expect("events response");
        assert_eq!(resp.status(), StatusCode::OK);
        streams.push(resp.into_body());
    }
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    assert_eq!(env.gateway.hub().tabs("alice"), 2);
    env.backend.send_message("bob", "alice", "over h2");
    for body in &mut streams {
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !seen.contains("event: thread-updated") {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .expect("trigger in time")
                .expect("stream open")
                .expect("frame");
            if let Ok(d) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&d));
            }
        }
    }
}

#[tokio::test]
async fn https_falls_back_to_http1_without_h2() {
    let env = tls_env().await;
    let alice = env.cookie("alice");
    let (tls, picked) = connect(env.addr, &[b"http/1.1"]).await;
    assert_eq!(picked.as_deref(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let req = Request::get("/api/v1/me")
        .header("host", "localhost")
        .header("cookie", &alice)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn plain_listener_speaks_h2c_with_prior_knowledge() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let tcp = TcpStream::connect(env.addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let resp = send
        .send_request(get(env.addr, "/api/v1/me", &alice, "http"))
        .await
        .expect("response");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bad_key_is_a_startup_error_naming_the_file() {
    let cfg = ssemux_gateway::Config::from_parts(
        "",
        Vec::new(),
        &[
            format!("tls.cert={}", data("server.pem").display()),
            format!("tls.key={}", data("nonexistent.key").display()),
        ],
    )
    .expect("config parses");
    let err = ssemux_gateway::Gateway::new(cfg)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("tls.key") && err.contains("nonexistent.key"),
        "{err}"
    );
}
