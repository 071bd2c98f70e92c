#!/bin/sh
# Removes what cni-install.sh installed: the cilium-cni binary, and 10-cilium.conf when it is
# still the shipped conf/10-cilium.conf. A config that differs was written or changed by the
# user and stays ("Kept ..."), unless PURGE=1. The loopback plugin stays (other networks use
# it). Quiet when already absent.
#
# Variables (all optional, as for cni-install.sh):
#   PREFIX        root of the installation (default: empty, the host's root)
#   CNI_BIN_DIR   plugin directory (default: $PREFIX/opt/cni/bin)
#   CNI_CONF_DIR  network config directory (default: $PREFIX/etc/cni/net.d)
#   PURGE         1: remove 10-cilium.conf whatever its content
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)

PREFIX=${PREFIX:-}
CNI_BIN_DIR=${CNI_BIN_DIR:-$PREFIX/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-$PREFIX/etc/cni/net.d}
PURGE=${PURGE:-}
conf_src=$repo/conf/10-cilium.conf
conf_dest=$CNI_CONF_DIR/10-cilium.conf

remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$1"
        echo "Removed $1"
    fi
}

remove "$CNI_BIN_DIR/cilium-cni"

if [ -e "$conf_dest" ] || [ -L "$conf_dest" ]; then
    if [ "$PURGE" = 1 ] || cmp -s "$conf_dest" "$conf_src"; then
        remove "$conf_dest"
    else
        echo "Kept $conf_dest: it differs from $conf_src (PURGE=1 removes it)"
    fi
fi
