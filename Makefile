# Build, run and test the suite. `make run` and `make test` install what they need first.
SHELL := /bin/bash
CARGO ?= cargo
# Extra flags for `make run`, e.g. make run ARGS="--debug"
ARGS ?=

.PHONY: all deps build release run test lint unit integration bench clean

all: build

# What the integration tests and benchmarks run against: busybox (ping, nc, the container
# image), containerd (ctr run --cni), dockerd (docker.io) and the reference CNI plugins.
TEST_PACKAGES := busybox-static containerd containernetworking-plugins iptables iperf3 python3 bpftool docker.io curl

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
	@install/deps.sh $(TEST_PACKAGES)
	$(CARGO) test -p integration

test: lint build
	@install/deps.sh $(TEST_PACKAGES)
	$(CARGO) test --workspace

# Side-by-side measurements (not tests): agent API vs host-local IPAM, cilium-cni vs the
# reference plugins, policy resolution vs an address-based iptables rule set, docker run on a
# cilium network vs Docker's bridge driver.
bench: deps
	@install/deps.sh $(TEST_PACKAGES)
	$(CARGO) build --release -p agent-core -p cilium-cni -p cilium-docker --bins
	$(CARGO) run --release -p integration --bin bench-ipam
	$(CARGO) run --release -p integration --bin bench-cni
	$(CARGO) run --release -p integration --bin bench-policy
	$(CARGO) run --release -p integration --bin bench-datapath
	$(CARGO) run --release -p integration --bin bench-docker

clean:
	$(CARGO) clean
