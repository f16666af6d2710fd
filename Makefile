# ssemux — every set-up step lives here, so a fresh machine needs only
# `make run` (the demo) and `make test` (every test).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build run test test-rust lint fmt clippy clean

all: build

build:
	$(CARGO) build --release -p ssemux

## The demo: mock chat backend + gateway on loopback; prints the URL.
run: build
	./target/release/ssemux demo

## Every test: formatting, lints, unit and integration tests.
test: lint test-rust

test-rust:
	$(CARGO) test --workspace --all-targets

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
