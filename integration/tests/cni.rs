//! `cilium-cni` exec'd exactly as a runtime does, against a real agent in its own node
//! namespace, with containers as further namespaces: results in every spec version, real
//! traffic, CHECK, DEL in every situation, GC, labels, bad input and a missing agent.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cilium_api::models::{Endpoint, StatusResponse};
use integration::cni::{exec_plugin, Invocation, Node};
use integration::{bin, require_root, Netns};
use serde_json::{json, Value};

fn endpoints(node: &Node) -> Vec<Endpoint> {
    serde_json::from_str(&node.agent.cli(&["-o", "json", "endpoint", "list"]).ok())
        .expect("endpoint list JSON")
}

fn allocated(node: &Node) -> Vec<String> {
    let status: StatusResponse =
        serde_json::from_str(&node.agent.cli(&["-o", "json", "status"]).ok()).expect("status JSON");
    let mut all = status.ipam.ipv4;
    all.extend(status.ipam.ipv6);
    all
}

/// Links in the node namespace whose names start with `lxc`.
fn lxc_links(node: &Node) -> Vec<String> {
    node.sh(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("lxc"))
        .collect()
}

/// Node routes through lxc links.
fn lxc_routes(node: &Node) -> Vec<String> {
    let mut out = node.sh(&["ip", "-4", "route", "show"]);
    out.push_str(&node.sh(&["ip", "-6", "route", "show"]));
    out.lines()
        .filter(|l| l.contains(" dev lxc"))
        .map(str::to_string)
        .collect()
}

