//! A cluster on one machine: node namespaces joined by an underlay bridge (in a namespace of
//! its own), each node running its agent on a shared private etcd that listens on the
//! bridge. Everything is removed by the guards' drops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::cni::Node;
use crate::etcd::Etcd;
use crate::{test_dir, Agent, AgentOptions, Netns};

/// The underlay: a bridge `br0` in its own namespace, `192.168.<subnet>.0/24` and
/// `fd00:<subnet>::/64`, the bridge itself at `.254` / `::fe`.
#[derive(Debug)]
pub struct Underlay {
    pub netns: Netns,
    pub subnet: u8,
}

impl Underlay {
    pub fn new(prefix: &str, subnet: u8) -> Underlay {
        let netns = Netns::new(prefix);
        netns.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        netns.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let u = Underlay { netns, subnet };
        let v4 = format!("{}/24", u.gateway());
        u.netns.exec_ok(&["ip", "addr", "add", &v4, "dev", "br0"]);
        u
    }

    /// The bridge's own address (where etcd listens).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.subnet, 254)
    }

    /// The address of node `host` on the underlay.
    pub fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.subnet, host)
    }

    /// Plugs `node` into the bridge as `eth0` with the address of `host`.
    pub fn connect(&self, node: &Netns, host: u8) -> Ipv4Addr {
        let port = format!("u{host}");
        self.netns.exec_ok(&[
            "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node.name,
        ]);
        self.netns
            .exec_ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        let addr = self.address(host);
        node.exec_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        node.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        addr
    }

    /// A private etcd listening on the bridge.
    pub fn etcd(&self) -> Etcd {
        Etcd::start_in(Some(&self.netns.name), IpAddr::V4(self.gateway()))
    }
}

/// How a cluster node runs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Host number on the underlay (1-253); also picks the ranges `10.<100+host>.0.0/16`
    /// and `f00d::a:<host>:0:0/96`.
    pub host: u8,
    /// `vxlan`, `geneve` or `disabled`.
    pub tunnel: &'static str,
    /// Extra agent flags.
    pub args: Vec<String>,
}

impl NodeSpec {
    pub fn new(host: u8, tunnel: &'static str) -> NodeSpec {
        NodeSpec {
            host,
            tunnel,
            args: Vec::new(),
        }
    }

    pub fn ipv4_range(&self) -> String {
        format!("10.{}.0.0/16", 100 + u32::from(self.host))
    }

    pub fn ipv6_range(&self) -> String {
        format!("f00d::a:{}:0:0/96", self.host)
    }

    /// The agent's flags for `etcd` on `underlay`.
    pub fn agent_args(&self, underlay: &Underlay, etcd: &Etcd) -> Vec<String> {
        let mut args: Vec<String> = [
            "--kvstore",
            "etcd",
            "--kvstore-opt",
            &format!("etcd.address={}", etcd.client_url()),
            "--kvstore-lease-ttl",
            "3",
            "--tunnel",
            self.tunnel,
            "--node-name",
            &format!("node{}", self.host),
            "--node-address",
            &underlay.address(self.host).to_string(),
            "--ipv4-range",
            &self.ipv4_range(),
            "--ipv6-range",
            &self.ipv6_range(),
            "--docker",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.args.iter().cloned());
        args
    }
}

/// Starts a node namespace plugged into `underlay` with its agent on `etcd`.
pub fn start_node(prefix: &str, underlay: &Underlay, etcd: &Etcd, spec: &NodeSpec) -> Node {
    let netns = Netns::new(prefix);
    underlay.connect(&netns, spec.host);
    let dir = test_dir();
    let agent = Agent::start(dir.path(), &node_options(&netns, underlay, etcd, spec));
    Node { agent, netns, dir }
}

/// The agent options of a cluster node (for restarting or spawning one that should fail).
pub fn node_options(
    netns: &Netns,
    underlay: &Underlay,
    etcd: &Etcd,
    spec: &NodeSpec,
) -> AgentOptions {
    AgentOptions {
        netns: Some(netns.name.clone()),
        args: spec.agent_args(underlay, etcd),
        fixed_ranges: false,
        ..Default::default()
    }
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The IPv4 address of an endpoint.
pub fn endpoint_ipv4(ep: &cilium_api::models::Endpoint) -> Ipv4Addr {
    match ep.addressing.ipv4.expect("endpoint has an IPv4 address") {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => panic!("IPv4 slot holds an IPv6 address"),
    }
}

/// The socket address `port` on an endpoint's IPv4 address.
pub fn endpoint_addr(ep: &cilium_api::models::Endpoint, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(endpoint_ipv4(ep)), port)
}
