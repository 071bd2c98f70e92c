#!/usr/bin/env python3
"""Edge cases through BPF_PROG_TEST_RUN (bpftool prog run) on a private copy of the programs
and maps (pinned under /sys/fs/bpf/cdp-unit-<pid>, removed at the end).

test_run hands the program a linear skb on the loopback device, so skb->ifindex is 1: the
endpoints below live on ifindex 1.   Run as root:  python3 tests/unit.py"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdplib import *  # noqa: E402,F403

A_MAC, A_NODE = "02:00:00:00:0a:01", "02:00:00:00:0a:fe"
B_MAC, B_NODE = "02:00:00:00:0b:01", "02:00:00:00:0b:fe"
A4, B4, W4, R4 = "10.0.0.1", "10.0.0.2", "192.0.2.9", "192.0.2.1"
A6, B6, W6 = "fd00::1", "fd00::2", "2001:db8::9"
A_ID, B_ID, A_EP, B_EP = 256, 257, 1, 2
IDENTITY_HOST, IDENTITY_WORLD = 1, 2
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58

failures = []


def check(name, cond, detail=""):
    print("%s %s %s" % ("ok  " if cond else "FAIL", name, detail))
    if not cond:
        failures.append(name)


class Case:
    def __init__(self, dp):
        self.dp = dp

    def expect(self, name, prog, pkt, retval, reason=None, direction=None, ctx=None):
        """Runs pkt; checks the verdict and, for drops, that metric reason*4+dir moved."""
        direction = direction or (DIR_EGRESS if prog == "from_container" else DIR_INGRESS)
        before = self.dp.metric(reason, direction) if reason else 0
        rv, out = self.dp.test_run(prog, pkt, ctx)
        if rv is None:
            print("skip %s: test_run refuses the input (%s)" % (name, out))
            return b""
        ok = rv == retval
        detail = "retval %d (want %d)" % (rv, retval)
        if reason:
            after = self.dp.metric(reason, direction)
            ok = ok and after == before + 1
            detail += ", metric %d: %d -> %d" % (reason, before, after)
        check(name, ok, detail)
        return out


def marked(ep_id, ingress_ifindex=1):
    """A __sk_buff context whose mark says from-container of endpoint ep_id sent the packet,
    received on ingress_ifindex (the endpoints' device, 1, unless said otherwise). The
    fields up to ingress_ifindex (offset 36); only mark and ingress_ifindex may be set."""
    return struct.pack("<10I", 0, 0, (ep_id << 16) | 0x0C00, 0, 0, 0, 0, 0, 0,
                       ingress_ifindex)


def setup(dp):
    for ip in (A4, A6):
        dp.endpoint(ip, 1, A_ID, A_EP, 0, A_MAC, A_NODE)
    for ip in (B4, B6):
        dp.endpoint(ip, 1, B_ID, B_EP, 0, B_MAC, B_NODE)
    dp.ipcache(R4 + "/32", IDENTITY_HOST)
    dp.ipcache("0.0.0.0/0", IDENTITY_WORLD)


def from_a4(payload_ip):
    return eth(A_NODE, A_MAC, 0x0800) + payload_ip


def from_a6(payload_ip):
    return eth(A_NODE, A_MAC, 0x86DD) + payload_ip


def ct4(dp, s, d, sport, dport, proto, direction):
    return dp.lookup("cilium_ct4", socket.inet_aton(s) + socket.inet_aton(d)
                     + struct.pack("!HH", sport, dport) + struct.pack("<BBH", proto, direction, 0))


def ct6(dp, s, d, sport, dport, proto, direction):
    return dp.lookup("cilium_ct6", socket.inet_pton(socket.AF_INET6, s)
                     + socket.inet_pton(socket.AF_INET6, d)
                     + struct.pack("!HH", sport, dport) + struct.pack("<BBH", proto, direction, 0))


def ext(nexthdr, length8):
    """An IPv6 option extension header of (length8 * 8) bytes."""
    return struct.pack("!BB", nexthdr, length8 - 1) + b"\x01" + bytes([length8 * 8 - 4]) + \
        bytes(length8 * 8 - 4)


def main():
    tmp = tempfile.mkdtemp(prefix="cdp-unit-")
    pins = "/sys/fs/bpf/cdp-unit-%d" % os.getpid()
    # The pins go also when the build or the load fails half-way.
    try:
        obj, tool = os.path.join(tmp, "datapath.o"), os.path.join(tmp, "cdptool")
        build(obj, tool)
        dp = Datapath(tool, obj, pins)
        setup(dp)
        c = Case(dp)
        run_cases(dp, c)
    finally:
        run(["rm", "-rf", pins], check=False)
        run(["rm", "-rf", tmp])
    print("\n%d failure(s)%s" % (len(failures), ": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


def run_cases(dp, c):
    FC, TC = "from_container", "to_container"
    syn = tcp(40000, 80)

    # ---- truncation and L3
    c.expect("eth only, IPv4 ethertype", FC, eth(A_NODE, A_MAC, 0x0800), TC_ACT_SHOT, 134)
    c.expect("truncated IPv4 header", FC, from_a4(ipv4(A4, W4, TCP, syn)[:12]), TC_ACT_SHOT, 134)
    c.expect("truncated TCP header", FC, from_a4(ipv4(A4, W4, TCP, syn[:12])), TC_ACT_SHOT, 134)
    c.expect("truncated UDP header", FC, from_a4(ipv4(A4, W4, UDP, udp(1, 2)[:6])), TC_ACT_SHOT,
             134)
    c.expect("truncated ICMP header", FC, from_a4(ipv4(A4, W4, ICMP, icmp(8)[:4])), TC_ACT_SHOT,
             134)
    bad = bytearray(from_a4(ipv4(A4, W4, TCP, syn)))
    bad[14] = 0x4f  # ihl 15: 60-byte header, options beyond the packet's TCP bytes
    c.expect("ihl beyond the packet", FC, bytes(bad)[:14 + 40], TC_ACT_SHOT, 134)
    bad[14] = 0x44  # ihl 4
    c.expect("ihl < 5", FC, bytes(bad), TC_ACT_SHOT, 134)
    c.expect("truncated to_container TCP", TC,
             eth(B_MAC, B_NODE, 0x0800) + ipv4(A4, B4, TCP, syn[:19]), TC_ACT_SHOT, 134)
    c.expect("truncated IPv6 header", FC, from_a6(ipv6(A6, W6, TCP, syn)[:30]), TC_ACT_SHOT, 134)
    c.expect("truncated IPv6 ext header", FC, from_a6(ipv6(A6, W6, 0, ext(TCP, 2))[:40 + 12]),
             TC_ACT_SHOT, 134)
    c.expect("LLDP: unknown L3", FC, eth("01:80:c2:00:00:0e", A_MAC, 0x88CC) + bytes(30),
             TC_ACT_SHOT, 139)
    c.expect("to_container unknown L3", TC, eth(B_MAC, B_NODE, 0x88CC) + bytes(30),
             TC_ACT_SHOT, 139)

    # ---- source checks
    c.expect("unknown source IP", FC, from_a4(ipv4("10.0.0.3", W4, TCP, syn)), TC_ACT_SHOT, 132)
    c.expect("wrong source MAC", FC, eth(A_NODE, "02:00:00:00:0a:99", 0x0800)
             + ipv4(A4, W4, TCP, syn), TC_ACT_SHOT, 130)
    dp.endpoint("10.0.0.5", 7, 300, 5, 0, "02:00:00:00:05:01", "02:00:00:00:05:fe")
    c.expect("source IP of another device", FC, from_a4(ipv4("10.0.0.5", W4, TCP, syn)),
             TC_ACT_SHOT, 132)

    def arp(sip, smac, sha=None):
        return eth("ff:ff:ff:ff:ff:ff", smac, 0x0806) + struct.pack(
            "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_bytes(sha or smac), socket.inet_aton(sip),
            bytes(6), socket.inet_aton(R4))
    c.expect("ARP from A", FC, arp(A4, A_MAC), TC_ACT_OK, 0)
    c.expect("ARP with an unknown IP", FC, arp("10.0.0.3", A_MAC), TC_ACT_SHOT, 132)
    c.expect("ARP with another device's IP", FC, arp("10.0.0.5", A_MAC), TC_ACT_SHOT, 132)
    c.expect("ARP with A's IP, wrong MAC", FC, arp(A4, "02:00:00:00:0a:99"), TC_ACT_SHOT, 130)
    c.expect("ARP from A's MAC announcing another MAC", FC,
             arp(A4, A_MAC, "02:00:00:00:0a:99"), TC_ACT_SHOT, 130)
    c.expect("ARP to_container", TC, arp(R4, A_NODE), TC_ACT_OK, 0, DIR_INGRESS)

    # ---- L4 and conntrack
    c.expect("TCP SYN A -> world", FC, from_a4(ipv4(A4, W4, TCP, syn)), TC_ACT_OK, 0)
    e = ct4(dp, A4, W4, 40000, 80, TCP, 2)
    check("CT_EGRESS entry created", e is not None and e["value"]["src_identity"] == A_ID
          and e["value"]["tx_packets"] == 1, str(e and e["value"]))
    if e:
        left = e["value"]["expires"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        check("SYN lifetime ~60s", 55e9 < left <= 60e9, "%.1fs" % (left / 1e9))
    opts = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    c.expect("IPv4 options", FC, from_a4(ipv4(A4, W4, TCP, tcp(40001, 443), options=opts)),
             TC_ACT_OK, 0)
    check("ports found past the options", ct4(dp, A4, W4, 40001, 443, TCP, 2) is not None)
    c.expect("SCTP: L3 only, ports 0", FC, from_a4(ipv4(A4, W4, 132, bytes(16))), TC_ACT_OK, 0)
    check("SCTP entry with ports 0", ct4(dp, A4, W4, 0, 0, 132, 2) is not None)

    # reply from the world to A (to_container)
    c.expect("TCP SYN-ACK reply", TC, eth(A_MAC, A_NODE, 0x0800)
             + ipv4(W4, A4, TCP, tcp(80, 40000, 0x12)), TC_ACT_OK, 0, DIR_INGRESS)
    e = ct4(dp, A4, W4, 40000, 80, TCP, 2)
    left = e["value"]["expires"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    check("reply seen: flags, rx, 6h lifetime", e["value"]["flags"] == 1
          and e["value"]["rx_packets"] == 1 and left > 21000e9, str(e["value"]))
    c.expect("TCP FIN", FC, from_a4(ipv4(A4, W4, TCP, tcp(40000, 80, 0x11))), TC_ACT_OK, 0)
    e = ct4(dp, A4, W4, 40000, 80, TCP, 2)
    left = e["value"]["expires"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    check("FIN: TX_CLOSING, 10s", e["value"]["flags"] == 3 and left <= 10e9
          and e["value"]["tx_packets"] == 2, "%s %.1fs" % (e["value"], left / 1e9))
    c.expect("TCP RST reply", TC, eth(A_MAC, A_NODE, 0x0800)
             + ipv4(W4, A4, TCP, tcp(80, 40000, 0x14)), TC_ACT_OK, 0, DIR_INGRESS)
    e = ct4(dp, A4, W4, 40000, 80, TCP, 2)
    check("RST reply: RX_CLOSING", e["value"]["flags"] == 7, str(e["value"]["flags"]))
    c.expect("new SYN on the closed tuple", FC, from_a4(ipv4(A4, W4, TCP, syn)), TC_ACT_OK, 0)
    e = ct4(dp, A4, W4, 40000, 80, TCP, 2)
    check("SYN resets the closing flags", e["value"]["flags"] == 0, str(e["value"]["flags"]))

    # ICMP echo: id as both ports
    c.expect("echo request", FC, from_a4(ipv4(A4, W4, ICMP, icmp(8, ident=0x1234))), TC_ACT_OK)
    check("echo entry sport = dport = id", ct4(dp, A4, W4, 0x1234, 0x1234, ICMP, 2) is not None)

    # ---- local delivery: redirect with rewritten MACs and TTL
    pkt = from_a4(ipv4(A4, B4, UDP, udp(5000, 53, b"hello"), ttl=64))
    out = c.expect("UDP A -> B redirected", FC, pkt, TC_ACT_REDIRECT, 0)
    ip = out[14:34]
    check("MACs rewritten", out[:12] == mac_bytes(B_MAC) + mac_bytes(B_NODE), out[:12].hex())
    check("TTL 63, checksum valid", ip[8] == 63 and csum(ip) == 0, "ttl %d csum %#x" % (ip[8],
                                                                                       csum(ip)))
    check("rest unchanged", out[12:14] + out[14:22] + out[23:24] + out[26:] ==
          pkt[12:14] + pkt[14:22] + pkt[23:24] + pkt[26:])
    c.expect("TTL 1 to B: to the stack", FC,
             from_a4(ipv4(A4, B4, UDP, udp(5000, 53), ttl=1)), TC_ACT_OK, 0)
    out = c.expect("IPv6 A -> B redirected", FC, from_a6(ipv6(A6, B6, UDP, udp(5000, 53))),
                   TC_ACT_REDIRECT, 0)
    check("hop limit 63", out[14 + 7] == 63 and out[:12] == mac_bytes(B_MAC) + mac_bytes(B_NODE))

    # ---- IPv6 extension headers
    pkt6 = ipv6(A6, W6, 0, ext(60, 1) + ext(43, 2) + ext(TCP, 1) + tcp(40002, 22))
    c.expect("IPv6 HBH + DST + RT + TCP", FC, from_a6(pkt6), TC_ACT_OK, 0)
    check("ct6 entry with the TCP ports", ct6(dp, A6, W6, 40002, 22, TCP, 2) is not None)
    ah = struct.pack("!BBH", TCP, 4, 0) + bytes(20)  # AH: (4 + 2) * 4 = 24 bytes
    c.expect("IPv6 AH + TCP", FC, from_a6(ipv6(A6, W6, 51, ah + tcp(40003, 22))), TC_ACT_OK, 0)
    check("AH length in 4-byte units", ct6(dp, A6, W6, 40003, 22, TCP, 2) is not None)
    five = ext(60, 1) + ext(60, 1) + ext(60, 1) + ext(60, 1) + ext(TCP, 1)
    c.expect("5 extension headers", FC, from_a6(ipv6(A6, W6, 60, five + tcp(1, 2))),
             TC_ACT_SHOT, 134)
    c.expect("IPv6 no next header (59)", FC, from_a6(ipv6(A6, W6, 59, b"")), TC_ACT_OK, 0)

    # ---- ND / MLD
    ns = icmp(135, 0, 0, 0, socket.inet_pton(socket.AF_INET6, "fd00::ffff"))
    c.expect("NS from link-local", FC, from_a6(ipv6("fe80::1", "ff02::1:ff00:ffff", ICMP6, ns)),
             TC_ACT_OK, 0)
    c.expect("NS from A's address", FC, from_a6(ipv6(A6, "ff02::1:ff00:ffff", ICMP6, ns)),
             TC_ACT_OK, 0)
    c.expect("NS from A's address, wrong MAC", FC, eth(A_NODE, "02:00:00:00:0a:99", 0x86DD)
             + ipv6(A6, "ff02::1:ff00:ffff", ICMP6, ns), TC_ACT_SHOT, 130)
    mld = icmp(143, 0, 0, 1, bytes(20))
    hbh = struct.pack("!BB", ICMP6, 0) + b"\x05\x02\x00\x00\x01\x00"  # router alert
    c.expect("MLDv2 report behind hop-by-hop", FC,
             from_a6(ipv6("fe80::1", "ff02::16", 0, hbh + mld)), TC_ACT_OK, 0)
    c.expect("NS into the container (multicast)", TC, eth("33:33:ff:00:00:02", B_NODE, 0x86DD)
             + ipv6("fe80::ff", "ff02::1:ff00:2", ICMP6, ns), TC_ACT_OK, 0, DIR_INGRESS)
    c.expect("other IPv6 multicast into the container", TC, eth("33:33:00:00:00:01", B_NODE,
                                                                 0x86DD)
             + ipv6("fe80::ff", "ff02::1", UDP, udp(1, 2)), TC_ACT_SHOT, 152)

    # ND/MLD to or from anything but the router is ordinary ICMPv6, under policy
    dp.endpoint(A6, 1, A_ID, A_EP, EP_F_POLICY_EGRESS, A_MAC, A_NODE)
    c.expect("NS to B's global address: under A's egress policy", FC,
             from_a6(ipv6(A6, B6, ICMP6, ns)), TC_ACT_SHOT, 133)
    c.expect("NS to a link-local address: to the stack", FC,
             from_a6(ipv6(A6, "fe80::2", ICMP6, ns)), TC_ACT_OK, 0)
    dp.ipcache("fd00::ffff/128", IDENTITY_HOST)
    c.expect("NS to the router's global address (host)", FC,
             from_a6(ipv6(A6, "fd00::ffff", ICMP6, ns)), TC_ACT_OK, 0)
    dp.endpoint(A6, 1, A_ID, A_EP, 0, A_MAC, A_NODE)
    dp.endpoint(B6, 1, B_ID, B_EP, EP_F_POLICY_INGRESS, B_MAC, B_NODE)
    na = icmp(136, 0, 0, 0, socket.inet_pton(socket.AF_INET6, W6))
    c.expect("NA into B from a world address: under B's ingress policy", TC,
             eth(B_MAC, B_NODE, 0x86DD) + ipv6(W6, B6, ICMP6, na), TC_ACT_SHOT, 133)
    c.expect("NA into B from link-local: skips policy", TC,
             eth(B_MAC, B_NODE, 0x86DD) + ipv6("fe80::ff", B6, ICMP6, na), TC_ACT_OK, 0,
             DIR_INGRESS)
    c.expect("NA into B from the router's global address", TC,
             eth(B_MAC, B_NODE, 0x86DD) + ipv6("fd00::ffff", B6, ICMP6, na), TC_ACT_OK, 0,
             DIR_INGRESS)
    dp.endpoint(B6, 1, B_ID, B_EP, 0, B_MAC, B_NODE)

    # ---- to_container destination checks
    c.expect("unknown destination", TC, eth(B_MAC, B_NODE, 0x0800)
             + ipv4(W4, "10.0.0.77", UDP, udp(1, 2)), TC_ACT_SHOT, 152)
    c.expect("destination on another device", TC, eth(B_MAC, B_NODE, 0x0800)
             + ipv4(W4, "10.0.0.5", UDP, udp(1, 2)), TC_ACT_SHOT, 152)
    c.expect("IPv4 broadcast", TC, eth("ff:ff:ff:ff:ff:ff", B_NODE, 0x0800)
             + ipv4(R4, "255.255.255.255", UDP, udp(67, 68)), TC_ACT_OK, 0, DIR_INGRESS)
    c.expect("IPv4 multicast", TC, eth("01:00:5e:00:00:01", B_NODE, 0x0800)
             + ipv4(R4, "224.0.0.1", 2, bytes(8)), TC_ACT_OK, 0, DIR_INGRESS)

    # ---- fragments
    first = from_a4(ipv4(A4, W4, UDP, udp(1000, 53, bytes(24)), ident=77, frag_off=0x2000))
    later = from_a4(ipv4(A4, W4, UDP, bytes(40), ident=77, frag_off=4))
    c.expect("IPv4 first fragment", FC, first, TC_ACT_OK, 0)
    check("frag4 entry", dp.lookup("cilium_frag4", socket.inet_aton(A4) + socket.inet_aton(W4)
                                   + struct.pack("<HBB", 77, UDP, 0)) is not None)
    c.expect("IPv4 later fragment", FC, later, TC_ACT_OK, 0)
    e = ct4(dp, A4, W4, 1000, 53, UDP, 2)
    check("later fragment counted on the flow", e is not None and e["value"]["tx_packets"] == 2,
          str(e and e["value"]))
    c.expect("IPv4 later fragment without first", FC,
             from_a4(ipv4(A4, W4, UDP, bytes(40), ident=78, frag_off=4)), TC_ACT_SHOT, 157)

    def frag6(off_units, more, ident, payload):
        return struct.pack("!BBHI", UDP, 0, off_units << 3 | more, ident) + payload
    c.expect("IPv6 first fragment", FC,
             from_a6(ipv6(A6, W6, 44, frag6(0, 1, 0xabcdef, udp(1001, 53, bytes(24))))),
             TC_ACT_OK, 0)
    c.expect("IPv6 later fragment", FC, from_a6(ipv6(A6, W6, 44, frag6(4, 0, 0xabcdef,
                                                                        bytes(16)))), TC_ACT_OK, 0)
    e = ct6(dp, A6, W6, 1001, 53, UDP, 2)
    check("IPv6 later fragment counted on the flow", e is not None
          and e["value"]["tx_packets"] == 2, str(e and e["value"]))
    c.expect("IPv6 later fragment without first", FC,
             from_a6(ipv6(A6, W6, 44, frag6(4, 0, 0x1111, bytes(16)))), TC_ACT_SHOT, 157)
    c.expect("IPv6 frag header after HBH", FC,
             from_a6(ipv6(A6, W6, 0, ext(44, 1) + frag6(0, 1, 5, udp(1002, 53, bytes(8))))),
             TC_ACT_OK, 0)
    check("frag6 entry after HBH", ct6(dp, A6, W6, 1002, 53, UDP, 2) is not None)

    # ---- egress policy
    dp.endpoint(A4, 1, A_ID, A_EP, EP_F_POLICY_EGRESS, A_MAC, A_NODE)
    web = from_a4(ipv4(A4, W4, TCP, tcp(41000, 80)))
    c.expect("egress policy, no entries: L3 denied", FC, web, TC_ACT_SHOT, 133)
    dp.policy(IDENTITY_WORLD, A_EP, DIR_EGRESS, ACTION_L4_ONLY)
    c.expect("marker passed: L4 denied", FC, web, TC_ACT_SHOT, 159)
    dp.policy(IDENTITY_WORLD, A_EP, DIR_EGRESS, ACTION_ALLOW, 80, TCP)
    c.expect("(world, 80/TCP) allows", FC, web, TC_ACT_OK, 0)
    check("policy counters", dp.policy_counters(IDENTITY_WORLD, A_EP, DIR_EGRESS, 80, TCP)
          == (1, len(web)), str(dp.policy_counters(IDENTITY_WORLD, A_EP, DIR_EGRESS, 80, TCP)))
    c.expect("established flow re-checked: still allowed", FC, web, TC_ACT_OK, 0)
    quote = ipv4(W4, A4, TCP, tcp(80, 41000))[:28]
    c.expect("A's ICMP error about its flow, to its peer: related", FC,
             from_a4(ipv4(A4, W4, ICMP, icmp(3, 3, 0, 0, quote))), TC_ACT_OK, 0)
    c.expect("the same quote sent to someone else: not related, L4 denied", FC,
             from_a4(ipv4(A4, "198.51.100.99", ICMP, icmp(3, 3, 0, 0, quote))), TC_ACT_SHOT,
             159)
    c.expect("UDP 80 not allowed", FC, from_a4(ipv4(A4, W4, UDP, udp(41000, 80))), TC_ACT_SHOT,
             159)
    dp.policy(0, A_EP, DIR_EGRESS, ACTION_REDIRECT, 53, UDP)
    c.expect("(any, 53/UDP) REDIRECT allows", FC, from_a4(ipv4(A4, W4, UDP, udp(41000, 53))),
             TC_ACT_OK, 0)
    # TCP under HTTP rules goes to the proxy: without a proxy port, or without the proxy's
    # socket (none listens in this namespace), never past it
    dp.policy(0, A_EP, DIR_EGRESS, ACTION_REDIRECT, 8080, TCP)
    c.expect("(any, 8080/TCP) REDIRECT without a proxy port: dropped", FC,
             from_a4(ipv4(A4, W4, TCP, tcp(41000, 8080))), TC_ACT_SHOT, 161)
    dp.policy(0, A_EP, DIR_EGRESS, ACTION_REDIRECT, 8080, TCP, proxy_port=10080)
    c.expect("(any, 8080/TCP) REDIRECT, no proxy listening: dropped", FC,
             from_a4(ipv4(A4, W4, TCP, tcp(41001, 8080))), TC_ACT_SHOT, 161)
    dp.policy(IDENTITY_HOST, A_EP, DIR_EGRESS, ACTION_ALLOW)
    c.expect("ipcache identity (host) at L3", FC, from_a4(ipv4(A4, R4, UDP, udp(1, 9))),
             TC_ACT_OK, 0)
    c.expect("to local B (identity 257): denied", FC, from_a4(ipv4(A4, B4, UDP, udp(1, 9))),
             TC_ACT_SHOT, 133)
    dp.policy(B_ID, A_EP, DIR_EGRESS, ACTION_ALLOW)
    c.expect("to local B allowed by identity", FC, from_a4(ipv4(A4, B4, UDP, udp(1, 9))),
             TC_ACT_REDIRECT, 0)
    c.expect("reply to A's inbound flow skips egress policy", TC,
             eth(A_MAC, A_NODE, 0x0800) + ipv4("198.51.100.7", A4, TCP, tcp(5555, 22)), TC_ACT_OK)
    c.expect("... and A's answer passes", FC,
             from_a4(ipv4(A4, "198.51.100.7", TCP, tcp(22, 5555, 0x12))), TC_ACT_OK, 0)
    dp.endpoint(A4, 1, A_ID, A_EP, 0, A_MAC, A_NODE)

    # ---- ingress policy, replies and related ICMP errors
    dp.endpoint(B4, 1, B_ID, B_EP, EP_F_POLICY_INGRESS, B_MAC, B_NODE)
    to_b = eth(B_MAC, B_NODE, 0x0800)
    c.expect("ingress policy: A -> B denied", TC, to_b + ipv4(A4, B4, TCP, tcp(42000, 8080)),
             TC_ACT_SHOT, 133, ctx=marked(A_EP))
    dp.policy(A_ID, B_EP, DIR_INGRESS, ACTION_ALLOW, 8080, TCP)
    c.expect("(A, 8080/TCP) allows", TC, to_b + ipv4(A4, B4, TCP, tcp(42000, 8080)), TC_ACT_OK,
             ctx=marked(A_EP))
    check("CT_INGRESS entry, initiator A", (ct4(dp, A4, B4, 42000, 8080, TCP, 1) or {}).get(
        "value", {}).get("src_identity") == A_ID)
    c.expect("A -> B other port: no marker, L3 denied", TC,
             to_b + ipv4(A4, B4, TCP, tcp(42000, 8081)), TC_ACT_SHOT, 133, ctx=marked(A_EP))
    # A's address from anywhere but A's own from_container: spoofed, whatever the policy
    c.expect("A's address without A's mark (a host process, the network)", TC,
             to_b + ipv4(A4, B4, TCP, tcp(42000, 8080)), TC_ACT_SHOT, 132)
    c.expect("A's address with B's mark", TC, to_b + ipv4(A4, B4, TCP, tcp(42000, 8080)),
             TC_ACT_SHOT, 132, ctx=marked(B_EP))
    c.expect("A's mark set by a host process (SO_MARK: no ingress device)", TC,
             to_b + ipv4(A4, B4, TCP, tcp(42000, 8080)), TC_ACT_SHOT, 132,
             ctx=marked(A_EP, ingress_ifindex=0))
    c.expect("A's IPv6 address without A's mark", TC, eth(B_MAC, B_NODE, 0x86DD)
             + ipv6(A6, B6, UDP, udp(1, 2)), TC_ACT_SHOT, 132)
    # B's own flow to the world: the replies come back through the policy
    c.expect("B -> world UDP", FC, eth(B_NODE, B_MAC, 0x0800) + ipv4(B4, W4, UDP, udp(6000, 53)),
             TC_ACT_OK, 0)
    c.expect("world reply passes B's ingress policy", TC, to_b + ipv4(W4, B4, UDP,
                                                                      udp(53, 6000)), TC_ACT_OK, 0)
    quote = ipv4(B4, W4, UDP, udp(6000, 53))[:28]
    c.expect("related ICMP error passes", TC, to_b + ipv4(R4, B4, ICMP, icmp(3, 3, 0, 0, quote)),
             TC_ACT_OK, 0)
    quote = ipv4(B4, W4, UDP, udp(6001, 53))[:28]
    c.expect("unrelated ICMP error: new L3 flow, denied", TC,
             to_b + ipv4(R4, B4, ICMP, icmp(3, 3, 0, 0, quote)), TC_ACT_SHOT, 133)
    # an error B sends about a flow it received is related too (from_container side)
    dp.endpoint(B4, 1, B_ID, B_EP, EP_F_POLICY_INGRESS | EP_F_POLICY_EGRESS, B_MAC, B_NODE)
    quote = ipv4(A4, B4, TCP, tcp(42000, 8080))[:28]
    c.expect("B's ICMP error about A's flow passes its egress policy", FC,
             eth(B_NODE, B_MAC, 0x0800) + ipv4(B4, A4, ICMP, icmp(3, 3, 0, 0, quote)),
             TC_ACT_REDIRECT, 0)
    dp.endpoint(B4, 1, B_ID, B_EP, EP_F_POLICY_INGRESS, B_MAC, B_NODE)
    # ICMPv6 related
    dp.endpoint(B6, 1, B_ID, B_EP, EP_F_POLICY_INGRESS, B_MAC, B_NODE)
    c.expect("B -> world UDP (v6)", FC, eth(B_NODE, B_MAC, 0x86DD)
             + ipv6(B6, W6, UDP, udp(6000, 53)), TC_ACT_OK, 0)
    q6 = ipv6(B6, W6, UDP, udp(6000, 53))
    c.expect("related ICMPv6 error passes", TC, eth(B_MAC, B_NODE, 0x86DD)
             + ipv6("2001:db8::1", B6, ICMP6, icmp(1, 4, 0, 0, q6)), TC_ACT_OK, 0)
    c.expect("echo request into B: denied", TC, eth(B_MAC, B_NODE, 0x86DD)
             + ipv6(W6, B6, ICMP6, icmp(128, 0, 7)), TC_ACT_SHOT, 133)
    # expired entries are misses
    key = socket.inet_aton(B4) + socket.inet_aton(W4) + struct.pack("!HH", 6002, 53) \
        + struct.pack("<BBH", UDP, 2, 0)
    dp.update("cilium_ct4", key, struct.pack("<QQQQQIHHHHI", 1, 1, 1, 0, 0, B_ID, 0, 0, 0, 0, 0))
    c.expect("reply to an expired entry: denied", TC, to_b + ipv4(W4, B4, UDP, udp(53, 6002)),
             TC_ACT_SHOT, 133)
    far = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 30 * 10**9
    dp.update("cilium_ct4", key, struct.pack("<QQQQQIHHHHI", far, 1, 1, 0, 0, B_ID, 0, 0, 0, 0,
                                             0))
    c.expect("reply to a live entry passes", TC, to_b + ipv4(W4, B4, UDP, udp(53, 6002)),
             TC_ACT_OK, 0)
    dp.endpoint(B4, 1, B_ID, B_EP, 0, B_MAC, B_NODE)
    dp.endpoint(B6, 1, B_ID, B_EP, 0, B_MAC, B_NODE)

    services(dp, c)

    # ---- events: drops always, trace/debug only when debugging
    ev = subprocess.Popen([dp.tool, "events", dp.map("cilium_events"), "3"],
                          stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    dp.test_run(FC, from_a4(ipv4("10.0.0.3", W4, TCP, syn)))             # drop 132
    dp.test_run(FC, from_a4(ipv4(A4, W4, TCP, tcp(43000, 80))))          # no debug: no event
    dp.endpoint(A4, 1, A_ID, A_EP, EP_F_DEBUG, A_MAC, A_NODE)
    dp.test_run(FC, from_a4(ipv4(A4, B4, TCP, tcp(43001, 80))))          # ct, trace
    dp.endpoint(A4, 1, A_ID, A_EP, 0, A_MAC, A_NODE)
    dp.config(CFG_F_DEBUG)
    dp.test_run(TC, eth(B_MAC, B_NODE, 0x0800) + ipv4(A4, B4, TCP, tcp(43001, 80)), marked(A_EP))
    dp.config(0)
    out, _ = ev.communicate()
    # the ring still holds the drops of the cases above: look at the last five
    out = "\n".join(out.splitlines()[-5:])
    lines = [dict(kv.split("=", 1) for kv in line.split()) for line in out.splitlines()]
    for line in out.splitlines():
        print("     event:", line[:200] + ("..." if len(line) > 200 else ""))
    kinds = [(int(e["type"]), int(e["subtype"])) for e in lines]
    check("drop event 132", kinds[:1] == [(1, 132)] and lines[0]["cap_len"] == "54"
          and lines[0]["orig_len"] == "54" and len(lines[0]["data"]) == 108,
          str(lines[:1]))
    check("debug/trace events", kinds[1:] == [(3, 1), (2, 1), (3, 1), (2, 2)], str(kinds[1:]))
    if len(lines) >= 3:
        check("trace from A names B", lines[2]["source"] == str(A_EP)
              and lines[2]["dst_endpoint"] == str(B_EP) and lines[2]["dst_identity"] == str(B_ID)
              and lines[2]["src_identity"] == str(A_ID))

    # ---- a full ring buffer: the events that do not fit are counted (metrics index 3)
    lost = dp.metric(0, 3)
    dp.config(CFG_F_DEBUG)
    with tempfile.TemporaryDirectory() as t:
        fin = os.path.join(t, "in")
        with open(fin, "wb") as f:
            f.write(from_a4(ipv4(A4, W4, TCP, tcp(43002, 80))))
        # ~4 events of 192 bytes per run: 8000 runs are more than the 1 MiB ring holds
        run(["bpftool", "prog", "run", "pinned", dp.prog[FC], "data_in", fin, "repeat", "8000"])
    dp.config(0)
    check("events lost to a full ring are counted", dp.metric(0, 3) > lost,
          "%d -> %d" % (lost, dp.metric(0, 3)))


def with_csum(src, dst, proto, seg):
    """seg with its TCP/UDP checksum filled in over the IPv4 or IPv6 pseudo header."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    pseudo = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst)
    pseudo += struct.pack("!I3xB", len(seg), proto) if fam == socket.AF_INET6 else \
        struct.pack("!xBH", proto, len(seg))
    off = 16 if proto == TCP else 6
    seg = seg[:off] + b"\0\0" + seg[off + 2:]
    return seg[:off] + struct.pack("!H", csum(pseudo + seg) or 0xffff) + seg[off + 2:]


def l4_ok(frame):
    """Whether the TCP/UDP checksum of an Ethernet frame is right for its addresses."""
    if frame[12:14] == b"\x08\x00":
        ip = frame[14:]
        hl = (ip[0] & 0xf) * 4
        seg = ip[hl:struct.unpack("!H", ip[2:4])[0]]
        pseudo = ip[12:20] + struct.pack("!xBH", ip[9], len(seg))
    else:
        ip = frame[14:]
        seg = ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
        pseudo = ip[8:40] + struct.pack("!I3xB", len(seg), ip[6])
    return csum(pseudo + seg) == 0


def services(dp, c):
    """Load balancing: DNAT in from_container, reverse translation in to_container, with
    valid checksums (test_run skbs carry no checksum offload: every byte counts)."""
    FC, TC = "from_container", "to_container"
    FE4, FE6 = "10.96.0.1", "fd00:96::1"

    def addr(ip, port, svc_id):
        a, fam = ip_bytes(ip)
        return a + struct.pack("!H", port) + struct.pack("<BBHH", fam, 0, svc_id, 0)

    def service(svc_id, ip, port, proto, backends):
        a, fam = ip_bytes(ip)
        for i, (bip, bport) in enumerate(backends):
            backend_id = svc_id * 100 + i
            dp.update("cilium_lb_backends", struct.pack("<I", backend_id),
                      addr(bip, bport, svc_id))
            dp.update("cilium_lb_slots", struct.pack("<HH", svc_id, i),
                      struct.pack("<I", backend_id))
        dp.update("cilium_lb_revnat", struct.pack("<H", svc_id), addr(ip, port, svc_id))
        dp.update("cilium_lb_svc", a + struct.pack("!H", port) + struct.pack("<BB", proto, fam),
                  struct.pack("<HHB3xI", svc_id, len(backends), 0, 0))

    service(1, FE4, 80, TCP, [(B4, 8080)])
    syn = ipv4(A4, FE4, TCP, with_csum(A4, FE4, TCP, tcp(40100, 80)))
    out = c.expect("TCP to a frontend: to its backend B", FC, from_a4(syn), TC_ACT_REDIRECT, 0)
    ip = out[14:34]
    check("DNAT: destination B:8080, IP and TCP checksums valid",
          ip[16:20] == socket.inet_aton(B4) and out[36:38] == struct.pack("!H", 8080)
          and csum(ip) == 0 and l4_ok(out), out[14:54].hex())
    e = ct4(dp, A4, FE4, 40100, 80, TCP, 3)
    check("CT_SERVICE entry: service 1, backend 100", e is not None
          and e["value"]["rev_nat"] == 1 and e["value"]["backend_id"] == 100, str(e))
    e = ct4(dp, A4, B4, 40100, 8080, TCP, 2)
    check("the flow to B carries rev_nat 1", e is not None and e["value"]["rev_nat"] == 1,
          str(e))
    reply = ipv4(B4, A4, TCP, with_csum(B4, A4, TCP, tcp(8080, 40100, 0x12)))
    out = c.expect("B's reply to A: source back to the frontend", TC,
                   eth(A_MAC, A_NODE, 0x0800) + reply, TC_ACT_OK, 0, DIR_INGRESS,
                   ctx=marked(B_EP))
    ip = out[14:34]
    check("rev-NAT: source 10.96.0.1:80, checksums valid",
          ip[12:16] == socket.inet_aton(FE4) and out[34:36] == struct.pack("!H", 80)
          and csum(ip) == 0 and l4_ok(out), out[14:54].hex())

    # the client's port reused straight to the backend (the kernel may, right after a close):
    # the tuple's entry is the same, its replies must not be translated any more
    direct = ipv4(A4, B4, TCP, with_csum(A4, B4, TCP, tcp(40100, 8080)))
    c.expect("the same tuple straight to B", FC, from_a4(direct), TC_ACT_REDIRECT, 0)
    e = ct4(dp, A4, B4, 40100, 8080, TCP, 2)
    check("... the flow no longer carries rev_nat", e is not None
          and e["value"]["rev_nat"] == 0, str(e))
    out = c.expect("... B's reply keeps B's address", TC, eth(A_MAC, A_NODE, 0x0800) + reply,
                   TC_ACT_OK, 0, DIR_INGRESS, ctx=marked(B_EP))
    check("... source B4:8080", out[26:30] == socket.inet_aton(B4)
          and out[34:36] == struct.pack("!H", 8080), out[14:54].hex())

    service(2, FE4, 53, UDP, [(B4, 5353)])
    out = c.expect("UDP without checksum to a frontend", FC,
                   from_a4(ipv4(A4, FE4, UDP, udp(5000, 53, b"q"))), TC_ACT_REDIRECT, 0)
    check("UDP checksum 0 stays 0", out[40:42] == b"\0\0" and csum(out[14:34]) == 0
          and out[36:38] == struct.pack("!H", 5353), out[34:42].hex())

    service(3, FE6, 53, UDP, [(B6, 5353)])
    out = c.expect("UDP over IPv6 to a frontend", FC,
                   from_a6(ipv6(A6, FE6, UDP, udp(5001, 53, b"q", A6, FE6))),
                   TC_ACT_REDIRECT, 0)
    check("IPv6 DNAT: destination B6:5353, UDP checksum valid",
          out[14 + 24:14 + 40] == socket.inet_pton(socket.AF_INET6, B6) and l4_ok(out)
          and out[56:58] == struct.pack("!H", 5353), out[14:62].hex())
    out = c.expect("B6's answer: from the IPv6 frontend", TC, eth(A_MAC, A_NODE, 0x86DD)
                   + ipv6(B6, A6, UDP, udp(5353, 5001, b"a", B6, A6)), TC_ACT_OK, 0,
                   DIR_INGRESS, ctx=marked(B_EP))
    check("IPv6 rev-NAT: source fd00:96::1:53, UDP checksum valid",
          out[14 + 8:14 + 24] == socket.inet_pton(socket.AF_INET6, FE6) and l4_ok(out)
          and out[54:56] == struct.pack("!H", 53), out[14:62].hex())

    service(4, FE4, 81, TCP, [])
    c.expect("frontend without backends: 158", FC,
             from_a4(ipv4(A4, FE4, TCP, tcp(40101, 81))), TC_ACT_SHOT, 158)
    c.expect("other port of the frontend address: not a service", FC,
             from_a4(ipv4(A4, FE4, TCP, tcp(40101, 82))), TC_ACT_OK, 0)


if __name__ == "__main__":
    sys.exit(main())
