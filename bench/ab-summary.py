#!/usr/bin/env python3
"""Medians over repeated ssemux-bench runs, as Markdown.

    ab-summary.py LABEL=GLOB[,GLOB...] [LABEL=GLOB[,GLOB...] ...]

Each group is the run JSONs of one binary. Prints, per group, the median
fan-out p50/p99/delivered and the server's CPU per delivered trigger at
every rate and the ratio of each later group to the first; and, where runs
have the pass-through fan-out, the medians of its ratios to the trigger
fan-out of the same run. The headline rate is the
highest at which every run of every group kept up (delivered >= 90% of
offered, loss <= 1%)."""
import glob
import json
import statistics
import sys


def kept_up(s):
    o, d = s.get("offered_per_s") or 0, s.get("delivered_per_s") or 0
    return o > 0 and d >= 0.9 * o and (s.get("lost") or 0) <= (s.get("expected") or 0) // 100


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit=""):
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:.0f}{unit}"
    if abs(x) >= 10:
        return f"{x:.1f}{unit}"
    return f"{x:.2f}{unit}"


def ratio(x, base):
    return f"{x / base:.2f}×" if x is not None and base else "—"


def ssemux(path):
    run = json.load(open(path))
    for s in run["systems"]:
        if s["system"] == "ssemux":
            return s
    return {}


def main():
    groups = []
    for arg in sys.argv[1:]:
        label, pattern = arg.split("=", 1)
        paths = sorted(p for pat in pattern.split(",") for p in glob.glob(pat))
        runs = [ssemux(p) for p in paths]
        groups.append((label, runs))
    if not groups or not all(r for _, r in groups):
        print("no runs found", file=sys.stderr)
        return 1

    # Fan-out, rate by rate.
    by_rate = {}
    for label, runs in groups:
        for run in runs:
            for s in (run.get("fanout") or {}).get("steps") or []:
                by_rate.setdefault(s["rate_per_user"], {}).setdefault(label, []).append(s)
    n_runs = {label: len(runs) for label, runs in groups}
    rates = sorted(by_rate)
    headline = None
    for r in rates:
        if all(
            len(by_rate[r].get(label, [])) == n_runs[label]
            and all(kept_up(s) for s in by_rate[r][label])
            for label, _ in groups
        ):
            headline = r
    base = groups[0][0]
    print("## Fan-out (triggers): medians over runs\n")
    print(
        "runs: "
        + ", ".join(f"{label} {n}" for label, n in n_runs.items())
        + f"; headline rate (every run kept up): {fmt(headline)}/user/s\n"
    )
    print(
        "| rate/user/s | group | runs kept up | p50 ms | p99 ms | delivered/s "
        "| server CPU µs/trigger | offered ÷ nominal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    medians = {}
    for r in rates:
        for label, _ in groups:
            steps = by_rate[r].get(label, [])
            if not steps:
                continue
            m = {
                k: med([s.get(k) for s in steps])
                for k in ("p50_ms", "p99_ms", "delivered_per_s")
            }
            m["cpu_us"] = med(
                [s["server_cpu_s"] * 1e6 / s["received"] for s in steps if s.get("received")]
            )
            share = med(
                [s["offered_per_s"] / s["nominal_per_s"] for s in steps if s.get("nominal_per_s")]
            )
            medians[(r, label)] = m
            b = medians.get((r, base), {})
            rel = label != base
            print(
                f"| {fmt(r)} | {label} | {sum(map(kept_up, steps))}/{len(steps)} "
                f"| {fmt(m['p50_ms'])}{' (' + ratio(m['p50_ms'], b.get('p50_ms')) + ')' if rel else ''} "
                f"| {fmt(m['p99_ms'])}{' (' + ratio(m['p99_ms'], b.get('p99_ms')) + ')' if rel else ''} "
                f"| {fmt(m['delivered_per_s'])}{' (' + ratio(m['delivered_per_s'], b.get('delivered_per_s')) + ')' if rel else ''} "
                f"| {fmt(m['cpu_us'])}{' (' + ratio(m['cpu_us'], b.get('cpu_us')) + ')' if rel else ''} "
                f"| {fmt(share)} |"
            )
    print("\n| group | median max delivered/s | ratio to " + base + " |\n|---|---|---|")
    maxes = {
        label: med([(run.get("fanout") or {}).get("max_delivered_per_s") for run in runs])
        for label, runs in groups
    }
    for label, _ in groups:
        print(f"| {label} | {fmt(maxes[label])} | {ratio(maxes[label], maxes[base])} |")

    # Pass-through vs trigger, within each run.
    for label, runs in groups:
        vs = [(run.get("fanout-pass") or {}).get("vs_trigger") for run in runs]
        vs = [v for v in vs if v]
        if not vs:
            continue
        print(f"\n## Pass-through ÷ trigger fan-out, group {label}: medians over {len(vs)} runs\n")
        refs = [v.get("reference") or {} for v in vs]
        print(
            "reference rates (highest like for like, per run): "
            + ", ".join(fmt(r.get("rate_per_user")) for r in refs)
        )
        mism = [(run.get("fanout-pass") or {}).get("mismatched_total") for run in runs]
        print(f"mismatched per run: {mism}\n")
        print("| at | p50 ratio | p99 ratio | bytes/tab/event ratio | like for like |\n|---|---|---|---|---|")
        print(
            f"| reference | {fmt(med([r.get('p50_ratio') for r in refs]))}× "
            f"| {fmt(med([r.get('p99_ratio') for r in refs]))}× "
            f"| {fmt(med([r.get('bytes_per_tab_event_ratio') for r in refs]))}× | {len(refs)}/{len(refs)} |"
        )
        per = {}
        for v in vs:
            for row in v.get("rates") or []:
                per.setdefault(row["rate_per_user"], []).append(row)
        for r in sorted(per):
            rows = per[r]
            print(
                f"| {fmt(r)}/user/s | {fmt(med([x.get('p50_ratio') for x in rows]))}× "
                f"| {fmt(med([x.get('p99_ratio') for x in rows]))}× "
                f"| {fmt(med([x.get('bytes_per_tab_event_ratio') for x in rows]))}× "
                f"| {sum(1 for x in rows if x.get('like_for_like'))}/{len(rows)} |"
            )
        print(
            f"\nmax delivered events/s, pass ÷ trigger: {fmt(med([v.get('max_events_ratio') for v in vs]))}×"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
