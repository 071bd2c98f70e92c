//! L7 HTTP policy through the agent's proxy on real traffic: the seed's L7 guide (app2 may
//! only `GET /public` on app1), header and method rules, an egress HTTP rule, keep-alive
//! with allowed and denied requests on one connection, a 1 MiB upload, the access log and
//! `cilium monitor --type l7`, and switching the rule to L4-only.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use cilium_api::models::Endpoint;
use integration::cni::Node;
use integration::http::{get, HttpClient, HttpServer};
use integration::traffic::tcp_works;
use integration::{bin, require_root, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;

const ANY80: SocketAddr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 80);

/// The seed's L7 policy (§2.2.10): app2 may only `GET /public` on app1.
const L7_POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{
      "ports": [{"port": "80", "protocol": "tcp"}],
      "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}
    }]
  }],
  "labels": ["unspec:guide=l7"]
}]"#;

/// The same rule at L4 only.
const L4_POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]
  }],
  "labels": ["unspec:guide=l7"]
}]"#;

fn import(agent: &Agent, dir: &std::path::Path, policy: &str) {
    let path = dir.join("policy.json");
    std::fs::write(&path, policy).expect("write policy");
    agent.cli(&["policy", "delete", "--all"]).ok();
    agent
        .cli(&["policy", "import", path.to_str().expect("path")])
        .ok();
}

fn v4(e: &Endpoint) -> IpAddr {
    e.addressing.ipv4.expect("ipv4")
}

fn v6(e: &Endpoint) -> IpAddr {
    e.addressing.ipv6.expect("ipv6")
}

/// A connection from `netns` to `to` that must answer.
fn client(netns: &Netns, to: SocketAddr) -> HttpClient {
    HttpClient::connect(&netns.name, to, "app1").expect("connect")
}

/// `cilium monitor --type l7 -o json` in the background: its lines.
struct L7Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl L7Monitor {
    fn start(agent: &Agent) -> L7Monitor {
        let mut child = Command::new(bin("cilium"))
            .args(["-H", &format!("unix://{}", agent.socket.display())])
            .args(["monitor", "--type", "l7", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cilium monitor");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Let the stream open before the requests it should see.
        std::thread::sleep(Duration::from_millis(300));
        L7Monitor { child, lines }
    }

    /// The next record whose path is `path`.
    fn expect(&self, path: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if ev["l7"]["path"] == path {
                return ev;
            }
            seen.push(line);
        }
        panic!("no l7 record for {path}; saw {seen:?}");
    }
}

impl Drop for L7Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn seed_l7_guide_through_the_proxy() {
    if !require_root("seed_l7_guide_through_the_proxy") {
        return;
    }
    let pre = Netns::new("l7n");
    let access_log = tempfile::tempdir().expect("dir");
    let log_path = access_log.path().join("access.log");
    let node = Node::start_in(pre, &["--access-log", log_path.to_str().expect("path")]);
    let c1 = Netns::new("l7a");
    let c2 = Netns::new("l7b");
    let c3 = Netns::new("l7c");
    let e1 = node.add_labeled(&c1, &[("id", "app1")]);
    let e2 = node.add_labeled(&c2, &[("id", "app2")]);
    let _e3 = node.add_labeled(&c3, &[("id", "app3")]);
    let server = HttpServer::start(&c1.name, ANY80);
    let to_app1 = SocketAddr::new(v4(&e1), 80);

    import(&node.agent, node.dir.path(), L7_POLICY);
    let monitor = L7Monitor::start(&node.agent);

    // app2: GET /public passes with the server's body, GET /private is denied by the proxy.
    let mut c = client(&c2, to_app1);
    let public = c.request("GET", "/public", &[], None).expect("GET /public");
    assert_eq!((public.status, public.body.as_str()), (200, "/public\n"));
    let private = c
        .request("GET", "/private", &[], None)
        .expect("GET /private");
    assert_eq!(
        (private.status, private.body.as_str()),
        (403, "Access denied\n")
    );
    // The same connection stays usable: allowed, denied, allowed.
    let again = c
        .request("GET", "/public", &[], None)
        .expect("GET /public again");
    assert_eq!(again.status, 200);
    let post = c.request("POST", "/public", &[], Some(b"x")).expect("POST");
    assert_eq!(post.status, 403, "method not allowed by the rule");
    let last = c
        .request("GET", "/public", &[], None)
        .expect("GET /public last");
    assert_eq!(last.status, 200);
    // The server saw only the allowed requests.
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // IPv6 goes through the proxy too.
    let six = get(&c2.name, SocketAddr::new(v6(&e1), 80), "/private").expect("v6 response");
    assert_eq!(six.status, 403);

