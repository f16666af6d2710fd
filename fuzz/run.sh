#!/usr/bin/env bash
# Run every fuzz target for FUZZ_SECS seconds (default 600), two at a time at
# the lowest CPU priority, then print executions and crashes per target.
#
# libFuzzer needs `-Z` flags. On a stable toolchain RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass them; `--sanitizer none` avoids needing a nightly-only
# sanitizer runtime (panics and assertion failures are still caught).
set -euo pipefail
cd "$(dirname "$0")"

secs="${FUZZ_SECS:-600}"
targets=(sse_parser trigger_encoder translate_json cookie_parse request_head)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz build --sanitizer none -O

mkdir -p logs
run() {
    local t=$1
    mkdir -p "corpus/$t" "seeds/$t"
    nice -n 19 cargo fuzz run --sanitizer none -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -print_final_stats=1 \
        >"logs/$t.log" 2>&1 || true
}
lane() { for t in "$@"; do run "$t"; done; }
lane "${targets[@]:0:3}" &
lane "${targets[@]:3}" &
wait

status=0
for t in "${targets[@]}"; do
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo "?")
    crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
    echo "$t: ${execs} executions, ${crashes} crash artifacts"
    if [ "$crashes" != 0 ]; then status=1; fi
done
exit $status
