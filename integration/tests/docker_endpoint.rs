//! The agent side of Docker endpoints (`veth-peer-name`): the pair is made in the node's
//! namespace, and the test then does what libnetwork does with the peer (move it into the
//! sandbox, rename it, give it the IPAM driver's /32 and /128, the Join routes), so the
//! proof is traffic between that container and one attached by CNI, enforced by the datapath.

use std::net::IpAddr;

use cilium_api::models::Endpoint;
use integration::cni::Node;
use integration::traffic::{ping, tcp_works, EchoServer};
use integration::{require_root, Netns};
use serde_json::{json, Value};

/// What libnetwork does at Join: move the peer into the sandbox as `eth0`, with the address
/// from the IPAM driver, the router on-link and the default route via it.
fn docker_join(node: &Node, peer: &str, sandbox: &Netns, addrs: &[(IpAddr, &str)]) {
    node.netns
        .exec_ok(&["ip", "link", "set", peer, "netns", &sandbox.name]);
    sandbox.exec_ok(&["ip", "link", "set", peer, "name", "eth0"]);
    sandbox.exec_ok(&["ip", "link", "set", "lo", "up"]);
    sandbox.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    for (ip, router) in addrs {
        let host = if ip.is_ipv4() { "32" } else { "128" };
        let fam = if ip.is_ipv4() { "-4" } else { "-6" };
        sandbox.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/{host}"),
            "dev",
            "eth0",
            "nodad",
        ]);
        sandbox.exec_ok(&[
            "ip", fam, "route", "add", router, "dev", "eth0", "scope", "link",
        ]);
        sandbox.exec_ok(&["ip", fam, "route", "add", "default", "via", router]);
    }
}

fn allocate(node: &Node, family: &str) -> IpAddr {
    let (status, body) = node.agent.http(
        "POST",
        &format!("/ipam?family={family}&owner=docker-ipam"),
        None,
    );
    assert_eq!(status, 201, "{body}");
    let v: Value = serde_json::from_str(&body).expect("allocation");
    v["endpoint"][family]
        .as_str()
        .expect("ip")
        .parse()
        .expect("ip")
}

