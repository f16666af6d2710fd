//! An https backend behind a real nginx that terminates TLS, with and without
//! HTTP/2 (issue 21). nginx allows 8 concurrent h2 streams per connection;
//! 40 users each open a tab and must all get their upstream and their
//! trigger, and proxied requests (a page, a fragment, a login) must get the
//! answer the mock gives directly while those 40 streams are open.
//!
//! The certificate is the test CA's `localhost`/`127.0.0.1` one in
//! `crates/gateway/tests/data`. nginx comes from Debian (`make test-deps`
//! installs it); without it the tests fail saying so.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{Env, Tab};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ssemux_mock_upstream::MockBackend;
use tokio::net::TcpStream;
use tokio::time::Instant;

const USERS: usize = 40;
/// nginx's `http2_max_concurrent_streams`: far fewer than `USERS`.
const MAX_STREAMS: usize = 8;
/// Longest wait for a tab's response head (auth times out after 5 s, the
/// first-upstream wait after 2 s more).
const OPEN_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the backend to show every user's upstream stream (a
/// little over `upstream.response_timeout`, so a queued stream gets one retry).
const STREAMS_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for every tab's trigger once it is emitted.
const TRIGGER_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a proxied answer (above `proxy.response_timeout`).
const PROXY_WAIT: Duration = Duration::from_secs(15);

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/gateway/tests/data")
        .join(name)
}

/// nginx terminating TLS (optionally with h2) in front of the mock backend,
/// with a generated config in its own directory.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    fn start(mock: SocketAddr, h2: bool) -> Nginx {
        let dir = std::env::temp_dir().join(format!(
            "ssemux-https-backend-{}-{}-{:x}",
            if h2 { "h2" } else { "h1" },
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx tempdir");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let d = dir.display();
        let (cert, key) = (data("server.pem"), data("server.key"));
        let (cert, key) = (cert.display(), key.display());
        // nginx 1.22 syntax: `http2` is a `listen` parameter.
        let http2 = if h2 { " http2" } else { "" };
        // `info`: nginx logs client errors (such as a duplicate Host) there.
        let conf = format!(
            r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen {addr} ssl{http2};
        http2_max_concurrent_streams {MAX_STREAMS};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://{mock};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            gzip off;
        }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nginx ({e}); `make test-deps` installs it (apt-get install nginx)"
                )
            });
        Nginx { child, dir, addr }
    }

    /// Wait until nginx accepts connections, or panic with its error log.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}): {}", self.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start listening: {}",
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The error log's `[error]`/`[warn]`/`[info]` lines about clients and
    /// upstreams, without timestamps and pids, deduplicated (at most 10).
    fn error_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for line in self.error_log().lines() {
            let Some(at) = line.find(" [") else { continue };
            let rest = &line[at + 1..];
            if rest.starts_with("[notice]") {
                continue;
            }
            // "[info] 123#123: *45 client sent…" → "[info] client sent…"
            let (level, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            let msg = msg.split_once(": ").map_or(msg, |(_, m)| m);
            let msg = match msg.strip_prefix('*') {
                Some(m) => m.split_once(' ').map_or(m, |(_, m)| m),
                None => msg,
            };
            // Drop the per-connection tail (client address, request line).
            let msg = msg.split(", client:").next().unwrap_or(msg);
            // Our readiness probe connects without a handshake.
            if msg.starts_with("client closed connection while SSL handshaking") {
                continue;
            }
            // "stream 89" and "stream 91" are the same line.
            let msg: String = msg
                .split(' ')
                .map(|w| {
                    if w.bytes().all(|b| b.is_ascii_digit()) {
                        "N"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let line = format!("{level} {msg}");
            if !out.contains(&line) && out.len() < 10 {
                out.push(line);
            }
        }
        out
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Our own child, by pid. SIGTERM first: the master then stops its
        // workers; a SIGKILLed master would leave them orphaned.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// A port that was free a moment ago (nginx binds it itself).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
    l.local_addr().expect("probe addr").port()
}

/// `nginx` on PATH, else Debian's location (not on a normal user's PATH).
fn nginx_bin() -> &'static str {
    let works = |bin: &str| {
        Command::new(bin)
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("nginx") {
        "nginx"
    } else if works("/usr/sbin/nginx") {
        "/usr/sbin/nginx"
    } else {
        panic!(
            "nginx not found (neither on PATH nor /usr/sbin/nginx); \
             `make test-deps` installs it (apt-get install nginx)"
        )
    }
}

/// One request on a fresh h1 connection; the status and body, or why there
/// was none within `wait`.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    wait: Duration,
) -> Result<(StatusCode, String), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("response: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(wait, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {wait:?}")))
}

