# Build, run and test the suite. `make run` and `make test` install what they need first.
SHELL := /bin/bash
CARGO ?= cargo
# Extra flags for `make run`, e.g. make run ARGS="--debug"
ARGS ?=

.PHONY: all deps build release run test lint unit integration bench soak clean fuzz fuzz-smoke

all: build

# What the integration tests and benchmarks run against: busybox (ping, nc, the container
# image), containerd (ctr run --cni), dockerd (docker.io) and the reference CNI plugins.
TEST_PACKAGES := busybox-static etcd-server containerd containernetworking-plugins iptables iperf3 python3 bpftool docker.io curl systemd iputils-ping procps

# What only the benchmarks compare against: wrk drives HTTP load, nginx is the reverse proxy a
# user would otherwise put in front of an application (bench-proxy).
BENCH_PACKAGES := wrk nginx-light

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
	@$(MAKE) --no-print-directory fuzz-smoke

# Side-by-side measurements (not tests): agent API vs host-local IPAM, cilium-cni vs the
# reference plugins, policy resolution vs an address-based iptables rule set, docker run on a
# cilium network vs Docker's bridge driver.
bench: deps
	@install/deps.sh $(TEST_PACKAGES) $(BENCH_PACKAGES)
	$(CARGO) build --release -p agent-core -p cilium-cni -p cilium-docker --bins
	$(CARGO) run --release -p integration --bin bench-ipam
	$(CARGO) run --release -p integration --bin bench-cni
	$(CARGO) run --release -p integration --bin bench-policy
	$(CARGO) run --release -p integration --bin bench-datapath
	$(CARGO) run --release -p integration --bin bench-lb
	$(CARGO) run --release -p integration --bin bench-cluster
	$(CARGO) run --release -p integration --bin bench-proxy
	$(CARGO) run --release -p integration --bin bench-docker

# The long run: 10,000 CNI ADD/DEL cycles against one agent (SOAK_CYCLES to change), no
# leak and flat agent memory and descriptors, or it fails.
soak: deps
	@install/deps.sh $(TEST_PACKAGES)
	$(CARGO) build --release -p agent-core -p cilium-cni --bins
	$(CARGO) run --release -p integration --bin soak-cni

clean:
	$(CARGO) clean

# Fuzzing with cargo fuzz (libFuzzer) of every parser of untrusted input: the CNI config and
# environment, libnetwork request bodies, policy JSON, agent API bodies, monitor events (see
# fuzz/README.md). Stable Rust: `-s none` needs no -Z flag. Each target runs FUZZ_SECONDS
# (default 300) from its seeds in fuzz/corpus/<target> plus what earlier runs found
# (fuzz/target/corpus/<target>, where new inputs go); crashes land in fuzz/artifacts/<target>.
# All targets run; the make fails at the end if any crashed. fuzz-smoke: 20 s each, for CI.
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	$(CARGO) fuzz build -s none
	@secs=$(or $(FUZZ_SECONDS),300); failed=; \
	for t in $$($(CARGO) fuzz list); do \
	  mkdir -p fuzz/target/corpus/$$t fuzz/artifacts/$$t; \
	  echo "== fuzz $$t for $${secs}s (log: fuzz/target/fuzz-$$t.log)"; \
	  $(CARGO) fuzz run -s none $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$$secs -timeout=30 -print_final_stats=1 \
	    > fuzz/target/fuzz-$$t.log 2>&1 || { failed="$$failed $$t"; tail -n 60 fuzz/target/fuzz-$$t.log; }; \
	  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' fuzz/target/fuzz-$$t.log || true; \
	done; \
	if [ -n "$$failed" ]; then \
	  echo "make fuzz: crashes in:$$failed (inputs in fuzz/artifacts/<target>/; see fuzz/README.md)" >&2; \
	  exit 1; \
	fi

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=20

