//! Decoding of datapath events into monitor records, and their text forms for
//! `cilium monitor`.
//!
//! [`decode`] turns one ring-buffer [`Event`] into a [`MonitorEvent`]: the event's kind and
//! message (drop reason, trace point or debug message) and a dissection of the captured
//! packet bytes (Ethernet with one VLAN tag, ARP, IPv4 with options, IPv6 with extension
//! headers, TCP, UDP, ICMP, ICMPv6). The dissector reads any bytes, truncated anywhere,
//! without panicking: it decodes what is there and says where the capture ended.
//!
//! [`format_line`] prints a record as the 2017 `cilium monitor` did (seed §6.2, §6.4):
//!
//! ```text
//! xx drop (Policy denied (L3)) to endpoint 25729, identity 261->264: 10.11.13.37 -> 10.11.101.61 EchoRequest
//! <- endpoint 3978 flow 0x1c56d86c identity 261->0: 10.11.13.37:40312 -> 10.11.101.61:80 tcp SYN
//! -> endpoint 25729 flow 0x1c56d86c identity 261->264: 10.11.13.37:40312 -> 10.11.101.61:80 tcp SYN
//! -> stack flow 0x1c56d86c identity 261->2: 10.11.13.37:40312 -> 1.1.1.1:80 tcp SYN
//! CPU 00: MARK 0x1c56d86c FROM 3978 DEBUG: Conntrack lookup: new
//! Lost 12 events
//! ```
//!
//! Traces name their observation point as the 2017 tool did: `<- endpoint N` (the packet
//! left endpoint N, from-container), `-> endpoint N` (delivered to endpoint N,
//! to-container), `-> stack` (from-container handed it to the node's stack); then the flow
//! hash, the identities `source->destination` and the packet summary.
//!
//! Verbose (`-v`) output uses the §6.4 forms: a `-----` separator before every event that
//! carries a packet, a header line, then one line per decoded header (or, with `--hex`, a
//! hexdump instead):
//!
//! ```text
//! -----
//! CPU 00: MARK 0x1c56d86c FROM 3978 DEBUG: 70 bytes Incoming packet from container ifindex 85 identity 284->0
//! CPU 00: MARK 0x1c56d86c FROM 3978 Packet dropped 131 (Invalid destination mac) 70 bytes ifindex=0 284->0
//! 00000000 33 33 00 00 00 02 ae 45 75 73 11 04 86 dd 60 00 |33.....Eus....`.|
//! ```

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use cilium_api::models::MonitorEvent;

use super::abi::{self, Event};

/// Record kind of a drop event.
pub const KIND_DROP: &str = "drop";
/// Record kind of a trace event.
pub const KIND_TRACE: &str = "trace";
/// Record kind of a debug event.
pub const KIND_DEBUG: &str = "debug";
/// Record kind reporting events a reader missed.
pub const KIND_LOST: &str = "lost";
/// A request through the L7 proxy; `message` is its one-line summary.
pub const KIND_L7: &str = "l7";
/// Record kind of an event type this agent does not know.
pub const KIND_UNKNOWN: &str = "unknown";

/// Separator printed before each verbose event that carries a packet (seed §6.4).
pub const VERBOSE_SEPARATOR: &str = "-----";

/// Decodes one datapath event.
pub fn decode(ev: &Event) -> MonitorEvent {
    let packet = ev.packet();
    let dissection = dissect(packet);
    let (kind, message) = match ev.kind {
        abi::EVENT_DROP => (KIND_DROP, drop_reason_text(ev.subtype)),
        abi::EVENT_TRACE => (KIND_TRACE, trace_point(ev)),
        abi::EVENT_DEBUG => (KIND_DEBUG, debug_message(ev)),
        other => (KIND_UNKNOWN, format!("Unknown event type {other}")),
    };
    MonitorEvent {
        kind: kind.to_string(),
        code: ev.subtype,
        message,
        cpu: ev.cpu,
        source: ev.source,
        dst_endpoint: ev.dst_endpoint,
        src_identity: ev.src_identity,
        dst_identity: ev.dst_identity,
        ifindex: ev.ifindex,
        hash: ev.hash,
        length: ev.orig_len,
        summary: dissection.summary,
        layers: dissection.layers,
        data: to_hex(packet),
        lost: 0,
        l7: None,
    }
}

/// The record that tells a reader it missed `n` events.
pub fn lost(n: u64) -> MonitorEvent {
    MonitorEvent {
        kind: KIND_LOST.to_string(),
        message: format!("Lost {n} events"),
        lost: n,
        ..MonitorEvent::default()
    }
}

/// The drop reason text of a code, `Unknown reason N` for codes the datapath does not use.
pub fn drop_reason_text(code: u8) -> String {
    abi::drop_reason(code)
        .map(str::to_string)
        .unwrap_or_else(|| format!("Unknown reason {code}"))
}

/// The name of a trace point.
fn trace_point(ev: &Event) -> String {
    // arg1 of the overlay points: the other node's IPv4 as the packet carries it.
    let node = || std::net::Ipv4Addr::from(u32::from_be(ev.arg1 as u32));
    match ev.subtype {
        abi::TRACE_FROM_LXC => "from-endpoint".to_string(),
        abi::TRACE_TO_LXC => "to-endpoint".to_string(),
        abi::TRACE_TO_STACK => "to-stack".to_string(),
        abi::TRACE_TO_OVERLAY => format!("to-overlay node {}", node()),
        abi::TRACE_FROM_OVERLAY => format!("from-overlay node {}", node()),
        abi::TRACE_TO_PROXY => format!("to-proxy port {}", ev.arg1),
        other => format!("trace point {other}"),
    }
}

