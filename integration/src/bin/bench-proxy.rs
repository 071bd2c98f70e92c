//! `make bench`: HTTP requests through the L7 proxy, side by side with the same requests
//! without it, in one run:
//!
//! - (a) app2 -> app1:80 under the seed's policy at L4 only (no proxy in the path);
//! - (b) the same with the seed's L7 rule (`GET /public`): every request checked by the proxy;
//! - (b') (b) on a second node started with `--proxy-sockmap` (the proxy's connections with
//!   local endpoints skip the TCP/IP stack);
//! - (c) what a user would put in the path instead: nginx (Debian's, one worker, upstream
//!   keep-alive, no access log) as a reverse proxy in the node namespace, app2 ->
//!   nginx -> app1, no policy.
//!
//! `wrk` (Debian's) in app2's namespace, keep-alive, for 5 s: 16 connections on 2 threads
//! (throughput) and 1 connection (the latency one request adds). (a), (b), (b'), (c) in turn for a
//! few rounds, medians of requests/s and of the p50/p99 latency.
//! The server in app1 is the tests' small threaded HTTP server. Then the agent's memory per
//! 1,000 idle connections through the proxy (each made one request, so both its client and
//! its upstream side exist), from the agent's resident set size before and after.
//!
//! Not a test: it prints numbers and ratios and asserts nothing about time.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use integration::cni::Node;
use integration::http::{HttpClient, HttpServer};
use integration::measure::median;
use integration::{require_root, Netns};

const ROUNDS: usize = 3;
const IDLE: usize = 1000;
const ANY80: SocketAddr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 80);

fn policy(l7: bool) -> String {
    let rules = if l7 {
        r#", "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}"#
    } else {
        ""
    };
    format!(
        r#"[{{
  "endpointSelector": {{"matchLabels":{{"id":"app1"}}}},
  "ingress": [{{
    "fromEndpoints": [{{"matchLabels":{{"id":"app2"}}}}],
    "toPorts": [{{"ports": [{{"port": "80", "protocol": "tcp"}}]{rules}}}]
  }}],
  "labels": ["unspec:bench=proxy"]
}}]"#
    )
}

fn import(node: &Node, text: &str) {
    let path = node.dir.path().join("bench-policy.json");
    std::fs::write(&path, text).expect("write policy");
    node.agent.cli(&["policy", "delete", "--all"]).ok();
    node.agent
        .cli(&["policy", "import", path.to_str().expect("path")])
        .ok();
}

/// One wrk run: (requests/s, p50 in µs, p99 in µs).
fn wrk(netns: &str, url: &str, connections: u32) -> (f64, f64, f64) {
    let threads = connections.min(2);
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "wrk"])
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .args(["-d5s", "--latency", url])
        .output()
        .expect("run wrk (apt install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in {text}"));
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| micros(v.trim()))
            .unwrap_or_else(|| panic!("no {p} latency in {text}"))
    };
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    assert!(errors.is_none(), "wrk saw errors: {text}");
    (rps, percentile("50%"), percentile("99%"))
}

/// nginx as a reverse proxy to `upstream` on `listen`, in the node namespace; stopped on drop.
struct Nginx {
    pid_file: std::path::PathBuf,
}

