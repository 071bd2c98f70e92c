//! Services on real traffic: frontends created with `cilium service update`, connections
//! from containers spread over backend containers by the datapath, replies coming back from
//! the frontend address, and what happens when backends change, the agent restarts, the
//! service has no backend, or the policy of a backend does not admit the client.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cilium_api::models::{Endpoint, Service};
use integration::cni::Node;
use integration::traffic::in_netns;
use integration::{require_root, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;
use serde_json::json;

/// A backend: on every TCP connection it first sends its tag and a newline, then echoes;
/// every UDP datagram is answered with the tag. Stops on drop.
struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    fn start(netns: &str, port: u16, tag: &str) -> Backend {
        let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
        let (tcp, udp) = in_netns(netns, move || {
            (
                TcpListener::bind(any).expect("bind tcp"),
                UdpSocket::bind(any).expect("bind udp"),
            )
        });
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, t1) = (Arc::clone(&stop), tag.to_string());
        let tcp_thread = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (s, tag) = (Arc::clone(&s1), t1.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                    if conn.write_all(format!("{tag}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    while !s.load(Ordering::Relaxed) {
                        match conn.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) if conn.write_all(&buf[..n]).is_err() => return,
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        let (s2, t2) = (Arc::clone(&stop), tag.to_string());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(t2.as_bytes(), from);
                }
            }
        });
        Backend {
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP connection to `to` from `netns` that read the backend's tag line.
struct Conn {
    reader: BufReader<TcpStream>,
    tag: String,
}

impl Conn {
    fn open(netns: &str, to: SocketAddr) -> io::Result<Conn> {
        let stream = in_netns(netns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        // The socket is connected to the frontend: a reply from any other source would not
        // reach it, so the tag proves the reverse translation.
        assert_eq!(stream.peer_addr()?, to);
        let mut reader = BufReader::new(stream);
        let mut tag = String::new();
        reader.read_line(&mut tag)?;
        if tag.is_empty() {
            return Err(io::Error::other("closed before the tag"));
        }
        Ok(Conn {
            reader,
            tag: tag.trim().to_string(),
        })
    }

    fn echo(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        self.reader.get_mut().write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        self.reader.read_exact(&mut back)?;
        Ok(back)
    }
}

/// The backend tags of `n` fresh connections, counted.
fn spread(netns: &str, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let conn = Conn::open(netns, to).unwrap_or_else(|e| panic!("connection {i} to {to}: {e}"));
        *counts.entry(conn.tag).or_insert(0) += 1;
    }
    counts
}

/// The tag answering one UDP datagram sent from a fresh socket connected to `to`.
fn udp_tag(netns: &str, to: SocketAddr) -> io::Result<String> {
    let bind = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = in_netns(netns, move || UdpSocket::bind(bind))?;
    // Connected: only datagrams from the frontend address and port are received.
    sock.connect(to)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send(b"who")?;
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn put_service(agent: &Agent, id: u16, frontend: &str, backends: &[(IpAddr, u16, u16)]) {
    let (ip, rest) = frontend.rsplit_once(':').expect("ip:port/proto");
    let (port, proto) = rest.split_once('/').expect("port/proto");
    let body = json!({
        "frontend-address": {
            "ip": ip.trim_matches(|c| c == '[' || c == ']'),
            "port": port.parse::<u16>().expect("port"),
            "protocol": proto,
        },
        "backend-addresses": backends.iter().map(|(ip, port, weight)| json!({
            "ip": ip.to_string(), "port": port, "weight": weight,
        })).collect::<Vec<_>>(),
    });
    let (status, reply) = agent.http("PUT", &format!("/service/{id}"), Some(&body.to_string()));
    assert!(status == 200 || status == 201, "{status}: {reply}");
    let svc: Service = serde_json::from_str(&reply).expect("service");
    assert!(svc.status.is_some(), "the datapath serves it: {reply}");
}

fn within(counts: &BTreeMap<String, usize>, tag: &str, expected: f64) {
    let got = counts.get(tag).copied().unwrap_or(0) as f64;
    assert!(
        (got - expected).abs() <= expected * 0.2,
        "{tag}: {got} connections, expected {expected} ± 20%: {counts:?}"
    );
}

#[test]
fn tcp_service_spreads_by_weight_and_survives_backend_changes_and_restarts() {
    if !require_root("tcp_service_spreads_by_weight_and_survives_backend_changes_and_restarts") {
        return;
    }
    let mut node = Node::start("svct");
    let client = Netns::new("svtc");
    let nets: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("svtb{i}"))).collect();
    node.add_labeled(&client, &[("id", "client")]);
    let eps: Vec<Endpoint> = nets
        .iter()
        .map(|n| node.add_labeled(n, &[("id", "backend")]))
        .collect();
    let ip = |i: usize| eps[i].addressing.ipv4.expect("ipv4");
    let _servers: Vec<Backend> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| Backend::start(&n.name, 8080, &format!("b{i}")))
        .collect();
    let frontend: SocketAddr = "10.96.0.10:80".parse().unwrap();

    // Through the CLI, with the seed's list format.
    node.agent
        .cli(&[
            "service",
            "update",
            "--id",
            "1",
            "--frontend",
            "10.96.0.10:80/tcp",
            "--backends",
            &format!("{}:8080,{}:8080,{}:8080", ip(0), ip(1), ip(2)),
            "--weights",
            "1,2,3",
        ])
        .ok();
    let list = node.agent.cli(&["service", "list"]).ok();
    assert!(
        list.contains("10.96.0.10:80") && list.contains(&format!("3 => {}:8080 (W: 3)", ip(2))),
        "{list}"
    );
    let lb = node.agent.cli(&["bpf", "lb", "list"]).ok();
    assert!(lb.contains("10.96.0.10:80/TCP"), "{lb}");
    assert!(
        lb.contains(&format!("{}:8080 (3 of 6 slots", ip(2))),
        "{lb}"
    );

    // 300 connections spread 1:2:3, each answered from the frontend address.
    let counts = spread(&client.name, frontend, 300);
    within(&counts, "b0", 50.0);
    within(&counts, "b1", 100.0);
    within(&counts, "b2", 150.0);
    // The client's conntrack entries: one per connection to its backend, with the service
    // as reverse translation, and the service entries themselves.
    let ct = node.agent.cli(&["bpf", "ct", "list", "global"]).ok();
    assert!(
        ct.contains("SERVICE") && ct.contains("service=1 backend="),
        "{ct}"
    );

    // An established connection to each backend.
    let mut held: BTreeMap<String, Conn> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < 3 && Instant::now() < deadline {
        let conn = Conn::open(&client.name, frontend).expect("connect");
        held.entry(conn.tag.clone()).or_insert(conn);
    }
    assert_eq!(held.len(), 3, "one connection per backend");

    // b0 leaves: new connections go to b1 and b2 only (weights 2:3), the connections to
    // b1 and b2 keep working, the one to b0 fails at once instead of hanging.
    put_service(
        &node.agent,
        1,
        "10.96.0.10:80/tcp",
        &[(ip(1), 8080, 2), (ip(2), 8080, 3)],
    );
    let counts = spread(&client.name, frontend, 100);
    assert!(!counts.contains_key("b0"), "{counts:?}");
    within(&counts, "b1", 40.0);
    within(&counts, "b2", 60.0);
    for tag in ["b1", "b2"] {
        let conn = held.get_mut(tag).expect("held");
        assert_eq!(conn.echo(b"still here\n").expect(tag), b"still here\n");
    }
    let t = Instant::now();
    let mut gone = held.remove("b0").expect("b0");
    let outcome = gone.echo(b"anyone?\n");
    assert!(
        outcome.is_err(),
        "the connection to a removed backend fails"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "it fails promptly (a reset from the new backend), not by timeout: {:?} {outcome:?}",
        t.elapsed()
    );

    // The agent stops (SIGKILL) and starts again: the service keeps serving, and the
    // established connections keep their backends.
    node.agent.stop_with(Signal::SIGKILL);
    for tag in ["b1", "b2"] {
        let conn = held.get_mut(tag).expect("held");
        assert_eq!(conn.echo(b"agent down\n").expect(tag), b"agent down\n");
    }
    assert_eq!(
        spread(&client.name, frontend, 10).values().sum::<usize>(),
        10
    );
    node.agent = Agent::start(
        node.dir.path(),
        &AgentOptions {
            netns: Some(node.netns.name.clone()),
            ..Default::default()
        },
    );
    for tag in ["b1", "b2"] {
        let conn = held.get_mut(tag).expect("held");
        assert_eq!(conn.echo(b"restarted\n").expect(tag), b"restarted\n");
    }
    let counts = spread(&client.name, frontend, 50);
    assert!(
        !counts.contains_key("b0") && counts.len() == 2,
        "{counts:?}"
    );
    let lb_after = node.agent.cli(&["bpf", "lb", "list"]).ok();
    assert!(
        lb_after.contains(&format!("{}:8080 (3 of 5 slots", ip(2))),
        "{lb_after}"
    );

    // A weight of 0 drains: no new connections, the established one stays.
    put_service(
        &node.agent,
        1,
        "10.96.0.10:80/tcp",
        &[(ip(1), 8080, 0), (ip(2), 8080, 1)],
    );
    let counts = spread(&client.name, frontend, 20);
    assert_eq!(counts.get("b2"), Some(&20), "{counts:?}");
    let conn = held.get_mut("b1").expect("held");
    assert_eq!(conn.echo(b"draining\n").expect("b1"), b"draining\n");

    // Deleted: the frontend is an ordinary (unrouted) address again.
    node.agent.cli(&["service", "delete", "1"]).ok();
    let list = node.agent.cli(&["service", "list"]).ok();
    assert!(!list.contains("10.96.0.10"), "{list}");
    assert!(Conn::open(&client.name, frontend).is_err());
    let lb = node.agent.cli(&["bpf", "lb", "list"]).ok();
    assert!(!lb.contains("10.96.0.10"), "{lb}");
}

