//! The eBPF datapath on real traffic: containers attached through `cilium-cni` with labels,
//! the seed's policies imported through the `cilium` CLI, and bytes exchanged between the
//! namespaces to see what is delivered and what is dropped, with the reason the monitor and
//! the counters report.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cilium_api::models::Endpoint;
use integration::cni::Node;
use integration::monitor::DropMonitor;
use integration::traffic::{
    in_netns, ping, tcp_connect, tcp_exchange, tcp_works, udp_works, EchoServer,
};
use integration::{require_root, unique_name, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;

const L3_L4_POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]
  }],
  "labels": ["unspec:guide=docker"]
}]"#;

fn v4(e: &Endpoint) -> IpAddr {
    e.addressing.ipv4.expect("ipv4")
}

fn v6(e: &Endpoint) -> IpAddr {
    e.addressing.ipv6.expect("ipv6")
}

fn identity(e: &Endpoint) -> u32 {
    e.identity.as_ref().expect("identity").id
}

fn import(agent: &Agent, dir: &std::path::Path, name: &str, policy: &str) {
    let path = dir.join(name);
    std::fs::write(&path, policy).expect("write policy");
    agent
        .cli(&["policy", "import", path.to_str().expect("path")])
        .ok();
}

const ANY: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// The ids of the programs on each lxc device of the node: `dev -> [ingress, egress]`.
/// Panics unless each hook has exactly the agent's one filter.
fn attached_programs(node: &Node) -> std::collections::BTreeMap<String, Vec<String>> {
    let links = String::from_utf8_lossy(&node.netns.exec_ok(&["ip", "-o", "link", "show"]).stdout)
        .into_owned();
    let mut out = std::collections::BTreeMap::new();
    for dev in links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("lxc"))
    {
        let mut ids = Vec::new();
        for (hook, program) in [("ingress", "from_container"), ("egress", "to_container")] {
            let shown = node
                .netns
                .exec_ok(&["tc", "filter", "show", "dev", &dev, hook]);
            let shown = String::from_utf8_lossy(&shown.stdout);
            let filters: Vec<&str> = shown
                .lines()
                .filter(|l| l.contains(" bpf ") && l.contains(" handle "))
                .collect();
            assert!(
                filters.len() == 1 && filters[0].contains(program),
                "{dev} {hook}: expected one {program} filter:\n{shown}"
            );
            let id = filters[0]
                .split_whitespace()
                .skip_while(|w| *w != "id")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            ids.push(id);
        }
        out.insert(dev, ids);
    }
    out
}

