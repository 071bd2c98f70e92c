#!/bin/sh
# The Docker getting-started guide (cilium docs 2017, section 2.2) end to end, steps 4 to 9:
# a Docker network of the cilium driver, app1 (an HTTP server labelled id=app1), then an
# L3/L4 policy letting only id=app2 reach app1 on TCP port 80, checked with curl from app2
# (must work) and app3 (must time out). Step 9: the L7 policy, app2 may only GET /public (the
# agent's proxy answers /private with 403 Access denied).
#
# Needs cilium-agent and cilium-docker running, and the images of ./build-images.sh.
#
# Environment (defaults in brackets):
#   DOCKER        docker client [docker]; DOCKER_HOST picks the daemon as usual
#   CILIUM        cilium CLI [cilium]
#   CILIUM_SOCK   agent socket path [the CLI's default, /var/run/cilium/cilium.sock]
#   DRIVER        docker network and IPAM driver name, i.e. cilium-docker's socket name [cilium]
#   NET           docker network name [cilium-net]
#   PREFIX        prefix of the container names, so parallel runs don't collide []
#   HTTPD_IMAGE   [cilium-demo-httpd]     CLIENT_IMAGE   [cilium-demo-client]
#
# Exits non-zero with a message at the first unexpected result. On exit (also on failure or
# Ctrl-C) it removes the containers and the network it created and, if it imported the
# policy, deletes all policy rules (`cilium policy delete --all`, as the guide does); so it
# refuses to start while the agent has rules already.
set -eu

DOCKER=${DOCKER:-docker}
CILIUM=${CILIUM:-cilium}
DRIVER=${DRIVER:-cilium}
NET=${NET:-cilium-net}
PREFIX=${PREFIX:-}
HTTPD_IMAGE=${HTTPD_IMAGE:-cilium-demo-httpd}
CLIENT_IMAGE=${CLIENT_IMAGE:-cilium-demo-client}
if [ -n "${CILIUM_SOCK:-}" ]; then export CILIUM_SOCK; fi
HERE=$(cd "$(dirname "$0")" && pwd)

app1=${PREFIX}app1
app2=${PREFIX}app2
app3=${PREFIX}app3

created_network=
created_containers=
imported_policy=

cleanup() {
    status=$?
    trap - EXIT INT TERM
    set +e
    echo
    echo "--- cleanup"
    for c in $created_containers; do
        "$DOCKER" rm -f "$c" >/dev/null 2>&1
    done
    if [ -n "$created_network" ]; then
        "$DOCKER" network rm "$NET" >/dev/null || echo "cleanup: could not remove network $NET" >&2
    fi
    if [ -n "$imported_policy" ]; then
        "$CILIUM" policy delete --all >/dev/null || echo "cleanup: cilium policy delete --all failed" >&2
    fi
    echo "removed: containers [${created_containers# }], network [${created_network}], policy [${imported_policy:-none}]"
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

# step TITLE: a heading like the guide's.
step() {
    echo
    echo "=== $*"
}

# show CMD...: print the command as the guide would, then run it (its status is returned).
show() {
    echo "\$ $*"
    "$@"
}

# client NAME LABEL CURL-ARGS...: a throwaway client container (the guide's
# `docker run --rm -ti --net cilium-net -l id=... cilium/demo-client curl ...`, without -ti);
# prints the command and what curl printed, leaves that in $out and curl's exit code in $rc.
client() {
    name=$1
    label=$2
    shift 2
    case " $created_containers " in *" $name "*) ;; *) created_containers="$created_containers $name" ;; esac
    echo "\$ $DOCKER run --rm --name $name --net $NET -l $label $CLIENT_IMAGE curl $*"
    rc=0
    out=$("$DOCKER" run --rm --name "$name" --net "$NET" -l "$label" "$CLIENT_IMAGE" curl "$@") || rc=$?
    if [ -n "$out" ]; then echo "$out"; fi
}

# --- preconditions ------------------------------------------------------------------------
command -v "$DOCKER" >/dev/null 2>&1 || fail "docker client '$DOCKER' not found (set DOCKER)"
command -v "$CILIUM" >/dev/null 2>&1 || fail "cilium CLI '$CILIUM' not found (set CILIUM)"
"$DOCKER" version >/dev/null 2>&1 ||
    fail "cannot talk to dockerd with '$DOCKER' (DOCKER_HOST=${DOCKER_HOST:-unset})"
for image in "$HTTPD_IMAGE" "$CLIENT_IMAGE"; do
    "$DOCKER" image inspect "$image" >/dev/null 2>&1 ||
        fail "image $image is missing: run $HERE/build-images.sh first"
done
if "$DOCKER" network inspect "$NET" >/dev/null 2>&1; then
    fail "docker network $NET exists already: remove it, or pick another name with NET="
fi
for c in "$app1" "$app2" "$app3"; do
    if "$DOCKER" container inspect "$c" >/dev/null 2>&1; then
        fail "container $c exists already: remove it, or set PREFIX= to use other names"
    fi
