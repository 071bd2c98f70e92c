//! The layout shared with the datapath programs, mirroring `bpf-programs/include/abi.h` byte
//! for byte (the C side asserts the same sizes). Addresses and ports are in network order as
//! in the packet; other integers in host order.

#![allow(missing_docs)]

/// Bumped with every layout change of a map key or value.
pub const DATAPATH_ABI: u32 = 3;

pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

pub const EP_F_POLICY_INGRESS: u16 = 0x1;
pub const EP_F_POLICY_EGRESS: u16 = 0x2;
pub const EP_F_DEBUG: u16 = 0x4;

pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_REDIRECT: u8 = 2;
pub const ACTION_L4_ONLY: u8 = 3;

pub const CT_INGRESS: u8 = 1;
pub const CT_EGRESS: u8 = 2;
/// A connection to a service frontend as the client sent it: `rev_nat` = the service id,
/// `backend_id` = its backend.
pub const CT_SERVICE: u8 = 3;
pub const CT_F_SEEN_REPLY: u16 = 0x1;
pub const CT_F_TX_CLOSING: u16 = 0x2;
pub const CT_F_RX_CLOSING: u16 = 0x4;

pub const CFG_F_DEBUG: u32 = 0x1;

pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 2;
pub const EVENT_DEBUG: u8 = 3;
pub const TRACE_FROM_LXC: u8 = 1;
pub const TRACE_TO_LXC: u8 = 2;
pub const TRACE_TO_STACK: u8 = 3;
pub const TRACE_TO_OVERLAY: u8 = 4;
pub const TRACE_FROM_OVERLAY: u8 = 5;
pub const TRACE_TO_PROXY: u8 = 6;
/// skb->mark magic of packets from-overlay hands to an endpoint (bits 8-11).
pub const MARK_MAGIC_OVERLAY: u32 = 0x0D00;
/// skb->mark magic of packets the datapath steers to the L7 proxy; the agent's policy routing
/// rule (fwmark `MARK_MAGIC_TO_PROXY/MARK_MAGIC_MASK`) delivers them locally.
pub const MARK_MAGIC_TO_PROXY: u32 = 0x0A00;
/// skb->mark magic of what the L7 proxy sends (SO_MARK on its sockets).
pub const MARK_MAGIC_PROXY: u32 = 0x0B00;
/// The magic's bits.
pub const MARK_MAGIC_MASK: u32 = 0x0F00;

/// The mark of the proxy's sockets carrying `identity` (24 bits): its low 16 bits in bits
/// 16-31, its high 8 bits in bits 0-7 (the overlay's layout). Identity 0 on the proxy's
/// replies to clients.
pub fn proxy_mark(identity: u32) -> u32 {
    ((identity & 0xffff) << 16) | ((identity >> 16) & 0xff) | MARK_MAGIC_PROXY
}
pub const DBG_CT_LOOKUP: u8 = 1;
pub const DBG_POLICY: u8 = 2;
pub const DBG_ICMP6_ND: u8 = 3;
pub const DBG_FRAG: u8 = 4;
pub const DBG_LB: u8 = 5;
pub const DBG_REV_NAT: u8 = 6;
pub const EVENT_DATA_LEN: usize = 128;

/// Direction slot of reason 0 in `cilium_metrics` that counts events the ring buffer had no
/// room for.
pub const METRICS_EVENTS_LOST_DIR: u8 = 3;

/// Entries of `cilium_metrics`: index = reason * 4 + direction.
pub const METRICS_MAP_SIZE: u32 = 1024;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub ip: [u8; 16],
    pub family: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    pub ifindex: u32,
    pub identity: u32,
    pub endpoint_id: u16,
    pub flags: u16,
    pub mac: [u8; 6],
    pub node_mac: [u8; 6],
}

/// The data of an `ipcache_key` after its `prefixlen` (which aya's LPM `Key` carries): the
/// prefix length counts these 32 bits of family + pad before the address bits.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IpcacheAddr {
    pub family: u8,
    pub pad: [u8; 3],
    pub ip: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheValue {
    pub identity: u32,
    /// The owning node's IPv4 as the packet carries it (network order); 0 = none.
    pub tunnel_endpoint: u32,
}

impl IpcacheValue {
    /// An identity reached without the overlay.
    pub fn local(identity: u32) -> IpcacheValue {
        IpcacheValue {
            identity,
            tunnel_endpoint: 0,
        }
    }

    /// An identity on the node whose tunnel endpoint is `node`.
    pub fn remote(identity: u32, node: Option<std::net::Ipv4Addr>) -> IpcacheValue {
        IpcacheValue {
            identity,
            tunnel_endpoint: node.map_or(0, |a| u32::from_ne_bytes(a.octets())),
        }
    }

