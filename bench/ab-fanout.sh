#!/usr/bin/env bash
# Two ssemux binaries, same bench, same mock: the fan-out step for each,
# RUNS times each, alternating A B, B A, A B, … (so a drift in the machine's
# load favours neither), then per-rate medians and B ÷ A.
#
#   bench/ab-fanout.sh OLD_SSEMUX NEW_SSEMUX [RUNS]
#
# Environment: BENCH_BIN (default $CARGO_TARGET_DIR/release/ssemux-bench; the
# mock is taken from the same directory), OUT (default /tmp/ssemux-ab),
# PORT_OFFSET (default 700), SCENARIOS (default fanout; e.g.
# fanout,fanout-pass when B supports pass-through rules — A gets fanout only
# unless A_SCENARIOS says otherwise), PROFILE (default quick).
# Never writes docs/: reports go to $OUT.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,13p' "$0"
  exit 2
fi
A_SSEMUX=$(realpath "$1")
B_SSEMUX=$(realpath "$2")
RUNS=${3:-3}
BENCH_BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/ssemux-bench}
BENCH_BIN=$(realpath "$BENCH_BIN")
BIN_DIR=$(dirname "$BENCH_BIN")
OUT=${OUT:-/tmp/ssemux-ab}
PORT_OFFSET=${PORT_OFFSET:-700}
SCENARIOS=${SCENARIOS:-fanout}
A_SCENARIOS=${A_SCENARIOS:-fanout}
PROFILE=${PROFILE:-quick}
HERE=$(dirname "$(realpath "$0")")

for f in "$A_SSEMUX" "$B_SSEMUX" "$BENCH_BIN" "$BIN_DIR/ssemux-mock-upstream"; do
  [ -x "$f" ] || { echo "not executable: $f" >&2; exit 2; }
done

mkdir -p "$OUT"
# One directory per binary: its ssemux, the shared mock and bench.
for side in a b; do
  d="$OUT/bin-$side"
  mkdir -p "$d"
  if [ "$side" = a ]; then src=$A_SSEMUX; else src=$B_SSEMUX; fi
  ln -sf "$src" "$d/ssemux"
  ln -sf "$BIN_DIR/ssemux-mock-upstream" "$d/ssemux-mock-upstream"
  ln -sf "$BENCH_BIN" "$d/ssemux-bench"
done

{
  echo "A: $A_SSEMUX"
  echo "B: $B_SSEMUX"
  echo "runs: $RUNS, profile $PROFILE, scenarios A=$A_SCENARIOS B=$SCENARIOS, port offset $PORT_OFFSET"
  echo "machine: $(nproc) cores, load average before: $(cat /proc/loadavg)"
} > "$OUT/setup.txt"
cat "$OUT/setup.txt"

for i in $(seq 1 "$RUNS"); do
  if [ $((i % 2)) = 1 ]; then order="a b"; else order="b a"; fi
  for side in $order; do
    if [ "$side" = a ]; then sc=$A_SCENARIOS; else sc=$SCENARIOS; fi
    echo "== run $i, $side (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    "$BENCH_BIN" run --profile "$PROFILE" --repeat 1 --systems ssemux --scenarios "$sc" \
      --bin-dir "$OUT/bin-$side" --port-offset "$PORT_OFFSET" \
      --out-dir "$OUT/$side-$i" --markdown "$OUT/$side-$i.md" \
      --plot-script /dev/null > "$OUT/$side-$i.log" 2>&1 || {
        echo "run $i $side failed; see $OUT/$side-$i.log" >&2
        exit 1
      }
  done
done
echo "load average after: $(cat /proc/loadavg)" >> "$OUT/setup.txt"

python3 "$HERE/ab-summary.py" "A=$OUT/a-*/run-*.json" "B=$OUT/b-*/run-*.json" | tee "$OUT/summary.md"
