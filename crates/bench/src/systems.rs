//! Systems: the five things under test, each started on loopback from the
//! same recipe every run — ssemux + mock backend, nginx pass-through in front
//! of the mock, Pushpin with a GRIP origin, nchan, and the raw floor — and the
//! one way each of them is fed events and reached by tabs. Two opt-in
//! variants put ssemux in front of an https backend (nginx terminating TLS
//! with h2 in front of the mock) for the idle scenario. Plain ssemux also
//! starts with a pass-through rule file for the pass-through fan-out, its
//! events then carrying 1 KiB payloads.
//!
//! Owns configs, ports, process start/stop and publishing. It must never
//! leave a process behind (every child is a [`Proc`], killed on drop) and
//! never skip a system silently: a start failure is returned as an error the
//! runner reports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::client::{TabSpec, source_ip};
use crate::pass;
use crate::procs::Proc;
use crate::tap::Tap;

/// The systems, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// ssemux in front of the mock backend.
    Ssemux,
    /// nginx `proxy_buffering off` in front of the mock: one upstream per tab.
    NginxPassthrough,
    /// Pushpin (GRIP) with a hold-stream origin and HTTP publishing.
    Pushpin,
    /// nginx + nchan pub/sub.
    Nchan,
    /// The raw tokio floor.
    Floor,
    /// ssemux with an `https://` backend: nginx terminating TLS (`listen …
    /// ssl http2`, default stream limit) in front of the mock. Idle only.
    SsemuxHttps,
    /// The same with `upstream.http_version=http2` forced. Idle only.
    SsemuxHttpsH2,
}

impl Kind {
    /// Every system, ssemux first (the reference for ratios).
    pub const ALL: [Kind; 5] = [
        Kind::Ssemux,
        Kind::NginxPassthrough,
        Kind::Pushpin,
        Kind::Nchan,
        Kind::Floor,
    ];

    /// Selectable with `--systems` but not run by default.
    pub const OPT_IN: [Kind; 2] = [Kind::SsemuxHttps, Kind::SsemuxHttpsH2];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ssemux => "ssemux",
            Kind::NginxPassthrough => "nginx-passthrough",
            Kind::Pushpin => "pushpin",
            Kind::Nchan => "nchan",
            Kind::Floor => "raw-floor",
            Kind::SsemuxHttps => "ssemux-https",
            Kind::SsemuxHttpsH2 => "ssemux-https-h2",
        }
    }

    /// Parse a report name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain(Kind::OPT_IN)
            .find(|k| k.name() == s)
    }

    /// Whether tabs of this system are fed by a per-user backend stream
    /// (so backend restarts and upstream counts mean something).
    pub fn has_backend_stream(self) -> bool {
        self.is_ssemux() || self == Kind::NginxPassthrough
    }

    /// ssemux, whatever its backend.
    pub fn is_ssemux(self) -> bool {
        matches!(self, Kind::Ssemux | Kind::SsemuxHttps | Kind::SsemuxHttpsH2)
    }

    /// Why `scenario` is not run for this system, if it is not.
    pub fn not_applicable(self, scenario: &str) -> Option<&'static str> {
        match self {
            Kind::SsemuxHttps | Kind::SsemuxHttpsH2 if scenario != "idle" => Some(
                "the https backend variants measure idle memory only (see the plain-http ssemux row)",
            ),
            k if scenario == "fanout-pass" && k != Kind::Ssemux => Some(
                "pass-through rules are ssemux's; this step compares ssemux with itself (see the trigger fan-out for the peers)",
            ),
            k if scenario == "outage" && k != Kind::Ssemux => Some(
                "ssemux only: the peers have no upstream of their own to share, so there is no shared recovery to compare",
            ),
            k if scenario == "bursty" && k != Kind::Ssemux => {
                Some("ssemux only: coalescing triggers is a rule of ssemux's translation")
            }
            _ => None,
        }
    }

    /// The file ssemux (or the system's main process) logs to.
    pub fn log_file(self) -> &'static str {
        match self {
            Kind::Ssemux => "ssemux.log",
            Kind::NginxPassthrough => "nginx.log",
            Kind::Pushpin => "pushpin.log",
            Kind::Nchan => "nchan.log",
            Kind::Floor => "floor.log",
            Kind::SsemuxHttps => "ssemux-https.log",
            Kind::SsemuxHttpsH2 => "ssemux-https-h2.log",
        }
    }
}

/// What the upstream events carry and what the tabs receive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// `inbound {peer: <ts>}` upstream, two short triggers per tab (ssemux's
    /// default rules); every system.
    #[default]
    Triggers,
    /// ssemux with a `*` pass-through rule: a [`pass::DATA_BYTES`] JSON
    /// event upstream, the same event byte for byte at every tab.
    Pass,
}

