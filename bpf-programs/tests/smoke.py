#!/usr/bin/env python3
"""Real traffic through the datapath, isolated in three network namespaces:

   cdp<pid>a (eth0 10.199.0.1 fd99::1) --veth-- lxca \\
                                                       cdp<pid>h  (the "node": forwarding,
   cdp<pid>b (eth0 10.199.0.2 fd99::2) --veth-- lxcb /             router 10.199.255.1 fd99::ffff
                                                                    on lo, /32 and /128 routes)

The containers are set up as the agent sets them up (a /32 address, a link route to the router,
a default route through it, a permanent neighbour entry with the lxc MAC). from_container and
to_container are attached with TCX (or tc clsact with --tc) to lxca and lxcb. Everything is
removed at the end (namespaces, pins).   Run as root:  python3 tests/smoke.py [--tc] [--bench]"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdplib import *  # noqa: E402,F403

PID = os.getpid()
H, A, B = "cdp%dh" % PID, "cdp%da" % PID, "cdp%db" % PID
EP = {
    A: dict(lxc="lxca", ip4="10.199.0.1", ip6="fd99::1", mac="02:00:00:00:0a:01",
            node_mac="02:00:00:00:0a:fe", identity=256, ep_id=11),
    B: dict(lxc="lxcb", ip4="10.199.0.2", ip6="fd99::2", mac="02:00:00:00:0b:01",
            node_mac="02:00:00:00:0b:fe", identity=257, ep_id=12),
}
R4, R6 = "10.199.255.1", "fd99::ffff"
IDENTITY_HOST = 1
TCP = 6

failures = []


def check(name, cond, detail=""):
    print("%s %s %s" % ("ok  " if cond else "FAIL", name, detail), flush=True)
    if not cond:
        failures.append(name)


def ns(n, cmd, check=True, **kw):
    return run("ip netns exec %s %s" % (n, cmd), check=check, **kw)


def ping(src, dst, count=3, extra=""):
    fam = "-6" if ":" in dst else "-4"
    r = ns(src, "ping %s -c %d -i 0.05 -W 1 %s %s" % (fam, count, extra, dst), check=False)
    return r.returncode == 0


def setup():
    for n in (H, A, B):
        run("ip netns add %s" % n)
        run("ip -n %s link set lo up" % n)
    ns(H, "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 "
          "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0")
    run("ip -n %s addr add %s/32 dev lo" % (H, R4))
    run("ip -n %s addr add %s/128 dev lo" % (H, R6))
    for n, e in EP.items():
        ns(n, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
        run("ip -n %s link add %s address %s type veth peer name eth0 netns %s address %s"
            % (H, e["lxc"], e["node_mac"], n, e["mac"]))
        ns(H, "sysctl -qw net.ipv4.conf.%s.rp_filter=0" % e["lxc"])
        run("ip -n %s link set %s up" % (H, e["lxc"]))
        run("ip -n %s link set eth0 up" % n)
        run("ip -n %s addr add %s/32 dev eth0" % (n, e["ip4"]))
        run("ip -n %s addr add %s/128 dev eth0 nodad" % (n, e["ip6"]))
        run("ip -n %s route add %s dev eth0 scope link" % (n, R4))
        run("ip -n %s route add default via %s" % (n, R4))
        run("ip -n %s -6 route add %s dev eth0" % (n, R6))
        run("ip -n %s -6 route add default via %s" % (n, R6))
        run("ip -n %s neigh add %s lladdr %s dev eth0 nud permanent" % (n, R4, e["node_mac"]))
        run("ip -n %s -6 neigh add %s lladdr %s dev eth0 nud permanent" % (n, R6, e["node_mac"]))
        run("ip -n %s route add %s/32 dev %s" % (H, e["ip4"], e["lxc"]))
        run("ip -n %s -6 route add %s/128 dev %s" % (H, e["ip6"], e["lxc"]))
        e["ifindex"] = int(ns(H, "cat /sys/class/net/%s/ifindex" % e["lxc"]).stdout)


def cleanup():
    for n in (H, A, B):
        run("ip netns del %s" % n, check=False)


def attach(dp, tool, use_tc):
    for e in EP.values():
        if use_tc:
            nsenter = "nsenter --net=/run/netns/%s " % H
            run(nsenter + "tc qdisc add dev %s clsact" % e["lxc"])
            run(nsenter + "tc filter add dev %s ingress bpf da pinned %s"
                % (e["lxc"], dp.prog["from_container"]))
            run(nsenter + "tc filter add dev %s egress bpf da pinned %s"
                % (e["lxc"], dp.prog["to_container"]))
        else:
            nsenter = "nsenter --net=/run/netns/%s %s " % (H, tool)
            run(nsenter + "attach ingress %s %s" % (dp.prog["from_container"], e["lxc"]))
            run(nsenter + "attach egress %s %s" % (dp.prog["to_container"], e["lxc"]))


def detach(dp, tool, use_tc):
    for e in EP.values():
        if use_tc:
            run("nsenter --net=/run/netns/%s tc qdisc del dev %s clsact" % (H, e["lxc"]))
        else:
            nsenter = "nsenter --net=/run/netns/%s %s " % (H, tool)
            run(nsenter + "detach ingress %s %s" % (dp.prog["from_container"], e["lxc"]))
            run(nsenter + "detach egress %s %s" % (dp.prog["to_container"], e["lxc"]))


def endpoints(dp, flags=None):
    flags = flags or {}
    for n, e in EP.items():
        for ip in (e["ip4"], e["ip6"]):
            dp.endpoint(ip, e["ifindex"], e["identity"], e["ep_id"], flags.get(n, 0), e["mac"],
                        e["node_mac"])


def tcp_ok(src, dst, port):
    """A TCP connection src -> dst:port with a little data both ways."""
    server = B if dst in (EP[B]["ip4"], EP[B]["ip6"]) else A
    srv = subprocess.Popen(["ip", "netns", "exec", server, "python3", "-c", TCP_SERVER, str(port),
                            "::" if ":" in dst else "0.0.0.0"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.4)
    r = ns(src, "python3 -c '%s' %s %d" % (TCP_CLIENT, dst, port), check=False)
    srv.kill()
    srv.wait()
    return r.returncode == 0 and "pong" in r.stdout


TCP_SERVER = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[1])))
s.listen(1)
s.settimeout(5)
c, _ = s.accept()
c.recv(100)
c.sendall(b"pong" * 1000)
c.close()
"""
TCP_CLIENT = ("import socket, sys; "
              "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); "
              "s.sendall(b\"ping\"); d = b\"\"\n"
              "while len(d) < 4000:\n"
              "    x = s.recv(65536)\n"
              "    if not x: break\n"
              "    d += x\n"
              "print(d[:4].decode())")

