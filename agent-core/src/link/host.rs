//! The `cilium_host` device: one end of a veth pair (`cilium_host` ↔ `cilium_net`) in the
//! node namespace that holds the router addresses endpoints route through.

use std::net::IpAddr;

use super::rtnl::Rtnl;
use super::{firewall, sysctl, LinkError};

/// The device that holds the router addresses.
pub const HOST_DEVICE: &str = "cilium_host";
/// Its veth peer.
pub const HOST_PEER: &str = "cilium_net";

/// Creates (if missing) and brings up `cilium_host`/`cilium_net`, puts the router addresses
/// on `cilium_host` (`/32`, `/128`), turns forwarding on and lets endpoint traffic through
/// the `FORWARD` chain. Idempotent.
pub fn ensure_host_device(routers: &[IpAddr]) -> Result<(), LinkError> {
    let mut node = Rtnl::node()?;
    if node.link(HOST_DEVICE)?.is_none() {
        match node.create_veth(HOST_DEVICE, HOST_PEER, None, 1500) {
            Ok(()) => tracing::info!("created {HOST_DEVICE}"),
            // Another agent thread (or a leftover half) raced us: use what is there.
            Err(LinkError::Netlink { source, .. }) if source.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    for name in [HOST_DEVICE, HOST_PEER] {
        sysctl::prepare_link(name)?;
        let link = node.link(name)?.ok_or_else(|| LinkError::Vanished {
            name: name.to_string(),
        })?;
        if !link.up {
            node.set_up(link.index, name)?;
        }
    }
    let host = node.link(HOST_DEVICE)?.ok_or_else(|| LinkError::Vanished {
        name: HOST_DEVICE.to_string(),
    })?;
    for ip in routers {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        node.add_address(host.index, *ip, prefix)?;
    }
    sysctl::enable_forwarding()?;
    firewall::allow_endpoint_forwarding(routers.iter().any(IpAddr::is_ipv6))
}