impl Payload {
    /// Events a tab receives per emitted upstream event.
    pub fn per_event(self) -> u64 {
        match self {
            Payload::Triggers => 2,
            Payload::Pass => 1,
        }
    }

    /// Name in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Payload::Triggers => "triggers",
            Payload::Pass => "pass",
        }
    }
}

/// How ssemux is started for a scenario, beyond the payload.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// What the upstream events carry.
    pub payload: Payload,
    /// A configuration file for ssemux (TOML text), if any.
    pub ssemux_config: Option<String>,
    /// Put the counting [`Tap`] between ssemux and the mock.
    pub tap: bool,
}

impl Setup {
    /// Just a payload.
    pub fn payload(payload: Payload) -> Setup {
        Setup {
            payload,
            ..Setup::default()
        }
    }
}

/// The mock's events path, which ssemux uses by default.
pub const EVENTS_PATH: &str = "/api/v1/events";

/// Mock batch requests stay under this (its cap is 4 MiB): a tick of 1 KiB
/// pass-through events at the top rates is larger and goes as several.
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Where binaries and scratch files are.
#[derive(Clone, Debug)]
pub struct Env {
    /// Directory holding `ssemux`, `ssemux-mock-upstream`, `ssemux-bench`.
    pub bin_dir: PathBuf,
    /// Scratch directory for configs and logs of this run.
    pub work: PathBuf,
    /// Extra `--set KEY=VALUE` overrides for ssemux (diagnostic runs).
    pub ssemux_sets: Vec<String>,
}

const MOCK_PORT: u16 = 18_081;
const SSEMUX_PORT: u16 = 18_080;
/// The counting relay between ssemux and the mock (outage scenario).
const TAP_PORT: u16 = 18_082;
const NGINX_PORT: u16 = 18_090;
const NCHAN_PORT: u16 = 18_091;
const NGINX_TLS_PORT: u16 = 18_092;
const PUSHPIN_PORT: u16 = 18_100;
const PUSHPIN_PUBLISH_PORT: u16 = 18_101;
const PUSHPIN_ORIGIN_PORT: u16 = 18_102;
const FLOOR_PORT: u16 = 18_110;
const FLOOR_CONTROL_PORT: u16 = 18_111;

const PUSHPIN_PUSH_IN_PORT: u16 = 18_103;
const PUSHPIN_PUSH_SUB_PORT: u16 = 18_104;
const PUSHPIN_COMMAND_PORT: u16 = 18_105;
/// The highest of the ports above.
const LAST_PORT: u16 = FLOOR_CONTROL_PORT;

/// Added to every port above (`--port-offset`), so that two bench runs on
/// one machine do not measure each other's processes.
static PORT_OFFSET: AtomicU16 = AtomicU16::new(0);

/// Shift every port of this run by `offset`.
pub fn set_port_offset(offset: u16) -> anyhow::Result<()> {
    if LAST_PORT.checked_add(offset).is_none() {
        anyhow::bail!("--port-offset {offset} puts ports past 65535");
    }
    PORT_OFFSET.store(offset, Ordering::Relaxed);
    Ok(())
}

/// One of the ports above, shifted by the run's offset.
fn port(base: u16) -> u16 {
    base + PORT_OFFSET.load(Ordering::Relaxed)
}

/// Loopback address of one of the ports above (shifted by the offset).
fn lo(base: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port(base)))
}

/// Fail if something already listens on one of `ports` (another bench run):
/// waiting for a port would otherwise find that run's process and measure it.
async fn ensure_free(ports: &[u16]) -> anyhow::Result<()> {
    for &p in ports {
        if TcpStream::connect(lo(p)).await.is_ok() {
            anyhow::bail!(
                "something already listens on {} (another bench run?); pass --port-offset to use other ports",
                lo(p)
            );
        }
    }
    Ok(())
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One started system.
pub struct System {
    /// Which one.
    pub kind: Kind,
    /// What its events carry.
    pub payload: Payload,
    servers: Vec<Proc>,
    backend: Option<Proc>,
    /// Processes in the path that are neither measured nor the backend
    /// (the TLS-terminating nginx of the https variants).
    helpers: Vec<Proc>,
    tab_addr: SocketAddr,
    http: HttpClient,
    cookies: Vec<String>,
    floor_ctl: Option<Mutex<TcpStream>>,
    origin: Option<tokio::task::JoinHandle<()>>,
    /// The counting relay in front of the mock, if the setup asked for one.
    pub tap: Option<Tap>,
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(o) = self.origin.take() {
            o.abort();
        }
        // Procs stop themselves on drop.
    }
}

