#!/usr/bin/env bash
# Installs what building, running and testing need, idempotently: Debian packages and the
# BPF filesystem mount. Safe to run again; does nothing when everything is in place.
# Usage: install/deps.sh [extra-debian-package ...]
set -euo pipefail

# clang, llvm and libbpf-dev: the build compiles the eBPF programs of bpf-programs/.
packages=(iproute2 ca-certificates gcc libc6-dev make clang llvm libbpf-dev "$@")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo is not on PATH; install a stable Rust toolchain (rustup) first" >&2
  exit 1
fi

# The datapath pins its maps under /sys/fs/bpf; mount bpffs when it is not there yet.
if [ "$(id -u)" -eq 0 ] && [ -d /sys/fs/bpf ] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf || echo "deps: warning: cannot mount bpffs on /sys/fs/bpf" >&2
fi