    /// The tunnel endpoint, if any.
    pub fn tunnel(&self) -> Option<std::net::Ipv4Addr> {
        (self.tunnel_endpoint != 0)
            .then(|| std::net::Ipv4Addr::from(self.tunnel_endpoint.to_ne_bytes()))
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyKey {
    pub identity: u32,
    pub endpoint_id: u16,
    /// Network order.
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyValue {
    /// Network order.
    pub proxy_port: u16,
    pub action: u8,
    pub pad: [u8; 5],
    pub packets: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ct4Key {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ct6Key {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` deadline (CLOCK_MONOTONIC ns).
    pub expires: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub src_identity: u32,
    pub flags: u16,
    pub rev_nat: u16,
    pub proxy_port: u16,
    pub pad: u16,
    /// `CT_SERVICE` entries: the backend id.
    pub backend_id: u32,
}

/// Slots of one service's backend table, at most.
pub const LB_MAX_SLOTS: usize = 1024;
/// The bit of a slot index that tells the table generation.
pub const LB_SLOT_GEN: u16 = 0x8000;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LbSvcKey {
    pub ip: [u8; 16],
    /// Network order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbSvcValue {
    pub svc_id: u16,
    pub slots: u16,
    pub gen: u8,
    pub pad: [u8; 3],
    /// New connections so far (the datapath's turn counter).
    pub next: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LbSlotKey {
    pub svc_id: u16,
    /// `gen << 15 | index`.
    pub slot: u16,
}

/// A backend (`cilium_lb_backends`) or a frontend (`cilium_lb_revnat`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LbBackend {
    pub ip: [u8; 16],
    /// Network order.
    pub port: u16,
    pub family: u8,
    pub pad: u8,
    pub svc_id: u16,
    pub pad2: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigValue {
    pub flags: u32,
    /// The overlay device; 0 = no overlay.
    pub tunnel_ifindex: u32,
}

/// One record of the `cilium_events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: u8,
    pub subtype: u8,
    pub source: u16,
    pub cpu: u32,
    pub ifindex: u32,
    pub orig_len: u32,
    pub cap_len: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub dst_endpoint: u16,
    pub pad: u16,
    pub hash: u32,
    pub pad2: u32,
    pub arg1: u64,
    pub arg2: u64,
    pub data: [u8; EVENT_DATA_LEN],
}

impl Event {
    /// Reads an event from ring buffer bytes; `None` when they are too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < std::mem::size_of::<Event>() {
            return None;
        }
        // SAFETY: `Event` is `repr(C)` plain data valid for any bit pattern, and the length
        // was checked; the read is unaligned-safe.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
    }

    /// The captured packet bytes.
    pub fn packet(&self) -> &[u8] {
        let n = (self.cap_len as usize).min(EVENT_DATA_LEN);
        &self.data[..n]
    }
}

// The sizes the C side asserts too.
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<EndpointKey>() == 20);
    assert!(size_of::<EndpointInfo>() == 24);
    assert!(size_of::<IpcacheAddr>() == 20);
    assert!(size_of::<IpcacheValue>() == 8);
    assert!(size_of::<PolicyKey>() == 12);
    assert!(size_of::<PolicyValue>() == 24);
    assert!(size_of::<Ct4Key>() == 16);
    assert!(size_of::<Ct6Key>() == 40);
    assert!(size_of::<CtEntry>() == 56);
    assert!(size_of::<MetricsValue>() == 16);
    assert!(size_of::<LbSvcKey>() == 20);
    assert!(size_of::<LbSvcValue>() == 12);
    assert!(size_of::<LbSlotKey>() == 4);
    assert!(size_of::<LbBackend>() == 24);
    assert!(size_of::<ConfigValue>() == 8);
    assert!(size_of::<Event>() == 184);
};

// SAFETY: all of these are `repr(C)` integers and byte arrays with no padding the compiler
// adds (sizes asserted above), valid for every bit pattern.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: as above.
unsafe impl aya::Pod for EndpointInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for IpcacheAddr {}
// SAFETY: as above.
unsafe impl aya::Pod for IpcacheValue {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Ct4Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Ct6Key {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for MetricsValue {}
// SAFETY: as above.
unsafe impl aya::Pod for LbSvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for LbSvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for LbSlotKey {}
// SAFETY: as above.
unsafe impl aya::Pod for LbBackend {}
// SAFETY: as above.
unsafe impl aya::Pod for ConfigValue {}

/// Drop reason texts (the 2017 wording); `None` for codes the datapath does not use.
pub fn drop_reason(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "Success",
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied (L3)",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        136 => "CT: Missing TCP ACK flag",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        150 => "Unknown L3 target address",
        151 => "Not a local target address",
        152 => "No matching local container found",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        157 => "Fragmentation not supported",
        158 => "No service backend",
        159 => "Policy denied (L4)",
        160 => "No tunnel/encapsulation endpoint",
        161 => "Proxy unavailable",
        _ => return None,
    })
}
