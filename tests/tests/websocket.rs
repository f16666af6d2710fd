//! WebSocket pass-through on proxied paths (issue 18): a real tungstenite
//! backend behind ssemux and a tungstenite client in front, on loopback.
//! Frames echo both ways, a close code of the backend's reaches the client,
//! the subprotocol is negotiated through, a refused handshake keeps its
//! status, `proxy.max_websockets` caps the relays, the open-relay gauge goes
//! up and down, and idleness and shutdown end a relay. Every wait has a
//! deadline and waits on a condition.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use ssemux_gateway::Gateway;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

use common::WAIT;

/// The subprotocol the backend agrees to when the client offers it.
const PROTOCOL: &str = "chat.v2";

/// The request heads the backend saw: (path and query, headers).
type Seen = Arc<Mutex<Vec<(String, http::HeaderMap)>>>;

/// An echo WebSocket backend: `/ws/forbidden` is refused with `403`;
/// `/ws/refuse` or a query with `token=bad` is accepted and then closed with
/// code 4401; everything else echoes text and binary messages.
async fn backend() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let target = Arc::new(Mutex::new(String::new()));
                let t = target.clone();
                // The signature is tungstenite's (its error is a whole response).
                #[allow(clippy::result_large_err)]
                let callback = move |req: &Request, mut resp: Response| {
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string();
                    record
                        .lock()
                        .expect("seen")
                        .push((pq.clone(), req.headers().clone()));
                    *t.lock().expect("target") = pq.clone();
                    if pq.starts_with("/ws/forbidden") {
                        let mut refused = ErrorResponse::new(Some("forbidden".to_string()));
                        *refused.status_mut() = StatusCode::FORBIDDEN;
                        return Err(refused);
                    }
                    let offered = req
                        .headers()
                        .get_all("sec-websocket-protocol")
                        .iter()
                        .flat_map(|v| v.to_str().unwrap_or("").split(','))
                        .any(|p| p.trim() == PROTOCOL);
                    if offered {
                        resp.headers_mut().insert(
                            "sec-websocket-protocol",
                            http::HeaderValue::from_static(PROTOCOL),
                        );
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let pq = target.lock().expect("target").clone();
                if pq.starts_with("/ws/refuse") || pq.contains("token=bad") {
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: CloseCode::from(4401),
                            reason: "unauthorized".into(),
                        }))
                        .await;
                    // Wait for the client's answering close, then EOF.
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A gateway in front of `backend` (default config + `extra`).
async fn gateway(backend: SocketAddr, extra: &[&str]) -> (Arc<Gateway>, SocketAddr) {
    common::gateway_for(backend, extra).await
}

type Client = WebSocketStream<TcpStream>;

/// Open a WebSocket to `path` through the gateway, offering `protocol`.
async fn connect(
    gw: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut req = format!("ws://{gw}{path}")
        .into_client_request()
        .expect("request");
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header"));
    }
    let tcp = TcpStream::connect(gw).await.expect("connect");
    timeout(WAIT, client_async(req, tcp))
        .await
        .expect("handshake in time")
}

/// The next message, within the deadline.
async fn next(ws: &mut Client) -> Option<Result<Message, WsError>> {
    timeout(WAIT, ws.next()).await.expect("message in time")
}