/// The message of a debug event, from its code and arguments (see `abi.h`).
fn debug_message(ev: &Event) -> String {
    match ev.subtype {
        abi::DBG_CT_LOOKUP => {
            let result = match ev.arg1 {
                0 => "new".to_string(),
                1 => "established".to_string(),
                2 => "reply".to_string(),
                3 => "related".to_string(),
                n => format!("result {n}"),
            };
            format!("Conntrack lookup: {result}")
        }
        abi::DBG_POLICY => {
            let verdict = match ev.arg2 {
                0 => "denied".to_string(),
                n if n == u64::from(abi::ACTION_ALLOW) => "allowed".to_string(),
                n if n == u64::from(abi::ACTION_REDIRECT) => "redirected to proxy".to_string(),
                n => format!("action {n}"),
            };
            format!("Policy verdict for identity {}: {verdict}", ev.arg1)
        }
        abi::DBG_ICMP6_ND => format!("Handling ICMPv6 type={}", ev.arg1),
        abi::DBG_FRAG => {
            let found = if ev.arg2 == 0 { "not found" } else { "found" };
            format!("Fragment {}: first fragment {found}", ev.arg1)
        }
        abi::DBG_LB => match ev.arg2 {
            0 => format!("Service {}: no backend takes new connections", ev.arg1),
            backend => format!("Service {}: new connection to backend {backend}", ev.arg1),
        },
        abi::DBG_REV_NAT => format!("Service {}: reply source set to the frontend", ev.arg1),
        other => format!(
            "Unknown debug message {other} (arg1={:#x} arg2={:#x})",
            ev.arg1, ev.arg2
        ),
    }
}

/// Lowercase hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes of lowercase or uppercase hex text; stops at the first character pair that is
/// not hex.
fn from_hex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks_exact(2)
        .map_while(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// A hexdump as in seed §6.4: the offset, 16 bytes in hex, the printable ones between bars.
/// A short last line is padded so its ASCII column lines up.
pub fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (n, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}", n * 16);
        for b in chunk {
            let _ = write!(out, " {b:02x}");
        }
        for _ in chunk.len()..16 {
            out.push_str("   ");
        }
        out.push_str(" |");
        out.extend(chunk.iter().map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// The text of a record for `cilium monitor`: one line without `verbose`, the §6.4 block
/// with it (see the module documentation); with `hex`, a hexdump of the captured bytes
/// follows (in verbose mode instead of the decoded headers). No trailing newline.
pub fn format_line(ev: &MonitorEvent, verbose: bool, hex: bool) -> String {
    if ev.kind == KIND_LOST {
        return format!("Lost {} events", ev.lost);
    }
    if ev.kind == KIND_L7 {
        return ev.message.clone();
    }
    let has_packet = !ev.data.is_empty();
    let mut out = String::new();
    if verbose {
        if has_packet && ev.kind != KIND_DEBUG {
            out.push_str(VERBOSE_SEPARATOR);
            out.push('\n');
        }
        out.push_str(&verbose_header(ev));
        if hex {
            push_hexdump(&mut out, ev);
        } else {
            for layer in &ev.layers {
                out.push_str("\n  ");
                out.push_str(layer);
            }
        }
    } else {
        out.push_str(&short_line(ev));
        if hex {
            push_hexdump(&mut out, ev);
        }
    }
    out
}

fn push_hexdump(out: &mut String, ev: &MonitorEvent) {
    let dump = hexdump(&from_hex(&ev.data));
    if !dump.is_empty() {
        out.push('\n');
        out.push_str(dump.trim_end_matches('\n'));
    }
}

/// `: <summary>`, or nothing when no packet was decoded.
fn with_summary(ev: &MonitorEvent) -> String {
    if ev.summary.is_empty() {
        String::new()
    } else {
        format!(": {}", ev.summary)
    }
}

fn cpu_prefix(ev: &MonitorEvent) -> String {
    format!("CPU {:02}: MARK {:#x} FROM {}", ev.cpu, ev.hash, ev.source)
}

/// The one-line form (seed §6.2 for drops).
fn short_line(ev: &MonitorEvent) -> String {
    match ev.kind.as_str() {
        KIND_DROP => format!(
            "xx drop ({}) to endpoint {}, identity {}->{}{}",
            ev.message,
            ev.dst_endpoint,
            ev.src_identity,
            ev.dst_identity,
            with_summary(ev)
        ),
        KIND_TRACE => format!(
            "{} flow {:#x} identity {}->{}{}",
            observation_point(ev),
            ev.hash,
            ev.src_identity,
            ev.dst_identity,
            with_summary(ev)
        ),
        KIND_DEBUG => format!("{} DEBUG: {}", cpu_prefix(ev), ev.message),
        _ => format!(
            "{} {}{}",
            cpu_prefix(ev),
            unknown_message(ev),
            with_summary(ev)
        ),
    }
}

fn unknown_message(ev: &MonitorEvent) -> String {
    if ev.message.is_empty() {
        format!("Unknown event {} code {}", ev.kind, ev.code)
    } else {
        ev.message.clone()
    }
}

/// Where a trace was observed, in the 2017 notation.
fn observation_point(ev: &MonitorEvent) -> String {
    match ev.code {
        abi::TRACE_FROM_LXC => format!("<- endpoint {}", ev.source),
        abi::TRACE_TO_LXC => format!("-> endpoint {}", ev.dst_endpoint),
        abi::TRACE_TO_STACK => "-> stack".to_string(),
        _ => format!("-> {}", ev.message),
    }
}

/// The header line of the verbose form (seed §6.4).
fn verbose_header(ev: &MonitorEvent) -> String {
    let prefix = cpu_prefix(ev);
    match ev.kind.as_str() {
        KIND_DROP => format!(
            "{prefix} Packet dropped {} ({}) {} bytes ifindex={} {}->{}",
            ev.code, ev.message, ev.length, ev.ifindex, ev.src_identity, ev.dst_identity
        ),
        KIND_TRACE => {
            let what = match ev.code {
                abi::TRACE_FROM_LXC => "Incoming packet from container".to_string(),
                abi::TRACE_TO_LXC => format!("Delivery to endpoint {}", ev.dst_endpoint),
                abi::TRACE_TO_STACK => "Delivery to the stack".to_string(),
                abi::TRACE_TO_OVERLAY | abi::TRACE_FROM_OVERLAY => {
                    format!("Overlay: {}", ev.message)
                }
                _ => ev.message.clone(),
            };
            format!(
                "{prefix} DEBUG: {} bytes {what} ifindex {} identity {}->{}",
                ev.length, ev.ifindex, ev.src_identity, ev.dst_identity
            )
        }
        KIND_DEBUG => format!("{prefix} DEBUG: {}", ev.message),
        _ => format!("{prefix} {}", unknown_message(ev)),
    }
}

// ---- Packet dissection ----

/// What the dissector made of the captured bytes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Dissection {
    /// One line, e.g. `10.11.13.37 -> 10.11.101.61 EchoRequest`; empty without data.
    summary: String,
    /// One line per decoded header.
    layers: Vec<String>,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_IPV6: u16 = 0x86dd;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;

/// IPv6 extension headers followed before giving up (a loop guard).
const MAX_EXT_HEADERS: usize = 16;

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?))
}

