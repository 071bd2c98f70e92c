//! The proxy's connections without the TCP/IP stack in between (`bpf-programs/include/
//! sockmap.h`): `proxy_sockops` on the cgroup v2 root puts the sockets of proxied
//! connections into `cilium_proxy_socks`, and `proxy_msg` on that map hands what one end
//! sends straight to the other end.
//!
//! Nothing is pinned: the links and the map live as long as the agent's loaded object, and
//! so do the proxy's connections. A restarted agent starts over; an agent killed outright
//! leaves nothing attached (its link and map descriptors close with it).

use std::fs::File;

use aya::maps::{MapData, SockHash};
use aya::programs::links::CgroupAttachMode;
use aya::programs::{SkMsg, SockOps};
use aya::Ebpf;

/// `struct proxy_sock_key` of sockmap.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxySockKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub lport: u16,
    pub rport: u16,
    pub family: u8,
    pub pad: [u8; 3],
}

// SAFETY: plain integers, no padding (40 bytes, as the C side asserts).
unsafe impl aya::Pod for ProxySockKey {}

const _: () = assert!(std::mem::size_of::<ProxySockKey>() == 40);

/// The sockets of proxied connections.
pub struct ProxySockets {
    map: SockHash<MapData, ProxySockKey>,
}

impl std::fmt::Debug for ProxySockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySockets").finish_non_exhaustive()
    }
}

impl ProxySockets {
    /// How many sockets send or receive without the stack now (both ends of each such
    /// connection count).
    pub fn count(&self) -> usize {
        self.map.keys().filter(Result::is_ok).count()
    }
}

/// Loads and attaches both programs. An error says why the proxy's connections go through
/// the stack (they work either way).
pub fn attach(ebpf: &mut Ebpf) -> Result<ProxySockets, String> {
    let root = super::sock::cgroup2_root()?;
    let cgroup = File::open(&root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    let map = ebpf
        .take_map("cilium_proxy_socks")
        .ok_or("the object has no map cilium_proxy_socks")?;
    let map: SockHash<MapData, ProxySockKey> =
        SockHash::try_from(map).map_err(|e| format!("cilium_proxy_socks: {e}"))?;
    let msg: &mut SkMsg = ebpf
        .program_mut("proxy_msg")
        .ok_or("the object has no program proxy_msg")?
        .try_into()
        .map_err(|e| format!("proxy_msg: {e}"))?;
    msg.load().map_err(|e| format!("proxy_msg: {e}"))?;
    msg.attach(map.fd())
        .map_err(|e| format!("attaching proxy_msg to cilium_proxy_socks: {e}"))?;
    let ops: &mut SockOps = ebpf
        .program_mut("proxy_sockops")
        .ok_or("the object has no program proxy_sockops")?
        .try_into()
        .map_err(|e| format!("proxy_sockops: {e}"))?;
    ops.load().map_err(|e| format!("proxy_sockops: {e}"))?;
    // A BPF link beside the other agents' and programs' (see sock::attach).
    ops.attach(&cgroup, CgroupAttachMode::Single)
        .map_err(|e| format!("attaching proxy_sockops to {}: {e}", root.display()))?;
    Ok(ProxySockets { map })
}
