//! Several nodes on one private etcd: node namespaces joined by an underlay bridge, each
//! with its agent, containers on each, and real traffic between nodes through the VXLAN
//! overlay or direct routing. The receiving node enforces its policy with the sender's
//! identity; identities are the same on every node; an etcd outage does not stop
//! established flows; a stopped node disappears from the others; overlapping ranges are
//! refused.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cilium_api::models::{BpfIpcacheEntry, BpfTunnelEntry, Endpoint, NodeEntry, StatusResponse};
use integration::cluster::{
    endpoint_addr, endpoint_ipv4, eventually, node_options, start_node, NodeSpec, Underlay,
};
use integration::cni::{Invocation, Node};
use integration::monitor::DropMonitor;
use integration::traffic::{tcp_connect, tcp_exchange, tcp_works, tcp_works_with_mark, EchoServer};
use integration::{require_root, Agent, Netns};
use nix::sys::signal::Signal;

const L3_L4_POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]
  }],
  "labels": ["unspec:guide=cluster"]
}]"#;

const ANY80: SocketAddr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 80);

fn identity(e: &Endpoint) -> u32 {
    e.identity.as_ref().expect("identity").id
}

fn get<T: serde::de::DeserializeOwned>(node: &Node, path: &str) -> T {
    let (status, body) = node.agent.http("GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn nodes(node: &Node) -> Vec<NodeEntry> {
    get(node, "/node")
}

fn status(node: &Node) -> StatusResponse {
    get(node, "/healthz")
}

fn import(node: &Node, policy: &str) {
    let path = node.dir.path().join("policy.json");
    std::fs::write(&path, policy).expect("write policy");
    node.agent
        .cli(&["policy", "import", path.to_str().expect("path")])
        .ok();
}

/// A container with label `id`, attached through `cilium-cni` with a configuration that
/// names no MTU (so the agent's default applies).
fn container(node: &Node, prefix: &str, id: &str) -> (Netns, Endpoint) {
    let ns = Netns::new(prefix);
    let mut conf = node.config(Some("1.0.0"));
    conf.as_object_mut().expect("config object").remove("mtu");
    conf["args"] = serde_json::json!({"cni": {"labels": [{"key": "id", "value": id}]}});
    let inv = Invocation::new("ADD", &ns.name, &ns.path());
    node.cni(&inv, &conf).ok();
    let ep = get(node, &format!("/endpoint/container-id:{}", ns.name));
    (ns, ep)
}

/// Waits until every node lists `count` nodes.
fn wait_nodes(all: &[&Node], count: usize) {
    for n in all {
        assert!(
            eventually(Duration::from_secs(15), || nodes(n).len() == count),
            "{} does not list {count} nodes: {:?}\n{}",
            n.netns.name,
            nodes(n),
            n.agent.output()
        );
    }
}

/// Waits until `node`'s ipcache maps `ip` to `identity`.
fn wait_ipcache(node: &Node, ip: IpAddr, identity: u32) -> BpfIpcacheEntry {
    let prefix = format!("{ip}/32");
    let mut last = Vec::new();
    let found = eventually(Duration::from_secs(10), || {
        last = get::<Vec<BpfIpcacheEntry>>(node, "/map/ipcache");
        last.iter()
            .any(|e| e.prefix == prefix && e.identity == identity)
    });
    assert!(found, "{prefix} never got identity {identity}: {last:?}");
    last.into_iter()
        .find(|e| e.prefix == prefix)
        .expect("entry")
}

/// The seed's L3/L4 guide across two nodes: app1 on node A, app2 and app3 on node B.
/// Returns after asserting app2 reaches app1:80 and app3 is dropped at node A with its
/// identity in the drop event.
fn seed_policy_across_nodes(a: &Node, b: &Node, tag: &str) {
    let (app1_ns, app1) = container(a, &format!("{tag}a1"), "app1");
    let (app2_ns, app2) = container(b, &format!("{tag}a2"), "app2");
    let (app3_ns, app3) = container(b, &format!("{tag}a3"), "app3");
    let _server = EchoServer::start(&app1_ns.name, ANY80);
    let to_app1 = endpoint_addr(&app1, 80);

    // Node A learns B's endpoints with the identities B allocated.
    wait_ipcache(a, IpAddr::V4(endpoint_ipv4(&app2)), identity(&app2));
    wait_ipcache(a, IpAddr::V4(endpoint_ipv4(&app3)), identity(&app3));

    // No policy yet: both reach app1 across the nodes.
    assert!(
        tcp_works(&app2_ns.name, to_app1),
        "app2 -> app1 before policy"
    );
    assert!(
        tcp_works(&app3_ns.name, to_app1),
        "app3 -> app1 before policy"
    );

    import(a, L3_L4_POLICY);
    let monitor = DropMonitor::start(&a.agent);
    assert!(
        eventually(Duration::from_secs(5), || !tcp_works(
            &app3_ns.name,
            to_app1
        )),
        "app3 on node B still reaches app1 on node A after the policy"
    );
    let dropped = monitor.expect("for app3 -> app1 on node A", |ev| {
        ev.src_identity == identity(&app3) && ev.dst_identity == identity(&app1)
    });
    assert_eq!(dropped.code, 133, "{dropped:?}");
    assert!(
        tcp_works(&app2_ns.name, to_app1),
        "app2 -> app1 after policy"
    );
    // A process on node A cannot pass for app2 by setting the overlay's identity mark: only
    // packets that came in on the overlay device carry one.
    let app2_id = identity(&app2);
    let forged = ((app2_id & 0xffff) << 16) | ((app2_id >> 16) & 0xff) | 0x0D00;
    assert!(
        !tcp_works_with_mark(&a.netns.name, to_app1, forged),
        "a host process on node A passed for app2 with the overlay mark {forged:#x}"
    );
    drop(app1_ns);
}

#[test]
fn two_nodes_over_vxlan_share_identities_and_enforce_policy_with_the_senders_identity() {
    if !require_root("two_nodes_over_vxlan") {
        return;
    }
    let underlay = Underlay::new("cu1", 61);
    let etcd = underlay.etcd();
    let a = start_node("cn1a", &underlay, &etcd, &NodeSpec::new(1, "vxlan"));
    let b = start_node("cn1b", &underlay, &etcd, &NodeSpec::new(2, "vxlan"));
    wait_nodes(&[&a, &b], 2);

    // The same labels get the same identity on both nodes.
    let (_x, on_a) = container(&a, "cn1x", "app2");
    let (_y, on_b) = container(&b, "cn1y", "app2");
    assert_eq!(
        identity(&on_a),
        identity(&on_b),
        "id=app2 differs between nodes"
    );

    // Node A sends B's range to B's underlay address.
    let tunnels: Vec<BpfTunnelEntry> = get(&a, "/map/tunnel");
    assert!(
        tunnels
            .iter()
            .any(|t| t.prefix == "10.102.0.0/16" && t.endpoint == underlay.address(2)),
        "{tunnels:?}"
    );
    let listed = a.agent.cli(&["bpf", "tunnel", "list"]).ok();
    assert!(
        listed.contains("10.102.0.0/16") && listed.contains("192.168.61.2"),
        "{listed}"
    );
    let listed = a.agent.cli(&["node", "list"]).ok();
    assert!(
        listed.contains("node1 (local)")
            && listed.contains("node2")
            && listed.contains("10.102.0.0/16"),
        "{listed}"
    );
    let s = status(&a);
    let cluster = s.cluster.expect("cluster status");
    assert!(
        cluster.msg.contains("2 nodes") && cluster.msg.contains("vxlan"),
        "{cluster:?}"
    );
    assert!(s.kvstore.msg.contains("etcd"), "{:?}", s.kvstore);

    // Containers get an MTU that leaves room for the encapsulation.
    assert_eq!(on_a.mtu, 1450, "endpoint MTU in overlay mode");

    seed_policy_across_nodes(&a, &b, "cn1");
}

#[test]
fn direct_routing_takes_the_senders_identity_from_the_ipcache() {
    if !require_root("direct_routing") {
        return;
    }
    let underlay = Underlay::new("cu2", 62);
    let etcd = underlay.etcd();
    let a = start_node("cn2a", &underlay, &etcd, &NodeSpec::new(1, "disabled"));
    let b = start_node("cn2b", &underlay, &etcd, &NodeSpec::new(2, "disabled"));
    wait_nodes(&[&a, &b], 2);
    // A route to the other node's range via its address, and no overlay device.
    assert!(
        eventually(Duration::from_secs(5), || a
            .sh(&["ip", "-4", "route", "show"])
            .contains("10.102.0.0/16 via 192.168.62.2")),
        "{}",
        a.sh(&["ip", "-4", "route", "show"])
    );
    assert!(!a.sh(&["ip", "link", "show"]).contains("cilium_vxlan"));
    let (_x, probe) = container(&a, "cn2x", "app2");
    assert_eq!(probe.mtu, 1500, "endpoint MTU in direct routing");
    seed_policy_across_nodes(&a, &b, "cn2");
}

#[test]
fn geneve_overlay_runs_or_is_refused_with_the_reason() {
    if !require_root("geneve_overlay") {
        return;
    }
    let underlay = Underlay::new("cu3", 63);
    let etcd = underlay.etcd();
    let probe = Netns::new("cn3p");
    let supported = probe
        .exec_ok(&[
            "sh",
            "-c",
            "ip link add g0 type geneve external 2>&1 || true",
        ])
        .stdout
        .is_empty();
    drop(probe);
    if !supported {
        let netns = Netns::new("cn3a");
        underlay.connect(&netns, 1);
        let dir = integration::test_dir();
        let mut agent = Agent::spawn(
            dir.path(),
            &node_options(&netns, &underlay, &etcd, &NodeSpec::new(1, "geneve")),
        );
        let code = agent.wait_exit(Duration::from_secs(15));
        let out = agent.output();
        assert!(
            code.is_some_and(|c| c != 0),
            "agent did not refuse geneve:\n{out}"
        );
        assert!(
            out.contains("--tunnel geneve") && out.contains("Geneve"),
            "the refusal does not give the reason:\n{out}"
        );
        eprintln!(
            "geneve_overlay: this kernel has no Geneve driver; the agent refused --tunnel \
             geneve with the reason, cross-node Geneve traffic skipped"
        );
        return;
    }
    let a = start_node("cn3a", &underlay, &etcd, &NodeSpec::new(1, "geneve"));
    let b = start_node("cn3b", &underlay, &etcd, &NodeSpec::new(2, "geneve"));
    wait_nodes(&[&a, &b], 2);
    seed_policy_across_nodes(&a, &b, "cn3");
}

#[test]
fn three_nodes_ride_out_an_etcd_outage_and_forget_a_stopped_node() {
    if !require_root("three_nodes_etcd_outage") {
        return;
    }
    let underlay = Underlay::new("cu4", 64);
    let mut etcd = underlay.etcd();
    let a = start_node("cn4a", &underlay, &etcd, &NodeSpec::new(1, "vxlan"));
    let b = start_node("cn4b", &underlay, &etcd, &NodeSpec::new(2, "vxlan"));
    let mut c = start_node("cn4c", &underlay, &etcd, &NodeSpec::new(3, "vxlan"));
    wait_nodes(&[&a, &b, &c], 3);

    let (app1_ns, app1) = container(&a, "cn4a1", "app1");
    let (app2_ns, app2) = container(&b, "cn4a2", "app2");
    let _server = EchoServer::start(&app1_ns.name, ANY80);
    wait_ipcache(&a, IpAddr::V4(endpoint_ipv4(&app2)), identity(&app2));
    import(&a, L3_L4_POLICY);
    let to_app1 = endpoint_addr(&app1, 80);
    let mut stream =
        tcp_connect(&app2_ns.name, to_app1, Duration::from_secs(2)).expect("app2 -> app1");
    let identities_before = a.agent.cli(&["identity", "list"]).ok();

    // etcd down for 10 s: the stream and new connections keep working, status says why.
    etcd.stop();
    let outage = Instant::now();
    let mut failure_seen = false;
    while outage.elapsed() < Duration::from_secs(10) {
        let echoed = tcp_exchange(&mut stream, b"ping").expect("stream during the outage");
        assert_eq!(echoed, b"ping");
        if !failure_seen {
            let s = status(&a);
            failure_seen = s.kvstore.state.to_string() == "Failure";
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failure_seen, "status never showed the kvstore failure");
    assert!(
        tcp_works(&app2_ns.name, to_app1),
        "new connection during the outage"
    );

    etcd.start_again();
    assert!(
        eventually(Duration::from_secs(20), || {
            let s = status(&a);
            s.kvstore.state.to_string() == "Ok"
                && s.cluster.is_some_and(|c| c.state.to_string() == "Ok")
        }),
        "node A did not recover: {:?}",
        status(&a)
    );
    assert_eq!(
        a.agent.cli(&["identity", "list"]).ok(),
        identities_before,
        "identities changed across the outage"
    );
    assert_eq!(
        tcp_exchange(&mut stream, b"after").expect("stream after"),
        b"after"
    );
    // A new endpoint after the outage gets the cluster's identity for its labels.
    let (_late_ns, late) = container(&c, "cn4l", "app2");
    assert_eq!(identity(&late), identity(&app2));

    // Node C's agent dies: once its lease runs out (3 s) the others forget its range.
    let _ = c.agent.stop_with(Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(20), || {
            let t: Vec<BpfTunnelEntry> = get(&a, "/map/tunnel");
            !t.iter().any(|e| e.prefix == "10.103.0.0/16") && nodes(&a).len() == 2
        }),
        "node C is still known to node A: {:?}",
        nodes(&a)
    );
    drop(c);

    // A node whose range overlaps node A's is refused, naming node A.
    let netns = Netns::new("cn4d");
    underlay.connect(&netns, 4);
    let dir = integration::test_dir();
    let spec = NodeSpec::new(4, "vxlan");
    let mut options = node_options(&netns, &underlay, &etcd, &spec);
    for arg in options.args.iter_mut() {
        if arg == "10.104.0.0/16" {
            *arg = "10.101.128.0/17".to_string();
        }
    }
    let mut d = Agent::spawn(dir.path(), &options);
    let code = d.wait_exit(Duration::from_secs(15));
    let out = d.output();
    assert!(
        code.is_some_and(|c| c != 0),
        "overlapping node started:\n{out}"
    );
    assert!(
        out.contains("10.101.128.0/17") && out.contains("node1") && out.contains("10.101.0.0/16"),
        "the refusal does not name the overlap:\n{out}"
    );
    drop(app1_ns);
}

#[test]
fn a_restarted_node_keeps_its_records_and_cross_node_flows() {
    if !require_root("cluster_restart") {
        return;
    }
    let underlay = Underlay::new("cu5", 65);
    let etcd = underlay.etcd();
    let spec_a = NodeSpec::new(1, "vxlan");
    let mut a = start_node("cn5a", &underlay, &etcd, &spec_a);
    let b = start_node("cn5b", &underlay, &etcd, &NodeSpec::new(2, "vxlan"));
    wait_nodes(&[&a, &b], 2);

    let (app1_ns, app1) = container(&a, "cn5a1", "app1");
    let (app2_ns, app2) = container(&b, "cn5a2", "app2");
    let (app3_ns, app3) = container(&b, "cn5a3", "app3");
    let _server = EchoServer::start(&app1_ns.name, ANY80);
    let app1_ip = IpAddr::V4(endpoint_ipv4(&app1));
    wait_ipcache(&a, IpAddr::V4(endpoint_ipv4(&app2)), identity(&app2));
    wait_ipcache(&a, IpAddr::V4(endpoint_ipv4(&app3)), identity(&app3));
    wait_ipcache(&b, app1_ip, identity(&app1));
    import(&a, L3_L4_POLICY);
    let to_app1 = endpoint_addr(&app1, 80);
    assert!(
        eventually(Duration::from_secs(5), || !tcp_works(
            &app3_ns.name,
            to_app1
        )),
        "app3 -> app1 denied before the restarts"
    );
    let mut stream =
        tcp_connect(&app2_ns.name, to_app1, Duration::from_secs(2)).expect("app2 -> app1");

    // Every change of node and endpoint records, as any other node would see them.
    let (_client, watches) = etcd.watch(["cilium/state/nodes/v1/", "cilium/state/ip/v1/"]);
    for (i, signal) in [Signal::SIGKILL, Signal::SIGTERM, Signal::SIGKILL]
        .into_iter()
        .enumerate()
    {
        let _ = a.agent.stop_with(signal);
        assert_eq!(
            tcp_exchange(&mut stream, b"down").expect("stream while node A's agent is down"),
            b"down"
        );
        assert!(
            !tcp_works(&app3_ns.name, to_app1),
            "restart {i} ({signal}): app3 stays denied while node A's agent is down"
        );
        a.agent = Agent::start(
            a.dir.path(),
            &node_options(&a.netns, &underlay, &etcd, &spec_a),
        );
        assert_eq!(
            tcp_exchange(&mut stream, b"up").expect("stream after the restart"),
            b"up"
        );
        assert!(
            !tcp_works(&app3_ns.name, to_app1),
            "restart {i}: app3 denied after the restart"
        );
        assert!(
            tcp_works(&app2_ns.name, to_app1),
            "restart {i}: a new app2 -> app1 connection"
        );
        assert!(
            status(&a)
                .cluster
                .is_some_and(|c| c.state.to_string() == "Ok"),
            "restart {i}: {:?}",
            status(&a)
        );
    }
    // Past node A's lease TTL (3 s): its records were resumed, never deleted or rewritten.
    std::thread::sleep(Duration::from_secs(4));
    let mut changes = Vec::new();
    for watch in &watches {
        while let Ok(event) = watch.try_recv() {
            changes.push(event);
        }
    }
    assert!(
        changes.is_empty(),
        "the other nodes saw node A's records change across its restarts: {changes:?}"
    );
    // The watch does see node A's changes: a new endpoint there.
    let (_app4_ns, app4) = container(&a, "cn5a4", "app4");
    let published = watches[1]
        .recv_timeout(Duration::from_secs(10))
        .expect("node A publishes its new endpoint");
    assert!(
        matches!(&published, agent_core::kvstore::WatchEvent::Put { key, .. }
            if key.ends_with(&endpoint_ipv4(&app4).to_string())),
        "{published:?}"
    );
    assert_eq!(
        wait_ipcache(&b, app1_ip, identity(&app1)).identity,
        identity(&app1)
    );
    assert_eq!(nodes(&b).len(), 2);
    drop(app2_ns);
}
