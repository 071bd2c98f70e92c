//! `make bench`: the eBPF datapath between two containers on one node, side by side with
//! what a user would otherwise have, in one run:
//!
//! - (a) plain veth pairs + host routes, no program attached (the physical baseline);
//! - (b) this datapath: containers attached by `cilium-cni`, the seed's L3/L4 policy
//!   enforced on the server, and 10,000 more identities (CIDR identities of a `fromCIDR`
//!   rule) in its policy map and in the ipcache;
//! - (c) the same plain topology filtered by iptables: conntrack ESTABLISHED accept, one
//!   ACCEPT rule per allowed source address (10,000, the client's last) and a final DROP.
//!
//! For each: request/response latency (1-byte TCP ping-pong on one connection, like netperf
//! TCP_RR) and stream throughput (iperf3, 2 s). The three are measured in turn, round after
//! round, and each figure is the median over the rounds: load on a virtual machine drifts
//! over a run, and interleaving spreads the drift over all three. Then the time from CNI ADD
//! to an enforced endpoint, for an endpoint with a seed-sized policy and for one whose policy
//! has 10,003 entries. Every topology lives in namespaces this program creates and deletes.
//!
//! Not a test: it prints numbers and ratios and asserts nothing about time.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use integration::cni::{Invocation, Node};
use integration::measure::Series;
use integration::plain::PlainPair;
use integration::{require_root, Netns};
use serde_json::json;

const RR_ROUNDS: usize = 10_000;
/// Measurement rounds over (a), (b), (c).
const ROUNDS: usize = 5;
const EXTRA_IDENTITIES: usize = 10_000;
const RR_PORT: u16 = 7777;
const STREAM_PORT: u16 = 5201;

/// Namespaces to delete if the bench panics (release builds abort: no destructors run).
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn track(ns: &Netns) {
    CREATED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ns.name.clone());
}

fn install_panic_cleanup() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        for name in CREATED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }));
}

/// The plain topology (no program) with its namespaces registered for the panic cleanup.
fn plain(tag: &str, subnet: u8) -> PlainPair {
    let p = PlainPair::new(&format!("bd{tag}"), subnet);
    for ns in [&p.node, &p.client, &p.server] {
        track(ns);
    }
    p
}

