//! `make bench`: the cluster, side by side with what a user would otherwise have, in one run.
//!
//! 1. New-identity allocations per second: each a label set no node has used, through the
//!    agent's allocator (create-if-absent of the id and the labels key, a reference, and the
//!    confirming compare-and-swap), against a private etcd and against the embedded store.
//! 2. Between containers on two nodes (node namespaces on an underlay bridge, one private
//!    etcd per mode): request/response latency (1-byte TCP ping-pong) and stream throughput
//!    (iperf3, 2 s) through the VXLAN overlay and with direct routing, against plain routing
//!    between two node namespaces with no programs. Measured in turn, round after round;
//!    each figure is the median over the rounds.
//!
//! Not a test: it prints numbers and ratios and asserts nothing about time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use agent_core::identity::IdentityAllocator;
use agent_core::kvstore::{Embedded, Kvstore};
use agent_core::labels::{Label, LabelSet, LabelSource};
use integration::cluster::{endpoint_ipv4, start_node, NodeSpec, Underlay};
use integration::cni::{Invocation, Node};
use integration::etcd::Etcd;
use integration::measure::Series;
use integration::{require_root, Netns};

const ALLOCATIONS: usize = 500;
const RR_ROUNDS: usize = 10_000;
const ROUNDS: usize = 3;
const RR_PORT: u16 = 7777;
const STREAM_PORT: u16 = 5201;

/// Allocations per second of `ALLOCATIONS` new label sets.
fn allocations_per_second(kv: Arc<dyn Kvstore>, tag: &str) -> f64 {
    let allocator = IdentityAllocator::new(kv, "bench").expect("allocator");
    let sets: Vec<LabelSet> = (0..ALLOCATIONS)
        .map(|i| {
            LabelSet::new(vec![Label::new(
                LabelSource::Container,
                "app",
                &format!("{tag}{i}"),
            )])
        })
        .collect();
    let t = Instant::now();
    for set in &sets {
        let (_, new) = allocator.acquire(set).expect("acquire");
        assert!(new, "not a new identity");
    }
    ALLOCATIONS as f64 / t.elapsed().as_secs_f64()
}

/// A container on `node` (no MTU in the configuration: the agent's default), its IPv4.
fn container(node: &Node, prefix: &str) -> (Netns, IpAddr) {
    let ns = Netns::new(prefix);
    let mut conf = node.config(Some("1.0.0"));
    conf.as_object_mut().expect("config").remove("mtu");
    let inv = Invocation::new("ADD", &ns.name, &ns.path());
    node.cni(&inv, &conf).ok();
    let (status, body) =
        node.agent
            .http("GET", &format!("/endpoint/container-id:{}", ns.name), None);
    assert_eq!(status, 200, "{body}");
    let ep: cilium_api::models::Endpoint = serde_json::from_str(&body).expect("endpoint");
    (ns, IpAddr::V4(endpoint_ipv4(&ep)))
}

fn main() {
    if !require_root("bench-cluster") {
        return;
    }
    println!("cluster: identity allocation and cross-node traffic");

    let etcd = Etcd::start();
    let on_etcd = allocations_per_second(etcd.client(), "e");
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded: Arc<dyn Kvstore> = Arc::new(Embedded::open(dir.path()).expect("embedded"));
    let on_embedded = allocations_per_second(embedded, "m");
    println!(
        "  new identities: etcd {on_etcd:.0}/s, embedded {on_embedded:.0}/s ({ALLOCATIONS} each)"
    );
    drop(etcd);

    // Plain routing between two node namespaces, no agent, no program.
    let plain_net = Underlay::new("bkp", 70);
    let p1 = Netns::new("bkp1");
    let p2 = Netns::new("bkp2");
    let plain_server = IpAddr::V4(plain_net.connect(&p1, 1));
    plain_net.connect(&p2, 2);

    // The overlay and direct routing, each on its own underlay and etcd.
    let vx_net = Underlay::new("bkv", 71);
    let vx_etcd = vx_net.etcd();
    let vx_a = start_node("bkva", &vx_net, &vx_etcd, &NodeSpec::new(1, "vxlan"));
    let vx_b = start_node("bkvb", &vx_net, &vx_etcd, &NodeSpec::new(2, "vxlan"));
    let dr_net = Underlay::new("bkd", 72);
    let dr_etcd = dr_net.etcd();
    let dr_a = start_node("bkda", &dr_net, &dr_etcd, &NodeSpec::new(1, "disabled"));
    let dr_b = start_node("bkdb", &dr_net, &dr_etcd, &NodeSpec::new(2, "disabled"));
    let (vx_srv, vx_ip) = container(&vx_a, "bkvs");
    let (vx_cli, _) = container(&vx_b, "bkvc");
    let (dr_srv, dr_ip) = container(&dr_a, "bkds");
    let (dr_cli, _) = container(&dr_b, "bkdc");
    // Each node learns the other's ranges through etcd.
    let reachable = |cli: &str, ip: IpAddr| {
        integration::cluster::eventually(std::time::Duration::from_secs(15), || {
            integration::traffic::ping(cli, &[], &ip.to_string())
        })
    };
    assert!(reachable(&vx_cli.name, vx_ip), "vxlan: no path");
    assert!(reachable(&dr_cli.name, dr_ip), "direct: no path");

    let (mut plain, mut vxlan, mut direct) =
        (Series::default(), Series::default(), Series::default());
    for _ in 0..ROUNDS {
        plain.measure(
            &p2.name,
            &p1.name,
            plain_server,
            (RR_PORT, STREAM_PORT),
            RR_ROUNDS,
        );
        vxlan.measure(
            &vx_cli.name,
            &vx_srv.name,
            vx_ip,
            (RR_PORT, STREAM_PORT),
            RR_ROUNDS,
        );
        direct.measure(
            &dr_cli.name,
            &dr_srv.name,
            dr_ip,
            (RR_PORT, STREAM_PORT),
            RR_ROUNDS,
        );
    }
    println!("  ({ROUNDS} rounds of {RR_ROUNDS} round trips and iperf3 2 s; medians)");
    let (p_rr, p_gb) = plain.report("plain routing, node to node");
    let (v_rr, v_gb) = vxlan.report("cilium vxlan, container to container");
    let (d_rr, d_gb) = direct.report("cilium direct, container to container");
    println!(
        "  ratios to plain: vxlan RR {:.2}, stream {:.2}; direct RR {:.2}, stream {:.2}",
        v_rr / p_rr,
        v_gb / p_gb,
        d_rr / p_rr,
        d_gb / p_gb
    );
}