fn be32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

fn mac(p: &[u8]) -> String {
    p.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ipv4_at(p: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = p.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn ipv6_at(p: &[u8], at: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = p.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

fn ethertype_name(t: u16) -> String {
    match t {
        ETH_P_IP => "IPv4".to_string(),
        ETH_P_IPV6 => "IPv6".to_string(),
        ETH_P_ARP => "ARP".to_string(),
        ETH_P_8021Q => "802.1Q".to_string(),
        ETH_P_8021AD => "802.1ad".to_string(),
        0x88cc => "LLDP".to_string(),
        t => format!("0x{t:04x}"),
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        IPPROTO_HOPOPTS => "HopByHop".to_string(),
        IPPROTO_ICMP => "ICMP".to_string(),
        2 => "IGMP".to_string(),
        4 => "IPIP".to_string(),
        IPPROTO_TCP => "TCP".to_string(),
        IPPROTO_UDP => "UDP".to_string(),
        41 => "IPv6".to_string(),
        IPPROTO_ROUTING => "Routing".to_string(),
        IPPROTO_FRAGMENT => "Fragment".to_string(),
        47 => "GRE".to_string(),
        IPPROTO_ESP => "ESP".to_string(),
        IPPROTO_AH => "AH".to_string(),
        IPPROTO_ICMPV6 => "ICMPv6".to_string(),
        IPPROTO_NONE => "NoNextHeader".to_string(),
        IPPROTO_DSTOPTS => "DestinationOptions".to_string(),
        IPPROTO_SCTP => "SCTP".to_string(),
        p => format!("proto {p}"),
    }
}

/// Dissects a packet captured from its Ethernet header.
fn dissect(data: &[u8]) -> Dissection {
    let mut d = Dissection::default();
    if data.is_empty() {
        return d;
    }
    if data.len() < ETH_HLEN {
        d.summary = format!(
            "truncated Ethernet header ({} of {ETH_HLEN} bytes)",
            data.len()
        );
        d.layers.push(d.summary.clone());
        return d;
    }
    let dst = mac(&data[0..6]);
    let src = mac(&data[6..12]);
    let mut ethertype = be16(data, 12).unwrap_or_default();
    d.layers.push(format!(
        "Ethernet {src} -> {dst} type {}",
        ethertype_name(ethertype)
    ));
    let mut off = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let (Some(tci), Some(inner)) = (be16(data, off), be16(data, off + 2)) else {
            d.summary = format!("{src} -> {dst} truncated VLAN tag");
            d.layers.push("VLAN tag truncated".to_string());
            return d;
        };
        d.layers.push(format!(
            "VLAN {} pcp {} type {}",
            tci & 0x0fff,
            tci >> 13,
            ethertype_name(inner)
        ));
        ethertype = inner;
        off += 4;
    }
    let payload = &data[off..];
    match ethertype {
        ETH_P_IP => ipv4(payload, &mut d),
        ETH_P_IPV6 => ipv6(payload, &mut d),
        ETH_P_ARP => arp(payload, &mut d),
        other => d.summary = format!("{src} -> {dst} {}", ethertype_name(other)),
    }
    d
}

fn arp(p: &[u8], d: &mut Dissection) {
    const ARP_LEN: usize = 28;
    let (Some(htype), Some(ptype), Some(op)) = (be16(p, 0), be16(p, 2), be16(p, 6)) else {
        d.summary = format!("ARP, truncated header ({} of {ARP_LEN} bytes)", p.len());
        d.layers.push(d.summary.clone());
        return;
    };
    let (hlen, plen) = (p[4], p[5]);
    if htype != 1 || ptype != ETH_P_IP || hlen != 6 || plen != 4 {
        d.summary = format!(
            "ARP opcode {op} (hardware type {htype}, protocol {})",
            ethertype_name(ptype)
        );
        d.layers.push(d.summary.clone());
        return;
    }
    let (Some(spa), Some(tpa)) = (ipv4_at(p, 14), ipv4_at(p, 24)) else {
        d.summary = format!("ARP, truncated header ({} of {ARP_LEN} bytes)", p.len());
        d.layers.push(d.summary.clone());
        return;
    };
    let sha = mac(&p[8..14]);
    let tha = mac(&p[18..24]);
    let (summary, layer) = match op {
        1 => (
            format!("ARP request who-has {tpa} tell {spa}"),
            format!("ARP request who-has {tpa} tell {spa} ({sha})"),
        ),
        2 => (
            format!("ARP reply {spa} is-at {sha}"),
            format!("ARP reply {spa} is-at {sha} to {tpa} ({tha})"),
        ),
        op => (
            format!("ARP opcode {op} {spa} -> {tpa}"),
            format!("ARP opcode {op} {spa} ({sha}) -> {tpa} ({tha})"),
        ),
    };
    d.summary = summary;
    d.layers.push(layer);
}

fn ipv4(p: &[u8], d: &mut Dissection) {
    const MIN: usize = 20;
    let (Some(first), Some(src), Some(dst)) = (p.first(), ipv4_at(p, 12), ipv4_at(p, 16)) else {
        d.summary = format!("IPv4, truncated header ({} of {MIN} bytes)", p.len());
        d.layers.push(d.summary.clone());
        return;
    };
    let version = first >> 4;
    let ihl = usize::from(first & 0x0f) * 4;
    if version != 4 || ihl < MIN {
        d.summary = format!("{src} -> {dst} invalid IPv4 header (version {version}, length {ihl})");
        d.layers.push(d.summary.clone());
        return;
    }
    let total_len = be16(p, 2).unwrap_or_default();
    let id = be16(p, 4).unwrap_or_default();
    let frag = be16(p, 6).unwrap_or_default();
    let (ttl, proto) = (p[8], p[9]);
    let offset = (frag & 0x1fff) * 8;
    let mut flags = Vec::new();
    if frag & 0x4000 != 0 {
        flags.push("DF");
    }
    if frag & 0x2000 != 0 {
        flags.push("MF");
    }
    let mut layer = format!(
        "IPv4 {src} -> {dst} proto {} ttl {ttl} id {id} len {total_len}",
        protocol_name(proto)
    );
    if !flags.is_empty() {
        let _ = write!(layer, " flags {}", flags.join(","));
    }
    if offset != 0 {
        let _ = write!(layer, " frag-offset {offset}");
    }
    if ihl > MIN {
        let _ = write!(layer, " options {} bytes", ihl - MIN);
    }
    d.layers.push(layer);
    let proto_lc = protocol_name(proto).to_ascii_lowercase();
    if p.len() < ihl {
        d.summary = format!("{src} -> {dst} {proto_lc} (truncated IPv4 options)");
        return;
    }
    if offset != 0 {
        d.summary = format!("{src} -> {dst} {proto_lc} fragment id {id} offset {offset}");
        return;
    }
    // Ethernet pads short frames: the IP length says where the packet ends.
    let end = usize::from(total_len).clamp(ihl, p.len());
    transport(IpAddr::V4(src), IpAddr::V4(dst), proto, &p[ihl..end], d);
}

fn ipv6(p: &[u8], d: &mut Dissection) {
    const MIN: usize = 40;
    let (Some(word), Some(src), Some(dst)) = (be32(p, 0), ipv6_at(p, 8), ipv6_at(p, 24)) else {
        d.summary = format!("IPv6, truncated header ({} of {MIN} bytes)", p.len());
        d.layers.push(d.summary.clone());
        return;
    };
    let version = word >> 28;
    if version != 6 {
        d.summary = format!("{src} -> {dst} invalid IPv6 header (version {version})");
        d.layers.push(d.summary.clone());
        return;
    }
    let payload_len = be16(p, 4).unwrap_or_default();
    let (mut next, hlim) = (p[6], p[7]);
    d.layers.push(format!(
        "IPv6 {src} -> {dst} next {} hlim {hlim} len {payload_len} flowlabel {:#x}",
        protocol_name(next),
        word & 0x000f_ffff
    ));
    // Ethernet pads short frames; a payload length of 0 (a jumbogram) says nothing.
    let end = match payload_len {
        0 => p.len(),
        n => (MIN + usize::from(n)).min(p.len()),
    };
    let p = &p[..end];
    let mut off = MIN;
    let truncated = |d: &mut Dissection, what: &str| {
        d.summary = format!("{src} -> {dst} (truncated {what} header)");
    };
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | 135 | 139 | 140 | IPPROTO_AH => {
                let name = protocol_name(next);
                let (Some(&nh), Some(&len)) = (p.get(off), p.get(off + 1)) else {
                    truncated(d, &name);
                    return;
                };
                let size = if next == IPPROTO_AH {
                    (usize::from(len) + 2) * 4
                } else {
                    (usize::from(len) + 1) * 8
                };
                d.layers.push(format!(
                    "IPv6 {name} header {size} bytes next {}",
                    protocol_name(nh)
                ));
                next = nh;
                off += size;
                if off > p.len() {
                    truncated(d, &name);
                    return;
                }
            }
            IPPROTO_FRAGMENT => {
                let (Some(&nh), Some(field), Some(id)) =
                    (p.get(off), be16(p, off + 2), be32(p, off + 4))
                else {
                    truncated(d, "Fragment");
                    return;
                };
                let offset = field & 0xfff8;
                let more = if field & 1 != 0 { " more" } else { "" };
                d.layers.push(format!(
                    "IPv6 Fragment header id {id} offset {offset}{more} next {}",
                    protocol_name(nh)
                ));
                next = nh;
                off += 8;
                if offset != 0 {
                    d.summary = format!(
                        "{src} -> {dst} {} fragment id {id} offset {offset}",
                        protocol_name(next).to_ascii_lowercase()
                    );
                    return;
                }
            }
            _ => break,
        }
    }
    transport(
        IpAddr::V6(src),
        IpAddr::V6(dst),
        next,
        p.get(off..).unwrap_or_default(),
        d,
    );
}

