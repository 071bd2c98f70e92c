# Build, run and test the suite. `make run` and `make test` install what they need first.
SHELL := /bin/bash
CARGO ?= cargo
# Extra flags for `make run`, e.g. make run ARGS="--debug"
ARGS ?=

.PHONY: all deps build release run test lint unit integration bench clean

all: build

deps:
	@install/deps.sh

build: deps
	$(CARGO) build --workspace --bins

release: deps
	$(CARGO) build --release -p agent-core --bins

# The agent in the foreground on the embedded defaults:
# socket /var/run/cilium/cilium.sock, state /var/run/cilium/state.
run: release
	./target/release/cilium-agent $(ARGS)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: deps
	$(CARGO) test --workspace --exclude integration

integration: build
	$(CARGO) test -p integration

test: lint build
	$(CARGO) test --workspace

# Side-by-side measurements (not tests): agent API vs the reference host-local IPAM plugin.
bench: deps
	@install/deps.sh containernetworking-plugins
	$(CARGO) build --release -p agent-core --bins
	$(CARGO) run --release -p integration --bin bench-ipam

clean:
	$(CARGO) clean
