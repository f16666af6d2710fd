#!/usr/bin/env python3
"""Plot one ssemux-bench run: delivered triggers/s and p99 latency against
offered triggers/s, one line per system. Usage: plot.py RUN.json OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    run = json.load(open(sys.argv[1]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in run["systems"]:
        steps = (s.get("fanout") or {}).get("steps") or []
        if not steps:
            continue
        x = [st["offered_per_s"] for st in steps]
        ax1.plot(x, [st["delivered_per_s"] for st in steps], marker="o", label=s["system"])
        p99 = [st["p99_ms"] for st in steps]
        pts = [(a, b) for a, b in zip(x, p99) if b is not None]
        if pts:
            ax2.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=s["system"])
    top = max([ax1.get_xlim()[1], 1])
    ax1.plot([0, top], [0, top], "k:", linewidth=0.8, label="offered")
    ax1.set_xlabel("offered triggers/s")
    ax1.set_ylabel("delivered triggers/s")
    ax1.set_title("Fan-out throughput")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("offered triggers/s")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_yscale("log")
    ax2.set_title("Fan-out p99 latency")
    ax2.legend(fontsize=8)
    prof = run["profile"]
    fig.suptitle(
        f"ssemux-bench {prof['name']}: {prof['fanout_users']} users x {prof['fanout_tabs']} tabs — {run['started']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