/// The L4 header after an IP header.
fn transport(src: IpAddr, dst: IpAddr, proto: u8, p: &[u8], d: &mut Dissection) {
    let ports = || Some((be16(p, 0)?, be16(p, 2)?));
    let with_ports = |sport, dport| {
        format!(
            "{} -> {}",
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport)
        )
    };
    match proto {
        IPPROTO_TCP => {
            let Some((sport, dport)) = ports() else {
                d.summary = format!("{src} -> {dst} tcp (truncated)");
                return;
            };
            let (Some(seq), Some(ack), Some(&off_byte), Some(&flag_byte), Some(win)) =
                (be32(p, 4), be32(p, 8), p.get(12), p.get(13), be16(p, 14))
            else {
                d.summary = format!("{} tcp (truncated)", with_ports(sport, dport));
                d.layers
                    .push(format!("TCP {sport} -> {dport} (truncated header)"));
                return;
            };
            let flags = tcp_flags(flag_byte);
            d.summary = if flags.is_empty() {
                format!("{} tcp", with_ports(sport, dport))
            } else {
                format!("{} tcp {}", with_ports(sport, dport), flags.join(", "))
            };
            let mut layer = format!(
                "TCP {sport} -> {dport} seq {seq} ack {ack} win {win} flags {}",
                if flags.is_empty() {
                    "none".to_string()
                } else {
                    flags.join(",")
                }
            );
            let header_len = usize::from(off_byte >> 4) * 4;
            if header_len > 20 {
                let _ = write!(layer, " options {} bytes", header_len - 20);
            }
            d.layers.push(layer);
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let name = protocol_name(proto);
            let lc = name.to_ascii_lowercase();
            let Some((sport, dport)) = ports() else {
                d.summary = format!("{src} -> {dst} {lc} (truncated)");
                return;
            };
            d.summary = format!("{} {lc}", with_ports(sport, dport));
            let mut layer = format!("{name} {sport} -> {dport}");
            if proto == IPPROTO_UDP {
                match be16(p, 4) {
                    Some(len) => {
                        let _ = write!(layer, " len {len}");
                    }
                    None => layer.push_str(" (truncated header)"),
                }
            }
            d.layers.push(layer);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let v6 = proto == IPPROTO_ICMPV6;
            let name = if v6 { "ICMPv6" } else { "ICMPv4" };
            let (Some(&ty), Some(&code)) = (p.first(), p.get(1)) else {
                d.summary = format!("{src} -> {dst} {name} (truncated)");
                return;
            };
            let type_code = if v6 {
                icmp6_type_code(ty, code)
            } else {
                icmp4_type_code(ty, code)
            };
            d.summary = format!("{src} -> {dst} {type_code}");
            let mut layer = format!("{name} {type_code}");
            let echo = if v6 {
                matches!(ty, 128 | 129)
            } else {
                matches!(ty, 0 | 8)
            };
            if echo {
                if let (Some(id), Some(seq)) = (be16(p, 4), be16(p, 6)) {
                    let _ = write!(layer, " id {id} seq {seq}");
                }
            }
            if v6 && matches!(ty, 135..=137) {
                if let Some(target) = ipv6_at(p, 8) {
                    let _ = write!(layer, " target {target}");
                }
            }
            d.layers.push(layer);
        }
        IPPROTO_NONE => d.summary = format!("{src} -> {dst} no next header"),
        other => {
            let name = protocol_name(other);
            d.summary = format!("{src} -> {dst} {}", name.to_ascii_lowercase());
            if !p.is_empty() {
                d.layers.push(format!("{name} payload {} bytes", p.len()));
            }
        }
    }
}