#[test]
fn udp_ipv6_and_services_without_backends() {
    if !require_root("udp_ipv6_and_services_without_backends") {
        return;
    }
    let node = Node::start("svcu");
    let client = Netns::new("svuc");
    let nets: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("svub{i}"))).collect();
    node.add_labeled(&client, &[("id", "client")]);
    let eps: Vec<Endpoint> = nets
        .iter()
        .map(|n| node.add_labeled(n, &[("id", "backend")]))
        .collect();
    let _servers: Vec<Backend> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| Backend::start(&n.name, 5353, &format!("b{i}")))
        .collect();
    let v4 = |i: usize| eps[i].addressing.ipv4.expect("ipv4");
    let v6 = |i: usize| eps[i].addressing.ipv6.expect("ipv6");

    // UDP over IPv4: each new socket (a new source port) picks a backend; the answer comes
    // from the frontend.
    put_service(
        &node.agent,
        7,
        "10.96.0.53:53/udp",
        &[(v4(0), 5353, 1), (v4(1), 5353, 1), (v4(2), 5353, 1)],
    );
    let frontend: SocketAddr = "10.96.0.53:53".parse().unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..90 {
        let tag = udp_tag(&client.name, frontend).expect("udp answer from the frontend");
        *counts.entry(tag).or_insert(0) += 1;
    }
    for tag in ["b0", "b1", "b2"] {
        within(&counts, tag, 30.0);
    }
    // A TCP connection to a UDP-only frontend is not translated.
    assert!(Conn::open(&client.name, frontend).is_err());

    // IPv6, TCP and UDP behind one frontend ("any").
    put_service(
        &node.agent,
        8,
        "[fd00:96::10]:80/any",
        &[(v6(0), 5353, 1), (v6(1), 5353, 1), (v6(2), 5353, 1)],
    );
    let frontend6: SocketAddr = "[fd00:96::10]:80".parse().unwrap();
    let tcp6 = spread(&client.name, frontend6, 60);
    assert_eq!(tcp6.len(), 3, "every backend over IPv6: {tcp6:?}");
    let tag = udp_tag(&client.name, frontend6).expect("udp over ipv6");
    assert!(tag.starts_with('b'), "{tag}");
    let lb = node.agent.cli(&["bpf", "lb", "list"]).ok();
    assert!(
        lb.contains("[fd00:96::10]:80/TCP") && lb.contains("[fd00:96::10]:80/UDP"),
        "{lb}"
    );

    // A frontend without backends drops with reason 158 (no service backend).
    put_service(&node.agent, 9, "10.96.0.99:80/tcp", &[]);
    let before = node.agent.drops(158, "egress");
    let t = Instant::now();
    assert!(Conn::open(&client.name, "10.96.0.99:80".parse().unwrap()).is_err());
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "dropped, not refused"
    );
    assert!(node.agent.drops(158, "egress") > before);
    let lb = node.agent.cli(&["bpf", "lb", "list"]).ok();
    assert!(lb.contains("(no backend)"), "{lb}");

    // Bad input names the problem and changes nothing.
    let (status, body) = node.agent.http(
        "PUT",
        "/service/10",
        Some(r#"{"frontend-address":{"ip":"10.96.0.300","port":80}}"#),
    );
    assert_eq!(status, 460, "{body}");
    let (status, body) = node.agent.http(
        "PUT",
        "/service/10",
        Some(&format!(
            r#"{{"frontend-address":{{"ip":"10.96.0.98","port":80}},
                "backend-addresses":[{{"ip":"{}","port":80}}]}}"#,
            v6(0)
        )),
    );
    assert_eq!(status, 461, "{body}");
    assert!(body.contains("IPv6"), "{body}");
    let lb = node.agent.cli(&["bpf", "lb", "list"]).ok();
    assert!(!lb.contains("10.96.0.98"), "{lb}");
}

