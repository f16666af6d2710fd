# ssemux — every set-up step lives here, so a fresh machine needs only
# `make run` (the demo) and `make test` (every test).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build run test test-rust test-deps lint fmt clippy clean

all: build

build:
	$(CARGO) build --release -p ssemux

## The demo: mock chat backend + gateway on loopback; prints the URL.
run: build
	./target/release/ssemux demo

## Every test: formatting, lints, unit and integration tests.
test: lint test-deps test-rust

## What integration tests need besides cargo: nginx (scale-out test).
## Idempotent: skips when already installed; uses sudo only if not root.
test-deps:
	@command -v nginx >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || { \
	  echo "installing nginx for tests/tests/scaleout.rs"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nginx-light || \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nginx; }

test-rust:
	$(CARGO) test --workspace --all-targets

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
