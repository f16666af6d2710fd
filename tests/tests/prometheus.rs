//! A real Prometheus scrapes a gateway: every metric and label that
//! `deploy/grafana/ssemux.json` and `deploy/prometheus/alerts.yml` name must
//! be a series Prometheus stored, every dashboard query must evaluate, and
//! every alert rule must load and evaluate without error. `promtool` checks
//! the rule file and the example configuration.
//!
//! The names are taken from the two files (the dashboard's `expr` fields and
//! variable queries; the rules as Prometheus loaded them, from its rules
//! API), so a panel or rule naming a metric ssemux does not export fails
//! here. Prometheus and promtool come from Debian's `prometheus` package
//! (`make test-deps` installs it); without them the test fails saying so.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Env, WAIT, request};
use http::StatusCode;
use serde_json::Value;

/// Longest wait for anything Prometheus should have done.
const DEADLINE: Duration = Duration::from_secs(30);

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
        .canonicalize()
        .unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// Debian's binary, else one on PATH.
fn bin(name: &str) -> String {
    let debian = format!("/usr/bin/{name}");
    if Path::new(&debian).exists() {
        debian
    } else {
        name.to_string()
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
    l.local_addr().expect("probe addr").port()
}

/// A Prometheus on loopback with its config and TSDB in a directory of its
/// own; killed and removed on drop (also when the test panics).
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Scrape `target`'s `/metrics` every second as job `ssemux`, evaluating
    /// `rules` every second.
    fn start(target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "ssemux-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let rules = serde_json::to_string(&rules.display().to_string()).expect("path");
        // JSON strings are YAML strings: the paths need no further quoting.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: ssemux\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(bin("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}); `make test-deps` installs it (apt-get install prometheus)")
            });
        Prometheus { child, dir, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Wait until `/-/ready` answers 200, or panic with the log.
    async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && request(self.addr, "GET", "/-/ready", &[], "").await.0 == StatusCode::OK
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET an API path; the `data` of a `success` answer, else the error.
    async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, _, body) = request(self.addr, "GET", path_and_query, &[], "").await;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("{path_and_query}: {status} {e}: {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("{path_and_query}: {status} {body}"))
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encode a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One PromQL token, as far as this test needs them.
#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str,
    Num,
    Punct(char),
}

/// Split PromQL into identifiers, string literals, numbers (durations
/// included) and punctuation. String contents are skipped, so a label value
/// never counts as a metric name.
fn tokens(expr: &str) -> Vec<Tok> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Tok::Str);
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num);
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// What one expression references: ssemux's metric names (`ssemux_…`;
/// Prometheus's own `up` and the blackbox exporter's `probe_success` are not
/// looked at) and label names (in matchers and in `by`/`without`/`on`/
/// `ignoring`/`group_*` lists).
#[derive(Debug, Default)]
struct Refs {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn refs(expr: &str) -> Refs {
    let t = tokens(expr);
    let mut r = Refs::default();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Ident(id) if depth > 0 => {
                if matches!(t.get(i + 1), Some(Tok::Punct('=' | '!'))) {
                    r.labels.insert(id.clone());
                }
            }
            Tok::Ident(id)
                if matches!(
                    id.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) && t.get(i + 1) == Some(&Tok::Punct('(')) =>
            {
                i += 2;
                while i < t.len() && t[i] != Tok::Punct(')') {
                    if let Tok::Ident(l) = &t[i] {
                        r.labels.insert(l.clone());
                    }
                    i += 1;
                }
            }
            Tok::Ident(id) if id.starts_with("ssemux_") => {
                r.metrics.insert(id.clone());
            }
            _ => {}
        }
        i += 1;
    }
    r
}

/// A dashboard query with Grafana's variables replaced by what "All" and a
/// 1 s scrape interval give, so Prometheus can evaluate it.
fn grafana_to_promql(expr: &str) -> String {
    let q = expr
        .replace("$__rate_interval", "1m")
        .replace("${job}", ".+")
        .replace("$job", ".+")
        .replace("${instance}", ".+")
        .replace("$instance", ".+");
    assert!(
        !q.contains('$'),
        "a variable this test does not know: {expr}"
    );
    q
}

/// The dashboard's panel queries (every `expr`, nested panels included) and
/// its variables' `label_values(selector, label)` queries as (selector,
/// label).
fn dashboard_queries(dash: &Value) -> (Vec<String>, Vec<(String, String)>) {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dash["panels"], &mut exprs);
    let mut vars = Vec::new();
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if var["type"] != "query" {
            continue;
        }
        let def = var["definition"].as_str().expect("variable definition");
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query not label_values(…): {def}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        vars.push((selector.trim().to_string(), label.trim().to_string()));
    }
    (exprs, vars)
}

