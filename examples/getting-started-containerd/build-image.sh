#!/bin/sh
# Builds a busybox container image from the host's static busybox and imports it into
# containerd, for hosts that cannot (or should not) pull docker.io/library/busybox.
#
# The image is an OCI archive with one uncompressed layer: /bin/busybox, a symlink per
# applet, /sbin and /usr/{bin,sbin} pointing at /bin, and a minimal /etc. Reproducible:
# sorted names, fixed times, numeric root ownership, so the same busybox gives the same
# image digest.
#
# Environment (defaults in brackets):
#   CTR                     ctr binary [ctr]
#   CONTAINERD_ADDRESS      containerd socket [ctr's default, /run/containerd/containerd.sock]
#   CONTAINERD_NAMESPACE    containerd namespace the image goes into [cilium-demo]
#   CONTAINERD_SNAPSHOTTER  snapshotter to unpack into [containerd's default]
#   BUSYBOX                 static busybox to copy [/usr/bin/busybox, Debian's busybox-static]
#   IMAGE                   name of the image [docker.io/library/cilium-demo-busybox:latest]
set -eu

CTR=${CTR:-ctr}
BUSYBOX=${BUSYBOX:-/usr/bin/busybox}
IMAGE=${IMAGE:-docker.io/library/cilium-demo-busybox:latest}
CONTAINERD_NAMESPACE=${CONTAINERD_NAMESPACE:-cilium-demo}
export CONTAINERD_NAMESPACE

fail() {
    echo "build-image.sh: $*" >&2
    exit 1
}

command -v "$CTR" >/dev/null 2>&1 || fail "ctr binary '$CTR' not found (set CTR)"
[ -x "$BUSYBOX" ] || fail "no busybox at $BUSYBOX (apt-get install busybox-static, or set BUSYBOX)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    fail "$BUSYBOX is dynamically linked; the image needs a static one (busybox-static)"
fi

case $(uname -m) in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
i?86) arch=386 ;;
ppc64le) arch=ppc64le ;;
*) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
oci=$work/oci
mkdir -p "$rootfs/bin" "$rootfs/usr" "$oci/blobs/sha256"

cp "$BUSYBOX" "$rootfs/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    case $applet in busybox | */*) continue ;; esac
    ln -s busybox "$rootfs/bin/$applet"
done
ln -s bin "$rootfs/sbin"
ln -s ../bin "$rootfs/usr/bin"
ln -s ../bin "$rootfs/usr/sbin"
for d in dev proc sys tmp run root etc var/tmp; do mkdir -p "$rootfs/$d"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$rootfs/etc/hosts"
: >"$rootfs/etc/resolv.conf"

tarball() { # DIR OUT ENTRY...
    dir=$1
    out=$2
    shift 2
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf "$out" "$@"
}

# blob FILE MEDIA-TYPE: moves FILE into the layout, prints its descriptor.
blob() {
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(wc -c <"$1" | tr -d ' ')
    mv "$1" "$oci/blobs/sha256/$hex"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$hex" "$size"
}

tarball "$rootfs" "$work/layer.tar" .
# Uncompressed: the layer's diff id is its digest.
layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)
diff_id=$(printf '%s' "$layer" | sed 's/.*"digest":"\([^"]*\)".*/\1/')

cat >"$work/config.json" <<EOF
{"created":"1970-01-01T00:00:00Z","architecture":"$arch","os":"linux","config":{"Env":["PATH=/bin:/sbin:/usr/bin:/usr/sbin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"examples/getting-started-containerd/build-image.sh"}]}
EOF
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)

cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":$config,"layers":[$layer]}
EOF
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
tag=${IMAGE##*:}
manifest=${manifest%\}}
cat >"$oci/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[$manifest,"platform":{"architecture":"$arch","os":"linux"},"annotations":{"io.containerd.image.name":"$IMAGE","org.opencontainers.image.ref.name":"$tag"}}]}
EOF
echo '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
tarball "$oci" "$work/image.tar" oci-layout index.json blobs

"$CTR" images import --all-platforms "$work/image.tar" >/dev/null
"$CTR" images list --quiet | grep -qx "$IMAGE" || fail "ctr did not import the image as $IMAGE"
echo "imported $IMAGE (namespace $CONTAINERD_NAMESPACE, busybox from $BUSYBOX)"