# make install / make uninstall: the built binaries, the CNI plugin and the systemd units onto
# this host, or with DESTDIR into a staging root (packages, tests). Variables:
#   PREFIX           /usr/local    the commands go to $(PREFIX)/bin, the units' ExecStart= name them
#   DESTDIR          (empty)       prepended to every installed path (never to ExecStart=)
#   PROFILE          release       the binaries come from $(TARGET_DIR)/$(PROFILE); install never
#                                  builds, a missing binary fails with the command that builds it
#   TARGET_DIR       $(CARGO_TARGET_DIR), else target
#   SYSTEMD_UNIT_DIR /lib/systemd/system
#   LOOPBACK_SRC     /usr/lib/cni/loopback  (empty: install no loopback plugin)
#   PURGE            (empty)       uninstall only: PURGE=1 also removes a changed 10-cilium.conf
#
# Layout (every path below $(DESTDIR)):
#   $(PREFIX)/bin/cilium-agent                  0755
#   $(PREFIX)/bin/cilium                        0755
#   $(PREFIX)/bin/cilium-docker                 0755
#   /opt/cni/bin/cilium-cni                     0755  CNI's fixed locations, via install/cni-install.sh
#   /opt/cni/bin/loopback                       0755  copy of $(LOOPBACK_SRC), only when absent
#   /etc/cni/net.d/10-cilium.conf               0644  conf/10-cilium.conf, only when absent
#   $(SYSTEMD_UNIT_DIR)/cilium-bpffs.service    0644  mounts bpffs on /sys/fs/bpf unless mounted
#   $(SYSTEMD_UNIT_DIR)/cilium.service          0644  ExecStart=$(PREFIX)/bin/cilium-agent $CILIUM_OPTS
#   $(SYSTEMD_UNIT_DIR)/cilium-docker.service   0644  ExecStart=$(PREFIX)/bin/cilium-docker $CILIUM_DOCKER_OPTS
# (units from conf/systemd/, whose /usr/local/bin in Exec*= lines becomes $(PREFIX)/bin; options
# in the optional /etc/default/cilium or /etc/sysconfig/cilium, which install does not create).
#
# install replaces binaries and units through a rename (a running binary keeps its copy) and
# keeps an existing 10-cilium.conf, whatever it says. uninstall removes exactly these files and
# is quiet about those already gone, with two exceptions: 10-cilium.conf stays when it differs
# from conf/10-cilium.conf (the user's change; PURGE=1 removes it), loopback stays (other
# networks use it). Directories stay. Neither touches running services; afterwards:
#   systemctl daemon-reload && systemctl enable --now cilium.service cilium-docker.service
# and before uninstall: systemctl disable --now cilium-docker.service cilium.service cilium-bpffs.service
PREFIX ?= /usr/local
DESTDIR ?=
PROFILE ?= release
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
SYSTEMD_UNIT_DIR ?= /lib/systemd/system
LOOPBACK_SRC ?= /usr/lib/cni/loopback
PURGE ?=

INSTALL_FROM := $(TARGET_DIR)/$(PROFILE)
INSTALL_BINS := cilium-agent cilium cilium-docker
INSTALL_UNITS := cilium-bpffs.service cilium.service cilium-docker.service
INSTALL_BUILD_FLAG := $(if $(filter release,$(PROFILE)),--release ,$(if $(filter debug,$(PROFILE)),,--profile $(PROFILE) ))
# cni-install.sh's PREFIX is the root it installs under, i.e. our DESTDIR.
INSTALL_CNI_ENV = PREFIX="$(DESTDIR)" CNI_BIN_DIR="$(DESTDIR)/opt/cni/bin" CNI_CONF_DIR="$(DESTDIR)/etc/cni/net.d"

.PHONY: install uninstall

install:
	@missing=0; \
	for b in $(INSTALL_BINS) cilium-cni; do \
	  if [ ! -f "$(INSTALL_FROM)/$$b" ]; then \
	    case $$b in cilium-agent|cilium) p=agent-core;; *) p=$$b;; esac; \
	    echo "make install: $(INSTALL_FROM)/$$b is missing; build it with: $(CARGO) build $(INSTALL_BUILD_FLAG)-p $$p" >&2; \
	    missing=1; \
	  fi; \
	done; \
	exit $$missing
	@set -eu; \
	bindir="$(DESTDIR)$(PREFIX)/bin"; unitdir="$(DESTDIR)$(SYSTEMD_UNIT_DIR)"; \
	for d in "$$bindir" "$$unitdir"; do [ -d "$$d" ] || install -d -m 0755 "$$d"; done; \
	for b in $(INSTALL_BINS); do \
	  tmp="$$bindir/.$$b.tmp.$$$$"; \
	  install -m 0755 "$(INSTALL_FROM)/$$b" "$$tmp" && mv -f "$$tmp" "$$bindir/$$b" || { rm -f "$$tmp"; exit 1; }; \
	  echo "Installed $$bindir/$$b"; \
	done; \
	for u in $(INSTALL_UNITS); do \
	  tmp="$$unitdir/.$$u.tmp.$$$$"; \
	  { sed -e 's|^\(Exec[A-Za-z]*=[-@:+!]*\)/usr/local/bin/|\1$(PREFIX)/bin/|' "conf/systemd/$$u" > "$$tmp" \
	    && chmod 0644 "$$tmp" && mv -f "$$tmp" "$$unitdir/$$u"; } || { rm -f "$$tmp"; exit 1; }; \
	  echo "Installed $$unitdir/$$u"; \
	done
	@$(INSTALL_CNI_ENV) CILIUM_CNI="$(INSTALL_FROM)/cilium-cni" LOOPBACK_SRC="$(LOOPBACK_SRC)" install/cni-install.sh

uninstall:
	@for f in $(foreach b,$(INSTALL_BINS),"$(DESTDIR)$(PREFIX)/bin/$(b)") \
	          $(foreach u,$(INSTALL_UNITS),"$(DESTDIR)$(SYSTEMD_UNIT_DIR)/$(u)"); do \
	  if [ -e "$$f" ] || [ -L "$$f" ]; then rm -f "$$f" && echo "Removed $$f" || exit 1; fi; \
	done
	@$(INSTALL_CNI_ENV) PURGE="$(PURGE)" install/cni-uninstall.sh
