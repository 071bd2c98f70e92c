#!/bin/sh
# Builds the two images of the Docker getting-started guide locally, with `docker import`
# (no registry needed):
#
#   cilium-demo-httpd   busybox httpd on port 80 (foreground), serving /public, /private and /
#   cilium-demo-client  busybox plus a real curl (and its shared libraries), resolving container
#                       names through Docker's embedded DNS (127.0.0.11)
#
# Environment:
#   DOCKER       the docker client (default: docker)
#   DOCKER_HOST  which daemon (the client's own default otherwise)
#   BUSYBOX      a busybox binary to use (default: the first of /bin/busybox, /usr/bin/busybox)
#   CURL         a curl binary to use (default: /usr/bin/curl)
#
# Missing busybox or curl are installed with apt-get (busybox-static, curl) when running as
# root on Debian/Ubuntu. Rerunning replaces both tags; the root filesystems are tarred with
# sorted names, fixed times and numeric root ownership, so the same inputs give the same
# layer. Everything is built in a temporary directory that is removed on exit.
set -eu

DOCKER=${DOCKER:-docker}
HTTPD_IMAGE=cilium-demo-httpd:latest
CLIENT_IMAGE=cilium-demo-client:latest

die() {
    echo "build-images.sh: $*" >&2
    exit 1
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$1 is missing and there is no apt-get: install $2"
    [ "$(id -u)" = 0 ] || die "$1 is missing: install $2 (apt-get install -y $2), or run as root"
    echo "build-images.sh: $1 is missing, installing $2 with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null
}

if [ -z "${BUSYBOX:-}" ]; then
    for b in /bin/busybox /usr/bin/busybox; do
        if [ -x "$b" ]; then BUSYBOX=$b; break; fi
    done
fi
if [ -z "${BUSYBOX:-}" ]; then
    apt_install busybox busybox-static
    BUSYBOX=/bin/busybox
fi
CURL=${CURL:-/usr/bin/curl}
[ -x "$CURL" ] || { apt_install curl curl; CURL=/usr/bin/curl; }
command -v ldd >/dev/null 2>&1 || die "ldd is missing (Debian: libc-bin)"
"$DOCKER" version >/dev/null || die "cannot talk to the docker daemon with '$DOCKER' (DOCKER_HOST=${DOCKER_HOST:-unset})"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cilium-demo-images.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# copy_with_libs ROOTFS BINARY DEST: BINARY to ROOTFS/DEST plus every shared library (and the
# dynamic loader) `ldd` names, each at the path ldd gives, symlinks resolved.
copy_with_libs() {
    rootfs=$1
    mkdir -p "$rootfs$(dirname "$3")"
    cp -L "$2" "$rootfs$3"
    # "libx.so => /lib/.../libx.so (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"; a static
    # binary has none ("not a dynamic executable", non-zero exit).
    libs=$(ldd "$2" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }') || true
    for lib in $libs; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
}

# busybox_rootfs ROOTFS: busybox and a symlink per applet in /bin, and the usual directories.
busybox_rootfs() {
    rootfs=$1
    mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" \
        "$rootfs/dev" "$rootfs/root" "$rootfs/usr/bin" "$rootfs/var"
    chmod 1777 "$rootfs/tmp"
    copy_with_libs "$rootfs" "$BUSYBOX" /bin/busybox
    for applet in $("$BUSYBOX" --list); do
        case $applet in busybox | */*) continue ;; esac
        ln -s busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
}

# import ROOTFS IMAGE CHANGE...: a reproducible tar of ROOTFS, imported as IMAGE.
import() {
    rootfs=$1
    image=$2
    shift 2
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" \
        -cf "$rootfs.tar" .
    for change in "$@"; do
        set -- "$@" --change "$change"
        shift
    done
    "$DOCKER" import "$@" "$rootfs.tar" "$image" >/dev/null
    echo "built $image ($(du -h "$rootfs.tar" | cut -f1) uncompressed)"
}

# --- cilium-demo-httpd ------------------------------------------------------------------
httpd=$tmp/httpd
busybox_rootfs "$httpd"
mkdir -p "$httpd/www"
echo "<html><body><h1>It works!</h1></body></html>" >"$httpd/www/index.html"
echo "{ 'val': 'this is public' }" >"$httpd/www/public"
echo "{ 'val': 'this is private' }" >"$httpd/www/private"
import "$httpd" "$HTTPD_IMAGE" \
    'CMD ["/bin/httpd", "-f", "-v", "-p", "80", "-h", "/www"]' \
    'EXPOSE 80/tcp'

# --- cilium-demo-client -----------------------------------------------------------------
client=$tmp/client
busybox_rootfs "$client"
copy_with_libs "$client" "$CURL" /usr/bin/curl
# Name lookups: /etc/hosts, then DNS (Docker writes /etc/resolv.conf naming its embedded server
# 127.0.0.11 on user-defined networks). glibc >= 2.34 has the files and dns backends built in;
# older ones load libnss_files/libnss_dns (and libresolv), which ldd does not list: copy them
# when the host has them.
printf 'hosts: files dns\npasswd: files\ngroup: files\n' >"$client/etc/nsswitch.conf"
for dir in /lib/x86_64-linux-gnu /lib/aarch64-linux-gnu /usr/lib/x86_64-linux-gnu \
    /usr/lib/aarch64-linux-gnu /lib64 /lib /usr/lib; do
    for nss in "$dir"/libnss_files.so.2 "$dir"/libnss_dns.so.2 "$dir"/libresolv.so.2; do
        if [ -e "$nss" ] && [ ! -e "$client$nss" ]; then
            mkdir -p "$client$dir"
            cp -L "$nss" "$client$nss"
        fi
    done
done
import "$client" "$CLIENT_IMAGE" 'CMD ["/bin/sh"]'

# Both images work: busybox runs, curl finds its libraries.
"$DOCKER" run --rm --network none "$CLIENT_IMAGE" curl --version >/dev/null ||
    die "$CLIENT_IMAGE: curl does not run in the image"
"$DOCKER" run --rm --network none "$HTTPD_IMAGE" cat /www/public >/dev/null ||
    die "$HTTPD_IMAGE: busybox does not run in the image"
