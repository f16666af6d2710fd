# ssemux — every set-up step lives here, so a fresh machine needs only
# `make run` (the demo) and `make test` (every test).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build build-demo run test test-rust test-deps lint fmt clippy clean web deps-browser screenshot

all: build

## The production binary: no mock backend, no `ssemux demo`.
build:
	$(CARGO) build --release -p ssemux

## The binary with `ssemux demo` (the mock chat backend built in).
build-demo: web
	$(CARGO) build --release -p ssemux --features demo

## Browser assets of the demo chat page (htmx 2, htmx-ext-sse, htmx 4) from
## the committed lockfile; the mock backend serves them from disk at runtime,
## so cargo never needs npm. Re-runs only when package.json or the lockfile
## changes in content. The stamp is make's own copy of the two, not npm's
## node_modules/.package-lock.json (npm rewrites that one itself, `npm
## install` leaves it exactly as old as package-lock.json): a lockfile with a
## new time but the same bytes (a checkout, a rebase, `npm install`) only
## refreshes the stamp.
WEB_DIR := crates/mock-upstream/web
WEB_INPUTS := $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
WEB_STAMP := $(WEB_DIR)/node_modules/.ssemux-installed
web: $(WEB_STAMP)

$(WEB_STAMP): $(WEB_INPUTS)
	@if cat $(WEB_INPUTS) | cmp -s - $@; then \
	  touch $@; \
	else \
	  echo "cd $(WEB_DIR) && npm ci --no-audit --no-fund"; \
	  (cd $(WEB_DIR) && npm ci --no-audit --no-fund) && \
	  cat $(WEB_INPUTS) > $@.tmp && mv $@.tmp $@; \
	fi

## The demo: mock chat backend + gateway on loopback; prints the URL.
run: build-demo
	./target/release/ssemux demo

## Every test: formatting, lints, unit and integration tests.
test: lint test-deps deps-browser test-rust

## Headless Chromium + chromedriver for tests/tests/browser.rs, and the page
## assets. Idempotent: installs only when /usr/bin/chromium is missing.
deps-browser: web
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver for tests/tests/browser.rs"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

## Re-take docs/screenshot.png (the README picture) from the browser test.
screenshot: deps-browser
	SSEMUX_UPDATE_SCREENSHOT=1 $(CARGO) test -p ssemux-tests --test browser readme_screenshot

## What integration tests need besides cargo: nginx (scale-out test) and
## prometheus with promtool (tests/tests/prometheus.rs scrapes a gateway and
## checks deploy/grafana and deploy/prometheus against it). Idempotent: skips
## what is already installed; uses sudo only if not root.
test-deps:
	@command -v nginx >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || { \
	  echo "installing nginx for tests/tests/scaleout.rs"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nginx-light || \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nginx; }
	@{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || { \
	  echo "installing prometheus and promtool for tests/tests/prometheus.rs"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; }

## `--features ssemux/demo`: the binary tests drive `ssemux demo` too.
test-rust:
	$(CARGO) test --workspace --all-targets --features ssemux/demo

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --features ssemux/demo -- -D warnings

clean:
	$(CARGO) clean

.PHONY: fuzz chaos

## Every fuzz target for FUZZ_SECS seconds each (default 600), two at a time
## at low priority; installs cargo-fuzz if missing. Not part of `make test`:
## libFuzzer needs -Z flags (RUSTC_BOOTSTRAP=1 on stable, see fuzz/run.sh).
FUZZ_SECS ?= 600
fuzz:
	FUZZ_SECS=$(FUZZ_SECS) ./fuzz/run.sh

## The chaos test for CHAOS_SECS seconds (default 300); `make test` runs it
## for 30 s.
CHAOS_SECS ?= 300
chaos:
	SSEMUX_CHAOS_SECS=$(CHAOS_SECS) $(CARGO) test -p ssemux-tests --test chaos -- --nocapture

.PHONY: bench bench-full bench-build bench-deps

## Side-by-side benchmarks: ssemux, nginx pass-through, Pushpin, nchan and a
## raw fan-out floor, same scenarios, one run. Writes docs/benchmarks.md,
## docs/bench/run-*.json and the plot. Not part of `make test`. `bench` is the
## quick profile (about 9 minutes: two rounds), `bench-full` the issue's sizes.
BENCH_BIN = $(or $(CARGO_TARGET_DIR),target)/release/ssemux-bench
bench-deps:
	./bench/install-peers.sh
bench-build:
	$(CARGO) build --release -p ssemux -p ssemux-mock-upstream -p ssemux-bench
bench: bench-deps bench-build
	$(BENCH_BIN) run --profile quick
bench-full: bench-deps bench-build
	$(BENCH_BIN) run --profile full
