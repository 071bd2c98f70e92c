"""Helpers shared by the datapath tests: build and load, map contents through bpftool, packet
crafting. Layouts follow include/abi.h (little-endian host)."""

import json
import os
import socket
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BPF_DIR = os.path.dirname(HERE)
ARCH_INC = "/usr/include/%s-linux-gnu" % os.uname().machine

FAMILY_IPV4, FAMILY_IPV6 = 4, 6
DIR_INGRESS, DIR_EGRESS = 1, 2
EP_F_POLICY_INGRESS, EP_F_POLICY_EGRESS, EP_F_DEBUG = 1, 2, 4
ACTION_ALLOW, ACTION_REDIRECT, ACTION_L4_ONLY = 1, 2, 3
CFG_F_DEBUG = 1
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


def run(cmd, check=True, capture=True, **kw):
    r = subprocess.run(cmd, shell=isinstance(cmd, str), text=True,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.STDOUT if capture else None, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (cmd, r.returncode, r.stdout))
    return r


def build(obj, tool):
    """Compiles datapath.c (the exact flags of the brief) and the cdptool helper."""
    run(["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
         "-I", os.path.join(BPF_DIR, "include"), "-I", ARCH_INC,
         "-c", os.path.join(BPF_DIR, "datapath.c"), "-o", obj])
    run(["cc", "-O2", "-Wall", "-I", os.path.join(BPF_DIR, "include"),
         "-o", tool, os.path.join(HERE, "cdptool.c"), "-lbpf"])


class Datapath:
    """One loaded copy of the programs with its own pinned maps under pin_dir."""

    def __init__(self, tool, obj, pin_dir):
        self.tool, self.dir = tool, pin_dir
        run([tool, "load", obj, pin_dir])
        self.prog = {p: os.path.join(pin_dir, p) for p in ("from_container", "to_container")}

    def map(self, name):
        return os.path.join(self.dir, "maps", name)

    def remove(self):
        run(["rm", "-rf", self.dir], check=False)

    # ---- raw map access
    def update(self, name, key, value):
        run(["bpftool", "map", "update", "pinned", self.map(name), "key", "hex"] + hexs(key)
            + ["value", "hex"] + hexs(value))

    def delete(self, name, key):
        run(["bpftool", "map", "delete", "pinned", self.map(name), "key", "hex"] + hexs(key),
            check=False)

    def lookup(self, name, key):
        r = run(["bpftool", "-j", "map", "lookup", "pinned", self.map(name), "key", "hex"]
                + hexs(key), check=False)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)["formatted"]

    def dump(self, name):
        return [e["formatted"] for e in
                json.loads(run(["bpftool", "-j", "map", "dump", "pinned", self.map(name)]).stdout)]

    def flush(self, name):
        for e in json.loads(run(["bpftool", "-j", "map", "dump", "pinned",
                                 self.map(name)]).stdout):
            run(["bpftool", "map", "delete", "pinned", self.map(name), "key", "hex"]
                + [b[2:] for b in e["key"]], check=False)

    # ---- typed helpers
    def endpoint(self, ip, ifindex, identity, ep_id, flags, mac, node_mac):
        self.update("cilium_lxc", endpoint_key(ip),
                    struct.pack("<IIHH6s6s", ifindex, identity, ep_id, flags, mac_bytes(mac),
                                mac_bytes(node_mac)))

    def ipcache(self, cidr, identity):
        self.update("cilium_ipcache", ipcache_key(cidr), struct.pack("<II", identity, 0))

    def policy(self, identity, ep_id, direction, action, dport=0, proto=0, proxy_port=0):
        self.update("cilium_policy", policy_key(identity, ep_id, direction, dport, proto),
                    struct.pack("<HB5xQQ", socket.htons(proxy_port), action, 0, 0))

    def policy_counters(self, identity, ep_id, direction, dport=0, proto=0):
        v = self.lookup("cilium_policy", policy_key(identity, ep_id, direction, dport, proto))
        if v is None:
            return None
        return (v["value"]["packets"], v["value"]["bytes"])

    def config(self, flags):
        self.update("cilium_config", struct.pack("<I", 0), struct.pack("<II", flags, 0))

    def metric(self, reason, direction):
        v = self.lookup("cilium_metrics", struct.pack("<I", reason * 4 + direction))
        return sum(c["value"]["packets"] for c in v["values"])

    def metrics(self):
        """{(reason, dir): packets} of the non-zero counters."""
        out = {}
        for e in self.dump("cilium_metrics"):
            n = sum(c["value"]["packets"] for c in e["values"])
            if n:
                out[(e["key"] // 4, e["key"] % 4)] = n
        return out

    def test_run(self, prog, data, ctx=None):
        """BPF_PROG_TEST_RUN: (retval, data_out), or (None, error) when refused."""
        with tempfile.TemporaryDirectory() as t:
            fin, fout = os.path.join(t, "in"), os.path.join(t, "out")
            with open(fin, "wb") as f:
                f.write(data)
            cmd = ["bpftool", "-j", "prog", "run", "pinned", self.prog[prog], "data_in", fin,
                   "data_out", fout]
            if ctx is not None:
                fctx = os.path.join(t, "ctx")
                with open(fctx, "wb") as f:
                    f.write(ctx)
                cmd += ["ctx_in", fctx]
            r = json.loads(run(cmd, check=False).stdout)
            if "error" in r:
                # the kernel refuses e.g. an IPv4 ethertype with less than an IPv4 header
                return None, r["error"]
            with open(fout, "rb") as f:
                return r["retval"], f.read()


def hexs(b):
    return ["%02x" % x for x in b]


def mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def ip_bytes(ip):
    """16 bytes (IPv4 in the first 4, rest zero) and the family."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip), FAMILY_IPV6
    return socket.inet_aton(ip) + bytes(12), FAMILY_IPV4


def endpoint_key(ip):
    a, fam = ip_bytes(ip)
    return a + struct.pack("<B3x", fam)


def ipcache_key(cidr):
    ip, plen = cidr.split("/")
    a, fam = ip_bytes(ip)
    return struct.pack("<IB3x", 32 + int(plen), fam) + a


def policy_key(identity, ep_id, direction, dport=0, proto=0):
    return struct.pack("<IH", identity, ep_id) + struct.pack("!H", dport) + \
        struct.pack("<BBH", proto, direction, 0)


# ---- packet crafting (for BPF_PROG_TEST_RUN)

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def eth(dst, src, proto):
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", proto)


def ipv4(src, dst, proto, payload, ttl=64, ident=1, frag_off=0, options=b"", tot_len=None):
    ihl = 5 + len(options) // 4
    tot = tot_len if tot_len is not None else ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, frag_off, ttl, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src, dst, nexthdr, payload, hop=64):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, hop,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def tcp(sport, dport, flags=0x02):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def udp(sport, dport, payload=b"", src6=None, dst6=None):
    """A UDP datagram; with src6/dst6 its IPv6 checksum (mandatory there) is filled in."""
    d = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if src6:
        pseudo = socket.inet_pton(socket.AF_INET6, src6) + \
            socket.inet_pton(socket.AF_INET6, dst6) + struct.pack("!I3xB", len(d), 17)
        d = d[:6] + struct.pack("!H", csum(pseudo + d) or 0xffff) + d[8:]
    return d


def icmp(type_, code=0, ident=0, seq=0, payload=b""):
    return struct.pack("!BBHHH", type_, code, 0, ident, seq) + payload