fn tcp_flags(byte: u8) -> Vec<&'static str> {
    [
        (0x02, "SYN"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ]
    .into_iter()
    .filter(|(bit, _)| byte & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// `Name` for types whose code is 0 or not worth naming, `Name(Code)` otherwise, in the
/// notation of the 2017 tool (gopacket's).
fn with_code(name: &str, code: u8, code_name: Option<&str>) -> String {
    match (code, code_name) {
        (_, Some(c)) => format!("{name}({c})"),
        (0, None) => name.to_string(),
        (c, None) => format!("{name}(Code {c})"),
    }
}

fn icmp4_type_code(ty: u8, code: u8) -> String {
    let name = match ty {
        0 => "EchoReply",
        3 => "DestinationUnreachable",
        4 => "SourceQuench",
        5 => "Redirect",
        8 => "EchoRequest",
        9 => "RouterAdvertisement",
        10 => "RouterSolicitation",
        11 => "TimeExceeded",
        12 => "ParameterProblem",
        13 => "TimestampRequest",
        14 => "TimestampReply",
        15 => "InfoRequest",
        16 => "InfoReply",
        17 => "AddressMaskRequest",
        18 => "AddressMaskReply",
        _ => return format!("ICMPv4Type({ty}, code {code})"),
    };
    let code_name = match (ty, code) {
        (3, 0) => Some("Net"),
        (3, 1) => Some("Host"),
        (3, 2) => Some("Protocol"),
        (3, 3) => Some("Port"),
        (3, 4) => Some("FragmentationNeeded"),
        (3, 5) => Some("SourceRoutingFailed"),
        (3, 13) => Some("CommAdminProhibited"),
        (11, 0) => Some("TTLExceeded"),
        (11, 1) => Some("FragmentReassemblyTimeExceeded"),
        _ => None,
    };
    with_code(name, code, code_name)
}

fn icmp6_type_code(ty: u8, code: u8) -> String {
    let name = match ty {
        1 => "DestinationUnreachable",
        2 => "PacketTooBig",
        3 => "TimeExceeded",
        4 => "ParameterProblem",
        128 => "EchoRequest",
        129 => "EchoReply",
        130 => "MulticastListenerQuery",
        131 => "MulticastListenerReport",
        132 => "MulticastListenerDone",
        133 => "RouterSolicitation",
        134 => "RouterAdvertisement",
        135 => "NeighborSolicitation",
        136 => "NeighborAdvertisement",
        137 => "Redirect",
        143 => "MulticastListenerReportV2",
        _ => return format!("ICMPv6Type({ty}, code {code})"),
    };
    let code_name = match (ty, code) {
        (1, 0) => Some("NoRouteToDst"),
        (1, 1) => Some("AdminProhibited"),
        (1, 3) => Some("AddressUnreachable"),
        (1, 4) => Some("PortUnreachable"),
        (3, 0) => Some("HopLimitExceeded"),
        (3, 1) => Some("FragmentReassemblyTimeExceeded"),
        _ => None,
    };
    with_code(name, code, code_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC_MAC: [u8; 6] = [0xae, 0x45, 0x75, 0x73, 0x11, 0x04];
    const DST_MAC: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x02];

    fn ether(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = DST_MAC.to_vec();
        p.extend_from_slice(&SRC_MAC);
        p.extend_from_slice(&ethertype.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x67, 0x40, 0x00, 64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        h
    }

    fn ipv6_header(src: &str, dst: &str, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 255]);
        h.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(payload);
        h
    }

    fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&1000u32.to_be_bytes());
        t.extend_from_slice(&0u32.to_be_bytes());
        t.extend_from_slice(&[0x50, 0x02, 0x72, 0x10, 0, 0, 0, 0]);
        t
    }

    fn icmp_echo_request() -> Vec<u8> {
        vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 2, b'p', b'i', b'n', b'g']
    }

    fn tcp_syn_v4() -> Vec<u8> {
        ether(
            ETH_P_IP,
            &ipv4_header(
                [10, 11, 13, 37],
                [10, 11, 101, 61],
                IPPROTO_TCP,
                &tcp_syn(40312, 80),
            ),
        )
    }

    fn echo_v4() -> Vec<u8> {
        ether(
            ETH_P_IP,
            &ipv4_header(
                [10, 11, 13, 37],
                [10, 11, 101, 61],
                IPPROTO_ICMP,
                &icmp_echo_request(),
            ),
        )
    }

    /// The router solicitation of seed §6.4 (70 bytes).
    fn router_solicitation() -> Vec<u8> {
        let icmp = [
            0x85, 0x00, 0x15, 0xb4, 0, 0, 0, 0, 0x01, 0x01, 0xae, 0x45, 0x75, 0x73, 0x11, 0x04,
        ];
        ether(
            ETH_P_IPV6,
            &ipv6_header(
                "fe80::ac45:75ff:fe73:1104",
                "ff02::2",
                IPPROTO_ICMPV6,
                &icmp,
            ),
        )
    }

    fn event(kind: u8, subtype: u8, packet: &[u8]) -> Event {
        let mut data = [0u8; abi::EVENT_DATA_LEN];
        let n = packet.len().min(abi::EVENT_DATA_LEN);
        data[..n].copy_from_slice(&packet[..n]);
        Event {
            kind,
            subtype,
            source: 3978,
            cpu: 0,
            ifindex: 0,
            orig_len: packet.len() as u32,
            cap_len: n as u32,
            src_identity: 261,
            dst_identity: 264,
            dst_endpoint: 25729,
            pad: 0,
            hash: 0x1c56_d86c,
            pad2: 0,
            arg1: 0,
            arg2: 0,
            data,
        }
    }

    #[test]
    fn tcp_syn_v4_summary_and_layers() {
        let d = dissect(&tcp_syn_v4());
        assert_eq!(d.summary, "10.11.13.37:40312 -> 10.11.101.61:80 tcp SYN");
        assert_eq!(
            d.layers,
            vec![
                "Ethernet ae:45:75:73:11:04 -> 33:33:00:00:00:02 type IPv4",
                "IPv4 10.11.13.37 -> 10.11.101.61 proto TCP ttl 64 id 4711 len 40 flags DF",
                "TCP 40312 -> 80 seq 1000 ack 0 win 29200 flags SYN",
            ]
        );
    }

    #[test]
    fn tcp_flag_combinations() {
        let mut syn_ack = tcp_syn(80, 40312);
        syn_ack[13] = 0x12;
        let p = ether(
            ETH_P_IP,
            &ipv4_header([10, 0, 0, 2], [10, 0, 0, 1], IPPROTO_TCP, &syn_ack),
        );
        assert_eq!(
            dissect(&p).summary,
            "10.0.0.2:80 -> 10.0.0.1:40312 tcp SYN, ACK"
        );
        assert_eq!(tcp_flags(0x19), vec!["FIN", "PSH", "ACK"]);
        assert_eq!(tcp_flags(0x04), vec!["RST"]);
    }

    #[test]
    fn icmp_echo_and_the_seed_drop_line() {
        let mut ev = event(abi::EVENT_DROP, 133, &echo_v4());
        ev.source = 0;
        let record = decode(&ev);
        assert_eq!(record.kind, "drop");
        assert_eq!(record.message, "Policy denied (L3)");
        assert_eq!(record.summary, "10.11.13.37 -> 10.11.101.61 EchoRequest");
        assert_eq!(
            format_line(&record, false, false),
            "xx drop (Policy denied (L3)) to endpoint 25729, identity 261->264: \
             10.11.13.37 -> 10.11.101.61 EchoRequest"
        );
        assert!(record.layers[2].starts_with("ICMPv4 EchoRequest id 1 seq 2"));
        assert_eq!(record.data, to_hex(&echo_v4()));
    }

    #[test]
    fn icmpv6_router_solicitation_verbose_hex_is_the_seed_block() {
        let mut ev = event(abi::EVENT_DROP, 131, &router_solicitation());
        ev.src_identity = 284;
        ev.dst_identity = 0;
        ev.dst_endpoint = 0;
        ev.hash = 0x1c56d86c;
        let record = decode(&ev);
        assert_eq!(record.length, 70);
        assert_eq!(
            record.summary,
            "fe80::ac45:75ff:fe73:1104 -> ff02::2 RouterSolicitation"
        );
        assert_eq!(
            format_line(&record, false, false),
            "xx drop (Invalid destination mac) to endpoint 0, identity 284->0: \
             fe80::ac45:75ff:fe73:1104 -> ff02::2 RouterSolicitation"
        );
        assert_eq!(
            format_line(&record, true, true),
            "-----\n\
             CPU 00: MARK 0x1c56d86c FROM 3978 Packet dropped 131 (Invalid destination mac) \
             70 bytes ifindex=0 284->0\n\
             00000000 33 33 00 00 00 02 ae 45 75 73 11 04 86 dd 60 00 |33.....Eus....`.|\n\
             00000010 00 00 00 10 3a ff fe 80 00 00 00 00 00 00 ac 45 |....:..........E|\n\
             00000020 75 ff fe 73 11 04 ff 02 00 00 00 00 00 00 00 00 |u..s............|\n\
             00000030 00 00 00 00 00 02 85 00 15 b4 00 00 00 00 01 01 |................|\n\
             00000040 ae 45 75 73 11 04                               |.Eus..|"
        );
        let verbose = format_line(&record, true, false);
        assert_eq!(
            verbose.lines().collect::<Vec<_>>()[2..],
            [
                "  Ethernet ae:45:75:73:11:04 -> 33:33:00:00:00:02 type IPv6",
                "  IPv6 fe80::ac45:75ff:fe73:1104 -> ff02::2 next ICMPv6 hlim 255 len 16 \
                 flowlabel 0x0",
                "  ICMPv6 RouterSolicitation",
            ]
        );
    }

    #[test]
    fn traces_and_debug_messages() {
        let mut ev = event(abi::EVENT_TRACE, abi::TRACE_TO_LXC, &tcp_syn_v4());
        ev.ifindex = 86;
        let r = decode(&ev);
        assert_eq!(r.message, "to-endpoint");
        assert_eq!(
            format_line(&r, false, false),
            "-> endpoint 25729 flow 0x1c56d86c identity 261->264: \
             10.11.13.37:40312 -> 10.11.101.61:80 tcp SYN"
        );
        assert_eq!(
            format_line(&r, true, true).lines().nth(1).unwrap(),
            "CPU 00: MARK 0x1c56d86c FROM 3978 DEBUG: 54 bytes Delivery to endpoint 25729 \
             ifindex 86 identity 261->264"
        );
        ev.subtype = abi::TRACE_FROM_LXC;
        ev.ifindex = 85;
        let r = decode(&ev);
        assert_eq!(r.message, "from-endpoint");
        assert!(format_line(&r, false, false).starts_with("<- endpoint 3978 flow 0x1c56d86c"));
        assert!(format_line(&r, true, false).contains(
            "FROM 3978 DEBUG: 54 bytes Incoming packet from container ifindex 85 identity"
        ));
        ev.subtype = abi::TRACE_TO_STACK;
        assert!(format_line(&decode(&ev), false, false).starts_with("-> stack flow 0x1c56d86c"));

        let debug = |subtype, arg1, arg2| {
            let mut ev = event(abi::EVENT_DEBUG, subtype, &[]);
            ev.arg1 = arg1;
            ev.arg2 = arg2;
            decode(&ev)
        };
        assert_eq!(
            debug(abi::DBG_CT_LOOKUP, 0, 0).message,
            "Conntrack lookup: new"
        );
        assert_eq!(
            debug(abi::DBG_CT_LOOKUP, 2, 0).message,
            "Conntrack lookup: reply"
        );
        assert_eq!(
            debug(abi::DBG_POLICY, 261, 0).message,
            "Policy verdict for identity 261: denied"
        );
        assert_eq!(
            debug(abi::DBG_POLICY, 261, 1).message,
            "Policy verdict for identity 261: allowed"
        );
        let nd = debug(abi::DBG_ICMP6_ND, 135, 0);
        assert_eq!(nd.message, "Handling ICMPv6 type=135");
        assert_eq!(nd.summary, "");
        assert_eq!(
            format_line(&nd, true, true),
            "CPU 00: MARK 0x1c56d86c FROM 3978 DEBUG: Handling ICMPv6 type=135"
        );
        assert_eq!(
            format_line(&nd, false, false),
            "CPU 00: MARK 0x1c56d86c FROM 3978 DEBUG: Handling ICMPv6 type=135"
        );
        assert_eq!(
            debug(abi::DBG_FRAG, 4711, 0).message,
            "Fragment 4711: first fragment not found"
        );
        assert_eq!(
            debug(abi::DBG_LB, 7, 12).message,
            "Service 7: new connection to backend 12"
        );
        assert_eq!(
            debug(abi::DBG_LB, 7, 0).message,
            "Service 7: no backend takes new connections"
        );
        assert_eq!(
            debug(abi::DBG_REV_NAT, 7, 0).message,
            "Service 7: reply source set to the frontend"
        );
        assert_eq!(
            debug(99, 1, 2).message,
            "Unknown debug message 99 (arg1=0x1 arg2=0x2)"
        );
        assert_eq!(decode(&event(9, 1, &[])).kind, "unknown");
        assert_eq!(decode(&event(1, 200, &[])).message, "Unknown reason 200");
    }

    #[test]
    fn lost_records() {
        let r = lost(12);
        assert_eq!((r.kind.as_str(), r.lost), ("lost", 12));
        assert_eq!(format_line(&r, false, false), "Lost 12 events");
        assert_eq!(format_line(&r, true, true), "Lost 12 events");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""type":"lost""#), "{json}");
        assert!(json.contains(r#""lost":12"#), "{json}");
    }

    #[test]
    fn arp_request_and_reply() {
        let mut arp_req = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp_req.extend_from_slice(&SRC_MAC);
        arp_req.extend_from_slice(&[10, 0, 0, 1]);
        arp_req.extend_from_slice(&[0; 6]);
        arp_req.extend_from_slice(&[10, 0, 0, 2]);
        let d = dissect(&ether(ETH_P_ARP, &arp_req));
        assert_eq!(d.summary, "ARP request who-has 10.0.0.2 tell 10.0.0.1");
        assert_eq!(
            d.layers[1],
            "ARP request who-has 10.0.0.2 tell 10.0.0.1 (ae:45:75:73:11:04)"
        );
        let mut reply = arp_req.clone();
        reply[7] = 2;
        assert_eq!(
            dissect(&ether(ETH_P_ARP, &reply)).summary,
            "ARP reply 10.0.0.1 is-at ae:45:75:73:11:04"
        );
    }

    #[test]
    fn ipv6_with_hop_by_hop_and_ports() {
        // A hop-by-hop header (8 bytes: next = TCP, len 0, router alert option + padding).
        let mut payload = vec![IPPROTO_TCP, 0, 5, 2, 0, 0, 1, 0];
        payload.extend_from_slice(&tcp_syn(40000, 80));
        let p = ether(
            ETH_P_IPV6,
            &ipv6_header("fd02::1", "fd02::2", IPPROTO_HOPOPTS, &payload),
        );
        let d = dissect(&p);
        assert_eq!(d.summary, "[fd02::1]:40000 -> [fd02::2]:80 tcp SYN");
        assert_eq!(d.layers[2], "IPv6 HopByHop header 8 bytes next TCP");
        assert!(d.layers[3].starts_with("TCP 40000 -> 80"), "{:?}", d.layers);
    }

    #[test]
    fn ipv6_later_fragment_has_no_ports() {
        let frag = [IPPROTO_UDP, 0, 0x05, 0x08, 0, 0, 0x12, 0x67];
        let p = ether(
            ETH_P_IPV6,
            &ipv6_header("fd02::1", "fd02::2", IPPROTO_FRAGMENT, &frag),
        );
        assert_eq!(
            dissect(&p).summary,
            "fd02::1 -> fd02::2 udp fragment id 4711 offset 1288"
        );
    }

    #[test]
    fn ipv4_options_and_fragments() {
        let udp = [0x00, 0x35, 0x9c, 0x40, 0, 12, 0, 0, 1, 2, 3, 4];
        let mut ip = ipv4_header([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP, &[]);
        ip[0] = 0x46; // one 4-byte option
        ip.extend_from_slice(&[1, 1, 1, 0]);
        ip.extend_from_slice(&udp);
        let total = ip.len() as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let d = dissect(&ether(ETH_P_IP, &ip));
        assert_eq!(d.summary, "10.0.0.1:53 -> 10.0.0.2:40000 udp");
        assert!(d.layers[1].ends_with("options 4 bytes"), "{:?}", d.layers);
        assert_eq!(d.layers[2], "UDP 53 -> 40000 len 12");

        let mut later = ipv4_header([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP, &udp);
        later[6..8].copy_from_slice(&0x0005u16.to_be_bytes());
        assert_eq!(
            dissect(&ether(ETH_P_IP, &later)).summary,
            "10.0.0.1 -> 10.0.0.2 udp fragment id 4711 offset 40"
        );
    }

    #[test]
    fn vlan_tagged_frame() {
        let inner = ipv4_header(
            [10, 11, 13, 37],
            [10, 11, 101, 61],
            IPPROTO_ICMP,
            &icmp_echo_request(),
        );
        let mut tagged = vec![0x20, 0x64]; // pcp 1, vid 100
        tagged.extend_from_slice(&ETH_P_IP.to_be_bytes());
        tagged.extend_from_slice(&inner);
        let d = dissect(&ether(ETH_P_8021Q, &tagged));
        assert_eq!(d.summary, "10.11.13.37 -> 10.11.101.61 EchoRequest");
        assert_eq!(
            d.layers[0],
            "Ethernet ae:45:75:73:11:04 -> 33:33:00:00:00:02 type 802.1Q"
        );
        assert_eq!(d.layers[1], "VLAN 100 pcp 1 type IPv4");
    }

    #[test]
    fn other_icmp_types_and_ethertypes() {
        let unreachable = [3, 3, 0, 0, 0, 0, 0, 0];
        let p = ether(
            ETH_P_IP,
            &ipv4_header([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_ICMP, &unreachable),
        );
        assert_eq!(
            dissect(&p).summary,
            "10.0.0.1 -> 10.0.0.2 DestinationUnreachable(Port)"
        );
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&"fd02::8ad6".parse::<Ipv6Addr>().unwrap().octets());
        let p = ether(
            ETH_P_IPV6,
            &ipv6_header("fe80::1", "ff02::1:ff00:8ad6", IPPROTO_ICMPV6, &ns),
        );
        let d = dissect(&p);
        assert_eq!(
            d.summary,
            "fe80::1 -> ff02::1:ff00:8ad6 NeighborSolicitation"
        );
        assert_eq!(d.layers[2], "ICMPv6 NeighborSolicitation target fd02::8ad6");
        assert_eq!(icmp6_type_code(136, 0), "NeighborAdvertisement");
        assert_eq!(icmp6_type_code(129, 0), "EchoReply");
        assert_eq!(icmp4_type_code(0, 0), "EchoReply");
        assert_eq!(icmp4_type_code(42, 1), "ICMPv4Type(42, code 1)");
        assert_eq!(
            dissect(&ether(0x88cc, &[1, 2, 3])).summary,
            "ae:45:75:73:11:04 -> 33:33:00:00:00:02 LLDP"
        );
    }

    #[test]
    fn truncation_at_every_length_never_panics() {
        let mut hbh = vec![IPPROTO_TCP, 0, 5, 2, 0, 0, 1, 0];
        hbh.extend_from_slice(&tcp_syn(40000, 80));
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&[0; 20]);
        let mut vlan = vec![0, 100];
        vlan.extend_from_slice(&ETH_P_IP.to_be_bytes());
        vlan.extend_from_slice(&ipv4_header([1; 4], [2; 4], IPPROTO_UDP, &[0; 8]));
        let packets = [
            tcp_syn_v4(),
            echo_v4(),
            router_solicitation(),
            ether(
                ETH_P_IPV6,
                &ipv6_header("fd02::1", "fd02::2", IPPROTO_HOPOPTS, &hbh),
            ),
            ether(ETH_P_ARP, &arp),
            ether(ETH_P_8021Q, &vlan),
        ];
        for packet in &packets {
            let full = dissect(packet);
            for len in 0..packet.len() {
                let d = dissect(&packet[..len]);
                if len == 0 {
                    assert_eq!(d, Dissection::default());
                    continue;
                }
                assert!(!d.summary.is_empty(), "len {len} of {}", full.summary);
                assert!(!d.summary.contains('\n'));
                assert!(d.layers.len() <= full.layers.len(), "len {len}: {d:?}");
            }
            // Captured bytes run out before the packet does: the event says so.
            let mut ev = event(abi::EVENT_DROP, 133, packet);
            ev.cap_len = 20;
            let r = decode(&ev);
            assert_eq!(r.data.len(), 40);
            assert!(!r.summary.is_empty());
        }
        assert_eq!(
            dissect(&tcp_syn_v4()[..20]).summary,
            "IPv4, truncated header (6 of 20 bytes)"
        );
        assert_eq!(
            dissect(&tcp_syn_v4()[..40]).summary,
            "10.11.13.37:40312 -> 10.11.101.61:80 tcp (truncated)"
        );
        assert_eq!(
            dissect(&tcp_syn_v4()[..5]).summary,
            "truncated Ethernet header (5 of 14 bytes)"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic generator over every ethertype and protocol of interest.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..4000 {
            let len = (next() % 129) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if p.len() >= 14 {
                let t = [ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q][i % 4];
                p[12..14].copy_from_slice(&t.to_be_bytes());
            }
            if p.len() > 14 {
                p[14] = [0x45, 0x4f, 0x60, 0x41][i % 4];
            }
            let _ = dissect(&p);
        }
    }

    #[test]
    fn hexdump_format() {
        assert_eq!(hexdump(&[]), "");
        assert_eq!(
            hexdump(b"ab\x00"),
            "00000000 61 62 00                                        |ab.|\n"
        );
        assert_eq!(from_hex("33330a"), vec![0x33, 0x33, 0x0a]);
        assert_eq!(from_hex("33zz0a"), vec![0x33]);
    }
}
