#!/bin/sh
# Removes what cni-install.sh installed: the cilium-cni binary and 10-cilium.conf. The
# loopback plugin stays (other networks use it). Quiet when already absent.
#
# Variables (all optional, as for cni-install.sh):
#   PREFIX        root of the installation (default: empty, the host's root)
#   CNI_BIN_DIR   plugin directory (default: $PREFIX/opt/cni/bin)
#   CNI_CONF_DIR  network config directory (default: $PREFIX/etc/cni/net.d)
set -eu

PREFIX=${PREFIX:-}
CNI_BIN_DIR=${CNI_BIN_DIR:-$PREFIX/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-$PREFIX/etc/cni/net.d}

for f in "$CNI_BIN_DIR/cilium-cni" "$CNI_CONF_DIR/10-cilium.conf"; do
    if [ -e "$f" ] || [ -L "$f" ]; then
        rm -f "$f"
        echo "Removed $f"
    fi
done