async fn wait_port(addr: SocketAddr, procs: &mut [Proc], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        for p in procs.iter_mut() {
            if let Some(st) = p.exited() {
                anyhow::bail!("{} exited during start-up ({st})", p.name);
            }
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("nothing listening on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `GET path` at `addr` answers `200` three times in a row (each
/// a fresh connection, closed at once), or fail after `within`.
async fn wait_stream(
    addr: SocketAddr,
    path: &str,
    procs: &mut [Proc],
    within: Duration,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + within;
    let mut ok_in_a_row = 0;
    let mut last = String::from("no answer");
    while ok_in_a_row < 3 {
        for p in procs.iter_mut() {
            if let Some(st) = p.exited() {
                anyhow::bail!("{} exited during start-up ({st})", p.name);
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no stream from {addr}{path} within {within:?} (last: {last})");
        }
        let probe = async {
            let mut sock = TcpStream::connect(addr).await?;
            sock.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut buf = [0u8; 64];
            let n = sock.read(&mut buf).await?;
            anyhow::Ok(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            )
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(line)) if line.starts_with("HTTP/1.1 200") => ok_in_a_row += 1,
            Ok(Ok(line)) => {
                ok_in_a_row = 0;
                last = line;
            }
            Ok(Err(e)) => {
                ok_in_a_row = 0;
                last = e.to_string();
            }
            Err(_) => {
                ok_in_a_row = 0;
                last = "no answer within 2 s".into();
            }
        }
        if ok_in_a_row < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

fn http_client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(conn)
}

async fn spawn_mock(env: &Env) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(env.bin_dir.join("ssemux-mock-upstream"));
    cmd.args(["--listen", &lo(MOCK_PORT).to_string()])
        .env("RUST_LOG", "warn");
    let mut p = vec![Proc::spawn(
        "mock-upstream",
        cmd,
        &env.work.join("mock.log"),
    )?];
    wait_port(lo(MOCK_PORT), &mut p, Duration::from_secs(15)).await?;
    p.pop().ok_or_else(|| anyhow::anyhow!("mock vanished"))
}

fn nginx_conf(env: &Env, name: &str, body: &str, module: Option<&str>) -> anyhow::Result<PathBuf> {
    let dir = env.work.join(name);
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    let load = module
        .map(|m| format!("load_module {m};\n"))
        .unwrap_or_default();
    let conf = format!(
        "{load}worker_processes 2;\nworker_rlimit_nofile 200000;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 100000; multi_accept on; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         keepalive_requests 1000000;\n{body}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

async fn spawn_nginx(env: &Env, name: &str, conf: &Path, base: u16) -> anyhow::Result<Proc> {
    let nginx = which("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .ok_or_else(|| anyhow::anyhow!("nginx is not installed"))?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(env.work.join(name))
        .arg("-c")
        .arg(conf)
        .args(["-g", "daemon off;"]);
    let mut p = vec![Proc::spawn(
        name,
        cmd,
        &env.work.join(format!("{name}.log")),
    )?];
    wait_port(lo(base), &mut p, Duration::from_secs(15)).await?;
    p.pop().ok_or_else(|| anyhow::anyhow!("nginx vanished"))
}

/// Start ssemux in front of `backend` with `config` (if any), the variant's
/// `sets`, then the user's `--ssemux-set` values (which may override them).
async fn spawn_ssemux(
    env: &Env,
    kind: Kind,
    backend: &str,
    config: Option<&Path>,
    sets: &[&str],
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(env.bin_dir.join("ssemux"));
    cmd.arg("serve");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(["--backend", backend])
        .args(["--listen", &lo(SSEMUX_PORT).to_string()])
        .args(["--set", "hub.max_total_tabs=1000000"])
        .args(sets.iter().flat_map(|s| ["--set", s]))
        .args(env.ssemux_sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .env("SSEMUX_LOG", "warn");
    let mut p = vec![Proc::spawn(
        kind.name(),
        cmd,
        &env.work.join(kind.log_file()),
    )?];
    wait_port(lo(SSEMUX_PORT), &mut p, Duration::from_secs(15)).await?;
    p.pop().ok_or_else(|| anyhow::anyhow!("ssemux vanished"))
}

/// The test certificate (for 127.0.0.1 and localhost), its key and CA, as
/// absolute paths: nginx and ssemux run with other working directories.
fn tls_data_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/tests/data");
    let dir = dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("test certificates not found in {}: {e}", dir.display()))?;
    for f in ["server.pem", "server.key", "ca.pem"] {
        if !dir.join(f).is_file() {
            anyhow::bail!("test certificate {f} missing in {}", dir.display());
        }
    }
    Ok(dir)
}

/// Pushpin's config: its stock internal.conf with the zurl IPC specs moved
/// into our rundir (the Debian build points them at a system zurl service),
/// zurl started by the runner, and no delivery rate cap.
fn pushpin_conf(env: &Env) -> anyhow::Result<PathBuf> {
    let dir = env.work.join("pushpin");
    for sub in ["run", "log"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let internal = std::fs::read_to_string("/usr/lib/pushpin/internal.conf")
        .map_err(|e| anyhow::anyhow!("pushpin is not installed (internal.conf: {e})"))?
        .replace(
            "ipc:///var/run/zurl/zurl-",
            "ipc://{rundir}/{ipc_prefix}zurl-",
        );
    std::fs::write(dir.join("internal.conf"), internal)?;
    std::fs::write(
        dir.join("routes"),
        format!("* {}\n", lo(PUSHPIN_ORIGIN_PORT)),
    )?;
    let d = dir.display();
    let conf = format!(
        "[global]\ninclude={d}/internal.conf\nrundir={d}/run\nipc_prefix=pushpin-\nport_offset=0\n\
         stats_connection_ttl=120\n\n\
         [runner]\nservices=condure,zurl,pushpin-proxy,pushpin-handler\nhttp_port={}\n\
         logdir={d}/log\nlog_level=1\nclient_buffer_size=8192\nclient_maxconn=200000\n\
         condure_bin=condure\nmongrel2_bin=mongrel2\nm2sh_bin=m2sh\nzurl_bin=zurl\n\n\
         [proxy]\nroutesfile={d}/routes\ndebug=false\nauto_cross_origin=false\n\
         accept_x_forwarded_protocol=false\nset_x_forwarded_protocol=proto-only\nx_forwarded_for=\n\
         x_forwarded_for_trusted=\norig_headers_need_mark=\naccept_pushpin_route=false\nlog_from=false\n\
         log_user_agent=false\nsig_iss=pushpin\nsig_key=changeme\nupstream_key=\nupdates_check=off\n\
         organization_name=\n\n\
         [handler]\npush_in_spec=tcp://{}\npush_in_sub_specs=tcp://{}\n\
         push_in_sub_connect=false\npush_in_http_addr=127.0.0.1\npush_in_http_port={}\n\
         push_in_http_max_headers_size=10000\npush_in_http_max_body_size=100000000\n\
         stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats\ncommand_spec=tcp://{}\n\
         message_rate=0\nmessage_hwm=10000000\nmessage_wait=5000\nid_cache_ttl=60\n\
         connection_subscription_max=20\nsubscription_linger=60\nstats_subscription_ttl=60\n\
         stats_report_interval=10\nstats_format=tnetstring\n",
        port(PUSHPIN_PORT),
        lo(PUSHPIN_PUSH_IN_PORT),
        lo(PUSHPIN_PUSH_SUB_PORT),
        port(PUSHPIN_PUBLISH_PORT),
        lo(PUSHPIN_COMMAND_PORT),
    );
    let path = dir.join("pushpin.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// The GRIP origin Pushpin proxies tab requests to: every `/events/<user>`
/// is held open as a stream on channel `user-<user>`.
async fn grip_origin(listener: tokio::net::TcpListener) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let user = req
                        .uri()
                        .path()
                        .strip_prefix("/events/")
                        .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphanumeric()))
                        .map(str::to_string);
                    let resp = match user {
                        Some(u) => http::Response::builder()
                            .header("content-type", "text/event-stream")
                            .header("cache-control", "no-cache")
                            .header("grip-hold", "stream")
                            .header("grip-channel", format!("user-{u}"))
                            .body(Full::new(Bytes::new())),
                        None => http::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, http::Error>(resp.unwrap_or_default())
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

impl System {
    /// Start `kind` with events carrying `payload` and log in `users` users
    /// where the system needs sessions. [`Payload::Pass`] is for plain
    /// ssemux only.
    pub async fn start(
        kind: Kind,
        env: &Env,
        users: usize,
        setup: &Setup,
    ) -> anyhow::Result<System> {
        let payload = setup.payload;
        if payload == Payload::Pass && kind != Kind::Ssemux {
            anyhow::bail!("pass-through payloads are for plain ssemux only");
        }
        if (setup.tap || setup.ssemux_config.is_some()) && kind != Kind::Ssemux {
            anyhow::bail!("a tap or a configuration file is for plain ssemux only");
        }
        let mut sys = System {
            kind,
            payload,
            servers: Vec::new(),
            backend: None,
            helpers: Vec::new(),
            tab_addr: lo(SSEMUX_PORT),
            http: http_client(),
            cookies: Vec::new(),
            floor_ctl: None,
            origin: None,
            tap: None,
        };
        let ports: &[u16] = match kind {
            Kind::Ssemux if setup.tap => &[SSEMUX_PORT, MOCK_PORT, TAP_PORT],
            Kind::Ssemux => &[SSEMUX_PORT, MOCK_PORT],
            Kind::SsemuxHttps | Kind::SsemuxHttpsH2 => &[SSEMUX_PORT, MOCK_PORT, NGINX_TLS_PORT],
            Kind::NginxPassthrough => &[NGINX_PORT, MOCK_PORT],
            Kind::Nchan => &[NCHAN_PORT],
            Kind::Pushpin => &[PUSHPIN_PORT, PUSHPIN_PUBLISH_PORT, PUSHPIN_ORIGIN_PORT],
            Kind::Floor => &[FLOOR_PORT, FLOOR_CONTROL_PORT],
        };
        ensure_free(ports).await?;
        match kind {
            Kind::Ssemux => {
                sys.backend = Some(spawn_mock(env).await?);
                let backend = if setup.tap {
                    sys.tap = Some(Tap::start(lo(TAP_PORT), lo(MOCK_PORT), EVENTS_PATH).await?);
                    format!("http://{}", lo(TAP_PORT))
                } else {
                    format!("http://{}", lo(MOCK_PORT))
                };
                let config = match (payload, &setup.ssemux_config) {
                    (Payload::Pass, Some(_)) => {
                        anyhow::bail!("the pass-through payload brings its own configuration")
                    }
                    (Payload::Pass, None) => {
                        let path = env.work.join("ssemux-pass.toml");
                        std::fs::write(&path, pass::RULES_TOML)?;
                        Some(path)
                    }
                    (Payload::Triggers, Some(toml)) => {
                        let path = env.work.join("ssemux-scenario.toml");
                        std::fs::write(&path, toml)?;
                        Some(path)
                    }
                    (Payload::Triggers, None) => None,
                };
                sys.servers =
                    vec![spawn_ssemux(env, kind, &backend, config.as_deref(), &[]).await?];
                sys.tab_addr = lo(SSEMUX_PORT);
            }
            Kind::SsemuxHttps | Kind::SsemuxHttpsH2 => {
                let data = tls_data_dir()?;
                sys.backend = Some(spawn_mock(env).await?);
                // Stock nginx otherwise: the default
                // `http2_max_concurrent_streams` (128) is the point.
                let body = format!(
                    "  upstream backend {{ server {mock}; keepalive 256; }}\n\
                     server {{\n    listen {listen} ssl http2 backlog=65535;\n\
                     ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                     location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
                     proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
                     proxy_read_timeout 1h;\n    }}\n  }}",
                    mock = lo(MOCK_PORT),
                    listen = lo(NGINX_TLS_PORT),
                    cert = data.join("server.pem").display(),
                    key = data.join("server.key").display(),
                );
                let conf = nginx_conf(env, "nginx-tls", &body, None)?;
                sys.helpers = vec![spawn_nginx(env, "nginx-tls", &conf, NGINX_TLS_PORT).await?];
                let ca = format!("upstream.extra_ca_pem={}", data.join("ca.pem").display());
                let mut sets = vec![ca.as_str()];
                if kind == Kind::SsemuxHttpsH2 {
                    sets.push("upstream.http_version=http2");
                }
                let backend = format!("https://{}", lo(NGINX_TLS_PORT));
                sys.servers = vec![spawn_ssemux(env, kind, &backend, None, &sets).await?];
                sys.tab_addr = lo(SSEMUX_PORT);
            }
            Kind::NginxPassthrough => {
                sys.backend = Some(spawn_mock(env).await?);
                let body = format!(
                    "  upstream backend {{ server {mock}; keepalive 256; }}\n\
                     server {{\n    listen {listen} backlog=65535;\n\
                     location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
                     proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
                     proxy_read_timeout 1h;\n    }}\n  }}",
                    mock = lo(MOCK_PORT),
                    listen = lo(NGINX_PORT),
                );
                let conf = nginx_conf(env, "nginx", &body, None)?;
                sys.servers = vec![spawn_nginx(env, "nginx", &conf, NGINX_PORT).await?];
                sys.tab_addr = lo(NGINX_PORT);
            }
            Kind::Nchan => {
                let module = "/usr/lib/nginx/modules/ngx_nchan_module.so";
                if !Path::new(module).is_file() {
                    anyhow::bail!("nchan is not installed ({module} missing)");
                }
                let body = format!(
                    "  nchan_shared_memory_size 512m;\n  server {{\n    listen {listen} backlog=65535;\n\
                     location ~ ^/sub/(\\w+)$ {{\n      nchan_subscriber eventsource;\n      nchan_channel_id $1;\n    }}\n\
                     location ~ ^/pub/(\\w+)$ {{\n      allow 127.0.0.1;\n      deny all;\n      nchan_publisher;\n\
                     nchan_channel_id $1;\n      nchan_message_buffer_length 16;\n      nchan_message_timeout 60s;\n    }}\n  }}",
                    listen = lo(NCHAN_PORT),
                );
                let conf = nginx_conf(env, "nchan", &body, Some(module))?;
                sys.servers = vec![spawn_nginx(env, "nchan", &conf, NCHAN_PORT).await?];
                sys.tab_addr = lo(NCHAN_PORT);
            }
            Kind::Pushpin => {
                let bin =
                    which("pushpin").ok_or_else(|| anyhow::anyhow!("pushpin is not installed"))?;
                let origin = tokio::net::TcpListener::bind(lo(PUSHPIN_ORIGIN_PORT)).await?;
                sys.origin = Some(tokio::spawn(grip_origin(origin)));
                let conf = pushpin_conf(env)?;
                let mut cmd = Command::new(bin);
                cmd.arg("--config")
                    .arg(&conf)
                    .arg("--merge-output")
                    .args(["--port", &lo(PUSHPIN_PORT).to_string()]);
                let mut p = vec![Proc::spawn("pushpin", cmd, &env.work.join("pushpin.log"))?];
                wait_port(lo(PUSHPIN_PORT), &mut p, Duration::from_secs(30)).await?;
                wait_port(lo(PUSHPIN_PUBLISH_PORT), &mut p, Duration::from_secs(30)).await?;
                // Its ports listen before its pipeline (proxy, handler,
                // zurl) is connected: tabs opened in that window got 500s
                // and time-outs. Wait until a stream opens end to end.
                wait_stream(
                    lo(PUSHPIN_PORT),
                    "/events/benchready",
                    &mut p,
                    Duration::from_secs(30),
                )
                .await?;
                sys.servers = p;
                sys.tab_addr = lo(PUSHPIN_PORT);
            }
            Kind::Floor => {
                let mut cmd = Command::new(env.bin_dir.join("ssemux-bench"));
                cmd.arg("floor")
                    .args(["--listen", &lo(FLOOR_PORT).to_string()])
                    .args(["--control", &lo(FLOOR_CONTROL_PORT).to_string()]);
                let mut p = vec![Proc::spawn("floor", cmd, &env.work.join("floor.log"))?];
                wait_port(lo(FLOOR_PORT), &mut p, Duration::from_secs(15)).await?;
                sys.servers = p;
                sys.tab_addr = lo(FLOOR_PORT);
                let ctl = TcpStream::connect(lo(FLOOR_CONTROL_PORT)).await?;
                ctl.set_nodelay(true)?;
                sys.floor_ctl = Some(Mutex::new(ctl));
            }
        }
        sys.login(users).await?;
        Ok(sys)
    }

    /// Log users `0..users` in at the mock (systems that need sessions).
    async fn login(&mut self, users: usize) -> anyhow::Result<()> {
        if !self.kind.has_backend_stream() {
            return Ok(());
        }
        let mut set = tokio::task::JoinSet::new();
        let chunk = users.div_ceil(16).max(1);
        for start in (0..users).step_by(chunk) {
            let http = self.http.clone();
            set.spawn(async move {
                let mut out = Vec::new();
                for u in start..(start + chunk).min(users) {
                    let req = http::Request::post(format!("http://{}/login", lo(MOCK_PORT)))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(format!("{{\"user\":\"user{u}\"}}"))))?;
                    let resp = http.request(req).await?;
                    let cookie = resp
                        .headers()
                        .get(http::header::SET_COOKIE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(';').next())
                        .ok_or_else(|| anyhow::anyhow!("login of user{u} set no cookie"))?
                        .to_string();
                    let _ = resp.into_body().collect().await;
                    out.push((u, cookie));
                }
                anyhow::Ok(out)
            });
        }
        let mut cookies = vec![String::new(); users];
        while let Some(r) = set.join_next().await {
            for (u, c) in r?? {
                cookies[u] = c;
            }
        }
        self.cookies = cookies;
        Ok(())
    }

    /// How tab number `i` of user `user` connects.
    pub fn tab_spec(&self, user: usize, i: usize) -> TabSpec {
        let (path, cookie) = match self.kind {
            Kind::Ssemux | Kind::SsemuxHttps | Kind::SsemuxHttpsH2 => {
                ("/events".to_string(), self.cookies.get(user).cloned())
            }
            Kind::NginxPassthrough => (
                "/api/v1/events".to_string(),
                self.cookies.get(user).cloned(),
            ),
            Kind::Pushpin | Kind::Floor => (format!("/events/user{user}"), None),
            Kind::Nchan => (format!("/sub/user{user}"), None),
        };
        TabSpec {
            addr: self.tab_addr,
            path,
            cookie,
            source: source_ip(i),
            user_gauge: None,
            pass_user: (self.payload == Payload::Pass).then_some(user),
            sentinel: None,
            open_gate: None,
        }
    }

    /// Where its tabs connect.
    pub fn tab_addr(&self) -> SocketAddr {
        self.tab_addr
    }

    /// Root pids of the server processes (the thing measured).
    pub fn server_pids(&self) -> Vec<u32> {
        self.servers.iter().map(Proc::pid).collect()
    }

    /// Root pid of the mock backend, if this system has one.
    pub fn backend_pid(&self) -> Option<u32> {
        self.backend.as_ref().map(Proc::pid)
    }

    async fn post(
        &self,
        url: String,
        headers: &[(&str, &str)],
        body: String,
    ) -> anyhow::Result<()> {
        let mut req = http::Request::post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .http
            .request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if !status.is_success() {
            anyhow::bail!("publish answered {status}");
        }
        Ok(())
    }

    /// Emit one event stamped `ts` (µs) for each user in `users`; every
    /// system turns it into the same two triggers per tab (or, with
    /// [`Payload::Pass`], ssemux passes it to every tab as it came). Returns
    /// how many user events were accepted.
    pub async fn emit(self: &Arc<Self>, users: &[usize], ts: u64) -> anyhow::Result<usize> {
        if users.is_empty() {
            return Ok(0);
        }
        if self.payload == Payload::Pass {
            return self.emit_pass(users, ts).await;
        }
        match self.kind {
            Kind::Ssemux | Kind::SsemuxHttps | Kind::SsemuxHttpsH2 => {
                let mut body = String::with_capacity(users.len() * 56);
                // `.i` makes each event's triggers distinct: a user gets
                // several events per tick, and identical triggers would be
                // coalesced — the peers deliver every one, so this step
                // measures ssemux delivering every one too.
                for (i, u) in users.iter().enumerate() {
                    body.push_str(&format!(
                        "user{u}\tinbound\t{{\"peer\":\"{ts}.{i}\",\"rowId\":0}}\n"
                    ));
                }
                self.post(
                    format!("http://{}/__admin/emit-batch", lo(MOCK_PORT)),
                    &[],
                    body,
                )
                .await?;
            }
            Kind::NginxPassthrough => {
                // Pass-through has nobody to translate: the backend sends the
                // two triggers itself.
                let mut body = String::with_capacity(users.len() * 64);
                for u in users {
                    body.push_str(&format!(
                        "user{u}\tthread-updated\t{ts}\nuser{u}\tcontact-changed\t{ts}\n"
                    ));
                }
                self.post(
                    format!("http://{}/__admin/emit-batch", lo(MOCK_PORT)),
                    &[],
                    body,
                )
                .await?;
            }
            Kind::Pushpin => {
                let content = format!(
                    "event: thread-updated\ndata: {ts}\n\nevent: contact-changed\ndata: {ts}\n\n"
                );
                let items: Vec<serde_json::Value> = users
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "channel": format!("user-user{u}"),
                            "formats": {"http-stream": {"content": content}}
                        })
                    })
                    .collect();
                let body = serde_json::json!({ "items": items }).to_string();
                self.post(
                    format!("http://{}/publish/", lo(PUSHPIN_PUBLISH_PORT)),
                    &[("content-type", "application/json")],
                    body,
                )
                .await?;
            }
            Kind::Nchan => {
                // One POST per trigger per user (nchan's publishing model),
                // over a few parallel keep-alive connections.
                let lanes = 8.min(users.len());
                let chunk = users.len().div_ceil(lanes);
                let mut set = tokio::task::JoinSet::new();
                for part in users.chunks(chunk) {
                    let part = part.to_vec();
                    let me = self.clone();
                    set.spawn(async move {
                        for u in part {
                            for ev in ["thread-updated", "contact-changed"] {
                                me.post(
                                    format!("http://{}/pub/user{u}", lo(NCHAN_PORT)),
                                    &[("x-eventsource-event", ev)],
                                    ts.to_string(),
                                )
                                .await?;
                            }
                        }
                        anyhow::Ok(())
                    });
                }
                while let Some(r) = set.join_next().await {
                    r??;
                }
            }
            Kind::Floor => {
                let mut lines = String::with_capacity(users.len() * 24);
                for u in users {
                    lines.push_str(&format!("user{u} {ts}\n"));
                }
                if let Some(ctl) = &self.floor_ctl {
                    ctl.lock().await.write_all(lines.as_bytes()).await?;
                }
            }
        }
        Ok(users.len())
    }

    /// [`System::emit`] of pass-through payloads: one batch line per user,
    /// split into requests under [`BATCH_BYTES`] sent side by side.
    async fn emit_pass(self: &Arc<Self>, users: &[usize], ts: u64) -> anyhow::Result<usize> {
        let line_bytes = pass::DATA_BYTES + pass::EVENT.len() + 16;
        let per_request = (BATCH_BYTES / line_bytes).max(1);
        let mut set = tokio::task::JoinSet::new();
        let mut data = Vec::with_capacity(pass::DATA_BYTES);
        for part in users.chunks(per_request) {
            let mut body = Vec::with_capacity(part.len() * line_bytes);
            for &u in part {
                pass::write_data(&mut data, u, ts);
                body.extend_from_slice(format!("user{u}\t{}\t", pass::EVENT).as_bytes());
                body.extend_from_slice(&data);
                body.push(b'\n');
            }
            // UTF-8 by construction (pass::write_data), so this never fails.
            let body = String::from_utf8(body)?;
            let me = self.clone();
            set.spawn(async move {
                me.post(
                    format!("http://{}/__admin/emit-batch", lo(MOCK_PORT)),
                    &[],
                    body,
                )
                .await
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok(users.len())
    }

    /// The mock's `/__admin/stats` document, if this system has the mock.
    async fn mock_stats(&self) -> Option<serde_json::Value> {
        self.backend.as_ref()?;
        let req = http::Request::get(format!("http://{}/__admin/stats", lo(MOCK_PORT)))
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.http.request(req))
            .await
            .ok()?
            .ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&body).ok()
    }

    /// The mock's stream counters: (open now, opened since start).
    pub async fn backend_streams(&self) -> Option<(u64, u64)> {
        let v = self.mock_stats().await?;
        Some((
            v.get("openStreamsTotal")?.as_u64()?,
            v.get("streamsOpenedTotal")?.as_u64()?,
        ))
    }

    /// POST one of the mock's fault controls (`/__admin/…` with its query).
    pub async fn admin(&self, path_and_query: &str) -> anyhow::Result<()> {
        self.post(
            format!("http://{}{path_and_query}", lo(MOCK_PORT)),
            &[],
            String::new(),
        )
        .await
    }

    /// Emit `lines` (`user<TAB>event<TAB>data` each) at the mock in one
    /// batch, in order.
    pub async fn emit_lines(&self, lines: String) -> anyhow::Result<()> {
        self.post(
            format!("http://{}/__admin/emit-batch", lo(MOCK_PORT)),
            &[],
            lines,
        )
        .await
    }

    /// Open backend streams of `user` (the mock's own count).
    pub async fn backend_streams_of(&self, user: &str) -> Option<u64> {
        let v = self.mock_stats().await?;
        Some(
            v.get("openStreams")?
                .get(user)
                .and_then(|n| n.as_u64())
                .unwrap_or(0),
        )
    }

    /// Restart the backend: new epoch, every stream dropped.
    pub async fn restart_backend(&self) -> anyhow::Result<()> {
        self.post(
            format!("http://{}/__admin/restart", lo(MOCK_PORT)),
            &[],
            String::new(),
        )
        .await
    }
}

