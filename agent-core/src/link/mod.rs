//! Netlink plumbing: the veth pair of each endpoint, the `cilium_host` device that holds
//! the router addresses, the sysctls they need, and the tc clsact filters that run the
//! datapath programs. The wire format and socket are in
//! [`message`] and [`socket`], typed operations in [`rtnl`].

mod attach;
mod firewall;
mod host;
pub mod message;
pub mod proxy_route;
pub mod rtnl;
pub mod socket;
mod sysctl;
pub mod tc;
pub mod tunnel;

use std::io;
use std::path::PathBuf;

pub use attach::{
    attach, attach_host_pair, detach, detach_index, inspect, Attached, Attachment, HostPair,
};
pub use host::{ensure_host_device, HOST_DEVICE, HOST_PEER};

use crate::netns::NetnsError;
use socket::NetlinkFailure;

/// Errors of link plumbing.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket in {place}: {source}")]
    Socket { place: String, source: io::Error },
    #[error("{op} {object}: {source}")]
    Netlink {
        op: &'static str,
        object: String,
        source: NetlinkFailure,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("interface {name} already exists in {place}")]
    Exists { name: String, place: String },
    #[error("link {name} vanished while it was being configured")]
    Vanished { name: String },
    #[error("cannot set {path}: {source}")]
    Sysctl { path: PathBuf, source: io::Error },
    #[error("invalid MAC address {0}")]
    BadMac(String),
    #[error("cannot install the FORWARD accept rules: {0}")]
    Firewall(String),
    #[error("cannot set the masquerade rules: {0}")]
    Masquerade(String),
    #[error("cannot set a route: {0}")]
    Route(String),
    #[error("{0}")]
    Unsupported(String),
}

impl std::error::Error for NetlinkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The host-side name of the veth pair of a container: `lxc` and 11 hex digits of a hash of
/// the container id (14 characters, within the kernel's 15).
pub fn host_link_name(container_id: &str) -> String {
    // FNV-1a, 64 bit: stable across releases and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("lxc{:011x}", hash & 0x0fff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_link_names_are_short_stable_and_distinct() {
        let a = host_link_name("4f1e0c2d9a");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("lxc"));
        assert_eq!(a, host_link_name("4f1e0c2d9a"));
        assert_ne!(a, host_link_name("4f1e0c2d9b"));
        let long = host_link_name(&"x".repeat(500));
        assert_eq!(long.len(), 14);
    }
}
