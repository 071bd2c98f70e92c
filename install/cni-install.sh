#!/bin/sh
# Installs the cilium-cni plugin: the binary into CNI_BIN_DIR (replaced atomically, so a
# running ADD is not disturbed), the reference loopback plugin when it is missing, and
# 10-cilium.conf into CNI_CONF_DIR unless a config of that name is already there.
#
# Variables (all optional):
#   PREFIX        root of the installation (default: empty, the host's root)
#   CNI_BIN_DIR   plugin directory (default: $PREFIX/opt/cni/bin)
#   CNI_CONF_DIR  network config directory (default: $PREFIX/etc/cni/net.d)
#   CILIUM_CNI    binary to install (default: target/release/cilium-cni of this repository
#                 if it exists, else target/debug/cilium-cni)
#   LOOPBACK_SRC  loopback plugin to copy (default: /usr/lib/cni/loopback, Debian's
#                 containernetworking-plugins; empty: none)
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)

PREFIX=${PREFIX:-}
CNI_BIN_DIR=${CNI_BIN_DIR:-$PREFIX/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-$PREFIX/etc/cni/net.d}
LOOPBACK_SRC=${LOOPBACK_SRC-/usr/lib/cni/loopback}
if [ -z "${CILIUM_CNI:-}" ]; then
    if [ -f "$repo/target/release/cilium-cni" ]; then
        CILIUM_CNI=$repo/target/release/cilium-cni
    else
        CILIUM_CNI=$repo/target/debug/cilium-cni
    fi
fi
conf_src=$repo/conf/10-cilium.conf
conf_dest=$CNI_CONF_DIR/10-cilium.conf

if [ ! -f "$CILIUM_CNI" ]; then
    echo "cni-install: $CILIUM_CNI not found; build it first (cargo build --release -p cilium-cni)" >&2
    exit 1
fi

tmp=
cleanup() {
    if [ -n "$tmp" ]; then rm -f "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# Copies $1 to $3 with mode $2 through a temporary file in the same directory and a rename,
# so that a process executing or reading the old file keeps its copy.
place() {
    tmp=$(dirname "$3")/.$(basename "$3").tmp.$$
    install -m "$2" "$1" "$tmp"
    mv -f "$tmp" "$3"
    tmp=
}

mkdir -p "$CNI_BIN_DIR" "$CNI_CONF_DIR"

place "$CILIUM_CNI" 0755 "$CNI_BIN_DIR/cilium-cni"
echo "Installed $CNI_BIN_DIR/cilium-cni"

if [ ! -e "$CNI_BIN_DIR/loopback" ] && [ -n "$LOOPBACK_SRC" ] && [ -f "$LOOPBACK_SRC" ]; then
    place "$LOOPBACK_SRC" 0755 "$CNI_BIN_DIR/loopback"
    echo "Installed $CNI_BIN_DIR/loopback from $LOOPBACK_SRC"
fi

if [ -e "$conf_dest" ]; then
    echo "Using existing $conf_dest"
else
    place "$conf_src" 0644 "$conf_dest"
    echo "Installed $conf_dest"
fi
