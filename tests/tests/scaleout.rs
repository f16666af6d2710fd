//! Scale-out behind a real nginx: three ssemux instances behind
//! `hash $cookie_session consistent`, one mock backend, one shared
//! `hub.resume_key_file`. The backend must see exactly one upstream stream
//! per user fleet-wide; when an instance dies only its users move, their tabs
//! get exactly the triggers they missed (resumed from the backend's history:
//! no `resync`, no duplicate), and the count returns to one per user. No tab
//! ever sees another user's triggers.
//!
//! nginx comes from Debian (`make test` installs it). Without an `nginx`
//! binary on PATH the test fails with a message saying so.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Env, Tab};
use ssemux_mock_upstream::MockBackend;

const USERS: usize = 200;
const TABS_PER_USER: usize = 3;
const INSTANCES: usize = 3;
/// Everything in this test waits on conditions with this deadline.
const DEADLINE: Duration = Duration::from_secs(60);

/// An nginx started on loopback with a generated config in its own directory.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    fn start(instances: &[SocketAddr]) -> Nginx {
        let dir = std::env::temp_dir().join(format!(
            "ssemux-scaleout-{}-{:x}",
            std::process::id(),
            fastrand_u64()
        ));
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx tempdir");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let servers: String = instances
            .iter()
            .map(|a| format!("        server {a} max_fails=1 fail_timeout=60s;\n"))
            .collect();
        let d = dir.display();
        // The same recipe as deploy/nginx.conf, minus TLS (loopback only).
        let conf = format!(
            r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    upstream ssemux {{
        hash $cookie_session consistent;
{servers}        keepalive 16;
    }}
    server {{
        listen {addr} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_next_upstream error timeout;
        proxy_connect_timeout 2s;
        location = /events {{
            proxy_pass http://ssemux;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            gzip off;
        }}
        location / {{
            proxy_pass http://ssemux;
            proxy_set_header Connection "";
            proxy_buffering off;
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
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nginx ({e}); `make test` installs it (apt-get install nginx)")
            });
        Nginx { child, dir, addr }
    }

    /// Wait until nginx accepts connections, or panic with its error log.
    async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}): {}", self.error_log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not start listening: {}",
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
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