#[test]
fn seed_l3_l4_policy_enforced_on_real_traffic() {
    if !require_root("seed_l3_l4_policy_enforced_on_real_traffic") {
        return;
    }
    let mut node = Node::start("dpl4");
    let c1 = Netns::new("dpl4a");
    let c2 = Netns::new("dpl4b");
    let c3 = Netns::new("dpl4c");
    let e1 = node.add_labeled(&c1, &[("id", "app1")]);
    let e2 = node.add_labeled(&c2, &[("id", "app2")]);
    let e3 = node.add_labeled(&c3, &[("id", "app3")]);
    // `[::]` sockets are dual-stack: one server per port answers both families.
    let servers: Vec<EchoServer> = [80, 81]
        .iter()
        .map(|p| EchoServer::start(&c1.name, sa(ANY, *p)))
        .collect();

    // Before any policy everything connects.
    for ip in [v4(&e1), v6(&e1)] {
        assert!(tcp_works(&c2.name, sa(ip, 80)), "app2 -> app1:80 {ip}");
        assert!(tcp_works(&c3.name, sa(ip, 80)), "app3 -> app1:80 {ip}");
        assert!(tcp_works(&c2.name, sa(ip, 81)), "app2 -> app1:81 {ip}");
        assert!(
            ping(&c3.name, &[], &ip.to_string()),
            "ping app3 -> app1 {ip}"
        );
    }
    // A connection opened before the policy, and still allowed by it.
    let mut long = tcp_connect(&c2.name, sa(v4(&e1), 80), Duration::from_secs(1)).expect("open");
    assert_eq!(
        tcp_exchange(&mut long, b"before\n").expect("echo"),
        b"before\n"
    );

    let monitor = DropMonitor::start(&node.agent);
    import(&node.agent, node.dir.path(), "l3_l4.json", L3_L4_POLICY);
    let (id1, id2, id3) = (identity(&e1), identity(&e2), identity(&e3));
    for ip in [v4(&e1), v6(&e1)] {
        assert!(
            tcp_works(&c2.name, sa(ip, 80)),
            "allowed app2 -> app1:80 {ip}"
        );
        let denied = tcp_connect(&c3.name, sa(ip, 80), Duration::from_millis(700));
        assert!(
            matches!(&denied, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "app3 -> app1:80 {ip} must time out: {denied:?}"
        );
        assert!(
            !tcp_works(&c2.name, sa(ip, 81)),
            "app2 -> app1:81 {ip} must be dropped"
        );
        assert!(
            !ping(&c2.name, &[], &ip.to_string()),
            "ping app2 -> app1 {ip}"
        );
    }
    let l3 = monitor.expect("133 app3 -> app1", |e| {
        e.kind == "drop" && e.code == 133 && e.src_identity == id3 && e.dst_identity == id1
    });
    assert_eq!(l3.message, "Policy denied (L3)");
    assert_eq!(l3.dst_endpoint, e1.id);
    assert!(l3.summary.contains(":80"), "{l3:?}");
    let line = agent_core::datapath::monitor::format_line(&l3, false, false);
    assert!(
        line.starts_with(&format!(
            "xx drop (Policy denied (L3)) to endpoint {}, identity {id3}->{id1}: ",
            e1.id
        )),
        "{line}"
    );
    monitor.expect("159 app2 -> app1:81", |e| {
        e.code == 159 && e.src_identity == id2 && e.dst_identity == id1 && e.summary.contains(":81")
    });
    assert!(node.agent.drops(133, "ingress") >= 2);
    assert!(node.agent.drops(159, "ingress") >= 2);

    // The connection opened before the policy still flows, also after the same policy is
    // imported again.
    assert_eq!(
        tcp_exchange(&mut long, b"during\n").expect("echo"),
        b"during\n"
    );
    import(&node.agent, node.dir.path(), "l3_l4.json", L3_L4_POLICY);
    assert_eq!(
        tcp_exchange(&mut long, b"after\n").expect("echo"),
        b"after\n"
    );

    // The tables the datapath uses, with counters.
    let list = node
        .agent
        .cli(&["bpf", "policy", "list", &e1.id.to_string(), "-o", "json"])
        .ok();
    let dump: serde_json::Value = serde_json::from_str(&list).expect("policy json");
    let entry = dump["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["identity"] == id2 && e["port"] == 80)
        .unwrap_or_else(|| panic!("no entry for {id2}:80 in {list}"))
        .clone();
    assert_eq!(entry["action"], "allow", "{entry}");
    assert!(entry["packets"].as_u64().unwrap_or(0) > 0, "{entry}");
    let ct = node.agent.cli(&["bpf", "ct", "list", "global"]).ok();
    assert!(ct.contains(&format!("{}:80", v4(&e1))), "{ct}");
    let endpoints = node.agent.cli(&["bpf", "endpoint", "list"]).ok();
    assert!(endpoints.contains(&v4(&e1).to_string()), "{endpoints}");
    let ipcache = node.agent.cli(&["bpf", "ipcache", "list"]).ok();
    assert!(ipcache.contains(&format!("{}/32", v4(&e3))), "{ipcache}");

    // The agent stops: programs and maps keep enforcing. It starts again: the pinned maps
    // are reconciled in place, conntrack and counters are kept.
    let ct_before = node.agent.cli(&["bpf", "ct", "list", "global"]).ok();
    let programs_before = attached_programs(&node);
    assert_eq!(programs_before.len(), 3, "{programs_before:?}");
    node.agent.stop_with(Signal::SIGKILL);
    assert_eq!(
        tcp_exchange(&mut long, b"agent down\n").expect("echo"),
        b"agent down\n"
    );
    assert!(
        tcp_works(&c2.name, sa(v4(&e1), 80)),
        "allowed while the agent is down"
    );
    assert!(
        !tcp_works(&c3.name, sa(v4(&e1), 80)),
        "denied while the agent is down"
    );
    node.agent = Agent::start(
        node.dir.path(),
        &AgentOptions {
            netns: Some(node.netns.name.clone()),
            ..Default::default()
        },
    );
    assert_eq!(
        tcp_exchange(&mut long, b"restarted\n").expect("echo"),
        b"restarted\n"
    );
    // Each device still has one filter per hook, now running the restarted agent's programs.
    let programs_after = attached_programs(&node);
    assert_eq!(programs_after.len(), 3, "{programs_after:?}");
    for (dev, before) in &programs_before {
        let after = &programs_after[dev];
        assert!(
            before.iter().zip(after).all(|(b, a)| b != a),
            "{dev}: programs replaced in place: {before:?} -> {after:?}"
        );
    }
    assert!(
        tcp_works(&c2.name, sa(v6(&e1), 80)),
        "allowed after the restart"
    );
    assert!(
        !tcp_works(&c3.name, sa(v6(&e1), 80)),
        "denied after the restart"
    );
    let ct_after = node.agent.cli(&["bpf", "ct", "list", "global"]).ok();
    let long_tuple = format!("{}:80", v4(&e1));
    assert!(
        ct_before.contains(&long_tuple) && ct_after.contains(&long_tuple),
        "conntrack kept across the restart:\n{ct_before}\n---\n{ct_after}"
    );
    let list = node
        .agent
        .cli(&["bpf", "policy", "list", &e1.id.to_string(), "-o", "json"])
        .ok();
    let dump: serde_json::Value = serde_json::from_str(&list).expect("policy json");
    let kept = dump["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["identity"] == id2 && e["port"] == 80)
        .and_then(|e| e["packets"].as_u64())
        .unwrap_or(0);
    assert!(
        kept > entry["packets"].as_u64().unwrap_or(0),
        "counters kept and counting across the restart: {list}"
    );

    // Enforcement turned off for app1 alone, live, then on again.
    let e1_id = e1.id.to_string();
    let out = node
        .agent
        .cli(&["endpoint", "config", &e1_id, "Policy=false"])
        .ok();
    assert!(out.contains("Policy") && out.contains("Disabled"), "{out}");
    assert!(
        tcp_works(&c3.name, sa(v4(&e1), 80)),
        "Policy=false on app1: app3 gets through"
    );
    let list = node.agent.cli(&["endpoint", "list"]).ok();
    let row = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(e1_id.as_str()))
        .unwrap_or_default();
    assert!(row.contains("Disabled"), "{list}");
    node.agent
        .cli(&["endpoint", "config", &e1_id, "Policy=true"])
        .ok();
    assert!(
        !tcp_works(&c3.name, sa(v4(&e1), 80)),
        "Policy=true: denied again"
    );
    // Deleting the policy restores everything.
    node.agent.cli(&["policy", "delete", "--all"]).ok();
    for ip in [v4(&e1), v6(&e1)] {
        assert!(
            tcp_works(&c3.name, sa(ip, 80)),
            "app3 -> app1:80 {ip} after delete"
        );
        assert!(
            tcp_works(&c2.name, sa(ip, 81)),
            "app2 -> app1:81 {ip} after delete"
        );
    }
    drop(servers);
}

#[test]
fn cidr_requires_udp_icmp_spoofing_and_host_traffic() {
    if !require_root("cidr_requires_udp_icmp_spoofing_and_host_traffic") {
        return;
    }
    let node = Node::start("dpcd");
    // A network outside the node: 198.51.100.2 and .3 behind a veth of the node namespace.
    let outside = Netns::new("dpcdo");
    let link = format!("dpo{}", unique_name("").trim_start_matches('-'));
    let link: String = link.chars().take(12).collect();
    let peer = format!("{link}p");
    node.sh(&[
        "ip",
        "link",
        "add",
        &link,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
        "netns",
        &outside.name,
    ]);
    node.sh(&["ip", "addr", "add", "198.51.100.1/24", "dev", &link]);
    node.sh(&["ip", "link", "set", &link, "up"]);
    for cmd in [
        vec!["ip", "addr", "add", "198.51.100.2/24", "dev", &peer],
        vec!["ip", "addr", "add", "198.51.100.3/24", "dev", &peer],
        vec!["ip", "link", "set", &peer, "up"],
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "route", "add", "default", "via", "198.51.100.1"],
    ] {
        outside.exec_ok(&cmd);
    }
    let _world = EchoServer::start(&outside.name, sa(ANY, 7000));

    let client = Netns::new("dpcdc");
    let front_prod = Netns::new("dpcdf");
    let front_qa = Netns::new("dpcdq");
    let back_prod = Netns::new("dpcdb");
    let ec = node.add_labeled(&client, &[("app", "cidrclient")]);
    let _ef = node.add_labeled(&front_prod, &[("role", "frontend"), ("env", "prod")]);
    let _eq = node.add_labeled(&front_qa, &[("role", "frontend"), ("env", "qa")]);
    let eb = node.add_labeled(&back_prod, &[("role", "backend"), ("env", "prod")]);
    let _back = EchoServer::start(&back_prod.name, sa(ANY, 53));
    let _client_server = EchoServer::start(&client.name, sa(ANY, 53));
    let ns = |n: &Netns| n.name.clone();
    let (w2, w3) = (
        sa("198.51.100.2".parse().expect("ip"), 7000),
        sa("198.51.100.3".parse().expect("ip"), 7000),
    );
    assert!(
        tcp_works(&ns(&client), w2) && tcp_works(&ns(&client), w3),
        "no policy yet"
    );

    import(
        &node.agent,
        node.dir.path(),
        "policy.json",
        r#"[{
          "endpointSelector": {"matchLabels": {"app": "cidrclient"}},
          "egress": [{"toCIDR": ["198.51.100.2/32"]}],
          "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}]}]
        }, {
          "endpointSelector": {"matchLabels": {"env": "prod"}},
          "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}]
        }, {
          "endpointSelector": {"matchLabels": {"role": "backend"}},
          "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "frontend"}}],
                       "toPorts": [{"ports": [{"port": "53", "protocol": "udp"}]}]}]
        }]"#,
    );
    // CIDR egress: only the listed prefix.
    assert!(tcp_works(&ns(&client), w2), "toCIDR 198.51.100.2/32");
    assert!(!tcp_works(&ns(&client), w3), "198.51.100.3 is not listed");
    // fromRequires + UDP port rule, both families.
    for ip in [v4(&eb), v6(&eb)] {
        assert!(
            udp_works(&ns(&front_prod), sa(ip, 53)),
            "prod frontend -> backend udp {ip}"
        );
        assert!(
            !udp_works(&ns(&front_qa), sa(ip, 53)),
            "qa frontend lacks env=prod {ip}"
        );
        assert!(!tcp_works(&ns(&front_prod), sa(ip, 53)), "only udp/53 {ip}");
        assert!(
            !ping(&ns(&front_prod), &[], &ip.to_string()),
            "no ICMP rule {ip}"
        );
    }

    // The host is not allowed into an enforced endpoint without a rule for it...
    let node_ns = node.netns.name.clone();
    assert!(
        udp_works(&ns(&front_qa), sa(v4(&ec), 53)),
        "frontend -> client"
    );
    assert!(
        !udp_works(&node_ns, sa(v4(&ec), 53)),
        "host -> client without a rule"
    );
    // ...and is with one; ICMP too, since the rule is L3 only.
    import(
        &node.agent,
        node.dir.path(),
        "host.json",
        r#"[{"endpointSelector": {"matchLabels": {"app": "cidrclient"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]}]}]"#,
    );
    for ip in [v4(&ec), v6(&ec)] {
        assert!(
            udp_works(&node_ns, sa(ip, 53)),
            "host -> client with a rule {ip}"
        );
        assert!(
            ping(&node_ns, &[], &ip.to_string()),
            "host ping with a rule {ip}"
        );
    }

    // A container cannot send from an address that is not its own.
    let spoofed_before = node.agent.drops(132, "egress");
    front_prod.exec_ok(&["ip", "addr", "add", "10.23.250.250/32", "dev", "eth0"]);
    assert!(
        !ping(
            &ns(&front_prod),
            &["-I", "10.23.250.250"],
            &v4(&ec).to_string()
        ),
        "spoofed source must be dropped"
    );
    assert!(node.agent.drops(132, "egress") > spoofed_before);

    node.sh(&["ip", "link", "del", &link]);
}

