//! A small WebDriver client for headless Chromium via chromedriver.
//!
//! Owns the chromedriver process, browser sessions (one Chromium each, with a
//! fresh profile directory) and the few WebDriver commands the browser tests
//! use. Plain blocking HTTP/1.1 over loopback with `Connection: close`: no
//! extra dependencies, and the tests call it from the test thread of a
//! multi-thread runtime, so the servers under test keep running on the
//! worker threads. It never talks to anything but loopback and never leaves
//! a browser or chromedriver running after its handle is dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Flags every test browser runs with; required on this machine (no
/// sandbox, no GPU, nothing fetched from outside loopback).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    // Several windows side by side must all count as visible and keep
    // their timers running; only the visibility tests hide a page, on
    // purpose.
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--window-size=1000,640",
];

/// How long a single WebDriver command may take (starting a browser on a
/// busy machine is the slow one).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Finds an executable: `$env` if set, else the first existing candidate.
fn find_binary(env: &str, candidates: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "none of {candidates:?} exists and ${env} is not set; \
                 install Chromium and chromedriver (`make deps-browser`, or \
                 `apt-get install chromium chromium-driver`)"
            )
        })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    l.local_addr().expect("probe addr").port()
}

/// A unique scratch directory, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> ScratchDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ssemux-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create scratch dir");
        ScratchDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One HTTP exchange with chromedriver: status and parsed JSON body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect chromedriver: {e}"))?;
    s.set_read_timeout(Some(COMMAND_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(payload.as_bytes()))
        .map_err(|e| format!("write to chromedriver: {e}"))?;
    // chromedriver may keep the connection open despite `Connection:
    // close`, so read by Content-Length (or to the last chunk), not to EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut header_end = None;
    loop {
        if let Some(split) = header_end {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let body = &raw[split + 4..];
            let done = match content_length(&head) {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break;
            }
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read from chromedriver ({method} {path}): {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if header_end.is_none() {
            header_end = raw.windows(4).position(|w| w == b"\r\n\r\n");
        }
    }
    let split = header_end.ok_or("chromedriver answer without header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    if let Some(n) = content_length(&head.to_ascii_lowercase()) {
        body.truncate(n);
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("chromedriver answer without status")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| format!("chromedriver JSON: {e}"))?
    };
    Ok((status, v))
}

fn content_length(lower_head: &str) -> Option<usize> {
    lower_head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_txt = String::from_utf8_lossy(&b[..nl]);
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A WebDriver call's `value`, or the driver's error message.
fn command(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let (status, v) = http(addr, method, path, body)?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if status != 200 {
        let err = value.get("error").and_then(Value::as_str).unwrap_or("?");
        let msg = value.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(format!("{method} {path}: {status} {err}: {msg}"));
    }
    Ok(value)
}

/// A running chromedriver.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
    chromium: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is
    /// ready. Panics with the fix if Chromium or chromedriver is missing.
    pub fn start() -> Driver {
        let chromium = find_binary(
            "CHROME_BIN",
            &[
                "/usr/lib/chromium/chromium",
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
            ],
        )
        .unwrap_or_else(|e| panic!("Chromium is required for the browser tests: {e}"));
        let chromedriver = find_binary("CHROMEDRIVER", &["/usr/bin/chromedriver"])
            .unwrap_or_else(|e| panic!("chromedriver is required for the browser tests: {e}"));
        let port = free_port();
        // Its own process group: Chromium and its helpers inherit it, so the
        // whole tree can be ended together even if a session is never closed.
        let child = Command::new(&chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut d = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            chromium,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(v) = command(d.addr, "GET", "/status", None)
                && v.get("ready").and_then(Value::as_bool) == Some(true)
            {
                return d;
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("chromedriver exited early: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new browser (its own Chromium and profile, so its own cookies).
    pub fn session(&self) -> Session {
        let profile = ScratchDir::new("chromium-profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": self.chromium.display().to_string(),
                        "args": args,
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let v = command(self.addr, "POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("new browser session: {e}"));
        let id = v
            .get("sessionId")
            .and_then(Value::as_str)
            .expect("session id")
            .to_string();
        Session {
            addr: self.addr,
            id,
            _profile: profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group id is chromedriver's pid (process_group(0) above).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser (one Chromium process) with one or more windows.
pub struct Session {
    addr: SocketAddr,
    id: String,
    _profile: ScratchDir,
}

/// A window handle inside a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window(String);

impl Session {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.id);
        command(self.addr, method, &p, body.as_ref()).unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    /// The window currently driven.
    pub fn current_window(&self) -> Window {
        Window(
            self.call("GET", "/window", None)
                .as_str()
                .expect("window handle")
                .to_string(),
        )
    }

    /// Opens a new top-level window (not a tab: a background tab would be
    /// hidden, and htmx 4 closes hidden tabs' streams) and switches to it.
    pub fn new_window(&self) -> Window {
        let v = self.call("POST", "/window/new", Some(json!({"type": "window"})));
        let w = Window(v["handle"].as_str().expect("new window handle").to_string());
        self.switch_to(&w);
        w
    }

    /// Makes `w` the window later commands act on.
    pub fn switch_to(&self, w: &Window) {
        self.call("POST", "/window", Some(json!({"handle": w.0})));
    }

    /// Resizes the current window (its outer size; headless, the viewport
    /// is the same).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// Navigates the current window and waits for the load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// Runs `body` (a function body; `arguments` holds `args`) in the page
    /// and returns its result.
    pub fn js(&self, body: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": body, "args": args})),
        )
    }

    /// The first element matching `css` in the current window.
    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element id for {css}"))
            .to_string()
    }

    /// Types `text` into the element matching `css`, as a user would.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    /// Clicks the element matching `css`, as a user would.
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Polls `body` (must return a boolean) until true; panics with
    /// `what` after `wait`.
    pub fn wait_for(&self, what: &str, wait: Duration, body: &str) {
        let deadline = Instant::now() + wait;
        loop {
            if self.js(body, vec![]).as_bool() == Some(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Saves a PNG of the current window.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().expect("screenshot data")).expect("screenshot base64");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The page's console messages so far (for failure reports).
    pub fn console(&self) -> Vec<String> {
        let p = format!("/session/{}/se/log", self.id);
        match command(self.addr, "POST", &p, Some(&json!({"type": "browser"}))) {
            Ok(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.get("message").and_then(Value::as_str).map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ends this Chromium; chromedriver itself is ended by `Driver`.
        let _ = command(self.addr, "DELETE", &format!("/session/{}", self.id), None);
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

#[test]
fn base64_round_trip() {
    assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
    assert_eq!(base64_decode("YWJj").as_deref(), Some(&b"abc"[..]));
    assert_eq!(base64_decode("!!!!"), None);
}
