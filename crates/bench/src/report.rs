//! Report: turns one run's JSON into `docs/benchmarks.md` — every figure as
//! the median over the run's rounds with its spread (min–max), and as a
//! ratio to ssemux (or, in the targets, to the raw floor and nginx) in the
//! same run, machine named.
//!
//! Owns formatting only. It must never invent a number: a missing figure is
//! printed as `—`, a system that did not start says so in its row, and a
//! measurement in which the system did not get every tab (failed opens) is
//! shown as INVALID with the count and the reason, never as a figure.

use std::fmt::Write as _;

use serde_json::Value;

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn num(x: Option<f64>, unit: &str) -> String {
    match x {
        None => "—".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}{unit}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}{unit}"),
        Some(v) => format!("{v:.2}{unit}"),
    }
}

fn ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b != 0.0 => format!(" ({:.2}×)", x / b),
        _ => String::new(),
    }
}

/// Median, min and max of `xs`; `None` when empty.
fn spread(xs: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

fn median(xs: &[f64]) -> Option<f64> {
    spread(xs).map(|s| s.0)
}

/// `median (min–max)unit` over the rounds; one value as itself.
fn sp(xs: &[f64], unit: &str) -> String {
    match spread(xs) {
        None => "—".into(),
        Some((m, lo, hi)) if xs.len() == 1 || lo == hi => num(Some(m), unit),
        Some((m, lo, hi)) => format!(
            "{} ({}–{})",
            num(Some(m), unit),
            num(Some(lo), ""),
            num(Some(hi), unit)
        ),
    }
}

/// [`sp`] and the ratio of its median to the median of `base`.
fn sp_vs(xs: &[f64], base: &[f64], unit: &str) -> String {
    format!("{}{}", sp(xs, unit), ratio(median(xs), median(base)))
}

fn applicable(v: &Value) -> bool {
    v.is_object() && v.get("n/a").is_none() && v.get("error").is_none()
}

/// The rounds of a system: its `runs`, or (a single-round JSON) itself.
fn rounds(sys: &Value) -> Vec<&Value> {
    match sys["runs"].as_array() {
        Some(r) if !r.is_empty() => r.iter().collect(),
        _ => vec![sys],
    }
}

/// `(round, scenario result)` for each round in which `name` ran.
fn scen<'a>(sys: &'a Value, name: &str) -> Vec<(u64, &'a Value)> {
    rounds(sys)
        .into_iter()
        .enumerate()
        .map(|(i, r)| (r["round"].as_u64().unwrap_or(i as u64 + 1), &r[name]))
        .filter(|(_, v)| applicable(v))
        .collect()
}

/// Whether a measurement counts (runs before `valid` was recorded: no
/// failed opens).
fn is_valid(v: &Value) -> bool {
    v["valid"]
        .as_bool()
        .unwrap_or_else(|| v["failed_opens"].as_u64().unwrap_or(0) == 0)
}

fn invalid_reason(v: &Value) -> String {
    match v["invalid_reason"].as_str() {
        Some(r) => r.to_string(),
        None => format!(
            "{} failed opens ({})",
            v["failed_opens"], v["failure_reasons"]
        ),
    }
}

/// A fan-out counts when every step does (failed opens are counted from
/// the first open on, so one bad step means the run had other load).
fn fanout_valid(fo: &Value) -> bool {
    let steps = fo["steps"].as_array();
    let steps_ok = steps.is_none_or(|s| s.iter().all(is_valid));
    steps_ok && fo["failed_opens"].as_u64().unwrap_or(0) == 0
}