impl Nginx {
    fn start(node: &Node, listen: SocketAddr, upstream: SocketAddr) -> Nginx {
        let dir = node.dir.path();
        let pid_file = dir.join("nginx.pid");
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1; pid {pid}; error_log {dir}/nginx-error.log; daemon on;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off;\n\
                   upstream app1 {{ server {upstream}; keepalive 64; }}\n\
                   server {{ listen {listen};\n\
                     location / {{ proxy_pass http://app1; proxy_http_version 1.1;\n\
                       proxy_set_header Connection \"\"; }} }} }}\n",
                pid = pid_file.display(),
                dir = dir.display(),
            ),
        )
        .expect("nginx.conf");
        let status = Command::new("ip")
            .args(["netns", "exec", &node.netns.name, "nginx", "-c"])
            .arg(&conf)
            .status()
            .expect("run nginx (apt install nginx-light)");
        assert!(status.success(), "nginx did not start");
        std::thread::sleep(Duration::from_millis(300));
        Nginx { pid_file }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Medians of the rounds of one setup.
#[derive(Default)]
struct Runs {
    rps: Vec<f64>,
    p99: Vec<f64>,
    one_p50: Vec<f64>,
    one_p99: Vec<f64>,
}

impl Runs {
    fn measure(&mut self, netns: &str, url: &str) {
        let (rps, _, p99) = wrk(netns, url, 16);
        let (_, one_p50, one_p99) = wrk(netns, url, 1);
        self.rps.push(rps);
        self.p99.push(p99);
        self.one_p50.push(one_p50);
        self.one_p99.push(one_p99);
    }

    fn medians(&self) -> (f64, f64, f64, f64) {
        (
            median(self.rps.clone()),
            median(self.p99.clone()),
            median(self.one_p50.clone()),
            median(self.one_p99.clone()),
        )
    }

    fn print(&self, label: &str) -> (f64, f64, f64, f64) {
        let m = self.medians();
        println!(
            "  {label:<32} {:>8.0} req/s  p99 {:>6.0} µs   1 conn: p50 {:>5.0} µs  p99 {:>6.0} µs",
            m.0, m.1, m.2, m.3
        );
        m
    }
}

/// One setup's medians against another's: the ratio of the rates, what it adds at p99 (16
/// connections) and at p50/p99 (1 connection).
fn compare(
    label: &str,
    x: (f64, f64, f64, f64),
    base: (f64, f64, f64, f64),
    rate_target: &str,
    p99_target: &str,
) {
    println!(
        "  {label:<26} {:.2} of the rate{rate_target}, p99 +{:.0} µs{p99_target}; 1 conn: p50 +{:.0} µs, p99 +{:.0} µs",
        x.0 / base.0,
        x.1 - base.1,
        x.2 - base.2,
        x.3 - base.3
    );
}

/// wrk's `1.23ms` / `456.00us` / `1.20s` in µs.
fn micros(v: &str) -> f64 {
    let (number, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => f64::NAN,
    }
}

/// The agent's resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn main() {
    if !require_root("bench-proxy") {
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("bench-proxy: wrk is not installed (apt install wrk)");
        std::process::exit(1);
    }
    let node = Node::start("bpx");
    let c1 = Netns::new("bpxa");
    let c2 = Netns::new("bpxb");
    let e1 = node.add_labeled(&c1, &[("id", "app1")]);
    node.add_labeled(&c2, &[("id", "app2")]);
    let _server = HttpServer::start(&c1.name, ANY80);
    let ip: IpAddr = e1.addressing.ipv4.expect("ipv4");
    let url = format!("http://{ip}/public");
    let router = node.sh(&["ip", "-4", "-o", "addr", "show", "cilium_host"]);
    let router: IpAddr = router
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("router address on cilium_host");
    let nginx_url = format!("http://{router}:8080/public");

    // The same on a node whose proxy connections skip the stack (--proxy-sockmap).
    let fast = Node::start_in(Netns::new("bpy"), &["--proxy-sockmap"]);
    let f1 = Netns::new("bpya");
    let f2 = Netns::new("bpyb");
    let fe1 = fast.add_labeled(&f1, &[("id", "app1")]);
    fast.add_labeled(&f2, &[("id", "app2")]);
    let _fast_server = HttpServer::start(&f1.name, ANY80);
    let fast_url = format!("http://{}/public", fe1.addressing.ipv4.expect("ipv4"));
    import(&fast, &policy(true));

    let (mut direct, mut proxied, mut nginx) = (Runs::default(), Runs::default(), Runs::default());
    let mut sockmap = Runs::default();
    for _ in 0..ROUNDS {
        import(&node, &policy(false));
        direct.measure(&c2.name, &url);
        import(&node, &policy(true));
        proxied.measure(&c2.name, &url);
        sockmap.measure(&f2.name, &fast_url);
        // nginx forwards from the node's address: no policy for app1 in this run.
        node.agent.cli(&["policy", "delete", "--all"]).ok();
        let server = Nginx::start(
            &node,
            SocketAddr::new(router, 8080),
            SocketAddr::new(ip, 80),
        );
        nginx.measure(&c2.name, &nginx_url);
        drop(server);
    }
    println!(
        "L7 proxy: HTTP GET keep-alive, wrk 5 s (16 connections on 2 threads; and 1 connection), {ROUNDS} rounds, medians"
    );
    let d = direct.print("without proxy (L4 rule)");
    let p = proxied.print("through the agent's proxy (L7)");
    let f = sockmap.print("  the same, --proxy-sockmap");
    let n = nginx.print("through nginx (no policy)");
    compare(
        "agent's proxy / direct:",
        p,
        d,
        " (target >= 0.5)",
        " (target <= 1000)",
    );
    compare("--proxy-sockmap / direct:", f, d, "", "");
    compare("nginx / direct:", n, d, "", "");
    println!("  agent's proxy / nginx:  {:.2} of the rate", p.0 / n.0);

    // Memory per 1,000 idle proxied connections.
    import(&node, &policy(true));
    let pid = node.agent.pid().expect("agent pid");
    let to = SocketAddr::new(ip, 80);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut c = HttpClient::connect(&c2.name, to, "app1")
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        let r = c.request("GET", "/public", &[], None).expect("request");
        assert_eq!(r.status, 200);
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    println!(
        "  agent memory: {} KiB before, {} KiB with {IDLE} idle proxied connections: {:.1} KiB per connection ({:.1} MiB per 1,000)",
        before,
        after,
        after.saturating_sub(before) as f64 / IDLE as f64,
        after.saturating_sub(before) as f64 / 1024.0
    );
    drop(idle);
}