fn endpoint_files(node: &Node) -> usize {
    std::fs::read_dir(node.agent.state_dir.join("endpoints"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What is left of endpoints on the node: endpoints, allocated addresses (routers aside),
/// lxc links, routes through them, endpoint state files.
fn leftovers(node: &Node) -> Vec<String> {
    let mut left: Vec<String> = endpoints(node)
        .iter()
        .map(|e| format!("endpoint {}", e.id))
        .collect();
    left.extend(
        allocated(node)
            .into_iter()
            .filter(|a| a != "10.23.0.1" && a != "f00d::c000:217:0:1")
            .map(|a| format!("address {a}")),
    );
    left.extend(lxc_links(node).into_iter().map(|l| format!("link {l}")));
    left.extend(lxc_routes(node).into_iter().map(|r| format!("route {r}")));
    if endpoint_files(node) > 0 {
        left.push(format!("{} endpoint state files", endpoint_files(node)));
    }
    left
}

/// The node has no trace of any endpoint left. The endpoint record goes at once; the kernel
/// tears the veth pair down in the background, and the addresses are released after it, so
/// those get a few seconds.
fn assert_clean(node: &Node) {
    assert!(
        endpoints(node).is_empty(),
        "endpoints left: {:?}",
        endpoints(node)
    );
    assert_eq!(endpoint_files(node), 0, "endpoint state files left");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(node);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's IPv4 and IPv6 addresses from a 1.x/0.3+ result.
fn result_ips(result: &Value) -> (String, String) {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for ip in result["ips"].as_array().expect("ips") {
        let addr = ip["address"].as_str().expect("ips[].address");
        let bare = addr.split('/').next().unwrap_or(addr).to_string();
        if bare.contains(':') {
            assert!(addr.ends_with("/128"), "{addr}");
            v6 = bare;
        } else {
            assert!(addr.ends_with("/32"), "{addr}");
            v4 = bare;
        }
    }
    (v4, v6)
}

fn in_pool(v4: &str, v6: &str) {
    assert!(
        v4.starts_with("10.23."),
        "IPv4 {v4} not from the agent's pool"
    );
    assert!(
        v6.starts_with("f00d::c000:217:0:"),
        "IPv6 {v6} not from the agent's pool"
    );
}

#[test]
fn every_spec_version_add_check_del() {
    if !require_root("every_spec_version_add_check_del") {
        return;
    }
    let node = Node::start("cnv");
    for version in [
        None,
        Some("0.1.0"),
        Some("0.2.0"),
        Some("0.3.0"),
        Some("0.3.1"),
        Some("0.4.0"),
        Some("1.0.0"),
        Some("1.1.0"),
    ] {
        let container = Netns::new("cnvc");
        let inv = Invocation::new("ADD", &container.name, &container.path());
        let conf = node.config(version);
        let result = node.cni(&inv, &conf).ok();
        let shown = version.unwrap_or("0.1.0");
        assert_eq!(result["cniVersion"], shown, "{result}");
        let (v4, v6) = match shown {
            "0.1.0" | "0.2.0" => {
                assert!(result.get("ips").is_none(), "{result}");
                let ip4 = result["ip4"]["ip"].as_str().unwrap();
                let ip6 = result["ip6"]["ip"].as_str().unwrap();
                assert_eq!(result["ip4"]["gateway"], "10.23.0.1");
                assert_eq!(result["ip6"]["gateway"], "f00d::c000:217:0:1");
                assert_eq!(result["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
                (
                    ip4.trim_end_matches("/32").to_string(),
                    ip6.trim_end_matches("/128").to_string(),
                )
            }
            _ => {
                let ips = result["ips"].as_array().unwrap();
                for ip in ips {
                    assert_eq!(ip["interface"], 1, "{result}");
                    let versioned = ip.get("version").is_some();
                    assert_eq!(
                        versioned,
                        shown.starts_with("0."),
                        "version field in {shown}: {result}"
                    );
                }
                let ifaces = result["interfaces"].as_array().unwrap();
                assert_eq!(ifaces.len(), 2, "{result}");
                assert!(ifaces[0]["name"].as_str().unwrap().starts_with("lxc"));
                assert_eq!(ifaces[1]["name"], "eth0");
                assert_eq!(ifaces[1]["sandbox"], container.path().as_str());
                let routes: Vec<&str> = result["routes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["dst"].as_str().unwrap())
                    .collect();
                assert!(
                    routes.contains(&"0.0.0.0/0") && routes.contains(&"::/0"),
                    "{result}"
                );
                result_ips(&result)
            }
        };
        in_pool(&v4, &v6);
        // The agent records the endpoint with the same addresses.
        let eps = endpoints(&node);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].container_id, container.name);
        assert_eq!(eps[0].addressing.ipv4.unwrap().to_string(), v4);
        assert_eq!(eps[0].addressing.ipv6.unwrap().to_string(), v6);
        assert_eq!(eps[0].netns_path, container.path());
        assert_eq!(eps[0].mtu, 1450);
        // The container has them, with the MTU of the config.
        let shown_addr =
            String::from_utf8_lossy(&container.exec_ok(&["ip", "addr", "show", "eth0"]).stdout)
                .into_owned();
        assert!(
            shown_addr.contains(&format!("inet {v4}/32")),
            "{shown_addr}"
        );
        assert!(
            shown_addr.contains(&format!("inet6 {v6}/128")),
            "{shown_addr}"
        );
        assert!(shown_addr.contains("mtu 1450"), "{shown_addr}");

        if !shown.starts_with("0.1") && !shown.starts_with("0.2") && !shown.starts_with("0.3") {
            let mut check_conf = conf.clone();
            check_conf["prevResult"] = result.clone();
            node.cni(
                &Invocation {
                    command: "CHECK".into(),
                    ..inv.clone()
                },
                &check_conf,
            )
            .ok();
        }
        let del = Invocation {
            command: "DEL".into(),
            ..inv.clone()
        };
        node.cni(&del, &conf).ok();
        node.cni(&del, &conf).ok(); // a second DEL succeeds
        assert_clean(&node);
    }
}

/// A busybox TCP server in a namespace, killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &Netns, port: &str) -> Server {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "busybox",
                "nc",
                "-ll",
                "-p",
                port,
                "-e",
                "/bin/echo",
                "hello",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox nc");
        std::thread::sleep(Duration::from_millis(200));
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tcp_hello(from: &[&str], ip: &str, port: &str) -> String {
    let mut args: Vec<&str> = from.to_vec();
    args.extend_from_slice(&["busybox", "nc", "-w", "2", ip, port]);
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .expect("run busybox nc");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ping(from: &[&str], ip: &str) -> bool {
    let mut args: Vec<&str> = from.to_vec();
    args.extend_from_slice(&["ping", "-c", "1", "-W", "2", ip]);
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run ping")
        .status
        .success()
}

#[test]
fn traffic_between_containers_and_the_node() {
    if !require_root("traffic_between_containers_and_the_node") {
        return;
    }
    let node = Node::start("cnt");
    let a = Netns::new("cnta");
    let b = Netns::new("cntb");
    let (a4, a6) = result_ips(&node.add(&a));
    let (b4, b6) = result_ips(&node.add(&b));
    in_pool(&a4, &a6);
    in_pool(&b4, &b6);
    let _server = Server::start(&b, "7001");
    let _node_server = Server::start(&node.netns, "7002");
    let in_a = ["ip", "netns", "exec", a.name.as_str()];
    let in_node = ["ip", "netns", "exec", node.netns.name.as_str()];
    for ip in [&b4, &b6] {
        assert!(ping(&in_a, ip), "ICMP container to container {ip}");
        assert_eq!(
            tcp_hello(&in_a, ip, "7001"),
            "hello",
            "TCP container to container {ip}"
        );
        assert!(ping(&in_node, ip), "ICMP node to container {ip}");
        assert_eq!(
            tcp_hello(&in_node, ip, "7001"),
            "hello",
            "TCP node to container {ip}"
        );
    }
    for router in ["10.23.0.1", "f00d::c000:217:0:1"] {
        assert!(ping(&in_a, router), "ICMP container to node {router}");
        assert_eq!(
            tcp_hello(&in_a, router, "7002"),
            "hello",
            "TCP container to node {router}"
        );
    }
}

#[test]
fn check_notices_a_removed_interface() {
    if !require_root("check_notices_a_removed_interface") {
        return;
    }
    let node = Node::start("cnk");
    let c = Netns::new("cnkc");
    let result = node.add(&c);
    let mut conf = node.config(Some("1.0.0"));
    conf["prevResult"] = result;
    let check = Invocation::new("CHECK", &c.name, &c.path());
    node.cni(&check, &conf).ok();
    c.exec_ok(&["ip", "link", "del", "eth0"]);
    let msg = node.cni(&check, &conf).err(101);
    assert!(msg.contains("missing"), "{msg}");
    node.cni(
        &Invocation {
            command: "DEL".into(),
            ..check
        },
        &conf,
    )
    .ok();
    assert_clean(&node);
}

#[test]
fn del_after_the_netns_is_gone_frees_the_address() {
    if !require_root("del_after_the_netns_is_gone_frees_the_address") {
        return;
    }
    let node = Node::start("cng");
    let c = Netns::new("cngc");
    let (v4, _) = result_ips(&node.add(&c));
    assert!(allocated(&node).iter().any(|a| a.starts_with(&v4)));
    let inv = Invocation::new("DEL", &c.name, &c.path());
    drop(c);
    node.cni(&inv, &node.config(Some("1.0.0"))).ok();
    // Without CNI_NETNS at all, too.
    node.cni(
        &Invocation { netns: None, ..inv },
        &node.config(Some("1.0.0")),
    )
    .ok();
    assert_clean(&node);
}

#[test]
fn add_fails_on_an_existing_interface_and_leaves_nothing() {
    if !require_root("add_fails_on_an_existing_interface_and_leaves_nothing") {
        return;
    }
    let node = Node::start("cne");
    let c = Netns::new("cnec");
    c.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let inv = Invocation::new("ADD", &c.name, &c.path());
    let run = node.cni(&inv, &node.config(Some("1.0.0")));
    assert_ne!(run.code, 0);
    let msg = run.json()["msg"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("eth0") && msg.contains("already exists"),
        "{msg}"
    );
    assert_clean(&node);
    // DEL after a failed ADD succeeds (runtimes send it).
    node.cni(
        &Invocation {
            command: "DEL".into(),
            ..inv
        },
        &node.config(Some("1.0.0")),
    )
    .ok();
    // The interface that was there is untouched.
    c.exec_ok(&["ip", "link", "show", "eth0"]);
}

#[test]
fn bad_input_and_a_missing_agent() {
    if !require_root("bad_input_and_a_missing_agent") {
        return;
    }
    let node = Node::start("cnb");
    let c = Netns::new("cnbc");
    let inv = Invocation::new("ADD", &c.name, &c.path());
    let plugin = bin("cilium-cni");
    exec_plugin(&plugin, &inv, "{not json").err(6);
    let mut conf = node.config(Some("0.9.0"));
    node.cni(&inv, &conf).err(1);
    conf = node.config(Some("1.0.0"));
    conf["socket-path"] = json!(node.dir.path().join("nobody.sock"));
    let msg = node.cni(&inv, &conf).err(11);
    assert!(msg.contains("nobody.sock"), "{msg}");
    let status = node.cni(&Invocation::bare("STATUS"), &conf).err(50);
    assert!(status.contains("nobody.sock"), "{status}");
    node.cni(&Invocation::bare("STATUS"), &node.config(Some("1.1.0")))
        .ok();
    let missing = Invocation {
        netns: Some(node.dir.path().join("no-netns").display().to_string()),
        ..inv.clone()
    };
    node.cni(&missing, &node.config(Some("1.0.0"))).err(3);
    let no_id = Invocation {
        container_id: None,
        ..inv
    };
    node.cni(&no_id, &node.config(Some("1.0.0"))).err(4);
    assert_clean(&node);
}

#[test]
fn mesos_kubernetes_and_cni_labels() {
    if !require_root("mesos_kubernetes_and_cni_labels") {
        return;
    }
    let node = Node::start("cnl");
    let c = Netns::new("cnlc");
    let mut conf = node.config(Some("1.0.0"));
    conf["args"] = json!({
        "org.apache.mesos": {"network_info": {"name": "cilium", "labels": {"labels": [
            {"key": "app", "value": "web"}, {"key": "tier", "value": "front"}
        ]}}},
        "cni": {"labels": [{"key": "team", "value": "blue"}]}
    });
    let mut inv = Invocation::new("ADD", &c.name, &c.path());
    inv.args = Some(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=x"
            .into(),
    );
    node.cni(&inv, &conf).ok();
    let eps = endpoints(&node);
    assert_eq!(eps.len(), 1);
    let labels = &eps[0].labels;
    for want in [
        "mesos:app=web",
        "mesos:tier=front",
        "container:team=blue",
        "k8s:io.kubernetes.pod.namespace=prod",
    ] {
        assert!(
            labels.iter().any(|l| l == want),
            "{want} missing from {labels:?}"
        );
    }
    assert_eq!(eps[0].pod_name, "prod/web-1");
    let listed = node.agent.cli(&["endpoint", "list"]).ok();
    assert!(listed.contains("mesos:app=web"), "{listed}");
    let detail = node
        .agent
        .cli(&["endpoint", "get", &format!("container-id:{}", c.name)])
        .ok();
    assert!(
        detail.contains(&c.path()) && detail.contains("eth0") && detail.contains("lxc"),
        "{detail}"
    );
    node.cni(
        &Invocation {
            command: "DEL".into(),
            ..inv
        },
        &conf,
    )
    .ok();
    assert_clean(&node);
}

#[test]
fn gc_releases_what_the_runtime_no_longer_knows() {
    if !require_root("gc_releases_what_the_runtime_no_longer_knows") {
        return;
    }
    let node = Node::start("cnc");
    let keep = Netns::new("cnck");
    let stale = Netns::new("cncs");
    node.add(&keep);
    node.add(&stale);
    assert_eq!(endpoints(&node).len(), 2);
    let mut conf = node.config(Some("1.1.0"));
    conf["cni.dev/valid-attachments"] = json!([{"containerID": keep.name, "ifname": "eth0"}]);
    node.cni(&Invocation::bare("GC"), &conf).ok();
    let left = endpoints(&node);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].container_id, keep.name);
    assert_eq!(lxc_links(&node).len(), 1);
    // The libcni spelling works too.
    let mut conf = node.config(Some("1.1.0"));
    conf["cni.dev/attachments"] = json!([]);
    node.cni(&Invocation::bare("GC"), &conf).ok();
    assert_clean(&node);
}

#[test]
fn two_hundred_add_del_cycles_leave_nothing_behind() {
    if !require_root("two_hundred_add_del_cycles_leave_nothing_behind") {
        return;
    }
    let node = Node::start("cn2");
    let conf = node.config(Some("1.0.0"));
    let c = Netns::new("cn2c");
    for i in 0..200 {
        let id = format!("cycle-{i}");
        let inv = Invocation::new("ADD", &id, &c.path());
        let result = node.cni(&inv, &conf).ok();
        let (v4, v6) = result_ips(&result);
        in_pool(&v4, &v6);
        node.cni(
            &Invocation {
                command: "DEL".into(),
                ..inv
            },
            &conf,
        )
        .ok();
    }
    assert_clean(&node);
    let inside =
        String::from_utf8_lossy(&c.exec_ok(&["ip", "-o", "link", "show"]).stdout).into_owned();
    assert_eq!(
        inside.lines().count(),
        1,
        "only lo may be left in the container: {inside}"
    );
}

#[test]
fn traffic_flows_where_docker_set_the_forward_policy_to_drop() {
    if !require_root("traffic_flows_where_docker_set_the_forward_policy_to_drop") {
        return;
    }
    let node = Node::start("cnd");
    // What dockerd does on its hosts.
    node.sh(&["iptables", "-P", "FORWARD", "DROP"]);
    node.sh(&["ip6tables", "-P", "FORWARD", "DROP"]);
    let a = Netns::new("cnda");
    let b = Netns::new("cndb");
    node.add(&a);
    let (b4, b6) = result_ips(&node.add(&b));
    let in_a = ["ip", "netns", "exec", a.name.as_str()];
    assert!(
        ping(&in_a, &b4),
        "ICMP over IPv4 through a DROP FORWARD policy"
    );
    assert!(
        ping(&in_a, &b6),
        "ICMP over IPv6 through a DROP FORWARD policy"
    );
    let rules = node.sh(&["iptables", "-S", "FORWARD"]);
    assert!(rules.contains("-P FORWARD DROP"), "{rules}");
}
