//! This node's identity and addressing: its name, its own address, and the allocation
//! ranges derived from it as the seed describes (§3.5): IPv4 `10.<last octet>.0.0/16`, IPv6
//! `f00d::<IPv4 in hex>:0:0/96`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cidr::Cidr;
use crate::config::AgentConfig;

/// Why the node addressing could not be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error(
        "cannot derive the {family} allocation range: this node has no global IPv4 address; \
         pass --{family}-range or --node-address"
    )]
    NoNodeAddress { family: &'static str },
    #[error("cannot list the node's addresses: {0}")]
    Interfaces(String),
}

/// The node: its name, its address and its allocation ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The node's own IPv4 address (given or detected).
    pub ipv4: Option<Ipv4Addr>,
    /// The node's own IPv6 address, when given with `--node-address`.
    pub ipv6: Option<Ipv6Addr>,
    pub ipv4_range: Option<Cidr>,
    pub ipv6_range: Option<Cidr>,
}

impl Node {
    /// Settles name, address and ranges from the configuration, detecting what is not given.
    pub fn resolve(config: &AgentConfig) -> Result<Node, NodeError> {
        let name = config.node_name.clone().unwrap_or_else(hostname);
        let (mut ipv4, ipv6) = match config.node_address {
            Some(IpAddr::V4(v4)) => (Some(v4), None),
            Some(IpAddr::V6(v6)) => (None, Some(v6)),
            None => (None, None),
        };
        let needs_detection = ipv4.is_none()
            && ((config.enable_ipv4 && config.ipv4_range.is_none())
                || (config.enable_ipv6 && config.ipv6_range.is_none())
                || config.node_address.is_none());
        if needs_detection {
            ipv4 = first_global_ipv4()?;
        }
        let ipv4_range = match (config.enable_ipv4, config.ipv4_range) {
            (false, _) => None,
            (true, Some(r)) => Some(r),
            (true, None) => Some(default_ipv4_range(
                ipv4.ok_or(NodeError::NoNodeAddress { family: "ipv4" })?,
            )),
        };
        let ipv6_range = match (config.enable_ipv6, config.ipv6_range) {
            (false, _) => None,
            (true, Some(r)) => Some(r),
            (true, None) => Some(default_ipv6_range(
                ipv4.ok_or(NodeError::NoNodeAddress { family: "ipv6" })?,
            )),
        };
        Ok(Node {
            name,
            ipv4,
            ipv6,
            ipv4_range,
            ipv6_range,
        })
    }
}

/// `10.<last octet of the node's IPv4>.0.0/16`.
pub fn default_ipv4_range(node: Ipv4Addr) -> Cidr {
    let last = node.octets()[3];
    Cidr::new_truncated(IpAddr::V4(Ipv4Addr::new(10, last, 0, 0)), 16)
}

/// `f00d::<node IPv4 in hex>:0:0/96`.
pub fn default_ipv6_range(node: Ipv4Addr) -> Cidr {
    let v4 = u32::from(node);
    let addr = Ipv6Addr::new(
        0xf00d,
        0,
        0,
        0,
        (v4 >> 16) as u16,
        (v4 & 0xffff) as u16,
        0,
        0,
    );
    Cidr::new_truncated(IpAddr::V6(addr), 96)
}

/// The host name, or `localhost` if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The first IPv4 address of global scope (not loopback, not link-local), in the order the
/// kernel lists interfaces and addresses.
pub fn first_global_ipv4() -> Result<Option<Ipv4Addr>, NodeError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| NodeError::Interfaces(e.to_string()))?;
    Ok(addrs
        .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .find(|ip| is_global(*ip)))
}

fn is_global(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_broadcast())
}

/// The lines the agent prints at start (seed §3.4.1).
#[derive(Debug)]
pub struct AddressingReport<'a> {
    pub node: &'a Node,
    pub ipv4_router: Option<IpAddr>,
    pub ipv6_router: Option<IpAddr>,
    pub ipv4_alloc: Option<Cidr>,
    pub ipv6_alloc: Option<Cidr>,
}

impl fmt::Display for AddressingReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "disabled".to_string());
        writeln!(f, "Local node-name: {}", self.node.name)?;
        writeln!(
            f,
            "Node-IPv6: {}",
            or_none(self.ipv6_router.map(|ip| ip.to_string()))
        )?;
        let external = self
            .node
            .ipv4
            .map(|ip| ip.to_string())
            .or_else(|| self.node.ipv6.map(|ip| ip.to_string()))
            .unwrap_or_else(|| "unknown".to_string());
        writeln!(f, "External-Node IPv4: {external}")?;
        writeln!(
            f,
            "Internal-Node IPv4: {}",
            or_none(self.ipv4_router.map(|ip| ip.to_string()))
        )?;
        writeln!(
            f,
            "IPv4 allocation prefix: {}",
            or_none(self.ipv4_alloc.map(|c| c.to_string()))
        )?;
        write!(
            f,
            "IPv6 allocation prefix: {}",
            or_none(self.ipv6_alloc.map(|c| c.to_string()))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_defaults() {
        let ip: Ipv4Addr = "192.0.2.2".parse().unwrap();
        assert_eq!(default_ipv4_range(ip).to_string(), "10.2.0.0/16");
        assert_eq!(default_ipv6_range(ip).to_string(), "f00d::c000:202:0:0/96");
        // The seed's example: node 172.16.0.20 → f00d::ac10:14:0:0/96.
        let seed: Ipv4Addr = "172.16.0.20".parse().unwrap();
        assert_eq!(default_ipv6_range(seed).to_string(), "f00d::ac10:14:0:0/96");
        assert_eq!(default_ipv4_range(seed).to_string(), "10.20.0.0/16");
    }

    #[test]
    fn explicit_ranges_need_no_detection() {
        let mut config = AgentConfig::with_dirs("/s".into(), "/d".into());
        config.ipv4_range = Some("10.7.0.0/16".parse().unwrap());
        config.ipv6_range = Some("f00d::/112".parse().unwrap());
        config.node_address = Some("198.51.100.4".parse().unwrap());
        config.node_name = Some("n1".into());
        let node = Node::resolve(&config).unwrap();
        assert_eq!(node.ipv4, Some("198.51.100.4".parse().unwrap()));
        assert_eq!(node.ipv4_range.unwrap().to_string(), "10.7.0.0/16");
        assert_eq!(node.name, "n1");
    }

    #[test]
    fn node_address_drives_defaults() {
        let mut config = AgentConfig::with_dirs("/s".into(), "/d".into());
        config.node_address = Some("198.51.100.4".parse().unwrap());
        config.enable_ipv6 = false;
        let node = Node::resolve(&config).unwrap();
        assert_eq!(node.ipv4_range.unwrap().to_string(), "10.4.0.0/16");
        assert_eq!(node.ipv6_range, None);
    }

    #[test]
    fn global_scope_filter() {
        assert!(!is_global("127.0.0.1".parse().unwrap()));
        assert!(!is_global("169.254.3.3".parse().unwrap()));
        assert!(is_global("192.0.2.2".parse().unwrap()));
    }
}