    // app3 is still dropped at L3: no connection at all.
    assert!(!tcp_works(&c3.name, to_app1), "app3 reached app1");

    // Access log and monitor: the denied request with the client's identity and labels.
    let denied = monitor.expect("/private");
    assert_eq!(denied["type"], "l7");
    assert_eq!(denied["l7"]["verdict"], "denied");
    assert_eq!(denied["l7"]["status"], 403);
    assert_eq!(
        denied["l7"]["source"]["identity"],
        e2.identity.as_ref().expect("identity").id
    );
    let log = std::fs::read_to_string(&log_path).expect("access log");
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let forwarded = records
        .iter()
        .filter(|r| r["verdict"] == "forwarded" && r["path"] == "/public")
        .count();
    assert_eq!(forwarded, 3, "{log}");
    assert!(
        records.iter().any(|r| r["method"] == "POST"
            && r["status"] == 403
            && r["source"]["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == "container:id=app2"))),
        "{log}"
    );

    // A 1 MiB upload through an allowed rule (PUT allowed by a method regex).
    import(
        &node.agent,
        node.dir.path(),
        &L7_POLICY.replace(
            r#"{"method": "GET", "path": "/public"}"#,
            r#"{"method": "GET|PUT", "path": "/public"}, {"method": "GET", "path": "/private", "headers": ["X-Token: yes"]}"#,
        ),
    );
    let mut c = client(&c2, to_app1);
    let body = vec![b'z'; 1 << 20];
    let put = c
        .request("PUT", "/public", &[], Some(&body))
        .expect("PUT 1 MiB");
    assert_eq!(
        (put.status, put.body.as_str()),
        (200, "received 1048576 bytes\n")
    );
    // Header rule: exact value needed.
    let wrong = c
        .request("GET", "/private", &[("X-Token", "no")], None)
        .expect("GET /private wrong token");
    assert_eq!(wrong.status, 403);
    let right = c
        .request("GET", "/private", &[("X-Token", "yes")], None)
        .expect("GET /private with token");
    assert_eq!(right.status, 200);

    // L4 only: /private passes again, and the proxy is out of the path.
    import(&node.agent, node.dir.path(), L4_POLICY);
    let direct = get(&c2.name, to_app1, "/private").expect("GET /private at L4");
    assert_eq!(direct.status, 200);
    let status = node.agent.cli(&["status"]).ok();
    assert!(status.contains("Proxy:"), "{status}");
    assert!(status.contains("0 ports redirected"), "{status}");
}

/// app2 may only GET /public on anything labelled id=app1.
const EGRESS_RULE: &str = r#"{
  "endpointSelector": {"matchLabels":{"id":"app2"}},
  "egress": [{
    "toEndpoints": [{"matchLabels":{"id":"app1"}}],
    "toPorts": [{
      "ports": [{"port": "80", "protocol": "tcp"}],
      "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}
    }]
  }],
  "labels": ["unspec:guide=l7-egress"]
}"#;

#[test]
fn egress_http_rule_of_the_client() {
    if !require_root("egress_http_rule_of_the_client") {
        return;
    }
    let mut node = Node::start("l7e");
    let c1 = Netns::new("l7ea");
    let c2 = Netns::new("l7eb");
    let e1 = node.add_labeled(&c1, &[("id", "app1")]);
    let _e2 = node.add_labeled(&c2, &[("id", "app2")]);
    let _server = HttpServer::start(&c1.name, ANY80);
    let to_app1 = SocketAddr::new(v4(&e1), 80);
    // app1 has no ingress rule.
    import(&node.agent, node.dir.path(), &format!("[{EGRESS_RULE}]"));
    let mut c = client(&c2, to_app1);
    assert_eq!(
        c.request("GET", "/public", &[], None).expect("GET").status,
        200
    );
    assert_eq!(
        c.request("GET", "/private", &[], None).expect("GET").status,
        403
    );
    // Garbage instead of HTTP: 400 and the connection is closed.
    let mut raw = client(&c2, to_app1);
    raw.send_raw(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        .expect("send");
    let answer = raw.read().expect("a response to garbage");
    assert_eq!(answer.status, 400);
    assert!(raw.closed_by_peer(), "connection kept after garbage");

    // After an agent restart the rule is enforced again through the new proxy.
    node.agent.stop_with(Signal::SIGTERM);
    node.agent = Agent::start(
        node.dir.path(),
        &AgentOptions {
            netns: Some(node.netns.name.clone()),
            ..Default::default()
        },
    );
    assert_eq!(
        get(&c2.name, to_app1, "/private")
            .expect("after restart")
            .status,
        403
    );
    assert_eq!(
        get(&c2.name, to_app1, "/public")
            .expect("after restart")
            .status,
        200
    );

    // app1's own policy still applies to what app2's egress rule allows: once app1 admits
    // only app3, the proxy denies app2's request (for a local destination it checks both
    // sides' rules; the datapath checks the onward connection, made with app2's identity).
    let both = format!(
        r#"[{EGRESS_RULE}, {{
          "endpointSelector": {{"matchLabels":{{"id":"app1"}}}},
          "ingress": [{{"fromEndpoints": [{{"matchLabels":{{"id":"app3"}}}}]}}],
          "labels": ["unspec:guide=l7-app1"]
        }}]"#
    );
    import(&node.agent, node.dir.path(), &both);
    let denied_upstream = get(&c2.name, to_app1, "/public").expect("a response from the proxy");
    assert_eq!(
        (denied_upstream.status, denied_upstream.body.as_str()),
        (403, "Access denied\n")
    );
}