fn main() {
    if !require_root("bench-datapath") {
        return;
    }
    install_panic_cleanup();
    println!(
        "datapath between two containers on one node ({ROUNDS} rounds of {RR_ROUNDS} round trips and iperf3 2 s each)"
    );

    // (a) baseline.
    let a = plain("a", 61);

    // (b) this datapath with an enforced policy and 10,000 more identities.
    let node = Node::start("bdb");
    track(&node.netns);
    let client = Netns::new("bdbc");
    let server = Netns::new("bdbs");
    track(&client);
    track(&server);
    let add = |ns: &Netns, app: &str| -> IpAddr {
        let mut conf = node.config(Some("1.0.0"));
        conf["args"] = json!({"cni": {"labels": [{"key": "id", "value": app}]}});
        let inv = Invocation::new("ADD", &ns.name, &ns.path());
        let r = node.cni(&inv, &conf).ok();
        let ip = r["ips"][0]["address"].as_str().expect("address");
        ip.split('/').next().expect("ip").parse().expect("ip")
    };
    let _client_ip = add(&client, "client");
    let server_ip = add(&server, "server");
    let cidrs: Vec<String> = (0..EXTRA_IDENTITIES)
        .map(|i| format!("172.{}.{}.{}/32", 16 + i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let policy = json!([
        {"endpointSelector": {"matchLabels": {"id": "server"}},
         "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "client"}}],
                      "toPorts": [{"ports": [{"port": RR_PORT.to_string(), "protocol": "tcp"},
                                              {"port": STREAM_PORT.to_string(), "protocol": "tcp"}]}]}]},
        {"endpointSelector": {"matchLabels": {"id": "server"}},
         "ingress": [{"fromCIDR": cidrs}]},
        {"endpointSelector": {"matchLabels": {"id": "small"}},
         "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "client"}}],
                      "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}]}
    ]);
    let path = node.dir.path().join("bench-policy.json");
    std::fs::write(&path, policy.to_string()).expect("write policy");
    let t = Instant::now();
    node.agent
        .cli(&["policy", "import", path.to_str().expect("path")])
        .ok();
    let import = t.elapsed();
    let server_ep = node.agent.cli(&["endpoint", "list", "-o", "json"]).ok();
    let entries = {
        let eps: serde_json::Value = serde_json::from_str(&server_ep).expect("endpoints");
        let id = eps
            .as_array()
            .expect("list")
            .iter()
            .find(|e| e["container-id"] == server.name.as_str())
            .map(|e| e["id"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        let dump = node
            .agent
            .cli(&["bpf", "policy", "list", &id.to_string(), "-o", "json"])
            .ok();
        let v: serde_json::Value = serde_json::from_str(&dump).expect("policy dump");
        v["entries"].as_array().map_or(0, Vec::len)
    };
    println!(
        "  (b) policy import with {EXTRA_IDENTITIES} CIDR identities: {:.0} ms; server policy map: {entries} entries",
        import.as_secs_f64() * 1e3
    );

    // (c) iptables with 10,000 source rules.
    let c = plain("c", 62);
    let mut rules = String::from("*filter\n:FORWARD DROP [0:0]\n");
    rules.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for i in 0..EXTRA_IDENTITIES {
        rules.push_str(&format!(
            "-A FORWARD -s 172.{}.{}.{}/32 -j ACCEPT\n",
            16 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    rules.push_str(&format!("-A FORWARD -s {}/32 -j ACCEPT\n", c.client_ip));
    rules.push_str("COMMIT\n");
    let mut restore = Command::new("ip")
        .args(["netns", "exec", &c.node.name, "iptables-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    restore
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules");
    assert!(
        restore.wait().expect("wait").success(),
        "iptables-restore failed"
    );
    let (mut sa, mut sb, mut sc) = (Series::default(), Series::default(), Series::default());
    for _ in 0..ROUNDS {
        sa.measure(
            &a.client.name,
            &a.server.name,
            a.server_ip,
            (RR_PORT, STREAM_PORT),
            RR_ROUNDS,
        );
        sb.measure(
            &client.name,
            &server.name,
            server_ip,
            (RR_PORT, STREAM_PORT),
            RR_ROUNDS,
        );
        sc.measure(
            &c.client.name,
            &c.server.name,
            c.server_ip,
            (RR_PORT, STREAM_PORT),
            RR_ROUNDS,
        );
    }
    let (rr_a, st_a) = sa.report("(a) veth + routes, no program");
    let (rr_b, st_b) = sb.report("(b) cilium datapath, L3/L4 policy, 10k ids");
    let (rr_c, st_c) = sc.report("(c) iptables, 10,001 ACCEPT rules + DROP");
    println!(
        "  ratios: RR p50 b/a {:.2} (target <= 1.10), c/a {:.2}, b/c {:.2}; stream b/a {:.2} (target >= 0.90), c/a {:.2}, b/c {:.2}",
        rr_b / rr_a,
        rr_c / rr_a,
        rr_b / rr_c,
        st_b / st_a,
        st_c / st_a,
        st_b / st_c
    );

    // CNI ADD to enforced: the ADD returns once maps are written and programs attached.
    for (app, what) in [
        ("small", "seed-sized policy (L3/L4, 3 entries)"),
        ("server", "policy with 10,003 entries"),
    ] {
        let mut times = Vec::new();
        let mut extra = Vec::new();
        for i in 0..25 {
            let ns = Netns::new("bdbx");
            track(&ns);
            let mut conf = node.config(Some("1.0.0"));
            conf["args"] = json!({"cni": {"labels": [{"key": "id", "value": app}]}});
            let inv = Invocation::new("ADD", &ns.name, &ns.path());
            let t = Instant::now();
            node.cni(&inv, &conf).ok();
            if i >= 5 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            extra.push(ns);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  CNI ADD -> endpoint enforced, {what}: p50 {:.1} ms, p99 {:.1} ms (target p50 <= 10 ms)",
            times[times.len() / 2],
            times[times.len() - 1]
        );
        for ns in &extra {
            let inv = Invocation::new("DEL", &ns.name, &ns.path());
            node.cni(&inv, &node.config(Some("1.0.0"))).ok();
        }
    }
}
