//! Report: turns one run's JSON into `docs/benchmarks.md` — every figure as
//! an absolute value and as a ratio to ssemux in the same run, machine named.
//!
//! Owns formatting only. It must never invent a number: a missing figure is
//! printed as `—` and a system that did not start says so in its row.

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

fn cell(x: Option<f64>, base: Option<f64>, unit: &str) -> String {
    format!("{}{}", num(x, unit), ratio(x, base))
}

/// The last fan-out step that kept up (or the last step).
fn best_step(fanout: &Value) -> Option<&Value> {
    let steps = fanout.get("steps")?.as_array()?;
    let kept = steps.iter().rev().find(|s| {
        let (d, o) = (
            f(&s["delivered_per_s"]).unwrap_or(0.0),
            f(&s["offered_per_s"]).unwrap_or(0.0),
        );
        o > 0.0
            && d >= 0.9 * o
            && s["lost"].as_i64().unwrap_or(0) <= s["expected"].as_i64().unwrap_or(0) / 100
    });
    kept.or_else(|| steps.last())
}

fn scenario<'a>(sys: &'a Value, name: &str) -> Option<&'a Value> {
    sys.get(name)
        .filter(|v| v.is_object() && v.get("n/a").is_none() && v.get("error").is_none())
}

/// Render the Markdown report.
pub fn markdown(run: &Value) -> String {
    let mut out = String::new();
    let systems = run["systems"].as_array().cloned().unwrap_or_default();
    let base = systems.iter().find(|s| s["system"] == "ssemux");
    let _ = writeln!(out, "# Benchmarks: ssemux side by side\n");
    let _ = writeln!(
        out,
        "Written by `ssemux-bench run` (`make bench` = quick profile, `make bench-full` = the issue's sizes). \
         Numbers are from one run on the machine below, with every system and the load generator \
         sharing its cores — treat them as ratios on this box, not as absolute capacity.\n"
    );
    let _ = writeln!(
        out,
        "- run: `{}` profile, {}",
        run["profile"]["name"].as_str().unwrap_or("?"),
        run["started"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "- machine: {}", run["machine"].as_str().unwrap_or("?"));
    let _ = writeln!(
        out,
        "- load average at the end of the run (`/proc/loadavg`): `{}` — the machine is shared; other work competes with every system alike",
        run["load_average"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "- JSON: `{}`, plot: `{}`",
        run["json_path"].as_str().unwrap_or("?"),
        run["plot_path"].as_str().unwrap_or("?")
    );
    if run["profile"]["name"] == "quick" {
        let p = &run["profile"];
        let _ = writeln!(
            out,
            "- **quick profile, counts scaled down**: fan-out {}×{} (issue: 1000×5), idle {}×{} (issue: 10k×2), \
             churn {} s (issue: 60 s), storm {} users (issue: 10k).",
            p["fanout_users"],
            p["fanout_tabs"],
            p["idle_users"],
            p["idle_tabs"],
            p["churn_secs"],
            p["storm_users"]
        );
    }
    let _ = writeln!(
        out,
        "\nRatios in parentheses are system ÷ ssemux in this run.\n"
    );

    let _ = writeln!(out, "## Status\n\n| system | status |\n|---|---|");
    for s in &systems {
        let _ = writeln!(
            out,
            "| {} | {} |",
            s["system"].as_str().unwrap_or("?"),
            s["status"].as_str().unwrap_or("?")
        );
    }

    // Fan-out.
    let _ = writeln!(
        out,
        "\n## (a) Fan-out: delivered triggers/s and latency\n\n\
         Two triggers per emitted event per tab. Latency is emit (publish call) → tab receive. \
         `max delivered/s` is the best step; latency and CPU are from the highest step that kept up \
         (delivered ≥ 90% of offered, loss ≤ 1%).\n\n\
         | system | max delivered/s | at rate/user/s | p50 | p99 | p99.9 | lost | server CPU cores | peak server PSS |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let bf = base.and_then(|b| scenario(b, "fanout"));
    let bbest = bf.and_then(best_step);
    for s in &systems {
        let name = s["system"].as_str().unwrap_or("?");
        let Some(fo) = scenario(s, "fanout") else {
            let _ = writeln!(out, "| {name} | {} | | | | | | | |", why(s, "fanout"));
            continue;
        };
        let st = best_step(fo);
        let g = |k: &str| st.and_then(|x| f(&x[k]));
        let bg = |k: &str| bbest.and_then(|x| f(&x[k]));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(
                f(&fo["max_delivered_per_s"]),
                bf.and_then(|b| f(&b["max_delivered_per_s"])),
                ""
            ),
            num(g("rate_per_user"), ""),
            cell(g("p50_ms"), bg("p50_ms"), " ms"),
            cell(g("p99_ms"), bg("p99_ms"), " ms"),
            cell(g("p999_ms"), bg("p999_ms"), " ms"),
            num(g("lost"), ""),
            cell(g("server_cpu_cores"), bg("server_cpu_cores"), ""),
            cell(
                f(&fo["peak_server_pss_bytes"]).map(|b| b / 1048576.0),
                bf.and_then(|b| f(&b["peak_server_pss_bytes"]))
                    .map(|b| b / 1048576.0),
                " MiB"
            ),
        );
    }
    let _ = writeln!(
        out,
        "\nEvery step, every system:\n\n| system | rate/user/s | offered/s | delivered/s | p50 ms | p99 ms | p99.9 ms | lost | resyncs | server CPU s | backend CPU s | load-gen CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &systems {
        let name = s["system"].as_str().unwrap_or("?");
        let Some(fo) = scenario(s, "fanout") else {
            continue;
        };
        for st in fo["steps"].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                num(f(&st["rate_per_user"]), ""),
                num(f(&st["offered_per_s"]), ""),
                num(f(&st["delivered_per_s"]), ""),
                num(f(&st["p50_ms"]), ""),
                num(f(&st["p99_ms"]), ""),
                num(f(&st["p999_ms"]), ""),
                st["lost"],
                st["resyncs"],
                num(f(&st["server_cpu_s"]), ""),
                num(f(&st["backend_cpu_s"]), ""),
                num(f(&st["load_generator_cpu_s"]), ""),
            );
        }
    }

    pass_through(&mut out, &systems);

    // Idle.
    let _ = writeln!(
        out,
        "\n## (b) Idle scale: memory per tab\n\n\
         PSS summed over the system's processes (`/proc/<pid>/smaps_rollup`), after − before opening the tabs, ÷ tabs. \
         The mock backend is listed separately: pass-through makes it hold one stream per tab, ssemux one per user.\n\n\
         | system | tabs open | server PSS/tab | server PSS total | backend PSS/tab | backend streams |\n|---|---|---|---|---|---|"
    );
    let bi = base.and_then(|b| scenario(b, "idle"));
    for s in &systems {
        let name = s["system"].as_str().unwrap_or("?");
        let Some(id) = scenario(s, "idle") else {
            let _ = writeln!(out, "| {name} | {} | | | | |", why(s, "idle"));
            continue;
        };
        let _ = writeln!(
            out,
            "| {name} | {} / {} | {} | {} | {} | {} |",
            id["tabs_open"],
            id["tabs"],
            cell(
                f(&id["server_pss_per_tab_bytes"]).map(|b| b / 1024.0),
                bi.and_then(|b| f(&b["server_pss_per_tab_bytes"]))
                    .map(|b| b / 1024.0),
                " KiB"
            ),
            num(f(&id["server_pss_after"]).map(|b| b / 1048576.0), " MiB"),
            num(
                f(&id["backend_pss_per_tab_bytes"])
                    .map(|b| b / 1024.0)
                    .filter(|_| id["backend_pss_after"].as_u64().unwrap_or(0) > 0),
                " KiB"
            ),
            id["backend_streams"],
        );
    }

    idle_split(&mut out, &systems, bi);

    // Churn.
    let _ = writeln!(
        out,
        "\n## (c) Churn: upstream connections vs users with a live tab\n\n\
         Sampled every 0.5 s: `live` = distinct users with an open tab, `grace` = users whose last tab left within the grace period. \
         In bounds = live ≤ upstreams ≤ live + grace.\n\n\
         | system | samples in bounds | max upstreams over live+grace | max live users without upstream | upstreams after all left | tab opens |\n|---|---|---|---|---|---|"
    );
    for s in &systems {
        let name = s["system"].as_str().unwrap_or("?");
        let Some(c) = scenario(s, "churn") else {
            let _ = writeln!(out, "| {name} | {} | | | | |", why(s, "churn"));
            continue;
        };
        let _ = writeln!(
            out,
            "| {name} | {} / {} | {} | {} | {} | {} |",
            c["samples_in_bounds"],
            c["samples"],
            c["max_upstreams_over_live_plus_grace"],
            c["max_live_users_without_upstream"],
            c["upstreams_after_all_left"],
            c["tab_opens"]
        );
    }

    // Storm.
    let _ = writeln!(
        out,
        "\n## (d) Reconnect storm: backend restart\n\n\
         One tab per user; the mock backend restarts (new epoch, every stream dropped).\n\n\
         | system | tabs | resynced | time until all resynced | peak new backend conns/s | backend conns total |\n|---|---|---|---|---|---|"
    );
    let bs = base.and_then(|b| scenario(b, "storm"));
    for s in &systems {
        let name = s["system"].as_str().unwrap_or("?");
        let Some(st) = scenario(s, "storm") else {
            let _ = writeln!(out, "| {name} | {} | | | | |", why(s, "storm"));
            continue;
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} |",
            st["tabs_open"],
            st["resynced_tabs"],
            cell(
                f(&st["secs_until_all_resynced"]),
                bs.and_then(|b| f(&b["secs_until_all_resynced"])),
                " s"
            ),
            cell(
                f(&st["peak_backend_new_conns_per_s"]),
                bs.and_then(|b| f(&b["peak_backend_new_conns_per_s"])),
                ""
            ),
            st["backend_new_conns"],
        );
    }
    targets(&mut out, &systems);
    if let Some(notes) = run["notes"].as_array() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(out, "- {}", n.as_str().unwrap_or(""));
        }
    }
    out
}

