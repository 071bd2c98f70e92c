//! Prometheus metrics (`--prometheus-serve-addr`): the agent of a node namespace serves
//! `GET /metrics` on the TCP address it was given, in the text exposition format; the API and
//! CNI latency histograms move with requests, the drop counters with a denied connection. No
//! TCP listener exists without the flag, and an address that cannot be bound stops the agent.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use integration::cni::{Invocation, Node};
use integration::traffic::{in_netns, tcp_connect, tcp_works, EchoServer};
use integration::{require_root, test_dir, Agent, AgentOptions, Netns};

/// The metrics address inside the node namespace (a fresh namespace: the port is free).
const METRICS: &str = "127.0.0.1:9962";

/// Only app2 may reach app1 on port 80.
const POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]
  }],
  "labels": ["unspec:test=metrics"]
}]"#;

/// One HTTP/1.1 GET on `addr` from inside `netns`: status, head and body.
fn get(netns: &str, addr: &str, path: &str) -> (u16, String, String) {
    let to: SocketAddr = addr.parse().expect("metrics address");
    let mut stream = tcp_connect(netns, to, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to {addr} in {netns}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("reply head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, head.to_string(), body.to_string())
}

/// A parsed exposition: the declared type of each family, and every sample.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the text format strictly: every sample line is `name{labels} value` or
    /// `name value`, comes after the `# TYPE` of its family (a histogram's `_bucket`, `_sum`
    /// and `_count` belong to it), and no series appears twice.
    fn parse(text: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "unknown type: {line}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice: {line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(
                !line.is_empty() && !line.starts_with('#'),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name.to_string(),
                    parse_labels(rest.strip_suffix('}').expect("closing brace"), line),
                ),
                None => (series.to_string(), BTreeMap::new()),
            };
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(&name)
                .to_string();
            assert!(
                types.contains_key(&family),
                "sample without a preceding TYPE: {line}"
            );
            assert!(seen.insert(series.to_string()), "duplicate series {series}");
            samples.push((name, labels, value));
        }
        Scrape { types, samples }
    }

    /// The value of the series `name` carrying at least `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }

    /// The sum of every series `name` carrying at least `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .sum()
    }
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name in {line:?}"
        );
        assert_eq!(chars.next(), Some('"'), "unquoted label value in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            Some(',') | None => {}
            Some(c) => panic!("unexpected {c:?} after a label in {line:?}"),
        }
    }
    labels
}