RAW_SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(bytes.fromhex(sys.argv[1]))
"""


def raw_send(n, frame):
    ns(n, "python3 -c '%s' %s" % (RAW_SEND, frame.hex()))


def drops(dp, reason, direction):
    return dp.metric(reason, direction)


def expect_drop(dp, name, reason, direction, action):
    before = drops(dp, reason, direction)
    ok = action()
    after = drops(dp, reason, direction)
    check(name, not ok and after > before, "drop %d: %d -> %d" % (reason, before, after))


def main():
    use_tc = "--tc" in sys.argv
    tmp = tempfile.mkdtemp(prefix="cdp-smoke-")
    obj, tool = os.path.join(tmp, "datapath.o"), os.path.join(tmp, "cdptool")
    build(obj, tool)
    dp = None
    try:
        setup()
        dp = Datapath(tool, obj, "/sys/fs/bpf/cdp-smoke-%d" % PID)
        a, b = EP[A], EP[B]
        check("baseline: ping A -> B without programs", ping(A, b["ip4"]))
        endpoints(dp)
        dp.ipcache(R4 + "/32", IDENTITY_HOST)
        dp.ipcache(R6 + "/128", IDENTITY_HOST)
        attach(dp, tool, use_tc)
        print("attached with %s" % ("tc clsact" if use_tc else "TCX"))

        # ---- no policy
        fwd_in = dp.metric(0, DIR_INGRESS)
        check("ping A -> B (v4)", ping(A, b["ip4"], 5))
        moved = dp.metric(0, DIR_INGRESS) - fwd_in
        # 5 requests into B and 5 replies into A went through to_container after the redirect
        check("to_container ran on the redirected packets", moved >= 10,
              "ingress forwarded +%d" % moved)
        check("ping A -> B (v6)", ping(A, b["ip6"]))
        check("ping B -> A (v4)", ping(B, a["ip4"]))
        check("ping A -> router (stack)", ping(A, R4))
        check("ping A -> router (v6)", ping(A, R6))
        check("ping node -> A", ping(H, a["ip4"]))
        check("ping node -> A (v6)", ping(H, a["ip6"]))
        check("TCP A -> B", tcp_ok(A, b["ip4"], 5201))
        check("TCP A -> B (v6)", tcp_ok(A, b["ip6"], 5201))
        check("fragmented ping A -> B (3000 bytes)", ping(A, b["ip4"], 3, "-s 3000"))
        check("fragmented ping A -> B v6 (3000 bytes)", ping(A, b["ip6"], 3, "-s 3000"))
        check("fragmented ping A -> node", ping(A, R4, 3, "-s 3000"))
        unexpected = {k: v for k, v in dp.metrics().items() if k[0] != 0}
        check("no drops so far", not unexpected, str(unexpected))

        # ---- ingress policy on B
        endpoints(dp, {B: EP_F_POLICY_INGRESS})
        expect_drop(dp, "B ingress, no entries: ping A -> B denied", 133, DIR_INGRESS,
                    lambda: ping(A, b["ip4"], 2))
        expect_drop(dp, "... and v6", 133, DIR_INGRESS, lambda: ping(A, b["ip6"], 2))
        check("B -> A still works (its replies pass)", ping(B, a["ip4"]))
        check("B -> node still works", ping(B, R4))
        dp.policy(a["identity"], b["ep_id"], DIR_INGRESS, ACTION_ALLOW)
        check("(A) allowed: ping A -> B", ping(A, b["ip4"]))
        check("(A) allowed: fragmented ping A -> B", ping(A, b["ip4"], 3, "-s 3000"))
        check("(A) allowed: TCP A -> B", tcp_ok(A, b["ip4"], 5201))
        pk = dp.policy_counters(a["identity"], b["ep_id"], DIR_INGRESS)
        check("policy entry counters moved", pk and pk[0] > 0, str(pk))
        dp.delete("cilium_policy", policy_key(a["identity"], b["ep_id"], DIR_INGRESS))
        dp.policy(a["identity"], b["ep_id"], DIR_INGRESS, ACTION_L4_ONLY)
        dp.policy(a["identity"], b["ep_id"], DIR_INGRESS, ACTION_ALLOW, 5201, TCP)
        check("(A, 5201/TCP): TCP A -> B:5201", tcp_ok(A, b["ip4"], 5201))
        expect_drop(dp, "(A, 5201/TCP): TCP A -> B:5202 denied at L4", 159, DIR_INGRESS,
                    lambda: tcp_ok(A, b["ip4"], 5202))
        expect_drop(dp, "(A, 5201/TCP): ping denied at L4", 159, DIR_INGRESS,
                    lambda: ping(A, b["ip4"], 2))
        expect_drop(dp, "node -> B denied (host identity)", 133, DIR_INGRESS,
                    lambda: ping(H, b["ip4"], 2))
        dp.policy(IDENTITY_HOST, b["ep_id"], DIR_INGRESS, ACTION_ALLOW)
        check("node -> B allowed by the host identity (ipcache)", ping(H, b["ip4"]))
        endpoints(dp)

        # ---- egress policy on A
        endpoints(dp, {A: EP_F_POLICY_EGRESS})
        expect_drop(dp, "A egress, no entries: ping A -> B denied", 133, DIR_EGRESS,
                    lambda: ping(A, b["ip4"], 2))
        expect_drop(dp, "A egress, no entries: ping A -> node denied", 133, DIR_EGRESS,
                    lambda: ping(A, R4, 2))
        check("B -> A works (A's replies skip its egress policy)", ping(B, a["ip4"]))
        check("B -> A TCP works", tcp_ok(B, a["ip4"], 5201))
        dp.policy(b["identity"], a["ep_id"], DIR_EGRESS, ACTION_ALLOW)
        check("(B) allowed: ping A -> B", ping(A, b["ip4"]))
        endpoints(dp)

        # ---- spoofing and malformed frames from the container (AF_PACKET in A)
        hdr = eth(a["node_mac"], a["mac"], 0x0800)
        expect_drop(dp, "B's source IP from A", 132, DIR_EGRESS, lambda: raw_send(
            A, hdr + ipv4(b["ip4"], R4, 17, udp(1, 2))))
        expect_drop(dp, "A's IP from another MAC", 130, DIR_EGRESS, lambda: raw_send(
            A, eth(a["node_mac"], "02:00:00:00:0a:99", 0x0800)
            + ipv4(a["ip4"], R4, 17, udp(1, 2))))
        expect_drop(dp, "truncated IPv4 header (eth + 10 bytes)", 134, DIR_EGRESS,
                    lambda: raw_send(A, hdr + ipv4(a["ip4"], R4, 17, udp(1, 2))[:10]))
        expect_drop(dp, "truncated IPv6 header", 134, DIR_EGRESS, lambda: raw_send(
            A, eth(a["node_mac"], a["mac"], 0x86DD) + ipv6(a["ip6"], R6, 17, udp(1, 2))[:20]))
        expect_drop(dp, "truncated TCP header", 134, DIR_EGRESS, lambda: raw_send(
            A, hdr + ipv4(a["ip4"], R4, 6, tcp(1, 2))[:30]))
        expect_drop(dp, "eth header only", 134, DIR_EGRESS, lambda: raw_send(
            A, hdr))
        expect_drop(dp, "unknown ethertype", 139, DIR_EGRESS, lambda: raw_send(
            A, eth(a["node_mac"], a["mac"], 0x88B5) + bytes(46)))
        # IPv6 with extension headers, A -> B, received by a raw socket in B
        got = recv_in_b(b, lambda: raw_send(A, eth(a["node_mac"], a["mac"], 0x86DD) + ipv6(
            a["ip6"], b["ip6"], 0, struct.pack("!BB6x", 60, 0) + struct.pack("!BB6x", 17, 0)
            + udp(7000, 7001, b"exthdr"))))
        check("IPv6 HBH + DST + UDP delivered to B, hop limit 63, MACs rewritten",
              got is not None and got[21] == 63 and got[:6] == mac_bytes(b["mac"])
              and got[6:12] == mac_bytes(b["node_mac"]) and b"exthdr" in got,
              got[:24].hex() if got else "nothing received")

        # Headers outside the skb's linear area: AF_PACKET sends frames of a page or more
        # with only the Ethernet header linear, so parsing goes through bpf_skb_pull_data.
        for n in (A, B):
            run("ip -n %s link set eth0 mtu 9000" % n)
            run("ip -n %s link set %s mtu 9000" % (H, EP[n]["lxc"]))
        fwd = dp.metric(0, DIR_INGRESS)
        got = udp_in_b(b["ip4"], lambda: raw_send(A, hdr + ipv4(a["ip4"], b["ip4"], 17, udp(
            7000, 7002, b"x" * 5000))))
        check("non-linear IPv4 UDP A -> B (5000 bytes, pulled headers)", got == 5000
              and dp.metric(0, DIR_INGRESS) > fwd, "received %s" % got)
        got = udp_in_b(b["ip6"], lambda: raw_send(A, eth(a["node_mac"], a["mac"], 0x86DD) + ipv6(
            a["ip6"], b["ip6"], 0, struct.pack("!BB6x", 17, 0) + udp(7000, 7002, b"y" * 5000, a["ip6"], b["ip6"]))))
        check("non-linear IPv6 HBH + UDP A -> B (5000 bytes)", got == 5000, "received %s" % got)
        unexpected = {k: v for k, v in dp.metrics().items()
                      if k[0] not in (0, 130, 132, 133, 134, 139, 159)}
        check("no other drops", not unexpected, str(unexpected))
        for n in (A, B):
            run("ip -n %s link set eth0 mtu 1500" % n)
            run("ip -n %s link set %s mtu 1500" % (H, EP[n]["lxc"]))

        if "--bench" in sys.argv:
            rr_bin = os.path.join(tmp, "rr")
            run(["cc", "-O2", "-o", rr_bin, os.path.join(HERE, "rr.c")])
            bench(dp, tool, use_tc, rr_bin)
    finally:
        cleanup()
        if dp:
            dp.remove()
        run(["rm", "-rf", tmp])
    print("\n%d failure(s)%s" % (len(failures), ": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


RAW_RECV = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind(("eth0", 0))
s.settimeout(3)
print("ready", flush=True)
end = time.time() + 3
while time.time() < end:
    d = s.recv(2048)
    if b"exthdr" in d:
        print(d.hex(), flush=True)
        break
"""


