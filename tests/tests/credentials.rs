//! Credentials from elsewhere than cookies: a query token presented to the
//! backend as a Bearer header on the stream, while a proxied request keeps
//! exactly the form it came in (no header added, the query untouched); and
//! no credential ever in a log line or a metric label.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ssemux_gateway::{Config, Gateway};
use tokio::net::TcpListener;

const TOKEN: &str = "tok-3f9a1c-secret";

/// What the backend saw of one request: path and query, and its headers.
#[derive(Clone, Debug)]
struct Seen {
    target: String,
    headers: http::HeaderMap,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A backend that records every request. `/events` streams (held open) for
/// `Authorization: Bearer <TOKEN>` and is 401 otherwise; anything else 200.
async fn backend() -> (SocketAddr, Log) {
    let log: Log = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = log.clone();
    tokio::spawn(async move {
        for _ in 0..200 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    seen.lock().expect("lock").push(Seen {
                        target: target.to_string(),
                        headers: req.headers().clone(),
                    });
                    let authorized = req
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
                    let body = if req.uri().path() == "/events" && authorized {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                        let _ = tx
                            .send(Ok(Frame::data(Bytes::from_static(b"data: {\"n\":1}\n\n"))))
                            .await;
                        // Held open by keeping the sender for the body's life.
                        let stream = futures_stream(rx, tx);
                        let mut r = Response::new(StreamBody::new(stream).boxed());
                        r.headers_mut()
                            .insert("content-type", "text/event-stream".parse().expect("hv"));
                        return Ok::<_, Infallible>(r);
                    } else if req.uri().path() == "/events" {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::OK
                    };
                    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
                    *r.status_mut() = body;
                    Ok(r)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, log)
}

/// The receiver as a stream that also owns the sender, so it never ends.
fn futures_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::unfold((rx, tx), |(mut rx, tx)| async move {
        rx.recv().await.map(|f| (f, (rx, tx)))
    })
}

#[tokio::test]
async fn a_query_token_reaches_the_stream_as_bearer_and_proxied_paths_as_it_came() {
    let logs = common::capture_logs("ssemux_gateway=trace");
    let (be, seen) = backend().await;
    let toml = r#"
        events_path = "/events"
        [auth]
        mode = "upstream"
        credentials = "query:token, bearer"
        present_as = "bearer"
        [upstream]
        events_path = "/events"
        [[translate.rules]]
        event = "*"
        pass = true
    "#;
    let cfg =
        Config::from_parts(toml, Vec::new(), &[format!("backend=http://{be}")]).expect("config");
    let gw = Gateway::new(cfg).expect("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gw.clone().serve(listener));

    let path = format!("/events?token={TOKEN}");
    let mut tab = common::Tab::open(addr, &path, "", None).await.expect("tab");
    let ev = tab.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("message", r#"{"n":1}"#)
    );
    let stream = seen
        .lock()
        .expect("lock")
        .iter()
        .find(|s| s.target.starts_with("/events"))
        .cloned()
        .expect("the stream request");
    assert_eq!(
        stream.target, "/events",
        "the token left the query: {stream:?}"
    );
    assert!(stream.headers.get("cookie").is_none());

    // A wrong token: the backend's 401 is the tab's.
    let wrong = common::Tab::open(addr, "/events?token=wrong-token-77", "", None).await;
    assert_eq!(wrong.err(), Some(StatusCode::UNAUTHORIZED));

    // Proxied: exactly as it came — the query keeps the token, no header
    // appears that the browser did not send.
    let (status, _, _) =
        common::request(addr, "GET", &format!("/files?token={TOKEN}&x=1"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let proxied = seen
        .lock()
        .expect("lock")
        .iter()
        .find(|s| s.target.starts_with("/files"))
        .cloned()
        .expect("the proxied request");
    assert_eq!(proxied.target, format!("/files?token={TOKEN}&x=1"));
    assert!(
        proxied.headers.get("authorization").is_none(),
        "{proxied:?}"
    );

    // Never in a log line or a metric label.
    let (_, _, metrics) = common::request(addr, "GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    for secret in [TOKEN, "wrong-token-77"] {
        assert!(!text.contains(secret), "a credential was logged");
        assert!(!metrics.contains(secret), "a credential is in the metrics");
    }
    assert!(
        text.contains("upstream") || text.contains("request"),
        "logs were captured"
    );
}