#[test]
fn policy_applies_to_the_backend_with_the_client_as_source() {
    if !require_root("policy_applies_to_the_backend_with_the_client_as_source") {
        return;
    }
    let node = Node::start("svcp");
    let app1 = Netns::new("svpa");
    let app2 = Netns::new("svpb");
    let app3 = Netns::new("svpc");
    let e1 = node.add_labeled(&app1, &[("id", "app1")]);
    let e2 = node.add_labeled(&app2, &[("id", "app2")]);
    let e3 = node.add_labeled(&app3, &[("id", "app3")]);
    let _server = Backend::start(&app1.name, 80, "app1");
    let policy = node.dir.path().join("l3l4.json");
    std::fs::write(
        &policy,
        r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]
  }]
}]"#,
    )
    .expect("policy");
    node.agent
        .cli(&["policy", "import", policy.to_str().expect("path")])
        .ok();
    put_service(
        &node.agent,
        3,
        "10.96.0.80:8000/tcp",
        &[(e1.addressing.ipv4.expect("ipv4"), 80, 1)],
    );
    let frontend: SocketAddr = "10.96.0.80:8000".parse().unwrap();
    let conn = Conn::open(&app2.name, frontend).expect("app2 -> service -> app1");
    assert_eq!(conn.tag, "app1");
    let before = node.agent.drops(133, "ingress");
    assert!(
        Conn::open(&app3.name, frontend).is_err(),
        "app3 is denied by app1's policy through the service too"
    );
    assert!(node.agent.drops(133, "ingress") > before);
    let _ = (e2, e3);
}

