//! The baseline the benchmarks compare with: a node namespace with a client and a server
//! container wired the way the agent wires endpoints (veth pairs, /32 routes on the node,
//! a link-scoped gateway on the node's loopback), with no program and no agent.

use std::net::IpAddr;

use crate::Netns;

/// A node namespace with two containers on plain veth pairs.
#[derive(Debug)]
pub struct PlainPair {
    pub node: Netns,
    pub client: Netns,
    pub server: Netns,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
}

impl PlainPair {
    /// Namespaces `<prefix>n`, `<prefix>c`, `<prefix>s` (made unique by [`Netns::new`]),
    /// addresses 10.`subnet`.0.2 (client) and .3 (server), gateway 10.`subnet`.0.1.
    pub fn new(prefix: &str, subnet: u8) -> PlainPair {
        let node = Netns::new(&format!("{prefix}n"));
        let client = Netns::new(&format!("{prefix}c"));
        let server = Netns::new(&format!("{prefix}s"));
        node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.exec_ok(&["ip", "link", "set", "lo", "up"]);
        let router = format!("10.{subnet}.0.1");
        // The gateway address lives on the node's loopback (answers ARP from the veths).
        node.exec_ok(&["ip", "addr", "add", &format!("{router}/32"), "dev", "lo"]);
        let mut ips = Vec::new();
        for (i, c) in [&client, &server].into_iter().enumerate() {
            let ip = format!("10.{subnet}.0.{}", i + 2);
            let host = format!("{prefix}v{i}");
            node.exec_ok(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns",
                &c.name,
            ]);
            node.exec_ok(&["ip", "link", "set", &host, "up"]);
            node.exec_ok(&["ip", "route", "add", &format!("{ip}/32"), "dev", &host]);
            c.exec_ok(&["ip", "link", "set", "lo", "up"]);
            c.exec_ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
            c.exec_ok(&["ip", "link", "set", "eth0", "up"]);
            c.exec_ok(&[
                "ip", "route", "add", &router, "dev", "eth0", "scope", "link",
            ]);
            c.exec_ok(&["ip", "route", "add", "default", "via", &router]);
            ips.push(ip.parse().expect("ip"));
        }
        PlainPair {
            node,
            client,
            server,
            client_ip: ips[0],
            server_ip: ips[1],
        }
    }
}
