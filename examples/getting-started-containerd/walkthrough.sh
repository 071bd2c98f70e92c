#!/bin/sh
# Getting started with containerd: three busybox containers started with `ctr run --cni` on
# the cilium CNI network (the CNI path kubelet uses through containerd today), their
# endpoints and labels in cilium, then an L3/L4 policy: only id=app2 may reach id=app1, and
# only on TCP port 80. Checked with HTTP requests from app2 (port 80 allowed, port 8080
# denied) and app3 (port 80 denied), and with the drops `cilium monitor` reports.
#
# Labels: `ctr run --cni` gives the CNI plugin no per-container arguments (it sets CNI_ARGS
# to the empty string, passes no runtimeConfig, and `--label` stays a containerd label), and
# it always reads /etc/cni/net.d and /opt/cni/bin. So each container gets its own copy of the
# cilium network configuration with its labels under `args.cni.labels` (cilium-cni turns
# them into `container:` labels), and its `ctr run` runs in a private mount namespace
# (unshare -m) where that copy is bind-mounted on /etc/cni/net.d and CNI_PATH on
# /opt/cni/bin. Nothing changes on the host's /etc/cni/net.d or /opt/cni/bin (the two
# directories are created, empty, if they do not exist, and removed again afterwards).
#
# Needs: root, a running containerd and cilium-agent, cilium-cni in CNI_PATH and its
# network configuration in NETCONFPATH, the image, util-linux (unshare, mount), python3.
#
# Environment (defaults in brackets):
#   CTR                     ctr binary [ctr]
#   CONTAINERD_ADDRESS      containerd socket [ctr's default, /run/containerd/containerd.sock]
#   CONTAINERD_NAMESPACE    containerd namespace of the containers and the image [cilium-demo]
#   CONTAINERD_SNAPSHOTTER  snapshotter [containerd's default]
#   IMAGE                   busybox image in that namespace [docker.io/library/busybox:latest]
#   CNI_PATH                directory with cilium-cni (and loopback) [/opt/cni/bin]
#   NETCONFPATH             directory whose first configuration (by name, *.conf, *.conflist,
#                           *.json, as libcni picks it) is the cilium one [/etc/cni/net.d]
#   CILIUM                  cilium CLI [cilium]
#   CILIUM_SOCK             agent socket [the CLI's default, /var/run/cilium/cilium.sock]; must
#                           be the socket the network configuration names (`socket-path`)
#   PREFIX                  prefix of the container ids, so parallel runs don't collide []
#   CTR_RUN_FLAGS           extra flags for `ctr run` (e.g. --runc-root DIR --fifo-dir DIR) []
#   CTR_EXEC_FLAGS          extra flags for `ctr tasks exec` (e.g. --fifo-dir DIR) []
#
# Exits non-zero with `walkthrough.sh: FAILED: <why>` at the first unexpected result. On exit
# (also on failure or Ctrl-C) it stops the containers (ctr then runs CNI DEL), deletes the
# policy rules it imported (by their label, `cilium policy delete
# unspec:example=getting-started-containerd`) and removes its temporary files.
set -eu

CTR=${CTR:-ctr}
CILIUM=${CILIUM:-cilium}
IMAGE=${IMAGE:-docker.io/library/busybox:latest}
CNI_PATH=${CNI_PATH:-/opt/cni/bin}
NETCONFPATH=${NETCONFPATH:-/etc/cni/net.d}
PREFIX=${PREFIX:-}
CTR_RUN_FLAGS=${CTR_RUN_FLAGS:-}
CTR_EXEC_FLAGS=${CTR_EXEC_FLAGS:-}
CONTAINERD_NAMESPACE=${CONTAINERD_NAMESPACE:-cilium-demo}
export CONTAINERD_NAMESPACE
if [ -n "${CONTAINERD_ADDRESS:-}" ]; then export CONTAINERD_ADDRESS; fi
if [ -n "${CILIUM_SOCK:-}" ]; then export CILIUM_SOCK; fi
HERE=$(cd "$(dirname "$0")" && pwd)
POLICY=$HERE/l3_l4_policy.json
POLICY_LABEL=unspec:example=getting-started-containerd