/// Allows app2 `GET /public`, `GET /lines/…` and `POST /slow/…` on app1.
const STREAM_POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{
      "ports": [{"port": "80", "protocol": "tcp"}],
      "rules": {"HTTP": [
        {"method": "GET", "path": "/public(\\?.*)?"},
        {"method": "GET", "path": "/lines/[0-9]+"},
        {"method": "POST", "path": "/slow/[0-9]+"}
      ]}
    }]
  }],
  "labels": ["unspec:guide=l7-stream"]
}]"#;

/// The `N` of `N sockets skip the stack` on the `Proxy:` line of `cilium status`.
fn sockets_skipping_the_stack(agent: &Agent) -> usize {
    let status = agent.cli(&["status"]).ok();
    let line = status
        .lines()
        .find(|l| l.starts_with("Proxy:"))
        .unwrap_or_else(|| panic!("no Proxy line in {status}"));
    line.split("; ")
        .find_map(|part| part.strip_suffix(" sockets skip the stack"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the proxy's sockets go through the stack: {line}"))
}

/// The bytes queued for reading (`skmem` `r`) on the sockets of `netns` with remote or local
/// port 80, the largest.
fn largest_receive_queue(netns: &Netns) -> u64 {
    let out = netns.exec_ok(&["ss", "-tmnH", "( sport = :80 or dport = :80 )"]);
    String::from_utf8_lossy(&out.stdout)
        .split("skmem:(")
        .skip(1)
        .filter_map(|m| m.strip_prefix('r'))
        .filter_map(|m| m.split(',').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// What the TCP stack delivered (`bytes_received`) to the sockets of `netns` with remote or
/// local port 80, in total.
fn tcp_bytes_received(netns: &Netns) -> u64 {
    let out = netns.exec_ok(&["ss", "-tinH", "( sport = :80 or dport = :80 )"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_received:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// With `--proxy-sockmap`, the proxied connection between two local endpoints skips the
/// TCP/IP stack (the agent counts its sockets), and what it carries still arrives whole and in order, keep-alive
/// and pipelined, while a slow reader holds no more than about a receive buffer: a 32 MiB
/// response to a client that does not read, a 16 MiB upload to a server that does not read.
#[test]
fn proxied_streams_skip_the_stack_whole_in_order_and_flow_controlled() {
    if !require_root("proxied_streams_skip_the_stack_whole_in_order_and_flow_controlled") {
        return;
    }
    const BIG: usize = 32 << 20;
    const UPLOAD: usize = 16 << 20;
    // A slow reader may hold its receive buffer (at most tcp_rmem's 6 MiB) and a message.
    const BOUND: u64 = 8 << 20;
    let node = Node::start_in(Netns::new("l7s"), &["--proxy-sockmap"]);
    let c1 = Netns::new("l7sa");
    let c2 = Netns::new("l7sb");
    let e1 = node.add_labeled(&c1, &[("id", "app1")]);
    node.add_labeled(&c2, &[("id", "app2")]);
    let _server = HttpServer::start(&c1.name, ANY80);
    let to_app1 = SocketAddr::new(v4(&e1), 80);
    import(&node.agent, node.dir.path(), STREAM_POLICY);

    let mut c = client(&c2, to_app1);
    let first = c.request("GET", "/public", &[], None).expect("GET /public");
    assert_eq!(first.status, 200);
    // Client, proxy (both sides) and server.
    assert_eq!(sockets_skipping_the_stack(&node.agent), 4);

    // Keep-alive: 200 requests, each answered with its own path.
    for i in 0..200 {
        let path = format!("/public?i={i}");
        let r = c.request("GET", &path, &[], None).expect("keep-alive GET");
        assert_eq!((r.status, r.body), (200, format!("{path}\n")));
    }
    // Pipelined: 50 requests in one write, 50 answers in order.
    let mut burst = String::new();
    for i in 0..50 {
        burst.push_str(&format!("GET /public?p={i} HTTP/1.1\r\nHost: app1\r\n\r\n"));
    }
    c.send_raw(burst.as_bytes()).expect("pipelined requests");
    for i in 0..50 {
        let r = c.read().expect("pipelined answer");
        assert_eq!(r.body, format!("/public?p={i}\n"));
    }

    // The 250 answers (about 24 KiB) reached the client without TCP: its socket counts
    // (almost) nothing received through the stack.
    let through_tcp = tcp_bytes_received(&c2);
    assert!(
        through_tcp < 1024,
        "the client received {through_tcp} bytes through TCP: the answers did not skip the stack"
    );

    // 32 MiB to a client that does not read for a while.
    c.send("GET", &format!("/lines/{BIG}"), &[], None)
        .expect("GET /lines");
    std::thread::sleep(Duration::from_millis(1500));
    let held = largest_receive_queue(&c2);
    assert!(
        held <= BOUND,
        "the client that does not read holds {held} bytes of the 32 MiB answer"
    );
    let big = c.read().expect("the 32 MiB answer");
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), BIG);
    assert!(
        big.body.as_bytes() == integration::http::numbered_lines(BIG).as_slice(),
        "the 32 MiB answer arrived out of order or damaged"
    );

    // 16 MiB to a server that reads nothing for 1.5 s; the client writes on meanwhile.
    let body = integration::http::numbered_lines(UPLOAD);
    let upload = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let r = match c.send("POST", "/slow/1500", &[], Some(&body)) {
            Err(e) => Err(std::io::Error::other(format!(
                "send after {:?}: {e}",
                t.elapsed()
            ))),
            Ok(()) => loop {
                // The kernel's read of a socket in a sockmap waits only once: a wakeup
                // that brings no data (the send side draining) ends a blocking read with
                // EAGAIN, before anything is read (docs/policy-language.md). Read again.
                match c.read() {
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && t.elapsed() < Duration::from_secs(10) =>
                    {
                        continue
                    }
                    other => break other,
                }
            },
        };
        (c, r)
    });
    std::thread::sleep(Duration::from_millis(1000));
    let held = largest_receive_queue(&c1);
    assert!(
        held <= BOUND,
        "the server that does not read holds {held} bytes of the 16 MiB upload"
    );
    let (mut c, r) = upload.join().expect("upload thread");
    let r = r.unwrap_or_else(|e| {
        let ss =
            |n: &Netns| String::from_utf8_lossy(&n.exec_ok(&["ss", "-tmni"]).stdout).into_owned();
        panic!(
            "POST /slow: {e}\nclient:\n{}\nserver:\n{}\nnode:\n{}",
            ss(&c2),
            ss(&c1),
            ss(&node.netns)
        )
    });
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "received 16777216 bytes, numbered lines: true\n")
    );
    let after = c.request("GET", "/public", &[], None).expect("GET after");
    assert_eq!(after.status, 200);

    // Closed connections leave the map.
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sockets_skipping_the_stack(&node.agent) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sockets of closed connections stay in the proxy's map"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