done

step "Step 4: Confirm that Cilium is Running"
show "$CILIUM" status || fail "cilium status failed: is cilium-agent running (CILIUM_SOCK=${CILIUM_SOCK:-default})?"
rules=$("$CILIUM" policy get | head -n 1) || fail "cilium policy get failed"
[ "$rules" = "[]" ] ||
    fail "the agent has policy rules already; this walkthrough deletes all rules when done, so it does not run on top of them (cilium policy delete --all)"

step "Step 5: Create a Docker Network of Type Cilium"
# The guide's `--subnet ::1/112` is not needed: the IPAM driver hands out the agent's ranges.
show "$DOCKER" network create --ipv6 --driver "$DRIVER" --ipam-driver "$DRIVER" "$NET" ||
    fail "docker network create failed: is cilium-docker serving the driver '$DRIVER' (/run/docker/plugins/$DRIVER.sock)?"
created_network=$NET

step "Step 6: Start an Example Service with Docker"
created_containers="$created_containers $app1"
show "$DOCKER" run -d --name "$app1" --net "$NET" -l "id=app1" "$HTTPD_IMAGE" ||
    fail "docker run of $app1 failed"
# The agent learns the container's labels from Docker; until then the endpoint has the
# reserved:init identity. Wait (up to 10 s) for app1's endpoint to carry container:id=app1.
echo "waiting for app1's endpoint to carry the label container:id=app1 ..."
i=0
until "$CILIUM" endpoint list | grep -q 'container:id=app1'; do
    i=$((i + 1))
    [ "$i" -lt 50 ] || {
        "$CILIUM" endpoint list >&2 || true
        fail "no endpoint with the label container:id=app1 after 10 s: does cilium-agent watch this dockerd (--docker)?"
    }
    sleep 0.2
done
show "$CILIUM" endpoint list

step "Before any policy: app2 reaches app1"
client "$app2" "id=app2" -s -m 10 "http://$app1/public"
[ "$rc" -eq 0 ] || fail "app2 -> app1 failed without any policy (exit $rc)"
[ -n "$out" ] || fail "app2 -> app1: empty reply"

step "Step 7: Apply an L3/L4 Policy With Cilium"
cat "$HERE/l3_l4_policy.json"
imported_policy=l3_l4_policy.json
show "$CILIUM" policy import "$HERE/l3_l4_policy.json" || fail "cilium policy import failed"
"$CILIUM" policy wait --max-wait-time 30 >/dev/null || fail "endpoints did not pick up the policy within 30 s"
show "$CILIUM" endpoint list

step "Step 8: Test L3/L4 Policy"
echo "# app2 (id=app2) may reach app1 on TCP port 80:"
client "$app2" "id=app2" -s -m 20 "http://$app1/public"
[ "$rc" -eq 0 ] || fail "app2 -> app1 failed under the L3/L4 policy, which allows it (exit $rc)"
[ -n "$out" ] || fail "app2 -> app1: empty reply"
echo "# app3 (id=app3) may not: no reply, curl gives up after 5 seconds:"
client "$app3" "id=app3" -s -m 5 "http://$app1/public"
[ "$rc" -ne 0 ] || fail "app3 reached app1 although the L3/L4 policy allows only id=app2"
[ "$rc" -eq 28 ] || fail "app3 -> app1: expected curl's timeout (exit 28), got exit $rc"
echo "(no reply: the packets were dropped by the policy; curl exit 28, timeout)"

step "Step 9: Apply and Test an L7 Policy with Cilium"
cat "$HERE/l7_aware_policy.json"
show "$CILIUM" policy delete --all || fail "cilium policy delete --all failed"
imported_policy=l7_aware_policy.json
show "$CILIUM" policy import "$HERE/l7_aware_policy.json" || fail "cilium policy import failed"
"$CILIUM" policy wait --max-wait-time 30 >/dev/null || fail "endpoints did not pick up the policy within 30 s"
echo "# app2 may GET /public: the agent's proxy checks every request"
client "$app2" "id=app2" -si -m 20 "http://$app1/public"
[ "$rc" -eq 0 ] || fail "app2 -> app1/public failed under the L7 policy, which allows it (exit $rc)"
case "$out" in *"200 OK"*"this is public"*) ;; *) fail "app2 -> app1/public: expected 200 and the public page" ;; esac
echo "# ... but not /private:"
client "$app2" "id=app2" -si -m 20 "http://$app1/private"
[ "$rc" -eq 0 ] || fail "app2 -> app1/private: no answer from the proxy (exit $rc)"
case "$out" in *"403 Forbidden"*"Access denied"*) ;; *) fail "app2 -> app1/private: expected 403 Access denied" ;; esac
echo "# app3 is still dropped at L3:"
client "$app3" "id=app3" -s -m 5 "http://$app1/public"
[ "$rc" -eq 28 ] || fail "app3 -> app1: expected curl's timeout (exit 28), got exit $rc"

echo
echo "walkthrough.sh: all steps gave the expected results"