/// One request through ssemux next to the same request straight to the
/// mock: `None` if ssemux gave the mock's status, else what went wrong.
async fn compare(
    env: &Env,
    when: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<String> {
    let (direct, proxied) = tokio::join!(
        send(env.backend.addr(), method, path, headers, body, PROXY_WAIT),
        send(env.addr, method, path, headers, body, PROXY_WAIT),
    );
    let direct = match direct {
        Ok((s, _)) => s,
        Err(e) => panic!("the mock itself did not answer {method} {path}: {e}"),
    };
    match proxied {
        Ok((s, _)) if s == direct => None,
        Ok((s, body)) => Some(format!(
            "{when}: {method} {path} through ssemux answered {s} (mock directly: {direct}): {}",
            excerpt(&body)
        )),
        Err(e) => Some(format!(
            "{when}: {method} {path} through ssemux: {e} (mock directly: {direct})"
        )),
    }
}

/// A body's first words on one line (nginx's error page: its title).
fn excerpt(body: &str) -> String {
    let text = match (body.find("<title>"), body.find("</title>")) {
        (Some(a), Some(b)) if a < b => &body[a + "<title>".len()..b],
        _ => body,
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    words.join(" ").chars().take(80).collect()
}

/// A page, a fragment and a login for `user`, concurrently; one line per
/// request whose status through ssemux differs from the mock's own.
async fn check_proxied(env: &Env, user: &str, cookie: &str, when: &str) -> Vec<String> {
    let login = serde_json::json!({ "user": user }).to_string();
    let with_cookie = [("cookie", cookie)];
    let json = [("content-type", "application/json")];
    let (page, fragment, login) = tokio::join!(
        compare(env, when, "GET", "/", &with_cookie, ""),
        compare(env, when, "GET", "/fragments/sidebar", &with_cookie, ""),
        compare(env, when, "POST", "/login", &json, &login),
    );
    [page, fragment, login].into_iter().flatten().collect()
}

/// The value of one series in a Prometheus text exposition (0 if absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The whole scenario against nginx with or without h2; panics listing
/// everything that went wrong.
async fn forty_users_and_proxied_requests(h2: bool, extra: &[&str]) {
    let backend = MockBackend::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("mock backend");
    let mut nginx = Nginx::start(backend.addr(), h2);
    nginx.ready().await;
    let backend_url = format!("backend=https://127.0.0.1:{}", nginx.addr.port());
    let ca = format!("upstream.extra_ca_pem={}", data("ca.pem").display());
    let env = Env::start_for(
        backend,
        &[
            &backend_url,
            &ca,
            // Every tab connects from 127.0.0.1.
            "server.events_connects_per_second=0",
            extra
                .first()
                .copied()
                .unwrap_or("upstream.http_version=auto"),
            extra
                .get(1)
                .copied()
                .unwrap_or("upstream.h2_streams_per_connection=100"),
            // Keep a request queued behind the streams within PROXY_WAIT.
            "proxy.response_timeout=10s",
        ],
    )
    .await;
    let mut problems: Vec<String> = Vec::new();

    let users: Vec<String> = (1..=USERS).map(|i| format!("user{i}")).collect();
    let cookies: Vec<String> = users.iter().map(|u| env.cookie(u)).collect();

    // Before any stream is open: proxied requests alone.
    problems.extend(check_proxied(&env, &users[0], &cookies[0], "before the streams").await);

    // One tab per user, all at once.
    let opens: Vec<_> = cookies
        .iter()
        .map(|c| {
            let (addr, c) = (env.addr, c.clone());
            tokio::spawn(
                async move { Tab::open_within(addr, "/events", &c, None, OPEN_WAIT).await },
            )
        })
        .collect();
    let mut tabs: Vec<(String, Tab)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for (u, open) in users.iter().zip(opens) {
        match open.await {
            Ok(Ok(tab)) => tabs.push((u.clone(), tab)),
            Ok(Err(status)) => refused.push(format!("{u}: {status}")),
            // `open_within` panics when no response head came in time.
            Err(_) => refused.push(format!("{u}: no response head within {OPEN_WAIT:?}")),
        }
    }
    if !refused.is_empty() {
        problems.push(format!(
            "{} of {USERS} tabs were refused: {}",
            refused.len(),
            refused.join(", ")
        ));
    }

    // Every user's upstream stream reaches the mock (through nginx).
    let all_streams = env
        .backend
        .wait_until(STREAMS_WAIT, |b| b.open_streams_total() == USERS)
        .await;
    if !all_streams {
        let missing: Vec<&str> = users
            .iter()
            .filter(|u| env.backend.open_streams(u) == 0)
            .map(String::as_str)
            .collect();
        problems.push(format!(
            "after {STREAMS_WAIT:?} the mock saw {} upstream streams, not {USERS}; \
             no upstream for {}: {}",
            env.backend.open_streams_total(),
            missing.len(),
            missing.join(" ")
        ));
    }

    // A trigger per user, carrying the user's own name.
    for u in &users {
        let data = serde_json::json!({ "peer": format!("{u}:go"), "rowId": 1 });
        env.backend.emit(u, "outbound-state", &data.to_string());
    }
    let deadline = Instant::now() + TRIGGER_WAIT;
    let mut silent: Vec<String> = Vec::new();
    for (u, tab) in &mut tabs {
        let want = format!("{u}:go");
        let mut got = false;
        while let Some(ev) = tab
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            if ev.event == "thread-updated" {
                assert_eq!(ev.data, want, "{u} got someone else's trigger");
                got = true;
                break;
            }
        }
        if !got {
            silent.push(u.clone());
        }
    }
    if !silent.is_empty() {
        problems.push(format!(
            "{} of {} open tabs got no trigger within {TRIGGER_WAIT:?}: {}",
            silent.len(),
            tabs.len(),
            silent.join(" ")
        ));
    }

    // While the streams are open, proxied requests still get the mock's answer.
    assert_eq!(env.gateway.hub().total_tabs(), tabs.len());
    problems.extend(check_proxied(&env, &users[1], &cookies[1], "with the streams open").await);

    if !problems.is_empty() {
        let (_, _, text) = common::request(env.addr, "GET", "/metrics", &[], "").await;
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ssemux_upstream_failures_total{") && !l.ends_with(" 0"))
            .collect();
        problems.push(format!(
            "mock: {} upstream streams opened in all, {} open; \
             ssemux: {} upstream connections open, {}",
            env.backend.streams_opened_total(),
            env.backend.open_streams_total(),
            metric(&text, "ssemux_upstream_connections_open"),
            if failures.is_empty() {
                "no upstream failures".to_string()
            } else {
                failures.join(", ")
            }
        ));
        for line in nginx.error_lines() {
            problems.push(format!("nginx error.log: {line}"));
        }
    }
    drop(tabs);
    drop(nginx);
    assert!(
        problems.is_empty(),
        "https backend via nginx (h2 {}):\n  {}",
        if h2 { "on" } else { "off" },
        problems.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_backend_with_8_streams_serves_40_users_and_proxied_requests() {
    forty_users_and_proxied_requests(true, &[]).await;
}

/// The users' streams over h2 on purpose: as many connections as the
/// backend's stream limit requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_h2_upstreams_spread_over_connections_within_the_stream_limit() {
    forty_users_and_proxied_requests(
        true,
        &[
            "upstream.http_version=http2",
            "upstream.h2_streams_per_connection=8",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_tls_backend_serves_40_users_and_proxied_requests() {
    forty_users_and_proxied_requests(false, &[]).await;
}