/// `ssemux check-config --print` of the configuration `toml` (with the
/// run's `--ssemux-set` values, as `serve` gets them): the effective
/// configuration, or the binary's refusal in its own words.
pub fn ssemux_check(env: &Env, name: &str, toml: &str) -> Result<toml::Value, String> {
    let path = env.work.join(format!("check-{name}.toml"));
    std::fs::write(&path, toml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let out = Command::new(env.bin_dir.join("ssemux"))
        .arg("check-config")
        .args(["--backend", "http://127.0.0.1:9"])
        .args(env.ssemux_sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .arg("--print")
        .arg(&path)
        .output()
        .map_err(|e| format!("cannot run ssemux check-config: {e}"))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        // The message names the scratch file; its name is enough.
        let why = why
            .trim()
            .replace(&path.display().to_string(), &format!("check-{name}.toml"));
        return Err(if why.is_empty() {
            format!("check-config exited {}", out.status)
        } else {
            why.to_string()
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.parse::<toml::Value>()
        .map_err(|e| format!("check-config printed no TOML: {e}"))
}

/// The `[[translate.rules]]` of an effective configuration with `coalesce`
/// set in every rule (replacing any value it had), as a configuration file.
pub fn rules_with_coalesce(effective: &toml::Value, coalesce: bool) -> Option<String> {
    let mut rules = effective
        .get("translate")?
        .get("rules")?
        .as_array()?
        .clone();
    for r in &mut rules {
        r.as_table_mut()?
            .insert("coalesce".into(), toml::Value::Boolean(coalesce));
    }
    let mut translate = toml::Table::new();
    translate.insert("rules".into(), toml::Value::Array(rules));
    let mut top = toml::Table::new();
    top.insert("translate".into(), toml::Value::Table(translate));
    let body = toml::to_string(&top).ok()?;
    Some(format!(
        "# Written by ssemux-bench: the binary's default rules (check-config --print) with coalesce = {coalesce}.\n{body}"
    ))
}

/// `upstream.connects_per_second` of an effective configuration.
pub fn connects_per_second(effective: &toml::Value) -> Option<u64> {
    effective
        .get("upstream")?
        .get("connects_per_second")?
        .as_integer()
        .and_then(|n| u64::try_from(n).ok())
}