fn promtool(args: &[&str]) {
    let out = Command::new(bin("promtool"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); `make test-deps` installs it (apt-get install prometheus)")
        });
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tokenizer_finds_metrics_and_labels() {
    let r = refs(
        r#"sum by (instance, le) (rate(ssemux_a_bucket{cause=~"lag|x", job!="ssemux_not"}[5m] offset 1h)) / on(instance) ssemux_b > 1/60"#,
    );
    assert_eq!(
        r.metrics.into_iter().collect::<Vec<_>>(),
        ["ssemux_a_bucket", "ssemux_b"]
    );
    assert_eq!(
        r.labels.into_iter().collect::<Vec<_>>(),
        ["cause", "instance", "job", "le"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_series_prometheus_stores() {
    let alerts = deploy("prometheus/alerts.yml");
    let alerts_text = std::fs::read_to_string(&alerts).expect("alerts.yml");
    promtool(&["check", "rules", &alerts.display().to_string()]);
    promtool(&[
        "check",
        "config",
        &deploy("prometheus/prometheus.yml").display().to_string(),
    ]);

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/ssemux.json")).expect("ssemux.json"),
    )
    .expect("dashboard JSON");
    assert!(dash["schemaVersion"].as_u64().is_some(), "no schemaVersion");
    let (exprs, vars) = dashboard_queries(&dash);
    assert!(exprs.len() >= 10, "only {} panel queries", exprs.len());

    // Traffic, so that every labelled family has a series: a label set only
    // appears once something was counted under it.
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    // Two tabs and a message; another epoch's id: a resync (cause epoch).
    let tabs = env.alice_traffic().await;
    // A proxied request, and an upstream that ends (reason eof) and is
    // reopened.
    let (s, _, _) = request(env.addr, "GET", "/api/v1/me", &[("cookie", &alice)], "").await;
    assert_eq!(s, StatusCode::OK);
    env.backend.drop_streams();
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.streams_opened_total() >= 2
                && b.open_streams("alice") == 1)
            .await,
        "the upstream was not reopened"
    );

    let mut prom = Prometheus::start(env.addr, &alerts);
    prom.ready().await;

    // The rules as Prometheus parsed them: as many as the file has, and
    // each evaluated at least once without an error.
    let declared = alerts_text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(declared > 0, "no rules in alerts.yml");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let rules: Vec<(String, String)> = loop {
        let data = prom.api("/api/v1/rules").await.expect("rules API");
        let all: Vec<&Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        for r in &all {
            assert_ne!(r["health"], "err", "rule failed to evaluate: {r}");
        }
        if all.len() == declared && all.iter().all(|r| r["health"] == "ok") {
            break all
                .iter()
                .map(|r| {
                    let name = r["name"].as_str().expect("rule name").to_string();
                    let query = r["query"].as_str().expect("rule query").to_string();
                    (name, query)
                })
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {declared} rules loaded, not all evaluated: {data}\n{}",
            all.len(),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // What each source names, by where it is named (for the messages).
    let mut wanted: Vec<(String, Refs)> = Vec::new();
    for (name, query) in &rules {
        wanted.push((format!("rule {name}"), refs(query)));
    }
    for e in &exprs {
        wanted.push((format!("panel query {e}"), refs(e)));
    }
    for (selector, label) in &vars {
        let mut r = refs(&grafana_to_promql(selector));
        r.labels.insert(label.clone());
        wanted.push((format!("variable label_values({selector}, {label})"), r));
    }
    let metrics: BTreeSet<&String> = wanted.iter().flat_map(|(_, r)| &r.metrics).collect();
    assert!(
        metrics.len() >= 10,
        "only {} ssemux metrics named: {metrics:?}",
        metrics.len()
    );

    // Every named metric has a series in Prometheus, with these labels.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut labels_of: BTreeMap<&String, BTreeSet<String>> = BTreeMap::new();
    loop {
        for m in &metrics {
            if labels_of.contains_key(m) {
                continue;
            }
            let path = format!(
                "/api/v1/series?match[]={}",
                enc(&format!("{{__name__=\"{m}\"}}"))
            );
            let data = prom.api(&path).await.expect("series API");
            let series = data.as_array().cloned().unwrap_or_default();
            if !series.is_empty() {
                let names = series
                    .iter()
                    .filter_map(|s| s.as_object())
                    .flat_map(|o| o.keys().cloned())
                    .collect();
                labels_of.insert(m, names);
            }
        }
        if labels_of.len() == metrics.len() {
            break;
        }
        let missing: Vec<_> = metrics
            .iter()
            .filter(|m| !labels_of.contains_key(*m))
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no series in Prometheus for {missing:?} (named by: {:?})\n{}",
            wanted
                .iter()
                .filter(|(_, r)| r.metrics.iter().any(|m| missing.contains(&&m)))
                .map(|(w, _)| w)
                .collect::<Vec<_>>(),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each label an expression uses is on a series of one of the ssemux
    // metrics it names (an expression naming none, `up{job="ssemux"}`, is
    // not about ssemux's labels).
    for (who, r) in wanted.iter().filter(|(_, r)| !r.metrics.is_empty()) {
        for l in &r.labels {
            assert!(
                r.metrics
                    .iter()
                    .any(|m| labels_of.get(m).is_some_and(|ls| ls.contains(l))),
                "{who} uses label {l:?}, which no series of {:?} has ({:?})",
                r.metrics,
                r.metrics
                    .iter()
                    .map(|m| (m, labels_of.get(m)))
                    .collect::<Vec<_>>()
            );
        }
    }

    // Every panel query evaluates (a syntax or matching error fails).
    for e in &exprs {
        let q = grafana_to_promql(e);
        prom.api(&format!("/api/v1/query?query={}", enc(&q)))
            .await
            .unwrap_or_else(|err| panic!("panel query does not evaluate: {q}\n{err}"));
    }

    // And the live state got there: the three tabs open now.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let data = prom
            .api(&format!(
                "/api/v1/query?query={}",
                enc("sum(ssemux_tabs_open{job=\"ssemux\"})")
            ))
            .await
            .expect("query");
        if data["result"][0]["value"][1] == "3" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never saw 3 tabs: {data}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tabs);
}