/// The gauge of open relays as `/metrics` shows it.
async fn open_gauge(gw: SocketAddr) -> i64 {
    let (status, _, text) = common::request(gw, "GET", "/metrics", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    text.lines()
        .find_map(|l| l.strip_prefix("ssemux_websockets_open "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ssemux_websockets_open in /metrics")
}

/// Wait until the gauge reads `want`.
async fn gauge_reaches(gw: SocketAddr, want: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = open_gauge(gw).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ssemux_websockets_open stayed {now}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the client's connection ends (close frame, EOF or error).
async fn ends(ws: &mut Client) {
    loop {
        match timeout(WAIT, ws.next())
            .await
            .expect("connection ended in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn text_and_binary_frames_echo_through_with_the_handshake_headers() {
    let (b, seen) = backend().await;
    let (_gw, addr) = gateway(b, &[]).await;
    let (mut ws, resp) = connect(addr, "/ws/echo?room=1", None)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(
        next(&mut ws).await.expect("open").expect("ok"),
        Message::text("hello")
    );
    let blob: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(blob.clone())).await.expect("send");
    assert_eq!(
        next(&mut ws).await.expect("open").expect("ok"),
        Message::binary(blob)
    );

    {
        let seen = seen.lock().expect("seen");
        let (pq, h) = seen.last().expect("backend saw the handshake");
        assert_eq!(pq, "/ws/echo?room=1");
        assert!(h.contains_key("sec-websocket-key"));
        assert_eq!(h["sec-websocket-version"], "13");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["host"], b.to_string().as_str());
    }
    ws.close(None).await.expect("close");
    ends(&mut ws).await;
}

#[tokio::test]
async fn the_backends_close_code_reaches_the_client() {
    let (b, _) = backend().await;
    let (_gw, addr) = gateway(b, &[]).await;
    for path in ["/ws/refuse", "/ws/chat?token=bad"] {
        let (mut ws, _) = connect(addr, path, None).await.expect("upgrade");
        match next(&mut ws).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4401, "{path}");
                assert_eq!(frame.reason.as_str(), "unauthorized");
            }
            other => panic!("{path}: expected a 4401 close, got {other:?}"),
        }
        ends(&mut ws).await;
    }
}

#[tokio::test]
async fn the_subprotocol_is_negotiated_through() {
    let (b, seen) = backend().await;
    let (_gw, addr) = gateway(b, &[]).await;
    let (mut ws, resp) = connect(addr, "/ws/echo", Some(&format!("x.v1, {PROTOCOL}")))
        .await
        .expect("upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], PROTOCOL);
    let offered =
        seen.lock().expect("seen").last().expect("seen").1["sec-websocket-protocol"].clone();
    assert_eq!(offered, format!("x.v1, {PROTOCOL}").as_str());
    ws.send(Message::text("p")).await.expect("send");
    assert_eq!(
        next(&mut ws).await.expect("open").expect("ok"),
        Message::text("p")
    );
}

#[tokio::test]
async fn a_refused_handshake_keeps_its_status() {
    let (b, _) = backend().await;
    let (_gw, addr) = gateway(b, &[]).await;
    match connect(addr, "/ws/forbidden", None).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    // The gateway still relays the next one.
    let (mut ws, _) = connect(addr, "/ws/echo", None).await.expect("upgrade");
    ws.send(Message::text("after")).await.expect("send");
    assert_eq!(
        next(&mut ws).await.expect("open").expect("ok"),
        Message::text("after")
    );
}

#[tokio::test]
async fn over_the_cap_is_503_and_the_gauge_goes_up_and_down() {
    let (b, _) = backend().await;
    let (_gw, addr) = gateway(b, &["proxy.max_websockets=1"]).await;
    assert_eq!(open_gauge(addr).await, 0);
    let (mut first, _) = connect(addr, "/ws/echo", None).await.expect("upgrade");
    gauge_reaches(addr, 1).await;

    match connect(addr, "/ws/echo", None).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {:?}", other.map(|(_, r)| r.status())),
    }
    let (_, _, text) = common::request(addr, "GET", "/metrics", &[], "").await;
    assert!(
        text.contains("ssemux_websocket_upgrades_total{outcome=\"limited\"} 1"),
        "{text}"
    );

    first.close(None).await.expect("close");
    ends(&mut first).await;
    gauge_reaches(addr, 0).await;
    // The slot is free again.
    let (mut again, _) = connect(addr, "/ws/echo", None).await.expect("upgrade");
    again.send(Message::text("x")).await.expect("send");
    assert_eq!(
        next(&mut again).await.expect("open").expect("ok"),
        Message::text("x")
    );
}

#[tokio::test]
async fn an_idle_relay_is_closed() {
    let (b, _) = backend().await;
    let (_gw, addr) = gateway(b, &["proxy.websocket_idle_timeout=300ms"]).await;
    let (mut ws, _) = connect(addr, "/ws/echo", None).await.expect("upgrade");
    let opened = Instant::now();
    ends(&mut ws).await;
    assert!(opened.elapsed() >= Duration::from_millis(250));
    gauge_reaches(addr, 0).await;
}

#[tokio::test]
async fn shutdown_ends_an_open_relay() {
    let (b, _) = backend().await;
    let (gw, addr) = gateway(b, &[]).await;
    let (mut ws, _) = connect(addr, "/ws/echo", None).await.expect("upgrade");
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(
        next(&mut ws).await.expect("open").expect("ok"),
        Message::text("before")
    );
    gw.shutdown_token().cancel();
    ends(&mut ws).await;
    assert!(
        common::eventually(WAIT, || gw
            .metrics_text()
            .contains("ssemux_websockets_open 0"))
        .await,
        "the relay is still counted open"
    );
}