#[test]
fn node_processes_reach_frontends() {
    if !require_root("node_processes_reach_frontends") {
        return;
    }
    let mut node = Node::start("svcn");
    let nets: Vec<Netns> = (0..2).map(|i| Netns::new(&format!("svnb{i}"))).collect();
    let eps: Vec<Endpoint> = nets
        .iter()
        .map(|n| node.add_labeled(n, &[("id", "backend")]))
        .collect();
    let _servers: Vec<Backend> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| Backend::start(&n.name, 8080, &format!("b{i}")))
        .collect();
    let status = node.agent.cli(&["status"]).ok();
    assert!(!status.contains("not translated"), "{status}");
    let v4 = |i: usize| eps[i].addressing.ipv4.expect("ipv4");
    let v6 = |i: usize| eps[i].addressing.ipv6.expect("ipv6");
    put_service(
        &node.agent,
        20,
        "10.96.0.40:80/any",
        &[(v4(0), 8080, 1), (v4(1), 8080, 1)],
    );
    put_service(
        &node.agent,
        21,
        "[fd00:96::40]:80/tcp",
        &[(v6(0), 8080, 1), (v6(1), 8080, 1)],
    );

    // TCP from a process of the node: connect() is sent to a backend, in turn.
    let mut tags = BTreeMap::new();
    for frontend in ["10.96.0.40:80", "[fd00:96::40]:80"] {
        let to: SocketAddr = frontend.parse().unwrap();
        for _ in 0..4 {
            let stream = in_netns(&node.netns.name, move || {
                TcpStream::connect_timeout(&to, Duration::from_secs(2))
            })
            .unwrap_or_else(|e| panic!("node -> {to}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut tag = String::new();
            BufReader::new(stream).read_line(&mut tag).expect("tag");
            *tags.entry(tag.trim().to_string()).or_insert(0) += 1;
        }
    }
    assert_eq!(tags.get("b0"), Some(&4), "{tags:?}");
    assert_eq!(tags.get("b1"), Some(&4), "{tags:?}");

    // UDP, connected and not: the answers come from the frontend.
    let frontend: SocketAddr = "10.96.0.40:80".parse().unwrap();
    let tag = udp_tag(&node.netns.name, frontend).expect("connected UDP from the node");
    assert!(tag.starts_with('b'), "{tag}");
    let sock = in_netns(&node.netns.name, || UdpSocket::bind("0.0.0.0:0")).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(b"who", frontend).expect("send_to");
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).expect("answer");
    assert_eq!(from, frontend, "the answer's source is the frontend");
    assert!(buf[..n].starts_with(b"b"));

    // The programs stay attached while the agent is down (pinned links), and a restarted
    // agent's programs take over.
    let node_tcp = |node: &Node| {
        let to = SocketAddr::from(([10, 96, 0, 40], 80));
        in_netns(&node.netns.name, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })
    };
    node.agent.stop_with(Signal::SIGKILL);
    node_tcp(&node).expect("node -> frontend while the agent is down");
    node.agent = Agent::start(
        node.dir.path(),
        &AgentOptions {
            netns: Some(node.netns.name.clone()),
            ..Default::default()
        },
    );
    node_tcp(&node).expect("node -> frontend after the restart");

    // Another namespace (a container) is not touched by the node's socket programs: it goes
    // through its own datapath, which translates too.
    let client = Netns::new("svnc");
    node.add_labeled(&client, &[("id", "client")]);
    assert!(Conn::open(&client.name, frontend).is_ok());
}
