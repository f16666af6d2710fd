//! `ssemux-bench`: the load generator and side-by-side benchmark runner.
//!
//! `ssemux-bench run` starts each system on loopback, runs the same four
//! scenarios against it, and writes a JSON file, `docs/benchmarks.md` and a
//! plot. `ssemux-bench floor` is the raw fan-out floor server the runner
//! starts as one of the systems. This file owns the CLI and the run's order;
//! it must never leave a started process running (systems kill their
//! children on drop) and never drop a system from the report.

mod client;
mod floor;
mod pass;
mod procs;
mod report;
mod scenarios;
mod stats;
mod systems;
mod tap;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::scenarios::Profile;
use crate::systems::{Env, Kind, Payload, Setup, System};

/// Load generator and side-by-side benchmark runner for ssemux.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark against every system and write the report.
    Run {
        /// `quick` (scaled down, under 5 minutes) or `full` (the sizes).
        #[arg(long, default_value = "quick")]
        profile: String,
        /// Comma-separated systems (default: all five: ssemux,
        /// nginx-passthrough, pushpin, nchan, raw-floor). Opt-in, idle only:
        /// ssemux-https (ssemux in front of nginx terminating TLS with h2 in
        /// front of the mock) and ssemux-https-h2 (the same with
        /// `upstream.http_version=http2`).
        #[arg(long)]
        systems: Option<String>,
        /// Where the JSON and the plot go.
        #[arg(long, default_value = "docs/bench")]
        out_dir: PathBuf,
        /// The Markdown report.
        #[arg(long, default_value = "docs/benchmarks.md")]
        markdown: PathBuf,
        /// Directory with the `ssemux`, `ssemux-mock-upstream` and
        /// `ssemux-bench` binaries (default: next to this one).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Plot script (python3 + matplotlib).
        #[arg(long, default_value = "bench/plot.py")]
        plot_script: PathBuf,
        /// Comma-separated scenarios (default: all of
        /// fanout,fanout-pass,idle,churn,storm,outage,bursty). `fanout-pass`
        /// is ssemux only: the fan-out with a pass-through rule and 1 KiB
        /// events, compared with `fanout` of the same run when both are
        /// selected. `outage` (backend refusing streams, then back) and
        /// `bursty` (bursts of chat messages, coalescing on and off) are
        /// ssemux only too.
        #[arg(
            long,
            default_value = "fanout,fanout-pass,idle,churn,storm,outage,bursty"
        )]
        scenarios: String,
        /// Rounds: every system's scenarios are run this many times (round
        /// 2 in reverse system order), and the report gives each figure's
        /// spread over the rounds.
        #[arg(long, default_value_t = 2)]
        repeat: usize,
        /// Added to every loopback port the run uses (18080–18111 by
        /// default), so two runs on one machine do not collide.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
        /// Extra ssemux `--set KEY=VALUE` (repeatable; recorded in the JSON).
        #[arg(long = "ssemux-set", value_name = "KEY=VALUE")]
        ssemux_set: Vec<String>,
    },
    /// Re-render the Markdown report from a run's JSON (no measuring).
    Report {
        /// The run's JSON file.
        #[arg(long)]
        json: PathBuf,
        /// The Markdown report to write.
        #[arg(long, default_value = "docs/benchmarks.md")]
        markdown: PathBuf,
    },
    /// The raw floor server (started by `run`).
    Floor {
        /// Tab listener.
        #[arg(long)]
        listen: SocketAddr,
        /// Control listener: lines `<user> <payload>`.
        #[arg(long)]
        control: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    procs::raise_nofile(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Floor { listen, control } => rt.block_on(floor::serve(listen, control)),
        Cmd::Report { json, markdown } => {
            let run: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
            write_markdown(&markdown, &run)
        }
        Cmd::Run {
            profile,
            systems,
            out_dir,
            markdown,
            bin_dir,
            plot_script,
            ssemux_set,
            scenarios,
            port_offset,
            repeat,
        } => {
            if repeat == 0 || repeat > 10 {
                anyhow::bail!("--repeat must be 1..=10");
            }
            systems::set_port_offset(port_offset)?;
            let profile = match profile.as_str() {
                "quick" => Profile::quick(),
                "full" => Profile::full(),
                other => anyhow::bail!("unknown profile {other:?} (quick, full)"),
            };
            let kinds = match systems {
                None => Kind::ALL.to_vec(),
                Some(list) => list
                    .split(',')
                    .map(|s| {
                        Kind::parse(s.trim()).ok_or_else(|| anyhow::anyhow!("unknown system {s:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            };
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| anyhow::anyhow!("no directory for the binaries"))?,
            };
            let work = bin_dir.join("bench-work");
            std::fs::create_dir_all(&work)?;
            let env = Env {
                bin_dir,
                work,
                ssemux_sets: ssemux_set,
            };
            let wanted: Vec<String> = scenarios.split(',').map(|s| s.trim().to_string()).collect();
            if let Some(bad) = wanted
                .iter()
                .find(|w| !steps(&profile).iter().any(|(n, _)| n == w))
            {
                anyhow::bail!("unknown scenario {bad:?}");
            }
            let r = rt.block_on(run(
                &env,
                &profile,
                &kinds,
                &wanted,
                repeat,
                (&out_dir, &markdown, &plot_script),
            ));
            // Tab tasks may still be winding down; do not wait for them.
            rt.shutdown_timeout(Duration::from_secs(1));
            r
        }
    }
}

/// Write the report of `run` to `path`, keeping the sections of the file
/// there that were written by hand (from the first heading that says
/// "written by hand"), after the generated part.
fn write_markdown(path: &Path, run: &Value) -> anyhow::Result<()> {
    let by_hand = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| report::hand_written(&old).map(str::to_string));
    let mut text = report::markdown(run);
    if let Some(h) = by_hand {
        text.push('\n');
        text.push_str(&h);
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    format!(
        "{} — {} cores ({}), {} MiB RAM, {}",
        sh("hostname"),
        sh("nproc"),
        cpu.trim(),
        sh("free -m | awk '/Mem:/ {print $2}'"),
        sh("uname -sr")
    )
}

fn log_tail(env: &Env, kind: Kind) -> String {
    let file = kind.log_file();
    let text = std::fs::read_to_string(env.work.join(file)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Run one scenario on a freshly started system; `Err` means the system did
/// not start.
async fn on_fresh(
    kind: Kind,
    env: &Env,
    users: usize,
    f: impl AsyncFnOnce(&Arc<System>) -> Value,
) -> Result<Value, String> {
    on_fresh_with(kind, env, users, &Setup::default(), f).await
}

/// [`on_fresh`] with the system started as `setup` says.
async fn on_fresh_with(
    kind: Kind,
    env: &Env,
    users: usize,
    setup: &Setup,
    f: impl AsyncFnOnce(&Arc<System>) -> Value,
) -> Result<Value, String> {
    let sys = match System::start(kind, env, users, setup).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let tail = log_tail(env, kind);
            let mut msg = if tail.is_empty() {
                format!("{e:#}")
            } else {
                format!("{e:#} (log: {tail})")
            };
            if kind == Kind::SsemuxHttpsH2 {
                msg.push_str(
                    " — this variant passes `--set upstream.http_version=http2`; \
                     an ssemux that predates that key refuses to start",
                );
            }
            return Err(msg);
        }
    };
    let v = f(&sys).await;
    let tab_addr = sys.tab_addr();
    drop(sys);
    // The next system binds the same ports: wait until this one's are
    // closed (its processes are gone once `drop` returns; the sockets of
    // its tabs may take a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && tokio::net::TcpStream::connect(tab_addr).await.is_ok()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(v)
}

/// The scenarios, in run order, with the users each starts with.
fn steps(p: &Profile) -> [(&'static str, usize); 7] {
    [
        ("fanout", p.fanout_users),
        ("fanout-pass", p.fanout_users),
        ("idle", p.idle_users),
        ("churn", p.churn_users),
        ("storm", p.storm_users),
        ("outage", p.outage_users),
        ("bursty", p.bursty_peers + 2),
    ]
}

/// One round of every wanted scenario for one system: a JSON object with
/// one key per scenario and `status` (`ok` or why the system did not start).
async fn run_system(kind: Kind, env: &Env, profile: &Profile, wanted: &[String]) -> Value {
    let grace = Duration::from_secs(10);
    let mut entry = json!({"status": "ok"});
    for (name, users) in steps(profile) {
        if !wanted.iter().any(|w| w == name) {
            entry[name] = json!({"n/a": "not selected for this run"});
            continue;
        }
        if let Some(why) = kind.not_applicable(name) {
            entry[name] = json!({ "n/a": why });
            continue;
        }
        if name == "churn" && !kind.has_backend_stream() {
            entry[name] = scenarios::churn_na();
            continue;
        }
        if name == "storm" && !kind.has_backend_stream() {
            entry[name] = scenarios::storm_na();
            continue;
        }
        eprintln!("   {name}…");
        let started = std::time::Instant::now();
        let p = profile.clone();
        let r = match name {
            "fanout" => on_fresh(kind, env, users, async |s| scenarios::fanout(s, &p).await).await,
            "fanout-pass" => {
                on_fresh_with(
                    kind,
                    env,
                    users,
                    &Setup::payload(Payload::Pass),
                    async |s| scenarios::fanout(s, &p).await,
                )
                .await
            }
            "idle" => idle_with_split(kind, env, &p).await,
            "churn" => {
                on_fresh(kind, env, users, async |s| {
                    scenarios::churn(s, &p, grace).await
                })
                .await
            }
            "storm" => on_fresh(kind, env, users, async |s| scenarios::storm(s, &p).await).await,
            "outage" => outage(kind, env, &p).await,
            _ => bursty_both(kind, env, &p).await,
        };
        match r {
            Ok(mut v) => {
                eprintln!("   {name}: {}", short(&v));
                if v.is_object() {
                    v["wall_secs"] = json!(started.elapsed().as_secs_f64());
                }
                entry[name] = v;
            }
            Err(e) => {
                eprintln!("   {} could not start: {e}", kind.name());
                entry["status"] = json!(format!("could not start: {e}"));
                break;
            }
        }
    }
    if entry["fanout"].get("steps").is_some() && entry["fanout-pass"].get("steps").is_some() {
        entry["fanout-pass"]["vs_trigger"] =
            scenarios::pass_vs_trigger(&entry["fanout"], &entry["fanout-pass"]);
    }
    entry
}

/// Every system's scenarios `repeat` times: round 1 in the given order,
/// round 2 in reverse, and so on, so a drift in the machine's load favours
/// no system. Each system's entry holds its rounds under `runs`, and round
/// 1's scenarios at the top level (as single-run tools read them).
async fn run_rounds(
    env: &Env,
    profile: &Profile,
    kinds: &[Kind],
    wanted: &[String],
    repeat: usize,
) -> Vec<Value> {
    let mut entries: Vec<Value> = kinds
        .iter()
        .map(|k| json!({"system": k.name(), "status": "ok", "runs": []}))
        .collect();
    for round in 0..repeat {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..kinds.len()).collect()
        } else {
            (0..kinds.len()).rev().collect()
        };
        for i in order {
            if entries[i]["status"] != "ok" {
                continue;
            }
            let kind = kinds[i];
            eprintln!("== {} (round {}/{repeat})", kind.name(), round + 1);
            let mut r = run_system(kind, env, profile, wanted).await;
            r["round"] = json!(round + 1);
            r["load_average"] = json!(sh("cat /proc/loadavg"));
            if r["status"] != "ok" {
                entries[i]["status"] = r["status"].clone();
            }
            if let Some(runs) = entries[i]["runs"].as_array_mut() {
                runs.push(r);
            }
        }
    }
    for e in &mut entries {
        let first = e["runs"].get(0).cloned();
        if let Some(Value::Object(first)) = first {
            for (k, v) in first {
                if k != "status" && k != "round" && k != "load_average" {
                    e[k.as_str()] = v;
                }
            }
        }
    }
    entries
}

async fn run(
    env: &Env,
    profile: &Profile,
    kinds: &[Kind],
    wanted: &[String],
    repeat: usize,
    (out_dir, markdown, plot_script): (&Path, &Path, &Path),
) -> anyhow::Result<()> {
    let started = sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let stamp = sh("date -u +%Y%m%dT%H%M%SZ");
    let t0 = std::time::Instant::now();
    std::fs::create_dir_all(out_dir)?;
    let results = run_rounds(env, profile, kinds, wanted, repeat).await;
    let json_path = out_dir.join(format!("run-{}-{stamp}.json", profile.name));
    let plot_path = out_dir.join(format!("fanout-{}.png", profile.name));
    let mut run = json!({
        "started": started,
        "machine": machine(),
        "profile": profile,
        "ssemux_overrides": env.ssemux_sets,
        "load_average": sh("cat /proc/loadavg"),
        "repeat": repeat,
        "scenarios": wanted,
        "wall_secs": t0.elapsed().as_secs_f64(),
        "systems": results,
        "json_path": json_path.display().to_string(),
        "plot_path": plot_path.display().to_string(),
        "notes": [
            "Every system gets the same tabs (HTTP/1.1, one connection each, source addresses spread over 127.0.0.0/8) and the same emit clock (100 ticks/s, round-robin over users; every event of a tick is sent as one burst with one timestamp).",
            "ssemux: the mock backend emits `inbound {peer: <timestamp>}`; ssemux's default rules turn it into `thread-updated` + `contact-changed`. The others are handed the two already-translated triggers: nginx pass-through by the mock backend on each tab's own stream, Pushpin by one HTTP publish per tick (GRIP http-stream), nchan by one POST per trigger per user, the floor by one control line per user.",
            "CPU and PSS are the system's own processes (ssemux; nginx master+workers; pushpin's runner, condure, zurl, proxy and handler; the floor). The mock backend is reported separately; the GRIP origin runs inside the bench.",
            format!(
                "Pass-through fan-out (ssemux only): ssemux started with `[[translate.rules]] event = \"*\" pass = true`; the mock emits `{}` with {} bytes of JSON per user event (multi-byte UTF-8 and JSON escapes included), the same users × tabs and rates as the fan-out. Every tab checks each event's name and data byte for byte against what its user was sent; anything else of ours is a mismatch (never delivered or timed). Ratios are pass ÷ the trigger fan-out of the same run, at the same rate.",
                pass::EVENT,
                pass::DATA_BYTES
            ),
            "Churn and storm only apply to systems with a per-user backend stream (ssemux, nginx pass-through); they are reported n/a for the publish-model systems.",
            format!(
                "Rounds: every system's scenarios ran {repeat} time(s), round 2 in reverse system order; each figure is the median over the rounds in which it counts, with min–max. A measurement counts only if every tab the scenario opens opened with no failed open and no dropped stream (storm: before the restart; churn: no failed open at all); otherwise it is INVALID with the count and the reason and is left out."
            ),
            format!(
                "Tab opens: every system's tabs open at most {} at a time (connect to response head, first open only; reconnects are not paced). Pushpin failed 200–1,700 opens with 502 (and some 500) when 500 were launched at once: its proxy hands each new request to zurl through a ZeroMQ socket with a fixed high-water mark of 100 and fails a request that finds it full at once (its log: `target error state=1, condition=8`, unavailable); reproduced outside the bench (4,000 opens 64 or 100 at a time: all 200; 200 at a time: 112 × 502). Not a connect-rate, backlog, fd or worker limit of the configuration the bench writes; nothing in Pushpin's configuration raises it. Pushpin also answered 500 or nothing to tabs opened right after its start (its ports listen before its proxy, handler and zurl are connected): the runner waits for three streams in a row through it first.",
                scenarios::OPEN_IN_FLIGHT
            ),
            format!(
                "Outage (ssemux only; the peers have no upstream to share): {} users, one tab each, through a counting relay in the bench between ssemux and the mock (it forwards every request and stamps each events request, refused or not); the mock refuses events requests with 503 for {} s (issue: 30 s) and drops every stream at the start. The goal users ÷ `upstream.connects_per_second` + 1 s takes the rate from `ssemux check-config --print` with the run's `--ssemux-set`s.",
                profile.outage_users, profile.outage_secs
            ),
            format!(
                "Bursty chat (ssemux only): {} peers × {} messages per burst to one user with {} tabs, {} bursts; coalescing on and off are the binary's default rules (from `check-config --print`) with `coalesce = true` / `false` in every rule; a binary that refuses the key runs \"on\" with its built-in rules and reports \"off\" as not available.",
                profile.bursty_peers, profile.bursty_messages, profile.bursty_tabs, profile.bursty_bursts
            ),
            format!(
                "Idle split (ssemux only): the idle scenario again at {} on fresh systems (same tabs, different users); PSS after − before = users × per-user + tabs × per-tab, solved from those two layouts.",
                profile
                    .idle_split
                    .iter()
                    .map(|(u, t)| format!("{u} × {t}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ],
    });
    if kinds.iter().any(|k| Kind::OPT_IN.contains(k))
        && let Some(n) = run["notes"].as_array_mut()
    {
        n.push(json!(
            "ssemux-https(-h2): ssemux with `--backend https://<nginx> --set upstream.extra_ca_pem=<test CA>` (ssemux-https-h2 adds `--set upstream.http_version=http2`), in front of a stock nginx terminating TLS (`listen … ssl http2`, default `http2_max_concurrent_streams` 128, `proxy_buffering off`) in front of the mock. Only ssemux's PSS is counted (not nginx's, not the mock's); `backend streams` is what reached the mock through nginx. Idle only."
        ));
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&run)?)?;
    let plot = std::process::Command::new("python3")
        .arg(plot_script)
        .arg(&json_path)
        .arg(&plot_path)
        .status();
    let plotted = matches!(plot, Ok(s) if s.success());
    if !plotted && let Some(n) = run["notes"].as_array_mut() {
        n.push(json!(format!(
            "plot failed ({plot:?}); see {}",
            plot_script.display()
        )));
    }
    write_markdown(markdown, &run)?;
    eprintln!(
        "wrote {}, {} and {}",
        json_path.display(),
        plot_path.display(),
        markdown.display()
    );
    Ok(())
}

/// The outage scenario on a fresh ssemux behind the counting tap; the
/// recovery goal uses `upstream.connects_per_second` as this binary (with
/// the run's `--ssemux-set`s) says it is configured.
async fn outage(kind: Kind, env: &Env, p: &Profile) -> Result<Value, String> {
    let effective = systems::ssemux_check(env, "outage", "");
    let cps = effective
        .as_ref()
        .ok()
        .and_then(systems::connects_per_second);
    let setup = Setup {
        tap: true,
        ..Setup::default()
    };
    let mut v = on_fresh_with(kind, env, p.outage_users, &setup, async |s| {
        scenarios::outage(s, p, cps).await
    })
    .await?;
    if let Err(e) = effective {
        v["config_error"] = json!(format!("connects_per_second unknown: {e}"));
    }
    Ok(v)
}

/// The bursty chat step twice on fresh systems: with the default rules'
/// `coalesce = true` and with `coalesce = false`, both copied from this
/// binary's `check-config --print`. A binary that refuses the key runs "on"
/// with its built-in rules and reports "off" as not available.
async fn bursty_both(kind: Kind, env: &Env, p: &Profile) -> Result<Value, String> {
    let users = p.bursty_peers + 2;
    let effective = match systems::ssemux_check(env, "defaults", "") {
        Ok(e) => e,
        Err(e) => return Ok(json!({"error": format!("check-config of the defaults: {e}")})),
    };
    let mut out = json!({});
    for (label, flag) in [("on", true), ("off", false)] {
        let file = systems::rules_with_coalesce(&effective, flag);
        let checked = match &file {
            Some(f) => systems::ssemux_check(env, &format!("coalesce-{label}"), f).map(|_| ()),
            None => Err("check-config --print shows no [[translate.rules]]".to_string()),
        };
        let (setup, config) = match checked {
            Ok(()) => (
                Setup {
                    ssemux_config: file,
                    ..Setup::default()
                },
                format!("this binary's default rules with coalesce = {flag} in every rule"),
            ),
            Err(why) if flag => (
                Setup::default(),
                format!(
                    "this binary's built-in default rules (it refuses an explicit coalesce: {why})"
                ),
            ),
            Err(why) => {
                out[label] = json!({
                    "available": false,
                    "why": format!("coalescing not available in this binary: {why}"),
                });
                continue;
            }
        };
        let mut v = on_fresh_with(kind, env, users, &setup, async |s| {
            scenarios::bursty(s, p).await
        })
        .await?;
        v["available"] = json!(true);
        v["config"] = json!(config);
        out[label] = v;
    }
    out["off_vs_on"] = scenarios::bursty_compare(&out["on"], &out["off"]);
    Ok(out)
}

/// The idle scenario at the profile's layout and, for ssemux, at the two
/// split layouts (same tabs, different users), each on a fresh system, so
/// per-user and per-tab cost come out of one run.
async fn idle_with_split(kind: Kind, env: &Env, p: &Profile) -> Result<Value, String> {
    let (users, tabs) = (p.idle_users, p.idle_tabs);
    let mut v = on_fresh(kind, env, users, async |s| {
        scenarios::idle(s, users, tabs).await
    })
    .await?;
    if !kind.is_ssemux() {
        return Ok(v);
    }
    let mut layouts = Vec::new();
    for &(users, tabs) in &p.idle_split {
        eprintln!("   idle split {users}×{tabs}…");
        let l = on_fresh(kind, env, users, async |s| {
            scenarios::idle(s, users, tabs).await
        })
        .await;
        match l {
            Ok(l) => {
                eprintln!("   idle split {users}×{tabs}: {}", short(&l));
                layouts.push(l);
            }
            Err(e) => {
                eprintln!("   idle split {users}×{tabs} could not start: {e}");
                v["split"] = json!({"error": format!("{users} × {tabs} could not start: {e}")});
                return Ok(v);
            }
        }
    }
    v["split"] = scenarios::idle_split(&layouts);
    Ok(v)
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
