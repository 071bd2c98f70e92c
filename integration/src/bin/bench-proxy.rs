//! `make bench`: HTTP requests through the L7 proxy, side by side with the same requests
//! without it, in one run:
//!
//! - (a) app2 -> app1:80 under the seed's policy at L4 only (no proxy in the path);
//! - (b) the same with the seed's L7 rule (`GET /public`): every request checked by the proxy.
//!
//! `wrk` (Debian's) in app2's namespace, keep-alive, 2 threads and 16 connections, 5 s per
//! run, (a) and (b) in turn for a few rounds, medians of requests/s and of the p99 latency.
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

/// One wrk run: (requests/s, p99 in µs).
fn wrk(netns: &str, url: &str) -> (f64, f64) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "wrk",
            "-t2",
            "-c16",
            "-d5s",
            "--latency",
            url,
        ])
        .output()
        .expect("run wrk (apt install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| micros(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency in {text}"));
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    assert!(errors.is_none(), "wrk saw errors: {text}");
    (rps, p99)
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

    let mut direct: (Vec<f64>, Vec<f64>) = Default::default();
    let mut proxied: (Vec<f64>, Vec<f64>) = Default::default();
    for _ in 0..ROUNDS {
        for (l7, series) in [(false, &mut direct), (true, &mut proxied)] {
            import(&node, &policy(l7));
            let (rps, p99) = wrk(&c2.name, &url);
            series.0.push(rps);
            series.1.push(p99);
        }
    }
    println!("L7 proxy: HTTP GET keep-alive, wrk -t2 -c16 -d5s, {ROUNDS} rounds, medians");
    let (d_rps, d_p99) = (median(direct.0), median(direct.1));
    let (p_rps, p_p99) = (median(proxied.0), median(proxied.1));
    println!("  without proxy (L4 rule)   {d_rps:>9.0} req/s   p99 {d_p99:>8.0} µs");
    println!("  through proxy (L7 rule)   {p_rps:>9.0} req/s   p99 {p_p99:>8.0} µs");
    println!(
        "  ratio through/without: {:.2} of the rate (target >= 0.5), p99 +{:.0} µs (target <= 1000)",
        p_rps / d_rps,
        p_p99 - d_p99
    );

    // Memory per 1,000 idle proxied connections.
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