fn scrape(node: &Node) -> Scrape {
    let (status, head, body) = get(&node.netns.name, METRICS, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Scrape::parse(&body)
}

/// Scrapes until `pred` holds (5 s), returning the last scrape.
fn scrape_until(node: &Node, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(node);
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("{what}: not seen in the metrics: {s:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// TCP ports listening in `node`'s namespace (`ss -ltnH`, the local address column).
fn listening(node: &Node) -> Vec<String> {
    node.sh(&["ss", "-ltnH"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

const API: &str = "cilium_api_request_duration_seconds";
const CNI: &str = "cilium_cni_request_duration_seconds";

#[test]
fn metrics_follow_api_cni_and_datapath() {
    if !require_root("metrics_follow_api_cni_and_datapath") {
        return;
    }
    let node = Node::start_in(Netns::new("mtr"), &["--prometheus-serve-addr", METRICS]);
    assert!(
        listening(&node).iter().any(|a| a == METRICS),
        "{METRICS} is not listening: {:?}",
        listening(&node)
    );

    // Every family the docs list, typed; the health figures.
    let first = scrape(&node);
    for (name, kind) in [
        ("cilium_build_info", "gauge"),
        ("cilium_endpoint_count", "gauge"),
        ("cilium_identity_count", "gauge"),
        ("cilium_policy_revision", "gauge"),
        ("cilium_policy_count", "gauge"),
        ("cilium_forward_count_total", "counter"),
        ("cilium_forward_bytes_total", "counter"),
        ("cilium_drop_count_total", "counter"),
        ("cilium_drop_bytes_total", "counter"),
        ("cilium_monitor_events_lost_total", "counter"),
        ("cilium_kvstore_up", "gauge"),
        ("cilium_container_runtime_up", "gauge"),
        (API, "histogram"),
        (CNI, "histogram"),
    ] {
        assert_eq!(
            first.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    assert_eq!(first.value("cilium_kvstore_up", &[]), Some(1.0));
    // The harness runs the agent without Docker.
    assert!(first.value("cilium_container_runtime_up", &[]).is_some());
    let version = first
        .samples
        .iter()
        .find(|s| s.0 == "cilium_build_info")
        .and_then(|s| s.1.get("version").cloned())
        .expect("build info version");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(first.value("cilium_policy_count", &[]), Some(0.0));
    assert!(first.value("cilium_identity_count", &[]).unwrap_or(0.0) >= 1.0);
    assert_eq!(first.sum("cilium_endpoint_count", &[]), 0.0);

    // Anything but /metrics is 404.
    for path in ["/", "/v1/healthz", "/metrics/x"] {
        let (status, head, _) = get(&node.netns.name, METRICS, path);
        assert_eq!(status, 404, "{path}: {head}");
    }

    // API latency: three health checks are three observations of their series.
    let healthz = [
        ("method", "GET"),
        ("path_template", "/v1/healthz"),
        ("code", "200"),
    ];
    let before = first
        .value(&format!("{API}_count"), &healthz)
        .unwrap_or(0.0);
    for _ in 0..3 {
        assert_eq!(node.agent.http("GET", "/healthz", None).0, 200);
    }
    let (status, _) = node.agent.http("GET", "/endpoint/cilium-local:4242", None);
    assert_eq!(status, 404);
    let after = scrape(&node);
    assert_eq!(
        after.value(&format!("{API}_count"), &healthz),
        Some(before + 3.0)
    );
    assert_eq!(
        after.value(
            &format!("{API}_bucket"),
            &[healthz[0], healthz[1], healthz[2], ("le", "+Inf")]
        ),
        Some(before + 3.0)
    );
    assert!(after.value(&format!("{API}_sum"), &healthz).unwrap_or(-1.0) >= 0.0);
    assert_eq!(
        after.value(
            &format!("{API}_count"),
            &[
                ("method", "GET"),
                ("path_template", "/v1/endpoint/{id}"),
                ("code", "404")
            ]
        ),
        Some(1.0),
        "the template is the label, not the raw path"
    );
    assert!(
        !after
            .samples
            .iter()
            .any(|(_, l, _)| l.values().any(|v| v.contains("cilium-local:4242"))),
        "a raw path leaked into a label"
    );
    assert_eq!(
        after.value(&format!("{CNI}_count"), &[("op", "add")]),
        Some(0.0)
    );

    // CNI: one ADD is one `add` observation (and a 201 of PUT /endpoint/{id}).
    let c1 = Netns::new("mtra");
    let c2 = Netns::new("mtrb");
    let e1 = node.add_labeled(&c1, &[("id", "app1")]);
    let added = scrape(&node);
    assert_eq!(
        added.value(&format!("{CNI}_count"), &[("op", "add")]),
        Some(1.0)
    );
    assert_eq!(
        added.value(&format!("{CNI}_bucket"), &[("op", "add"), ("le", "+Inf")]),
        Some(1.0)
    );
    assert!(
        added
            .value(&format!("{CNI}_sum"), &[("op", "add")])
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        added.value(
            &format!("{API}_count"),
            &[
                ("method", "PUT"),
                ("path_template", "/v1/endpoint/{id}"),
                ("code", "201")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(added.sum("cilium_endpoint_count", &[]), 1.0);
    assert_eq!(
        added.value("cilium_endpoint_count", &[("state", "ready")]),
        Some(1.0)
    );
    let _e2 = node.add_labeled(&c2, &[("id", "app3")]);

    // A denied connection moves the drop counter (ingress, policy reasons).
    let server = EchoServer::start(&c1.name, SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 80));
    let ip = e1.addressing.ipv4.expect("ipv4");
    assert!(
        tcp_works(&c2.name, SocketAddr::new(ip, 80)),
        "before the policy"
    );
    let before = scrape(&node);
    let ingress_drops = |s: &Scrape| s.sum("cilium_drop_count_total", &[("direction", "ingress")]);
    let dropped_before = ingress_drops(&before);
    let revision_before = before
        .value("cilium_policy_revision", &[])
        .expect("revision");
    assert!(before.sum("cilium_forward_count_total", &[]) > 0.0);

    let file = node.dir.path().join("policy.json");
    std::fs::write(&file, POLICY).expect("write policy");
    node.agent
        .cli(&["policy", "import", file.to_str().expect("path")])
        .ok();
    let denied = tcp_connect(
        &c2.name,
        SocketAddr::new(ip, 80),
        Duration::from_millis(700),
    );
    assert!(
        matches!(&denied, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "app3 -> app1:80 must be dropped: {denied:?}"
    );
    let dropped = scrape_until(&node, "ingress drops", |s| {
        ingress_drops(s) > dropped_before
    });
    assert!(
        dropped
            .samples
            .iter()
            .any(|(n, l, v)| n == "cilium_drop_count_total"
                && l.get("reason")
                    .is_some_and(|r| r.starts_with("Policy denied"))
                && l.get("direction").map(String::as_str) == Some("ingress")
                && *v > 0.0),
        "no policy drop series: {dropped:#?}"
    );
    assert!(dropped.sum("cilium_drop_bytes_total", &[("direction", "ingress")]) > 0.0);
    assert_eq!(dropped.value("cilium_policy_count", &[]), Some(1.0));
    assert!(
        dropped
            .value("cilium_policy_revision", &[])
            .expect("revision")
            > revision_before
    );
    drop(server);

    // CNI DEL is one `del` observation.
    let inv = Invocation::new("DEL", &c2.name, &c2.path());
    node.cni(&inv, &node.config(Some("1.0.0"))).ok();
    let deleted = scrape(&node);
    assert_eq!(
        deleted.value(&format!("{CNI}_count"), &[("op", "del")]),
        Some(1.0)
    );
    assert_eq!(
        deleted.value(&format!("{CNI}_count"), &[("op", "add")]),
        Some(2.0)
    );
    assert_eq!(deleted.sum("cilium_endpoint_count", &[]), 1.0);
}

#[test]
fn no_tcp_listener_without_the_flag() {
    if !require_root("no_tcp_listener_without_the_flag") {
        return;
    }
    let node = Node::start_in(Netns::new("mtrn"), &[]);
    let c = Netns::new("mtrnc");
    node.add(&c);
    assert_eq!(node.agent.http("GET", "/healthz", None).0, 200);
    let listening = listening(&node);
    assert!(
        listening.is_empty(),
        "the agent opened TCP listeners without --prometheus-serve-addr: {listening:?}"
    );
    let to: SocketAddr = METRICS.parse().expect("addr");
    let refused = tcp_connect(&node.netns.name, to, Duration::from_secs(1));
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
}

#[test]
fn an_address_that_cannot_be_bound_stops_the_agent() {
    if !require_root("an_address_that_cannot_be_bound_stops_the_agent") {
        return;
    }
    let netns = Netns::new("mtrb");
    let to: SocketAddr = METRICS.parse().expect("addr");
    let _taken = in_netns(&netns.name, move || TcpListener::bind(to).expect("bind"));
    let dir = test_dir();
    for addr in [METRICS, "192.0.2.99:9962"] {
        let mut agent = Agent::spawn(
            dir.path(),
            &AgentOptions {
                netns: Some(netns.name.clone()),
                args: vec!["--prometheus-serve-addr".into(), addr.into()],
                ..Default::default()
            },
        );
        let code = agent.wait_exit(Duration::from_secs(10));
        let output = agent.output();
        assert!(
            code.is_some_and(|c| c != 0),
            "{addr}: the agent must fail, exit {code:?}\n{output}"
        );
        assert!(
            output.contains(&format!("cannot serve Prometheus metrics on {addr}")),
            "{addr}: the error must name the address:\n{output}"
        );
        assert!(
            !agent.socket.exists(),
            "{addr}: the API socket is left behind"
        );
    }
}