fn fastrand_u64() -> u64 {
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

/// What one simulated browser tab saw across all its connections.
#[derive(Default)]
struct TabLog {
    /// Connections that got a 200 stream.
    connects: usize,
    /// (connection number, event name, data), in arrival order.
    events: Vec<(usize, String, String)>,
}

/// A tab that behaves like `EventSource`: reconnects after the stream ends,
/// sending the last id it saw.
fn spawn_tab(
    nginx: SocketAddr,
    cookie: String,
    log: Arc<Mutex<TabLog>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_id: Option<String> = None;
        // Bounded: a tab that cannot stay connected gives up eventually.
        for _ in 0..200 {
            match Tab::open(nginx, "/events", &cookie, last_id.as_deref()).await {
                Ok(mut tab) => {
                    let conn = {
                        let mut l = log.lock().expect("log");
                        l.connects += 1;
                        l.connects
                    };
                    while let Some(ev) = tab.next_within(Duration::from_secs(3600)).await {
                        if !ev.id.is_empty() {
                            last_id = Some(ev.id.clone());
                        }
                        log.lock()
                            .expect("log")
                            .events
                            .push((conn, ev.event, ev.data));
                    }
                }
                Err(_status) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `nginx` on PATH, else Debian's location (not on a normal user's PATH).
fn nginx_bin() -> &'static str {
    let on_path = Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path { "nginx" } else { "/usr/sbin/nginx" }
}

fn has_nginx() -> bool {
    Command::new(nginx_bin())
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_consistent_hash_keeps_one_upstream_per_user_across_instance_loss() {
    assert!(
        has_nginx(),
        "nginx not found on PATH; `make test` installs it (apt-get install nginx)"
    );
    let backend = MockBackend::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("mock backend");
    let dir = std::env::temp_dir().join(format!("ssemux-scaleout-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("resume.key");
    std::fs::write(&key, "scale-out-test-resume-key-0123456789abcdef").expect("key");
    let shared_key = format!("hub.resume_key_file={}", key.display());
    let overrides = [
        shared_key.as_str(),
        "hub.grace=1s",
        "hub.retry_hint=100ms",
        // Every connection arrives from nginx's address.
        "server.events_connects_per_second=0",
        "hub.max_total_tabs=100000",
        "server.drain_timeout=2s",
    ];
    let mut envs = Vec::new();
    for _ in 0..INSTANCES {
        envs.push(Env::start_for(backend.clone(), &overrides).await);
    }
    let addrs: Vec<SocketAddr> = envs.iter().map(|e| e.addr).collect();
    let mut nginx = Nginx::start(&addrs);
    nginx.ready().await;

    let users: Vec<String> = (0..USERS).map(|i| format!("u{i:03}")).collect();
    let cookies: HashMap<String, String> = users
        .iter()
        .map(|u| (u.clone(), format!("session={}", backend.create_session(u))))
        .collect();
    let mut logs: HashMap<String, Vec<Arc<Mutex<TabLog>>>> = HashMap::new();
    let mut tasks = Vec::new();
    for u in &users {
        for _ in 0..TABS_PER_USER {
            let log = Arc::new(Mutex::new(TabLog::default()));
            tasks.push(spawn_tab(nginx.addr, cookies[u].clone(), log.clone()));
            logs.entry(u.clone()).or_default().push(log);
        }
    }
    let total_tabs =
        |envs: &[Env]| -> usize { envs.iter().map(|e| e.gateway.hub().total_tabs()).sum() };

    // 200 users × 3 tabs → 600 tabs, 200 upstreams, each user on one instance.
    wait_for("600 tabs and 200 upstream streams", || {
        total_tabs(&envs) == USERS * TABS_PER_USER && backend.open_streams_total() == USERS
    })
    .await;
    for u in &users {
        let homes: Vec<usize> = (0..INSTANCES)
            .filter(|&i| envs[i].gateway.hub().tabs(u) > 0)
            .collect();
        assert_eq!(
            homes.len(),
            1,
            "{u}'s tabs are split across instances {homes:?}"
        );
        assert_eq!(envs[homes[0]].gateway.hub().tabs(u), TABS_PER_USER);
        assert_eq!(backend.open_streams(u), 1, "{u} has more than one upstream");
    }
    let per_instance: Vec<usize> = envs.iter().map(|e| e.gateway.hub().channels()).collect();
    assert_eq!(per_instance.iter().sum::<usize>(), USERS);
    assert!(
        per_instance.iter().all(|&n| n > 0),
        "hashing left an instance empty: {per_instance:?}"
    );

    // A trigger per user, carrying the user's own name.
    emit_round(&backend, &users, "first");
    wait_for("every tab got its first trigger", || {
        every_tab_saw(&logs, "first")
    })
    .await;

    // Kill instance 0: its users move, the others stay put.
    let victims: Vec<String> = users
        .iter()
        .filter(|u| envs[0].gateway.hub().tabs(u) > 0)
        .cloned()
        .collect();
    assert!(!victims.is_empty());
    let opened_before = backend.streams_opened_total();
    envs[0].gateway.shutdown_token().cancel();
    // Sent while the victims move: each tab must get it exactly once, from
    // the dying instance or from the backend's history on the new one.
    emit_round(&backend, &users, "moving");
    wait_for("victims' tabs reconnected elsewhere", || {
        victims
            .iter()
            .all(|u| logs[u].iter().all(|l| l.lock().expect("log").connects >= 2))
            && envs[1..]
                .iter()
                .map(|e| e.gateway.hub().total_tabs())
                .sum::<usize>()
                == USERS * TABS_PER_USER
    })
    .await;
    wait_for("backend back to exactly one stream per user", || {
        backend.open_streams_total() == USERS && users.iter().all(|u| backend.open_streams(u) == 1)
    })
    .await;
    assert_eq!(
        backend.streams_opened_total() - opened_before,
        victims.len() as u64,
        "only the victims' upstreams should have been reopened"
    );
    wait_for("every tab got the trigger sent while moving", || {
        every_tab_saw(&logs, "moving")
    })
    .await;
    for u in &victims {
        for l in &logs[u] {
            let l = l.lock().expect("log");
            assert!(
                !l.events.iter().any(|(_, name, _)| name == "resync"),
                "{u}: a resync, where the backend had the history: {:?}",
                l.events
            );
            let moving = format!("{u}:moving");
            let copies = l
                .events
                .iter()
                .filter(|(_, name, data)| name == "thread-updated" && *data == moving)
                .count();
            assert_eq!(
                copies, 1,
                "{u}: got the trigger {copies} times: {:?}",
                l.events
            );
        }
    }
    for u in users.iter().filter(|u| !victims.contains(u)) {
        for l in &logs[u] {
            assert_eq!(
                l.lock().expect("log").connects,
                1,
                "{u} moved but its instance lived"
            );
        }
    }

    // What an operator sees: each surviving instance's /metrics.
    let mut sums = HashMap::<&str, f64>::new();
    for env in &envs[1..] {
        let (status, _, text) = common::request(env.addr, "GET", "/metrics", &[], "").await;
        assert_eq!(status, http::StatusCode::OK);
        for series in [
            "ssemux_tabs_open",
            "ssemux_channels_open",
            "ssemux_upstream_connections_open",
            "ssemux_upstream_connects_total",
            "ssemux_resyncs_total{cause=\"epoch\"}",
        ] {
            *sums.entry(series).or_default() += metric(&text, series);
        }
    }
    assert_eq!(sums["ssemux_tabs_open"], (USERS * TABS_PER_USER) as f64);
    assert_eq!(sums["ssemux_channels_open"], USERS as f64);
    assert_eq!(sums["ssemux_upstream_connections_open"], USERS as f64);
    assert_eq!(sums["ssemux_upstream_connects_total"], USERS as f64);
    assert_eq!(
        sums["ssemux_resyncs_total{cause=\"epoch\"}"], 0.0,
        "moved tabs resumed, none resynced"
    );

    emit_round(&backend, &users, "second");
    wait_for("every tab got its second trigger", || {
        every_tab_saw(&logs, "second")
    })
    .await;

    // No tab ever saw another user's data.
    for (u, tabs) in &logs {
        for l in tabs {
            for (_, name, data) in &l.lock().expect("log").events {
                if name == "thread-updated" || name == "contact-changed" {
                    assert!(
                        data.starts_with(&format!("{u}:")),
                        "{u} saw a trigger for someone else: {name} {data}"
                    );
                }
            }
        }
    }

    for t in tasks {
        t.abort();
    }
    assert!(
        !nginx.error_log().contains("[emerg]"),
        "nginx: {}",
        nginx.error_log()
    );
    drop(nginx);
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

/// The shipped recipe, `deploy/nginx.conf`, passes `nginx -t` (with the
/// test certificate standing in for the real one).
#[test]
fn deploy_nginx_conf_is_valid() {
    assert!(
        has_nginx(),
        "nginx not found on PATH; `make test` installs it (apt-get install nginx)"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("crates/gateway/tests/data");
    let recipe =
        std::fs::read_to_string(root.join("deploy/nginx.conf")).expect("deploy/nginx.conf");
    let recipe = recipe
        .replace(
            "/etc/nginx/tls/fullchain.pem",
            &data.join("server.pem").display().to_string(),
        )
        .replace(
            "/etc/nginx/tls/privkey.pem",
            &data.join("server.key").display().to_string(),
        );
    let dir = std::env::temp_dir().join(format!("ssemux-nginx-t-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tmp")).expect("tempdir");
    std::fs::write(dir.join("ssemux.conf"), recipe).expect("write recipe");
    let d = dir.display();
    let conf = format!(
        "pid {d}/nginx.pid;\nevents {{}}\nhttp {{\n    client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n    fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n    scgi_temp_path {d}/tmp/scgi;\n    include {d}/ssemux.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
    let out = Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .output()
        .expect("run nginx -t");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "nginx -t refused deploy/nginx.conf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn emit_round(backend: &MockBackend, users: &[String], round: &str) {
    for u in users {
        let data = serde_json::json!({ "peer": format!("{u}:{round}"), "rowId": 1 });
        backend.emit(u, "outbound-state", &data.to_string());
    }
}

fn every_tab_saw(logs: &HashMap<String, Vec<Arc<Mutex<TabLog>>>>, round: &str) -> bool {
    logs.iter().all(|(u, tabs)| {
        let want = format!("{u}:{round}");
        tabs.iter().all(|l| {
            l.lock()
                .expect("log")
                .events
                .iter()
                .any(|(_, name, data)| name == "thread-updated" && *data == want)
        })
    })
}