UDP_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7002))
s.settimeout(3)
print("ready", flush=True)
try:
    print(len(s.recv(65536)), flush=True)
except socket.timeout:
    print("timeout", flush=True)
"""


def udp_in_b(addr, send):
    """The size of the UDP datagram B receives on addr:7002 after send(), or None."""
    p = subprocess.Popen(["ip", "netns", "exec", B, "python3", "-c", UDP_RECV, addr],
                         stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    send()
    out, _ = p.communicate()
    return int(out) if out.strip().isdigit() else None


def recv_in_b(b, send):
    p = subprocess.Popen(["ip", "netns", "exec", B, "python3", "-c", RAW_RECV],
                         stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    send()
    out, _ = p.communicate()
    return bytes.fromhex(out.strip()) if out.strip() else None


def rr(rr_bin, proto, dst, port, n=20000):
    r = ns(A, "%s client %s %s %d %d" % (rr_bin, proto, dst, port, n))
    return int(r.stdout.split()[1])  # median ns


def bench(dp, tool, use_tc, rr_bin):
    """Round trip A -> B -> A (1-byte UDP and TCP request/response, median of 20000),
    alternating plain veth + routing (programs detached) and the datapath."""
    servers = [subprocess.Popen(["ip", "netns", "exec", B, rr_bin, "server", p, str(port)])
               for p, port in (("udp", 9000), ("tcp", 9001))]
    time.sleep(0.3)
    try:
        for proto, port in (("udp", 9000), ("tcp", 9001)):
            for fam in ("ip4", "ip6"):
                dst = EP[B][fam]
                plain, bpf = [], []
                rr(rr_bin, proto, dst, port, 2000)  # warm up (neighbours, caches)
                for i in range(5):
                    bpf.append(rr(rr_bin, proto, dst, port))
                    detach(dp, tool, use_tc)
                    plain.append(rr(rr_bin, proto, dst, port))
                    attach(dp, tool, use_tc)
                mp, mb = sorted(plain)[2], sorted(bpf)[2]
                print("%s %s rtt ns  plain: %s  datapath: %s  ratio of medians %.3f"
                      % (proto, fam, plain, bpf, mb / mp), flush=True)
    finally:
        for s in servers:
            s.kill()
            s.wait()


if __name__ == "__main__":
    sys.exit(main())