fn fanout_reason(fo: &Value) -> String {
    fo["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| !is_valid(x)))
        .map_or_else(|| invalid_reason(fo), invalid_reason)
}

/// "INVALID in round r: why; …" for the rounds of `runs` failing `ok`.
fn invalid_notes(
    runs: &[(u64, &Value)],
    ok: impl Fn(&Value) -> bool,
    why: impl Fn(&Value) -> String,
) -> String {
    runs.iter()
        .filter(|(_, v)| !ok(v))
        .map(|(r, v)| format!("**INVALID** in round {r}: {}", why(v)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// "k/n" valid rounds, and the notes of the others.
fn valid_cell(
    runs: &[(u64, &Value)],
    ok: impl Fn(&Value) -> bool,
    why: impl Fn(&Value) -> String,
) -> String {
    let k = runs.iter().filter(|(_, v)| ok(v)).count();
    let notes = invalid_notes(runs, &ok, why);
    if notes.is_empty() {
        format!("{k}/{}", runs.len())
    } else {
        format!("{k}/{} — {notes}", runs.len())
    }
}

/// The last fan-out step that kept up (or the last step).
fn best_step(fanout: &Value) -> Option<&Value> {
    let steps = fanout.get("steps")?.as_array()?;
    steps
        .iter()
        .rev()
        .find(|s| kept_up(s))
        .or_else(|| steps.last())
}

fn kept_up(s: &Value) -> bool {
    let (d, o) = (
        f(&s["delivered_per_s"]).unwrap_or(0.0),
        f(&s["offered_per_s"]).unwrap_or(0.0),
    );
    o > 0.0
        && d >= 0.9 * o
        && s["lost"].as_i64().unwrap_or(0) <= s["expected"].as_i64().unwrap_or(0) / 100
}

fn name(s: &Value) -> &str {
    s["system"].as_str().unwrap_or("?")
}

fn why(sys: &Value, scenario: &str) -> String {
    let v = &sys[scenario];
    if let Some(s) = v["n/a"].as_str() {
        return format!("n/a: {s}");
    }
    if let Some(s) = v["error"].as_str() {
        return format!("error: {s}");
    }
    for r in rounds(sys) {
        if let Some(e) = r[scenario]["error"].as_str() {
            return format!("error in round {}: {e}", r["round"]);
        }
    }
    format!("not run: {}", sys["status"].as_str().unwrap_or("?"))
}

/// Values of `key` in `vs` (those that have it).
fn col(vs: &[&Value], key: &str) -> Vec<f64> {
    vs.iter().filter_map(|v| f(&v[key])).collect()
}

/// Render the Markdown report.
pub fn markdown(run: &Value) -> String {
    let mut out = String::new();
    let systems = run["systems"].as_array().cloned().unwrap_or_default();
    let base = systems.iter().find(|s| s["system"] == "ssemux");
    let repeat = run["repeat"].as_u64().unwrap_or(1);
    let _ = writeln!(out, "# Benchmarks: ssemux side by side\n");
    let _ = writeln!(
        out,
        "Written by `ssemux-bench run` (`make bench` = quick profile, `make bench-full` = the issue's sizes). \
         Numbers are from one run on the machine below, with every system and the load generator \
         sharing its cores — treat them as ratios on this box, not as absolute capacity.\n"
    );
    let _ = writeln!(
        out,
        "- run: `{}` profile, {}, {} round{} (every system's scenarios once per round; round 2 in reverse system order, so a drift in the machine's load favours no system){}",
        run["profile"]["name"].as_str().unwrap_or("?"),
        run["started"].as_str().unwrap_or("?"),
        repeat,
        if repeat == 1 { "" } else { "s" },
        f(&run["wall_secs"]).map_or(String::new(), |w| format!(", {w:.0} s wall time")),
    );
    let _ = writeln!(out, "- machine: {}", run["machine"].as_str().unwrap_or("?"));
    let _ = writeln!(
        out,
        "- load average at the end of the run (`/proc/loadavg`): `{}` — the machine is shared; other work competes with every system alike",
        run["load_average"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "- JSON: `{}`, plot (round 1): `{}`",
        run["json_path"].as_str().unwrap_or("?"),
        run["plot_path"].as_str().unwrap_or("?")
    );
    if run["profile"]["name"] == "quick" {
        let p = &run["profile"];
        let _ = writeln!(
            out,
            "- **quick profile, counts scaled down**: fan-out {}×{} (issue: 1000×5), idle {}×{} (issue: 10k×2), \
             churn {} s (issue: 60 s), storm {} users (issue: 10k), outage {} users refused for {} s (issue: 2,000 for 30 s).",
            p["fanout_users"],
            p["fanout_tabs"],
            p["idle_users"],
            p["idle_tabs"],
            p["churn_secs"],
            p["storm_users"],
            p["outage_users"],
            p["outage_secs"],
        );
    }
    let _ = writeln!(
        out,
        "\nA figure is the **median over the rounds, (min–max)** after it; ratios in parentheses are system ÷ ssemux \
         of the medians. A measurement counts only if the system got every tab the scenario opens, with no failed \
         open and no dropped stream: one where opens failed is shown as **INVALID** with the count and the reason, \
         and is left out of the medians and ratios. Every system's tabs open at most 64 at a time (connect to \
         response head; see the notes).\n"
    );

    let _ = writeln!(
        out,
        "## Status\n\n| system | status | invalid measurements |\n|---|---|---|"
    );
    for s in &systems {
        let mut bad = Vec::new();
        for r in rounds(s) {
            for sc in ["fanout", "fanout-pass", "idle", "churn", "storm", "outage"] {
                let v = &r[sc];
                if !applicable(v) {
                    continue;
                }
                let ok = if v.get("steps").is_some() {
                    fanout_valid(v)
                } else {
                    is_valid(v)
                };
                if !ok {
                    let why = if v.get("steps").is_some() {
                        fanout_reason(v)
                    } else {
                        invalid_reason(v)
                    };
                    bad.push(format!("round {} {sc}: {why}", r["round"]));
                }
            }
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            name(s),
            s["status"].as_str().unwrap_or("?"),
            if bad.is_empty() {
                "none".to_string()
            } else {
                bad.join("; ")
            }
        );
    }

    fanout(&mut out, &systems, base, run);
    pass_through(&mut out, &systems);
    idle(&mut out, &systems, base);
    idle_split(&mut out, &systems);
    churn(&mut out, &systems);
    storm(&mut out, &systems, base);
    outage(&mut out, &systems);
    bursty(&mut out, &systems);
    targets(&mut out, &systems);
    if let Some(notes) = run["notes"].as_array() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(out, "- {}", n.as_str().unwrap_or(""));
        }
    }
    out
}

/// The rounds of `name` that count (not fan-outs: see [`valid_fanouts`]).
fn valid_runs<'a>(s: &'a Value, name: &str) -> Vec<&'a Value> {
    scen(s, name)
        .into_iter()
        .filter(|(_, v)| is_valid(v))
        .map(|(_, v)| v)
        .collect()
}

/// The valid fan-outs of a system.
fn valid_fanouts(s: &Value) -> Vec<&Value> {
    scen(s, "fanout")
        .into_iter()
        .filter(|(_, v)| fanout_valid(v))
        .map(|(_, v)| v)
        .collect()
}

fn fanout(out: &mut String, systems: &[Value], base: Option<&Value>, run: &Value) {
    let _ = writeln!(
        out,
        "\n## (a) Fan-out: delivered triggers/s and latency\n\n\
         Two triggers per emitted event per tab. Latency is emit (publish call) → tab receive. `max delivered/s` is the best step; \
         latency and CPU are from the highest step that kept up (delivered ≥ 90% of offered, loss ≤ 1%), per round.\n\n\
         | system | max delivered/s | at rate/user/s | p50 | p99 | p99.9 | lost | server CPU cores | peak server PSS | valid rounds |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    let bfo = base.map(valid_fanouts).unwrap_or_default();
    let bbest: Vec<&Value> = bfo.iter().filter_map(|f| best_step(f)).collect();
    for s in systems {
        let runs = scen(s, "fanout");
        if runs.is_empty() {
            let _ = writeln!(
                out,
                "| {} | {} | | | | | | | | |",
                name(s),
                why(s, "fanout")
            );
            continue;
        }
        let valid = valid_fanouts(s);
        let vcell = valid_cell(&runs, fanout_valid, fanout_reason);
        if valid.is_empty() {
            let _ = writeln!(out, "| {} | **INVALID** | | | | | | | | {vcell} |", name(s));
            continue;
        }
        let best: Vec<&Value> = valid.iter().filter_map(|f| best_step(f)).collect();
        let g = |k: &str| col(&best, k);
        let bg = |k: &str| col(&bbest, k);
        let mib = |vs: &[&Value]| -> Vec<f64> {
            col(vs, "peak_server_pss_bytes")
                .iter()
                .map(|b| b / 1048576.0)
                .collect()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {vcell} |",
            name(s),
            sp_vs(
                &col(&valid, "max_delivered_per_s"),
                &col(&bfo, "max_delivered_per_s"),
                ""
            ),
            sp(&g("rate_per_user"), ""),
            sp_vs(&g("p50_ms"), &bg("p50_ms"), " ms"),
            sp_vs(&g("p99_ms"), &bg("p99_ms"), " ms"),
            sp_vs(&g("p999_ms"), &bg("p999_ms"), " ms"),
            sp(&g("lost"), ""),
            sp_vs(&g("server_cpu_cores"), &bg("server_cpu_cores"), ""),
            sp_vs(&mib(&valid), &mib(&bfo), " MiB"),
        );
    }
    let _ = writeln!(
        out,
        "\nEvery step, every system (medians (min–max) over the rounds whose step counts):\n\n\
         | system | rate/user/s | rounds | offered/s | delivered/s | p50 ms | p99 ms | p99.9 ms | lost | resyncs | server CPU s | backend CPU s | load-gen CPU s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let rates: Vec<f64> = run["profile"]["rates"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    for s in systems {
        let runs = scen(s, "fanout");
        for &rate in &rates {
            let at: Vec<(u64, &Value)> = runs
                .iter()
                .filter_map(|(r, fo)| {
                    fo["steps"]
                        .as_array()?
                        .iter()
                        .find(|st| f(&st["rate_per_user"]) == Some(rate))
                        .map(|st| (*r, st))
                })
                .collect();
            if at.is_empty() {
                continue;
            }
            let ok: Vec<&Value> = at
                .iter()
                .filter(|(_, st)| is_valid(st))
                .map(|(_, st)| *st)
                .collect();
            let c = |k: &str| sp(&col(&ok, k), "");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                name(s),
                num(Some(rate), ""),
                valid_cell(&at, is_valid, invalid_reason),
                c("offered_per_s"),
                c("delivered_per_s"),
                c("p50_ms"),
                c("p99_ms"),
                c("p999_ms"),
                c("lost"),
                c("resyncs"),
                c("server_cpu_s"),
                c("backend_cpu_s"),
                c("load_generator_cpu_s"),
            );
        }
    }
}

/// `p vs t (p/t×)`: a pass-through figure next to its trigger baseline.
fn versus(p: Option<f64>, t: Option<f64>, unit: &str) -> String {
    if p.is_none() && t.is_none() {
        return "—".into();
    }
    format!("{} vs {}{}", num(p, unit), num(t, unit), ratio(p, t))
}

/// The pass-through fan-out (ssemux only), as ratios to the trigger fan-out
/// of the same round at the same rate, one row per round.
fn pass_through(out: &mut String, systems: &[Value]) {
    let with: Vec<&Value> = systems
        .iter()
        .filter(|s| !scen(s, "fanout-pass").is_empty())
        .collect();
    let Some(first) = with
        .first()
        .and_then(|s| scen(s, "fanout-pass").first().map(|x| x.1))
    else {
        return;
    };
    let _ = writeln!(
        out,
        "\n## (a′) Pass-through fan-out: 1 KiB events byte for byte\n\n\
         ssemux with one rule, `event = \"*\"` `pass = true`: every upstream event goes to the tabs as it came. \
         Same users × tabs and rates as (a); each upstream event carries {} bytes of JSON, and each tab \
         checks name and data byte for byte (`mismatched` must be 0). Latency is per event, as in (a) per trigger. \
         Each cell is pass-through vs the trigger fan-out (a) of the same round at the same rate/user/s, ratio pass ÷ trigger; \
         bytes are what a tab read per upstream event (SSE framing, ids and keep-alives included); events/s count \
         upstream event × tab (a trigger step delivers two triggers per event).\n\n\
         The reference rate is the highest at which both kept up and both emitters offered ≥ 90% of the rate's \
         nominal load: the emitter awaits one publish call per 10 ms tick and skips ticks that fall due meanwhile, \
         and a tick of 1 KiB events takes longer to publish, so at high rates the pass-through step runs at less \
         load than its rate says (`offered ÷ nominal` below).\n\n\
         | system | round | reference rate/user/s | p50 | p99 | bytes/tab/event | max delivered events/s | mismatched | valid |\n|---|---|---|---|---|---|---|---|---|",
        first["data_bytes"]
    );
    for s in &with {
        for (round, fp) in scen(s, "fanout-pass") {
            let vs = &fp["vs_trigger"];
            let r = &vs["reference"];
            let pair = |p: &str, t: &str, unit: &str| versus(f(&r[p]), f(&r[t]), unit);
            let _ = writeln!(
                out,
                "| {} | {round} | {} | {} | {} | {} | {} | {} | {} |",
                name(s),
                num(f(&r["rate_per_user"]), ""),
                pair("pass_p50_ms", "trigger_p50_ms", " ms"),
                pair("pass_p99_ms", "trigger_p99_ms", " ms"),
                pair(
                    "pass_bytes_per_tab_event",
                    "trigger_bytes_per_tab_event",
                    " B"
                ),
                versus(
                    f(&vs["pass_max_events_per_s"]),
                    f(&vs["trigger_max_events_per_s"]),
                    ""
                ),
                fp["mismatched_total"],
                if fanout_valid(fp) {
                    "yes".to_string()
                } else {
                    format!("**INVALID**: {}", fanout_reason(fp))
                },
            );
        }
    }
    let _ = writeln!(
        out,
        "\nEvery rate:\n\n\
         | system | round | rate/user/s | both kept up | offered ÷ nominal | p50 ms | p99 ms | bytes/tab/event | pass mismatched | pass lost | pass delivered events/s | pass server CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &with {
        for (round, fp) in scen(s, "fanout-pass") {
            let rows = fp["vs_trigger"]["rates"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for st in fp["steps"].as_array().cloned().unwrap_or_default() {
                let rate = f(&st["rate_per_user"]);
                let row = rows.iter().find(|r| f(&r["rate_per_user"]) == rate);
                let pair =
                    |p: &str, t: &str| row.map_or("—".into(), |r| versus(f(&r[p]), f(&r[t]), ""));
                let both = match row {
                    None => "no trigger step",
                    Some(r) if r["both_kept_up"] == true => "yes",
                    Some(_) => "no",
                };
                let _ = writeln!(
                    out,
                    "| {} | {round} | {} | {both} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    name(s),
                    num(rate, ""),
                    row.map_or("—".into(), |r| format!(
                        "{} vs {}",
                        num(f(&r["pass_offered_share"]), ""),
                        num(f(&r["trigger_offered_share"]), "")
                    )),
                    pair("pass_p50_ms", "trigger_p50_ms"),
                    pair("pass_p99_ms", "trigger_p99_ms"),
                    pair("pass_bytes_per_tab_event", "trigger_bytes_per_tab_event"),
                    st["mismatched"],
                    st["lost"],
                    num(f(&st["events_delivered_per_s"]), ""),
                    num(f(&st["server_cpu_s"]), ""),
                );
            }
        }
    }
}

fn idle(out: &mut String, systems: &[Value], base: Option<&Value>) {
    let _ = writeln!(
        out,
        "\n## (b) Idle scale: memory per tab\n\n\
         PSS summed over the system's processes (`/proc/<pid>/smaps_rollup`), after − before opening the tabs, ÷ tabs. \
         The mock backend is listed separately: pass-through makes it hold one stream per tab, ssemux one per user.\n\n\
         | system | tabs open | server PSS/tab | server PSS total | backend PSS/tab | backend streams | valid rounds |\n|---|---|---|---|---|---|---|"
    );
    let valid_of = |s| valid_runs(s, "idle");
    let kib =
        |vs: &[&Value], k: &str| -> Vec<f64> { col(vs, k).iter().map(|b| b / 1024.0).collect() };
    let bvalid = base.map(valid_of).unwrap_or_default();
    for s in systems {
        let runs = scen(s, "idle");
        if runs.is_empty() {
            let _ = writeln!(out, "| {} | {} | | | | | |", name(s), why(s, "idle"));
            continue;
        }
        let valid = valid_of(s);
        let vcell = valid_cell(&runs, is_valid, invalid_reason);
        if valid.is_empty() {
            let _ = writeln!(out, "| {} | **INVALID** | | | | | {vcell} |", name(s));
            continue;
        }
        let with_backend: Vec<&Value> = valid
            .iter()
            .copied()
            .filter(|v| v["backend_pss_after"].as_u64().unwrap_or(0) > 0)
            .collect();
        let tabs = valid
            .iter()
            .map(|v| format!("{} / {}", v["tabs_open"], v["tabs"]))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {} | {tabs} | {} | {} | {} | {} | {vcell} |",
            name(s),
            sp_vs(
                &kib(&valid, "server_pss_per_tab_bytes"),
                &kib(&bvalid, "server_pss_per_tab_bytes"),
                " KiB"
            ),
            sp(
                &col(&valid, "server_pss_after")
                    .iter()
                    .map(|b| b / 1048576.0)
                    .collect::<Vec<_>>(),
                " MiB"
            ),
            sp(&kib(&with_backend, "backend_pss_per_tab_bytes"), " KiB"),
            sp(&col(&valid, "backend_streams"), ""),
        );
    }
}

/// The idle cost split into per user and per tab, for systems that ran the
/// split layouts (ssemux and its https variants), one block per round.
fn idle_split(out: &mut String, systems: &[Value]) {
    let has = |s: &Value| {
        scen(s, "idle")
            .iter()
            .any(|(_, i)| i.get("split").is_some())
    };
    if !systems.iter().any(has) {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Idle split: per user and per tab\n\n\
         The idle scenario again on fresh systems at two layouts with the same tabs and different users; \
         PSS after − before = users × per user + tabs × per tab, solved from the two. Per user is a user's \
         channel, hub entry, upstream and auth cache entry; per tab its connection and tab state.\n\n\
         | system | round | layout | tabs open | server PSS Δ | backend streams | per user | per tab |\n|---|---|---|---|---|---|---|---|"
    );
    let kib = |v: &Value, k: &str| f(&v[k]).map(|b| b / 1024.0);
    for s in systems.iter().filter(|s| has(s)) {
        let per: Vec<(f64, f64)> = scen(s, "idle")
            .iter()
            .filter_map(|(_, i)| {
                Some((
                    kib(&i["split"], "per_user_bytes")?,
                    kib(&i["split"], "per_tab_bytes")?,
                ))
            })
            .collect();
        for (round, i) in scen(s, "idle") {
            let split = &i["split"];
            if let Some(e) = split["error"].as_str() {
                let _ = writeln!(out, "| {} | {round} | error: {e} | | | | | |", name(s));
                continue;
            }
            let layouts = split["layouts"].as_array().cloned().unwrap_or_default();
            for (k, l) in layouts.iter().enumerate() {
                let delta = f(&l["server_pss_after"])
                    .zip(f(&l["server_pss_before"]))
                    .map(|(a, b)| (a - b) / 1048576.0);
                let (pu, pt) = if k == 0 {
                    (
                        num(kib(split, "per_user_bytes"), " KiB"),
                        num(kib(split, "per_tab_bytes"), " KiB"),
                    )
                } else {
                    (String::new(), String::new())
                };
                let _ = writeln!(
                    out,
                    "| {} | {round} | {} × {} | {} / {} | {} | {} | {pu} | {pt} |",
                    if k == 0 { name(s) } else { "" },
                    l["users"],
                    l["tabs_per_user"],
                    l["tabs_open"],
                    l["tabs"],
                    num(delta, " MiB"),
                    l["backend_streams"],
                );
            }
            if split["all_tabs_opened"] == false {
                let _ = writeln!(
                    out,
                    "| {} | {round} | **INVALID**: not every tab opened | | | | | |",
                    name(s)
                );
            }
        }
        if per.len() > 1 {
            let (u, t): (Vec<f64>, Vec<f64>) = per.into_iter().unzip();
            let _ = writeln!(
                out,
                "| {} | all | | | | | {} | {} |",
                name(s),
                sp(&u, " KiB"),
                sp(&t, " KiB")
            );
        }
    }
}

fn churn(out: &mut String, systems: &[Value]) {
    let _ = writeln!(
        out,
        "\n## (c) Churn: upstream connections vs users with a live tab\n\n\
         Sampled every 0.5 s: `live` = distinct users with an open tab, `grace` = users whose last tab left within the grace period. \
         In bounds = live ≤ upstreams ≤ live + grace.\n\n\
         | system | round | samples in bounds | max upstreams over live+grace | max live users without upstream | upstreams after all left | tab opens | valid |\n|---|---|---|---|---|---|---|---|"
    );
    for s in systems {
        let runs = scen(s, "churn");
        if runs.is_empty() {
            let _ = writeln!(out, "| {} | | {} | | | | | |", name(s), why(s, "churn"));
            continue;
        }
        for (round, c) in runs {
            let _ = writeln!(
                out,
                "| {} | {round} | {} / {} | {} | {} | {} | {} | {} |",
                name(s),
                c["samples_in_bounds"],
                c["samples"],
                c["max_upstreams_over_live_plus_grace"],
                c["max_live_users_without_upstream"],
                c["upstreams_after_all_left"],
                c["tab_opens"],
                if is_valid(c) {
                    "yes".to_string()
                } else {
                    format!("**INVALID**: {}", invalid_reason(c))
                },
            );
        }
    }
}

fn storm(out: &mut String, systems: &[Value], base: Option<&Value>) {
    let _ = writeln!(
        out,
        "\n## (d) Reconnect storm: backend restart\n\n\
         One tab per user; the mock backend restarts (new epoch, every stream dropped).\n\n\
         | system | tabs | resynced | time until all resynced | peak new backend conns/s | backend conns total | failed reconnects | valid rounds |\n|---|---|---|---|---|---|---|---|"
    );
    let valid_of = |s| valid_runs(s, "storm");
    let bv = base.map(valid_of).unwrap_or_default();
    for s in systems {
        let runs = scen(s, "storm");
        if runs.is_empty() {
            let _ = writeln!(out, "| {} | {} | | | | | | |", name(s), why(s, "storm"));
            continue;
        }
        let v = valid_of(s);
        let vcell = valid_cell(&runs, is_valid, invalid_reason);
        if v.is_empty() {
            let _ = writeln!(out, "| {} | **INVALID** | | | | | | {vcell} |", name(s));
            continue;
        }
        let all = v.iter().all(|x| x["secs_until_all_resynced"].is_number());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{} | {} | {} | {} | {vcell} |",
            name(s),
            sp(&col(&v, "tabs_open"), ""),
            sp(&col(&v, "resynced_tabs"), ""),
            sp_vs(
                &col(&v, "secs_until_all_resynced"),
                &col(&bv, "secs_until_all_resynced"),
                " s"
            ),
            if all {
                ""
            } else {
                " (not all resynced in some round)"
            },
            sp_vs(
                &col(&v, "peak_backend_new_conns_per_s"),
                &col(&bv, "peak_backend_new_conns_per_s"),
                ""
            ),
            sp(&col(&v, "backend_new_conns"), ""),
            sp(&col(&v, "failed_reconnects"), ""),
        );
    }
}