/// Sends one UDP datagram from `from` (an address the namespace need not have: FREEBIND) to
/// `to`, inside `netns`.
fn send_as(netns: &str, from: SocketAddr, to: SocketAddr) {
    in_netns(netns, move || {
        let (domain, level, opt) = match from {
            SocketAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_IP, libc::IP_FREEBIND),
            SocketAddr::V6(_) => (
                libc::AF_INET6,
                libc::IPPROTO_IPV6,
                78, /* IPV6_FREEBIND */
            ),
        };
        // SAFETY: plain socket calls on a descriptor owned here; the sockaddr buffers are
        // valid for the lengths given.
        unsafe {
            let fd = libc::socket(domain, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let one: libc::c_int = 1;
            let rc = libc::setsockopt(
                fd,
                level,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "freebind: {}", std::io::Error::last_os_error());
            let (src, src_len) = sockaddr(from);
            let rc = libc::bind(fd, (&src as *const libc::sockaddr_storage).cast(), src_len);
            assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
            let (dst, dst_len) = sockaddr(to);
            let n = libc::sendto(
                fd,
                b"spoofed".as_ptr().cast(),
                7,
                0,
                (&dst as *const libc::sockaddr_storage).cast(),
                dst_len,
            );
            assert_eq!(n, 7, "sendto {to}: {}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    });
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the family-specific view written below
    // fits in it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[test]
fn node_processes_cannot_pass_for_a_local_endpoint() {
    if !require_root("node_processes_cannot_pass_for_a_local_endpoint") {
        return;
    }
    let node = Node::start("dpsp");
    let ca = Netns::new("dpspa");
    let cb = Netns::new("dpspb");
    let ea = node.add_labeled(&ca, &[("id", "app2")]);
    let eb = node.add_labeled(&cb, &[("id", "app1")]);
    let _server = EchoServer::start(&cb.name, sa(ANY, 9999));
    // The real endpoint A reaches B.
    assert!(udp_works(&ca.name, sa(v4(&eb), 9999)));
    assert!(udp_works(&ca.name, sa(v6(&eb), 9999)));
    let count_132 = |what: &str, send: &dyn Fn()| {
        let before = node.agent.drops(132, "ingress");
        send();
        let deadline = Instant::now() + Duration::from_secs(3);
        while node.agent.drops(132, "ingress") == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            node.agent.drops(132, "ingress"),
            before + 1,
            "{what} is dropped as spoofed on its way into B"
        );
    };
    // A process on the node sending with A's IPv6 address (IPV6_FREEBIND needs no
    // privilege). (IPv4 routing refuses a source the node does not have.)
    count_132("A's IPv6 address from a node process", &|| {
        send_as(&node.netns.name, sa(v6(&ea), 40000), sa(v6(&eb), 9999))
    });
    // A host on the network behind the node sending with A's IPv4 address, forwarded by a
    // node that does no reverse-path filtering.
    let outside = Netns::new("dpspo");
    let (vout, a4) = (
        format!("vo{}", &outside.name[outside.name.len() - 6..]),
        v4(&ea),
    );
    node.netns.exec_ok(&[
        "ip",
        "link",
        "add",
        &vout,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    node.netns
        .exec_ok(&["ip", "addr", "add", "192.168.77.1/24", "dev", &vout]);
    node.netns.exec_ok(&["ip", "link", "set", &vout, "up"]);
    for key in ["all", "default", &vout] {
        node.netns
            .exec_ok(&["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")]);
    }
    node.netns
        .exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    outside.exec_ok(&["ip", "addr", "add", "192.168.77.2/24", "dev", "eth0"]);
    outside.exec_ok(&["ip", "addr", "add", &format!("{a4}/32"), "dev", "lo"]);
    outside.exec_ok(&["ip", "link", "set", "lo", "up"]);
    outside.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    outside.exec_ok(&["ip", "route", "add", "10.23.0.0/16", "via", "192.168.77.1"]);
    count_132("A's IPv4 address from the network", &|| {
        send_as(&outside.name, sa(a4, 40000), sa(v4(&eb), 9999))
    });
    // The node's own address still reaches B.
    assert!(udp_works(&node.netns.name, sa(v4(&eb), 9999)));
}