/// `p vs t (p/t×)`: a pass-through figure next to its trigger baseline.
fn versus(p: Option<f64>, t: Option<f64>, unit: &str) -> String {
    if p.is_none() && t.is_none() {
        return "—".into();
    }
    format!("{} vs {}{}", num(p, unit), num(t, unit), ratio(p, t))
}

/// The pass-through fan-out (ssemux only), as ratios to the trigger fan-out
/// of the same run at the same rate.
fn pass_through(out: &mut String, systems: &[Value]) {
    let with: Vec<&Value> = systems
        .iter()
        .filter(|s| scenario(s, "fanout-pass").is_some())
        .collect();
    let Some(first) = with.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "\n## (a′) Pass-through fan-out: 1 KiB events byte for byte\n\n\
         ssemux with one rule, `event = \"*\"` `pass = true`: every upstream event goes to the tabs as it came. \
         Same users × tabs and rates as (a); each upstream event carries {} bytes of JSON, and each tab \
         checks name and data byte for byte (`mismatched` must be 0). Latency is per event, as in (a) per trigger. \
         Each cell is pass-through vs the trigger fan-out (a) of this run at the same rate/user/s, ratio pass ÷ trigger; \
         bytes are what a tab read per upstream event (SSE framing, ids and keep-alives included); events/s count \
         upstream event × tab (a trigger step delivers two triggers per event).\n\n\
         The reference rate is the highest at which both kept up and both emitters offered ≥ 90% of the rate's \
         nominal load: the emitter awaits one publish call per 10 ms tick and skips ticks that fall due meanwhile, \
         and a tick of 1 KiB events takes longer to publish, so at high rates the pass-through step runs at less \
         load than its rate says (`offered ÷ nominal` below).\n\n\
         | system | reference rate/user/s | p50 | p99 | bytes/tab/event | max delivered events/s | mismatched |\n|---|---|---|---|---|---|---|",
        first["fanout-pass"]["data_bytes"]
    );
    for s in &with {
        let name = s["system"].as_str().unwrap_or("?");
        let fp = &s["fanout-pass"];
        let vs = &fp["vs_trigger"];
        let r = &vs["reference"];
        let pair = |p: &str, t: &str, unit: &str| versus(f(&r[p]), f(&r[t]), unit);
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
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
        );
    }
    let _ = writeln!(
        out,
        "\nEvery rate:\n\n\
         | system | rate/user/s | both kept up | offered ÷ nominal | p50 ms | p99 ms | bytes/tab/event | pass mismatched | pass lost | pass delivered events/s | pass server CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &with {
        let name = s["system"].as_str().unwrap_or("?");
        let fp = &s["fanout-pass"];
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
                "| {name} | {} | {both} | {} | {} | {} | {} | {} | {} | {} | {} |",
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

/// The idle cost split into per user and per tab, for systems that ran the
/// split layouts (ssemux and its https variants).
fn idle_split(out: &mut String, systems: &[Value], base: Option<&Value>) {
    let has = |s: &Value| scenario(s, "idle").is_some_and(|i| i.get("split").is_some());
    if !systems.iter().any(has) {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Idle split: per user and per tab\n\n\
         The idle scenario again on fresh systems at two layouts with the same tabs and different users; \
         PSS after − before = users × per user + tabs × per tab, solved from the two. Per user is a user's \
         channel, hub entry, upstream and auth cache entry; per tab its connection and tab state.\n\n\
         | system | layout | tabs open | server PSS Δ | backend streams | per user | per tab |\n|---|---|---|---|---|---|---|"
    );
    let kib = |v: &Value, k: &str| f(&v[k]).map(|b| b / 1024.0);
    let bsplit = base.map(|b| &b["split"]);
    for s in systems.iter().filter(|s| has(s)) {
        let name = s["system"].as_str().unwrap_or("?");
        let split = &s["idle"]["split"];
        if let Some(e) = split["error"].as_str() {
            let _ = writeln!(out, "| {name} | error: {e} | | | | | |");
            continue;
        }
        let layouts = split["layouts"].as_array().cloned().unwrap_or_default();
        for (i, l) in layouts.iter().enumerate() {
            let delta = f(&l["server_pss_after"])
                .zip(f(&l["server_pss_before"]))
                .map(|(a, b)| (a - b) / 1048576.0);
            let (per_user, per_tab) = if i == 0 {
                (
                    cell(
                        kib(split, "per_user_bytes"),
                        bsplit.and_then(|b| kib(b, "per_user_bytes")),
                        " KiB",
                    ),
                    cell(
                        kib(split, "per_tab_bytes"),
                        bsplit.and_then(|b| kib(b, "per_tab_bytes")),
                        " KiB",
                    ),
                )
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(
                out,
                "| {} | {} × {} | {} / {} | {} | {} | {} | {} |",
                if i == 0 { name } else { "" },
                l["users"],
                l["tabs_per_user"],
                l["tabs_open"],
                l["tabs"],
                num(delta, " MiB"),
                l["backend_streams"],
                per_user,
                per_tab,
            );
        }
        if split["all_tabs_opened"] == false {
            let _ = writeln!(
                out,
                "| {name} | not every tab opened: the split counts the tabs that did | | | | | |"
            );
        }
    }
}

fn why(sys: &Value, scenario: &str) -> String {
    let v = &sys[scenario];
    if let Some(s) = v["n/a"].as_str() {
        return format!("n/a: {s}");
    }
    if let Some(s) = v["error"].as_str() {
        return format!("error: {s}");
    }
    format!("not run: {}", sys["status"].as_str().unwrap_or("?"))
}

fn sys_fanout_max(systems: &[Value], name: &str) -> Option<f64> {
    systems
        .iter()
        .find(|s| s["system"] == name)
        .and_then(|s| scenario(s, "fanout"))
        .and_then(|f| f["max_delivered_per_s"].as_f64())
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The targets, checked against this run's ssemux figures.
fn targets(out: &mut String, systems: &[Value]) {
    let Some(base) = systems.iter().find(|s| s["system"] == "ssemux") else {
        return;
    };
    let _ = writeln!(
        out,
        "\n## Targets (from the issue; measured, not asserted)\n\n| target | this run | verdict |\n|---|---|---|"
    );
    let me = sys_fanout_max(systems, "ssemux");
    for (peer, want) in [("pushpin", 2.0), ("nchan", 1.5), ("raw-floor", 0.5)] {
        let r = me.zip(sys_fanout_max(systems, peer)).map(|(a, b)| a / b);
        let _ = writeln!(
            out,
            "| delivered/s ≥ {want}× {peer} | {} | {} |",
            r.map_or("—".into(), |r| format!("{r:.2}×")),
            verdict(r.map(|r| r >= want))
        );
    }
    let fo = scenario(base, "fanout");
    let p99_half = fo.and_then(|f| {
        let max = f["max_delivered_per_s"].as_f64()?;
        f["steps"]
            .as_array()?
            .iter()
            // The load offered, not what got through: a step past the
            // limit delivers little, and is no "light load".
            .rfind(|s| s["offered_per_s"].as_f64().is_some_and(|o| o <= 0.5 * max))
            .and_then(|s| Some((s["p99_ms"].as_f64()?, s["delivered_per_s"].as_f64()?)))
    });
    let tabs = fo.and_then(|f| f["tabs_open"].as_u64()).unwrap_or(0);
    let _ = writeln!(
        out,
        "| p99 ≤ 5 ms under 50% of max rate (issue: at 10k tabs; this run: {tabs} tabs) | {} | {} |",
        p99_half.map_or("—".into(), |(p, d)| format!("{p:.1} ms at {d:.0}/s")),
        verdict(p99_half.map(|(p, _)| p <= 5.0))
    );
    let pss = scenario(base, "idle").and_then(|i| i["server_pss_per_tab_bytes"].as_f64());
    let _ = writeln!(
        out,
        "| ≤ 8 KiB PSS per idle tab | {} | {} |",
        pss.map_or("—".into(), |p| format!("{:.1} KiB", p / 1024.0)),
        verdict(pss.map(|p| p <= 8192.0))
    );
    let churn = scenario(base, "churn");
    let bounds =
        churn.and_then(|c| Some((c["samples_in_bounds"].as_u64()?, c["samples"].as_u64()?)));
    let after = churn.and_then(|c| c["upstreams_after_all_left"].as_u64());
    let _ = writeln!(
        out,
        "| upstream connections = distinct users with a live tab (+ grace) | {} samples in bounds, {} after all left | {} |",
        bounds.map_or("—".into(), |(a, b)| format!("{a}/{b}")),
        after.map_or("—".into(), |a| a.to_string()),
        verdict(bounds.map(|(a, b)| a == b && after == Some(0)))
    );
    if let Some(fp) = scenario(base, "fanout-pass") {
        let m = fp["mismatched_total"].as_u64();
        let timed: u64 = fp["steps"]
            .as_array()
            .map(|st| st.iter().filter_map(|x| x["timed"].as_u64()).sum())
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "| pass-through: every event reaches the tabs byte for byte | {} mismatched, {timed} checked | {} |",
            m.map_or("—".into(), |m| m.to_string()),
            verdict(m.map(|m| m == 0 && timed > 0))
        );
    }
    let storm = scenario(base, "storm");
    let peak = storm.and_then(|s| s["peak_backend_new_conns_per_s"].as_f64());
    let all = storm.and_then(|s| s["secs_until_all_resynced"].as_f64());
    let _ = writeln!(
        out,
        "| storm: ≤ 2,000 new backend conns/s | {} | {} |",
        peak.map_or("—".into(), |p| format!("{p:.0}/s")),
        verdict(peak.map(|p| p <= 2000.0))
    );
    let _ = writeln!(
        out,
        "| storm: every tab resynced within 10 s | {} | {} |",
        all.map_or("not all resynced".into(), |a| format!("{a:.2} s")),
        verdict(Some(all.is_some_and(|a| a <= 10.0)))
    );
}