fn outage(out: &mut String, systems: &[Value]) {
    let with: Vec<&Value> = systems
        .iter()
        .filter(|s| !scen(s, "outage").is_empty())
        .collect();
    if with.is_empty() {
        if let Some(s) = systems.iter().find(|s| s["system"] == "ssemux")
            && s["outage"].is_object()
            && s["outage"].get("n/a").is_none()
        {
            let _ = writeln!(out, "\n## (e) Outage\n\n{}", why(s, "outage"));
        }
        return;
    }
    let _ = writeln!(
        out,
        "\n## (e) Outage: the backend refuses event streams, then is back\n\n\
         One tab per user through ssemux (only: the peers have no upstream of their own to share). The mock answers every \
         events request `503` and drops every open stream; after the outage it answers again. Just before it is back, \
         one trigger stamped with the end of the outage is emitted to every user (into the backend's log, replayed on \
         reconnect; re-emitted every 0.5 s until every tab has one). **Back → all receiving** is the time from the end of \
         the refusal until the last tab got such a trigger; the goal is users ÷ `upstream.connects_per_second` + 1 s. \
         Connects are the mock's own counter of streams opened, sampled every 100 ms (the peak over any 1 s window; the \
         busiest 100 ms × 10 after it); attempts are every events request at the backend's door, refused or not \
         (a counting relay in the bench between ssemux and the mock, stamped per request).\n\n\
         | system | round | users (tabs open) | outage | back → all receiving (goal) | per tab p50 / p99 | peak backend connects/s after back (configured) | connect attempts during outage (peak/s) | attempts back → all | upstream-down / -up seen | resyncs | valid |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in with {
        for (round, o) in scen(s, "outage") {
            let all = match f(&o["secs_back_to_all_receiving"]) {
                Some(t) => format!("{t:.2} s"),
                None => format!(
                    "not all within 75 s ({} of {})",
                    o["tabs_receiving_again"], o["tabs_open"]
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {round} | {} ({}) | {} s | **{all}** ({}) | {} / {} | {} ({}) ({}) | {} ({}/s) | {} | {} / {} | {} | {} |",
                name(s),
                o["users"],
                o["tabs_open"],
                o["outage_secs"],
                num(f(&o["goal_secs"]), " s"),
                num(f(&o["recovery_p50_ms"]), " ms"),
                num(f(&o["recovery_p99_ms"]), " ms"),
                num(f(&o["peak_backend_connects_per_s"]), "/s"),
                format_args!(
                    "{}/s per 100 ms × 10",
                    num(f(&o["peak_backend_connects_per_100ms_x10"]), "")
                ),
                o["connects_per_second"]
                    .as_u64()
                    .map_or("?".into(), |c| format!("{c}/s")),
                o["attempts_during_outage"],
                num(f(&o["peak_attempts_per_s_during_outage"]), ""),
                o["attempts_back_to_all"],
                o["upstream_down_seen"],
                o["upstream_up_seen"],
                o["resyncs_seen"],
                if is_valid(o) {
                    "yes".to_string()
                } else {
                    format!("**INVALID**: {}", invalid_reason(o))
                },
            );
        }
    }
}

fn bursty(out: &mut String, systems: &[Value]) {
    let with: Vec<&Value> = systems
        .iter()
        .filter(|s| !scen(s, "bursty").is_empty())
        .collect();
    let Some(first) = with
        .first()
        .and_then(|s| scen(s, "bursty").first().map(|x| x.1))
    else {
        return;
    };
    let on = &first["on"];
    let _ = writeln!(
        out,
        "\n## (f) Bursty chat: writes and bytes per tab, coalescing on and off\n\n\
         One user with {} tabs; {} peers each send a burst of {} messages at once (one `inbound` per message, each peer's \
         burst in one batch, the peers side by side), {} bursts one after another, each followed by one message from a \
         sentinel peer (its two triggers mark the end of the burst at every tab). Sent: {} triggers per tab per burst \
         (`thread-updated` + `contact-changed` per message), of which {} distinct (name, data). Per tab and burst: \
         **events** = SSE events the tab received (sentinels left out); **reads** = body chunks as the tab's 4 KiB reads \
         return them — what a tab can see of ssemux's writes (a write larger than 4 KiB is several reads, and reads may \
         merge writes); **bytes** = everything it read. \"on\" and \"off\" are this binary's default rules \
         (`check-config --print`) written to a file with `coalesce = true` / `false` in every rule.\n\n\
         A tab that falls behind past `hub.max_lag` or `hub.max_lag_bytes` (older binaries: `hub.max_lag_frames`) gets a `resync` instead of what it missed (and perhaps \
         not the sentinel): its burst ends when it has read nothing for 300 ms after the `resync` (counted in the burst's time).\n\n\
         | system | round | coalescing | events/tab/burst | reads/tab/burst | bytes/tab/burst | resyncs/tab (tab-bursts ended by one) | burst → all tabs (median) | server CPU s | off ÷ on (events, reads, bytes) |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        on["tabs"],
        on["peers"],
        on["messages_per_burst"],
        on["bursts"],
        f(&on["peers"])
            .zip(f(&on["messages_per_burst"]))
            .map_or("?".into(), |(p, m)| format!("{:.0}", p * m * 2.0)),
        on["distinct_triggers_per_burst"],
    );
    for s in with {
        for (round, b) in scen(s, "bursty") {
            for label in ["on", "off"] {
                let v = &b[label];
                if v["available"] != true {
                    let _ = writeln!(
                        out,
                        "| {} | {round} | {label} | {} | | | | | | |",
                        name(s),
                        v["why"]
                            .as_str()
                            .or(v["error"].as_str())
                            .unwrap_or("not run")
                    );
                    continue;
                }
                if let Some(e) = v["error"].as_str() {
                    let _ = writeln!(
                        out,
                        "| {} | {round} | {label} | error: {e} | | | | | | |",
                        name(s)
                    );
                    continue;
                }
                let cmp = &b["off_vs_on"];
                let c = if label == "off" && cmp.get("n/a").is_none() {
                    format!(
                        "{}× {}× {}×",
                        num(f(&cmp["events_per_tab"]), ""),
                        num(f(&cmp["chunks_per_tab"]), ""),
                        num(f(&cmp["bytes_per_tab"]), "")
                    )
                } else {
                    String::new()
                };
                let bursts: Vec<f64> = v["burst_ms"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                let done = if v["bursts_complete"] == v["bursts"] {
                    String::new()
                } else {
                    format!(
                        " (only {} of {} bursts arrived)",
                        v["bursts_complete"], v["bursts"]
                    )
                };
                let _ = writeln!(
                    out,
                    "| {} | {round} | {label}{} | {}{done} | {} | {} | {} ({}) | {} | {} | {c} |",
                    name(s),
                    if v["config"].as_str().is_some_and(|c| c.contains("built-in")) {
                        " (built-in rules: this binary has no `coalesce` key)"
                    } else {
                        ""
                    },
                    num(f(&v["events_per_tab_per_burst"]), ""),
                    num(f(&v["chunks_per_tab_per_burst"]), ""),
                    num(f(&v["bytes_per_tab_per_burst"]), " B"),
                    num(f(&v["resyncs_per_tab"]), ""),
                    v["tab_bursts_ended_by_resync"],
                    num(median(&bursts), " ms"),
                    num(f(&v["server_cpu_s"]), ""),
                );
            }
        }
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The valid fan-out of `sys` in round `round`.
fn fanout_of(systems: &[Value], sys: &str, round: u64) -> Option<Value> {
    let s = systems.iter().find(|s| s["system"] == sys)?;
    scen(s, "fanout")
        .into_iter()
        .find(|(r, v)| *r == round && fanout_valid(v))
        .map(|(_, v)| v.clone())
}

/// Rounds in which ssemux's fan-out counts.
fn base_rounds(systems: &[Value]) -> Vec<u64> {
    systems
        .iter()
        .find(|s| s["system"] == "ssemux")
        .map(|s| scen(s, "fanout").into_iter().map(|(r, _)| r).collect())
        .unwrap_or_default()
}

/// ssemux ÷ `peer` of `figure`, round by round, over the rounds in which
/// both fan-outs count; and the rounds left out and why.
fn paired(
    systems: &[Value],
    peer: &str,
    mut figure: impl FnMut(&Value, &Value) -> Option<f64>,
) -> (Vec<f64>, Vec<String>) {
    let (mut rs, mut left) = (Vec::new(), Vec::new());
    for r in base_rounds(systems) {
        match (fanout_of(systems, "ssemux", r), fanout_of(systems, peer, r)) {
            (Some(a), Some(b)) => {
                if let Some(x) = figure(&a, &b) {
                    rs.push(x);
                }
            }
            (None, _) => left.push(format!("round {r}: ssemux's fan-out INVALID")),
            (_, None) => left.push(format!("round {r}: {peer}'s fan-out INVALID or not run")),
        }
    }
    (rs, left)
}

fn ratio_cell(rs: &[f64], left: &[String]) -> String {
    let mut c = match spread(rs) {
        None => "—".to_string(),
        Some((m, _, _)) if rs.len() == 1 => format!("{m:.2}×"),
        Some((m, lo, hi)) => format!("{m:.2}× ({lo:.2}–{hi:.2}×)"),
    };
    if !left.is_empty() {
        c.push_str(&format!(" [left out: {}]", left.join("; ")));
    }
    c
}

/// Steps of `a` and `b` at the same rate/user/s.
fn same_rate<'a>(a: &'a Value, b: &'a Value) -> Vec<(&'a Value, &'a Value)> {
    let steps = |v: &'a Value| {
        v["steps"]
            .as_array()
            .map(|s| s.iter().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let bs = steps(b);
    steps(a)
        .into_iter()
        .filter_map(|x| {
            let y = bs
                .iter()
                .find(|y| f(&y["rate_per_user"]) == f(&x["rate_per_user"]))?;
            Some((x, *y))
        })
        .collect()
}

/// The worst (highest) ssemux ÷ peer p99 over the steps at which `peer`
/// kept up, and the rate of it.
fn worst_p99(a: &Value, b: &Value) -> Option<(f64, f64)> {
    same_rate(a, b)
        .into_iter()
        .filter(|(_, y)| kept_up(y))
        .filter_map(|(x, y)| {
            Some((
                f(&x["p99_ms"])? / f(&y["p99_ms"]).filter(|v| *v > 0.0)?,
                f(&x["rate_per_user"])?,
            ))
        })
        .max_by(|p, q| p.0.total_cmp(&q.0))
}

/// The targets, checked against this run's ssemux figures, with
/// ratios against the raw floor and nginx pass-through round by round.
fn targets(out: &mut String, systems: &[Value]) {
    let Some(base) = systems.iter().find(|s| s["system"] == "ssemux") else {
        return;
    };
    let _ = writeln!(
        out,
        "\n## Targets (from the issues; measured, not asserted)\n\n\
         Ratios are ssemux ÷ the peer within each round (same machine state), then median (min–max) over the rounds \
         in which both measurements count; a round in which either is INVALID is left out, and says so.\n\n\
         | target | this run | verdict |\n|---|---|---|"
    );
    let max = |a: &Value, b: &Value| {
        Some(f(&a["max_delivered_per_s"])? / f(&b["max_delivered_per_s"]).filter(|v| *v > 0.0)?)
    };
    for (peer, want) in [
        ("pushpin", Some(2.0)),
        ("nchan", Some(1.5)),
        ("raw-floor", Some(0.5)),
        ("nginx-passthrough", None),
    ] {
        let (rs, left) = paired(systems, peer, max);
        let v = match want {
            Some(w) if !rs.is_empty() => verdict(Some(rs.iter().all(|r| *r >= w))),
            Some(_) => verdict(None),
            None => "for reference",
        };
        let label = want.map_or(format!("delivered/s vs {peer}"), |w| {
            format!("delivered/s ≥ {w}× {peer}")
        });
        let _ = writeln!(out, "| {label} | {} | {v} |", ratio_cell(&rs, &left));
    }
    for (peer, want, label) in [
        (
            "raw-floor",
            1.5,
            "p99 ≤ 1.5× the raw floor's at every step the floor sustains (worst step)",
        ),
        (
            "nginx-passthrough",
            1.0,
            "p99 never above nginx pass-through's at the same offered load (worst step nginx sustains)",
        ),
    ] {
        let mut at = Vec::new();
        let (rs, left) = paired(systems, peer, |a, b| {
            let (r, rate) = worst_p99(a, b)?;
            at.push(rate);
            Some(r)
        });
        let rates = if at.is_empty() {
            String::new()
        } else {
            format!(
                " at {} events/user/s",
                at.iter()
                    .map(|r| num(Some(*r), ""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            out,
            "| {label} | {}{rates} | {} |",
            ratio_cell(&rs, &left),
            verdict((!rs.is_empty()).then(|| rs.iter().all(|r| *r <= want)))
        );
    }
    // Zero lost and zero resyncs wherever the floor loses nothing.
    let (losses, left) = paired(systems, "raw-floor", |a, b| {
        let n: i64 = same_rate(a, b)
            .into_iter()
            .filter(|(_, y)| y["lost"].as_i64() == Some(0))
            .map(|(x, _)| {
                x["lost"].as_i64().unwrap_or(0).max(0) + x["resyncs"].as_i64().unwrap_or(0)
            })
            .sum();
        Some(n as f64)
    });
    let _ = writeln!(
        out,
        "| zero lost and zero resyncs at every step where the raw floor loses nothing | {} lost + resyncs per round{} | {} |",
        if losses.is_empty() {
            "—".to_string()
        } else {
            losses
                .iter()
                .map(|l| format!("{l:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        if left.is_empty() {
            String::new()
        } else {
            format!(" [left out: {}]", left.join("; "))
        },
        verdict((!losses.is_empty()).then(|| losses.iter().all(|l| *l == 0.0)))
    );
    let fos = valid_fanouts(base);
    let p99_half: Vec<(f64, f64)> = fos
        .iter()
        .filter_map(|f| {
            let max = f["max_delivered_per_s"].as_f64()?;
            f["steps"]
                .as_array()?
                .iter()
                // The load offered, not what got through: a step past the
                // limit delivers little, and is no "light load".
                .rfind(|s| s["offered_per_s"].as_f64().is_some_and(|o| o <= 0.5 * max))
                .and_then(|s| Some((s["p99_ms"].as_f64()?, s["delivered_per_s"].as_f64()?)))
        })
        .collect();
    let tabs = fos
        .first()
        .and_then(|f| f["tabs_open"].as_u64())
        .unwrap_or(0);
    let (p, d): (Vec<f64>, Vec<f64>) = p99_half.iter().copied().unzip();
    let _ = writeln!(
        out,
        "| p99 ≤ 5 ms under 50% of max rate (issue: at 10k tabs; this run: {tabs} tabs) | {} at {} | {} |",
        sp(&p, " ms"),
        sp(&d, "/s"),
        verdict((!p.is_empty()).then(|| p.iter().all(|x| *x <= 5.0)))
    );
    let idles: Vec<&Value> = valid_runs(base, "idle");
    let pss: Vec<f64> = col(&idles, "server_pss_per_tab_bytes")
        .iter()
        .map(|b| b / 1024.0)
        .collect();
    let _ = writeln!(
        out,
        "| ≤ 8 KiB PSS per idle tab | {} | {} |",
        sp(&pss, " KiB"),
        verdict((!pss.is_empty()).then(|| pss.iter().all(|p| *p <= 8.0)))
    );
    let churns: Vec<&Value> = valid_runs(base, "churn");
    let churn_ok: Vec<bool> = churns
        .iter()
        .map(|c| c["samples_in_bounds"] == c["samples"] && c["upstreams_after_all_left"] == 0)
        .collect();
    let _ = writeln!(
        out,
        "| upstream connections = distinct users with a live tab (+ grace) | {} | {} |",
        churns
            .iter()
            .map(|c| format!(
                "{}/{} in bounds, {} after all left",
                c["samples_in_bounds"], c["samples"], c["upstreams_after_all_left"]
            ))
            .collect::<Vec<_>>()
            .join("; "),
        verdict((!churn_ok.is_empty()).then(|| churn_ok.iter().all(|x| *x)))
    );
    let passes: Vec<&Value> = scen(base, "fanout-pass")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    if !passes.is_empty() {
        let m: u64 = passes
            .iter()
            .filter_map(|p| p["mismatched_total"].as_u64())
            .sum();
        let timed: u64 = passes
            .iter()
            .filter_map(|p| p["steps"].as_array())
            .flatten()
            .filter_map(|x| x["timed"].as_u64())
            .sum();
        let _ = writeln!(
            out,
            "| pass-through: every event reaches the tabs byte for byte | {m} mismatched, {timed} checked | {} |",
            verdict(Some(m == 0 && timed > 0))
        );
    }
    let storms: Vec<&Value> = valid_runs(base, "storm");
    let peak = col(&storms, "peak_backend_new_conns_per_s");
    let all = col(&storms, "secs_until_all_resynced");
    let _ = writeln!(
        out,
        "| storm: ≤ 2,000 new backend conns/s | {} | {} |",
        sp(&peak, "/s"),
        verdict((!peak.is_empty()).then(|| peak.iter().all(|p| *p <= 2000.0)))
    );
    let _ = writeln!(
        out,
        "| storm: every tab resynced within 10 s | {}{} | {} |",
        sp(&all, " s"),
        if all.len() < storms.len() {
            " (not all resynced in some round)"
        } else {
            ""
        },
        verdict(
            (!storms.is_empty())
                .then(|| all.len() == storms.len() && all.iter().all(|a| *a <= 10.0))
        )
    );
    let outages: Vec<&Value> = valid_runs(base, "outage");
    if !outages.is_empty() {
        let times = col(&outages, "secs_back_to_all_receiving");
        let goals = col(&outages, "goal_secs");
        let ok = (times.len() == outages.len() && goals.len() == outages.len()).then(|| {
            outages
                .iter()
                .all(|o| f(&o["secs_back_to_all_receiving"]) <= f(&o["goal_secs"]))
        });
        let _ = writeln!(
            out,
            "| outage: back → all users receiving ≤ users ÷ connects_per_second + 1 s | {} (goal {}){} | {} |",
            sp(&times, " s"),
            sp(&goals, " s"),
            if times.len() < outages.len() {
                "; not all within 75 s in some round"
            } else {
                ""
            },
            verdict(if times.len() < outages.len() {
                Some(false)
            } else {
                ok
            })
        );
        let peaks = col(&outages, "peak_backend_connects_per_s");
        let attempts = col(&outages, "peak_attempts_per_s_after_back")
            .into_iter()
            .zip(col(&outages, "peak_attempts_per_s_during_outage"))
            .map(|(a, b)| a.max(b))
            .collect::<Vec<_>>();
        let cps = outages
            .iter()
            .filter_map(|o| f(&o["connects_per_second"]))
            .reduce(f64::min);
        // The limiter allows a burst of a tenth of a second's worth on top
        // of the rate (configuration.md), so a 1 s window may hold 1.1×
        // the rate; 1% more for the relay's stamps, which are taken when a
        // request arrives, not when ssemux's limiter let it go.
        let bound = cps.map(|c| 1.1 * c * 1.01);
        let ok = bound.map(|b| peaks.iter().chain(&attempts).all(|p| *p <= b));
        let _ = writeln!(
            out,
            "| outage: backend connects/s never above `upstream.connects_per_second` ({}): in any 1 s at most the rate plus the limiter's documented burst of a tenth, +1% for the relay's timing ({}) | connects {}, attempts {} (busiest 1 s) | {} |",
            cps.map_or("?".into(), |c| format!("{c:.0}/s")),
            bound.map_or("?".into(), |b| format!("{b:.0}")),
            sp(&peaks, "/s"),
            sp(&attempts, "/s"),
            verdict(ok)
        );
        let during = col(&outages, "attempts_during_outage");
        let _ = writeln!(
            out,
            "| outage: backend connect attempts during the outage | {} | for reference |",
            sp(&during, "")
        );
    }
    let bursts: Vec<&Value> = scen(base, "bursty").into_iter().map(|(_, v)| v).collect();
    if !bursts.is_empty() {
        let on: Vec<&Value> = bursts
            .iter()
            .map(|b| &b["on"])
            .filter(|v| v["available"] == true)
            .collect();
        let off_ok = bursts.iter().any(|b| b["off"]["available"] == true);
        let ev = col(&on, "events_per_tab_per_burst");
        let distinct = on
            .first()
            .and_then(|v| f(&v["distinct_triggers_per_burst"]));
        let _ = writeln!(
            out,
            "| bursty chat, coalescing on: a tab gets only the distinct triggers of a burst ({}) | {} events per tab per burst{} | {} |",
            num(distinct, ""),
            sp(&ev, ""),
            if off_ok {
                ""
            } else {
                "; coalescing not available in this binary"
            },
            verdict(
                distinct
                    .filter(|_| off_ok && !ev.is_empty())
                    .map(|d| ev.iter().all(|e| *e <= d))
            )
        );
    }
}

/// The part of an existing report written by hand: from the first `## `
/// heading that says "written by hand" to the end.
pub fn hand_written(old: &str) -> Option<&str> {
    let mut at = 0;
    for line in old.split_inclusive('\n') {
        if line.starts_with("## ") && line.contains("written by hand") {
            return Some(&old[at..]);
        }
        at += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[3.0]), Some((3.0, 3.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[5.0, 1.0, 2.0]), Some((2.0, 1.0, 5.0)));
        assert_eq!(sp(&[1.0, 3.0], " s"), "2.00 s (1.00–3.00 s)");
    }

    #[test]
    fn failed_opens_make_a_fanout_invalid_and_say_why() {
        let bad = json!({"failed_opens": 245, "steps": [
            {"valid": false, "invalid_reason": "245 failed opens (status 502 Bad Gateway: 245)"}]});
        assert!(!fanout_valid(&bad));
        assert!(fanout_reason(&bad).contains("502"));
        // A run from before validity was recorded: failed opens decide.
        let old = json!({"failed_opens": 3, "steps": [{}]});
        assert!(!fanout_valid(&old));
        assert!(fanout_valid(&json!({"failed_opens": 0, "steps": [{}]})));
    }

    #[test]
    fn invalid_rounds_are_left_out_of_paired_ratios() {
        let fo = |max: f64, valid: bool| json!({"max_delivered_per_s": max, "failed_opens": if valid { 0 } else { 9 }, "steps": []});
        let sys = |n: &str, a: Value, b: Value| json!({"system": n, "runs": [{"round": 1, "fanout": a}, {"round": 2, "fanout": b}]});
        let systems = vec![
            sys("ssemux", fo(100.0, true), fo(120.0, true)),
            sys("pushpin", fo(50.0, true), fo(10.0, false)),
        ];
        let (rs, left) = paired(&systems, "pushpin", |a, b| {
            Some(f(&a["max_delivered_per_s"])? / f(&b["max_delivered_per_s"])?)
        });
        assert_eq!(rs, vec![2.0]);
        assert_eq!(left.len(), 1);
        assert!(left[0].contains("round 2"));
    }

    #[test]
    fn keeps_what_was_written_by_hand() {
        let old = "# x\n\n## Notes\n\n- a\n\n## Reading this run (written by hand, not by the runner)\n\nmine\n";
        assert_eq!(
            hand_written(old),
            Some("## Reading this run (written by hand, not by the runner)\n\nmine\n")
        );
        assert_eq!(hand_written("# x\n## Notes\n"), None);
    }
}