#[test]
fn docker_endpoint_pair_in_the_node_namespace() {
    if !require_root("docker_endpoint_pair_in_the_node_namespace") {
        return;
    }
    let node = Node::start("dke");
    let other = Netns::new("dkeo");
    node.add(&other);
    let (_, body) = node.agent.http(
        "GET",
        &format!("/endpoint/container-id:{}", other.name),
        None,
    );
    let other_ep: Endpoint = serde_json::from_str(&body).expect("endpoint");
    let other_v4 = other_ep.addressing.ipv4.expect("v4");

    let v4 = allocate(&node, "ipv4");
    let v6 = allocate(&node, "ipv6");
    let eid = "4f2a9c0d1e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f";
    let peer = "tmp4f2a9c0d1e8";
    let req = json!({
        "docker-endpoint-id": eid,
        "docker-network-id": "n1",
        "addressing": {"ipv4": v4, "ipv6": v6},
        "veth-peer-name": peer,
        "mac": "02:42:0a:17:aa:01",
    });
    // Bad input first: nothing may be left behind.
    for (bad, why) in [
        (
            json!({"veth-peer-name": peer, "docker-endpoint-id": eid}),
            "addressing",
        ),
        (
            json!({"veth-peer-name": "bad/name", "docker-endpoint-id": eid,
                   "addressing": {"ipv4": v4}}),
            "interface name",
        ),
        (
            json!({"veth-peer-name": peer, "docker-endpoint-id": eid,
                   "addressing": {"ipv4": "10.23.200.200"}}),
            "not reserved",
        ),
        (
            json!({"veth-peer-name": peer, "netns-path": "/proc/1/ns/net",
                   "docker-endpoint-id": eid}),
            "exclude each other",
        ),
    ] {
        let (status, body) = node.agent.http(
            "PUT",
            &format!("/endpoint/docker-endpoint:{eid}"),
            Some(&bad.to_string()),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let links = node.sh(&["ip", "-o", "link", "show"]);
    assert!(
        !links.contains(peer),
        "a rejected request made links:\n{links}"
    );

    let (status, body) = node.agent.http(
        "PUT",
        &format!("/endpoint/docker-endpoint:{eid}"),
        Some(&req.to_string()),
    );
    assert_eq!(status, 201, "{body}");
    let ep: Endpoint = serde_json::from_str(&body).expect("endpoint");
    assert_eq!(
        ep.mac, "02:42:0a:17:aa:01",
        "the runtime's MAC is the peer's"
    );
    let links = node.sh(&["ip", "-o", "link", "show"]);
    assert!(
        links.contains(peer) && links.contains(&ep.interface_name),
        "{links}"
    );
    // The same again is refused and changes nothing.
    let (status, _) = node.agent.http(
        "PUT",
        &format!("/endpoint/docker-endpoint:{eid}"),
        Some(&req.to_string()),
    );
    assert_eq!(status, 409);

    let sandbox = Netns::new("dkes");
    let (r4, r6) = (
        ep.gateway.ipv4.expect("router v4").to_string(),
        ep.gateway.ipv6.expect("router v6").to_string(),
    );
    docker_join(&node, peer, &sandbox, &[(v4, &r4), (v6, &r6)]);
    let (status, body) = node.agent.http(
        "GET",
        &format!("/endpoint/docker-endpoint:{eid}/healthz"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"connected\":true"), "{body}");

    // Until the watcher brings the container's labels, the endpoint has the init identity,
    // on which policy is enforced even without rules: nothing gets through.
    let identity = ep.identity.as_ref().map(|i| (i.id, i.labels.clone()));
    assert_eq!(
        identity,
        Some((5, vec!["reserved:init".to_string()])),
        "{ep:?}"
    );
    assert!(
        !ping(&sandbox.name, &[], &other_v4.to_string()),
        "init identity: no traffic before the labels are known"
    );
    let (status, body) = node.agent.http(
        "PATCH",
        &format!("/endpoint/docker-endpoint:{eid}"),
        Some(r#"{"labels": ["container:id=dk"], "container-name": "dk"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let ep: Endpoint = serde_json::from_str(&body).expect("endpoint");
    assert!(
        ep.identity.as_ref().is_some_and(|i| i.id >= 256),
        "labels known: {ep:?}"
    );

    // Traffic both ways, both families, through the datapath; the router answers.
    assert!(
        ping(&sandbox.name, &[], &r4),
        "router v4 from the docker container"
    );
    assert!(ping(&sandbox.name, &[], &r6), "router v6 (proxy NDP)");
    assert!(
        ping(&sandbox.name, &[], &other_v4.to_string()),
        "to the CNI container"
    );
    let _server = EchoServer::start(&sandbox.name, "[::]:8080".parse().expect("addr"));
    assert!(
        tcp_works(&other.name, std::net::SocketAddr::new(v4, 8080)),
        "CNI container -> docker container v4"
    );
    assert!(
        tcp_works(&other.name, std::net::SocketAddr::new(v6, 8080)),
        "CNI container -> docker container v6"
    );
    // The source check uses the peer's MAC and addresses: a spoofed source is dropped.
    sandbox.exec_ok(&["ip", "addr", "add", "10.23.99.99/32", "dev", "eth0"]);
    assert!(
        !ping(&sandbox.name, &["-I", "10.23.99.99"], &other_v4.to_string()),
        "spoofed source"
    );

    // Deleting the endpoint removes the pair but leaves the addresses to the IPAM driver.
    let (status, body) =
        node.agent
            .http("DELETE", &format!("/endpoint/docker-endpoint:{eid}"), None);
    assert!(status == 200 || status == 202, "{status} {body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sandbox
        .exec_ok(&["ip", "-o", "link", "show"])
        .stdout
        .windows(4)
        .any(|w| w == b"eth0")
    {
        assert!(std::time::Instant::now() < deadline, "the pair stayed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for ip in [v4, v6] {
        let (status, body) = node.agent.http("DELETE", &format!("/ipam/{ip}"), None);
        assert_eq!(status, 200, "{ip} still held by the IPAM driver: {body}");
    }
}