app1=${PREFIX}app1
app2=${PREFIX}app2
app3=${PREFIX}app3

work=
started=          # "id:pid" of every `ctr run` started
imported_policy=
monitor_pid=
created_dirs=     # mount points made for the private namespaces, deepest first
exec_n=0

cleanup() {
    status=$?
    trap - EXIT INT TERM
    set +e
    echo
    echo "--- cleanup"
    if [ -n "$monitor_pid" ]; then
        kill "$monitor_pid" 2>/dev/null
        wait "$monitor_pid" 2>/dev/null
    fi
    stopped=
    for entry in $started; do
        id=${entry%%:*}
        pid=${entry#*:}
        "$CTR" tasks kill --signal SIGKILL "$id" >/dev/null 2>&1
        # ctr run --rm, in the foreground: on the task's exit it runs CNI DEL and removes
        # the container. Give it 30 s.
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 150 ]; do
            sleep 0.2
            i=$((i + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "cleanup: ctr run of $id did not finish; removing it by hand" >&2
            kill -KILL "$pid" 2>/dev/null
            "$CTR" tasks delete --force "$id" >/dev/null 2>&1
            "$CTR" containers delete "$id" >/dev/null 2>&1
            "$CILIUM" endpoint delete "container-id:$CONTAINERD_NAMESPACE-$id" >/dev/null 2>&1
        fi
        wait "$pid" 2>/dev/null
        stopped="$stopped $id"
    done
    if [ -n "$imported_policy" ]; then
        "$CILIUM" policy delete "$POLICY_LABEL" >/dev/null ||
            echo "cleanup: cilium policy delete $POLICY_LABEL failed" >&2
    fi
    for d in $created_dirs; do
        rmdir "$d" 2>/dev/null
    done
    if [ -n "$work" ]; then rm -rf "$work"; fi
    echo "removed: containers [${stopped# }], policy [${imported_policy:-none}]"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo >&2
    echo "walkthrough.sh: FAILED: $*" >&2
    exit 1
}

step() {
    echo
    echo "=== $*"
}

# show CMD...: print the command, then run it.
show() {
    echo "\$ $*"
    "$@"
}

# The first network configuration libcni would load from a directory.
first_config() {
    for f in "$1"/*; do
        case $f in *.conf | *.conflist | *.json) [ -f "$f" ] && {
            echo "$f"
            return 0
        } ;;
        esac
    done
    return 1
}

# Helper on the network configuration: `socket FILE` prints the agent socket it names,
# `labels FILE KEY=VALUE...` prints it with `args.cni.labels` set on the cilium-cni plugin.
netconf() {
    python3 - "$@" <<'EOF'
import json, sys
cmd, path = sys.argv[1], sys.argv[2]
with open(path) as f:
    conf = json.load(f)
plugins = conf["plugins"] if isinstance(conf.get("plugins"), list) else [conf]
cilium = [p for p in plugins if isinstance(p, dict) and p.get("type") == "cilium-cni"]
if not cilium:
    sys.exit("%s has no plugin of type cilium-cni" % path)
if cmd == "socket":
    print(cilium[0].get("socket-path") or "/var/run/cilium/cilium.sock")
else:
    labels = [dict(zip(("key", "value"), kv.split("=", 1))) for kv in sys.argv[3:]]
    for p in cilium:
        p.setdefault("args", {}).setdefault("cni", {})["labels"] = labels
    print(json.dumps(conf, indent=2))
EOF
}

# A mount point for the private namespaces: created (and later removed) if it is missing.
mount_point() {
    missing=
    d=$1
    while [ ! -e "$d" ]; do
        missing="$d $missing"
        d=$(dirname "$d")
    done
    mkdir -p "$1"
    for d in $missing; do created_dirs="$d $created_dirs"; done
}

# words ARG...: the arguments quoted as they would be typed in a shell.
words() {
    out=
    for a in "$@"; do
        case $a in
        '' | *[!A-Za-z0-9_./:=@%+,-]*) a="'$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'" ;;
        esac
        out="$out $a"
    done
    printf '%s' "${out# }"
}

# start NAME LABEL CMD...: `ctr run --rm --cni` of a container labelled LABEL (key=value),
# in the background; waits until its endpoint is ready and its task runs, and leaves the
# endpoint's IPv4 address in $ip.
start() {
    name=$1
    label=$2
    shift 2
    dir=$work/$name/net.d
    mkdir -p "$dir"
    netconf labels "$base_conf" "$label" >"$dir/$(basename "$base_conf")" ||
        fail "cannot write the network configuration of $name"
    echo "\$ $CTR run --rm --cni $IMAGE $name $(words "$@")"
    echo "  (ctr sees $(basename "$base_conf") with \"args\": {\"cni\": {\"labels\": [{\"key\": \"${label%%=*}\", \"value\": \"${label#*=}\"}]}})"
    # shellcheck disable=SC2086 # CTR_RUN_FLAGS is a list of flags
    unshare --mount --propagation private sh -c '
        mount --bind "$1" /etc/cni/net.d && mount --bind "$2" /opt/cni/bin || exit 125
        shift 2
        exec "$@"' sh "$dir" "$CNI_PATH" \
        "$CTR" run --rm --cni $CTR_RUN_FLAGS "$IMAGE" "$name" "$@" \
        >"$work/$name.log" 2>&1 </dev/null &
    started="$started $name:$!"
    pid=$!
    endpoint=container-id:$CONTAINERD_NAMESPACE-$name
    i=0
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$work/$name.log" >&2
            fail "ctr run of $name exited (output above)"
        fi
        ip=$("$CILIUM" -o json endpoint get "$endpoint" 2>/dev/null | python3 -c '
import json, sys
ep = json.load(sys.stdin)
if ep.get("state") == "ready":
    print((ep.get("addressing") or {}).get("ipv4") or "")' 2>/dev/null) || ip=
        if [ -n "$ip" ] && "$CTR" tasks list 2>/dev/null | grep -q "^$name[[:space:]].*RUNNING"; then
            break
        fi
        i=$((i + 1))
        [ "$i" -lt 150 ] || {
            cat "$work/$name.log" >&2
            fail "$name: no ready endpoint $endpoint with an IPv4 address and a running task after 30 s"
        }
        sleep 0.2
    done
    echo "$name is up: endpoint $endpoint, IPv4 $ip"
}

# fetch FROM PORT: HTTP GET of /public on app1 from container FROM (busybox wget, given up
# after 5 s); prints one result line `FROM -> app1 port PORT: allowed|denied ...`, leaves
# wget's exit code in $rc.
fetch() {
    from=$1
    port=$2
    exec_n=$((exec_n + 1))
    echo "\$ $CTR tasks exec $from timeout 5 wget -q -O - http://$app1_ip:$port/public"
    rc=0
    # shellcheck disable=SC2086 # CTR_EXEC_FLAGS is a list of flags
    out=$(timeout 60 "$CTR" tasks exec $CTR_EXEC_FLAGS --exec-id "fetch$exec_n-$$" "$from" \
        timeout 5 wget -q -O - "http://$app1_ip:$port/public" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "$out"
        echo "result: $from -> app1 port $port: allowed"
    else
        echo "result: $from -> app1 port $port: denied (no reply within 5 s, exit $rc)"
    fi
}

# --- preconditions ------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || fail "run as root (ctr, mount namespaces)"
for c in "$CTR" "$CILIUM" unshare mount python3 timeout; do
    command -v "$c" >/dev/null 2>&1 || fail "'$c' not found"
done
"$CTR" version >/dev/null 2>&1 ||
    fail "cannot talk to containerd with '$CTR' (CONTAINERD_ADDRESS=${CONTAINERD_ADDRESS:-default})"
"$CTR" images list --quiet | grep -qx "$IMAGE" ||
    fail "image $IMAGE is not in the containerd namespace $CONTAINERD_NAMESPACE: \`ctr -n $CONTAINERD_NAMESPACE images pull $IMAGE\`, or build one with $HERE/build-image.sh and set IMAGE"
[ -x "$CNI_PATH/cilium-cni" ] || fail "no cilium-cni in CNI_PATH=$CNI_PATH"
base_conf=$(first_config "$NETCONFPATH") || fail "no network configuration in NETCONFPATH=$NETCONFPATH"
conf_socket=$(netconf socket "$base_conf") ||
    fail "$base_conf is not a cilium-cni configuration: ctr would use it for every container"
cli_socket=${CILIUM_SOCK:-/var/run/cilium/cilium.sock}
cli_socket=${cli_socket#unix://}
[ "$conf_socket" = "$cli_socket" ] ||
    fail "$base_conf sends cilium-cni to the agent at $conf_socket, but the cilium CLI talks to $cli_socket (set CILIUM_SOCK)"
for c in "$app1" "$app2" "$app3"; do
    if "$CTR" containers info "$c" >/dev/null 2>&1; then
        fail "container $c exists already in namespace $CONTAINERD_NAMESPACE: remove it, or set PREFIX="
    fi
done
if "$CILIUM" policy get "$POLICY_LABEL" >/dev/null 2>&1; then
    fail "the agent has rules labelled $POLICY_LABEL already (another run?): cilium policy delete $POLICY_LABEL"
fi
work=$(mktemp -d)
mount_point /etc/cni/net.d
mount_point /opt/cni/bin

step "Step 1: Confirm that Cilium is running"
show "$CILIUM" status || fail "cilium status failed: is cilium-agent running (CILIUM_SOCK=${CILIUM_SOCK:-default})?"

step "Step 2: Start containers on the cilium CNI network"
echo "# network configuration: $base_conf, plugins from $CNI_PATH"
start "$app1" id=app1 sh -c \
    'mkdir -p /www && echo "{ \"val\": \"this is public\" }" >/www/public && httpd -p 8080 -h /www && exec httpd -f -p 80 -h /www'
app1_ip=$ip
start "$app2" id=app2 sleep 100000
start "$app3" id=app3 sleep 100000
show "$CILIUM" endpoint list
"$CILIUM" endpoint list | grep -q 'container:id=app1' || fail "no endpoint carries container:id=app1"

step "Step 3: Without policy every container reaches app1"
fetch "$app2" 80
[ "$rc" -eq 0 ] || fail "$app2 -> app1:80 failed without any policy (exit $rc)"
fetch "$app3" 80
[ "$rc" -eq 0 ] || fail "$app3 -> app1:80 failed without any policy (exit $rc)"

step "Step 4: Import an L3/L4 policy"
cat "$POLICY"
imported_policy=$(basename "$POLICY")
show "$CILIUM" policy import "$POLICY" || fail "cilium policy import failed"
"$CILIUM" policy wait --max-wait-time 30 >/dev/null || fail "endpoints did not pick up the policy within 30 s"
show "$CILIUM" endpoint list

step "Step 5: Test the policy"
"$CILIUM" monitor --type drop >"$work/monitor.out" 2>&1 &
monitor_pid=$!
i=0
until grep -q 'Press Ctrl-C' "$work/monitor.out" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -lt 50 ] || fail "cilium monitor did not start: $(cat "$work/monitor.out")"
    sleep 0.1
done
echo "# app2 (id=app2) may reach app1 on TCP port 80:"
fetch "$app2" 80
[ "$rc" -eq 0 ] || fail "$app2 -> app1:80 failed although the policy allows it (exit $rc)"
echo "# ... but on no other port:"
fetch "$app2" 8080
[ "$rc" -ne 0 ] || fail "$app2 reached app1:8080 although the policy allows only port 80"
echo "# app3 (id=app3) may not reach app1 at all:"
fetch "$app3" 80
[ "$rc" -ne 0 ] || fail "$app3 reached app1:80 although the policy allows only id=app2"
sleep 0.5
kill "$monitor_pid" 2>/dev/null || true
wait "$monitor_pid" 2>/dev/null || true
monitor_pid=
echo "\$ $CILIUM monitor --type drop    # while the requests ran"
cat "$work/monitor.out"
grep -q 'Policy denied (L4)' "$work/monitor.out" ||
    fail "cilium monitor reported no L4 policy drop for $app2 -> app1:8080"
grep -q 'Policy denied (L3)' "$work/monitor.out" ||
    fail "cilium monitor reported no L3 policy drop for $app3 -> app1:80"
show "$CILIUM" policy trace -s container:id=app3 -d container:id=app1 --dport 80/tcp

echo
echo "walkthrough.sh: all steps gave the expected results"
