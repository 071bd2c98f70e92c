//! `make soak`: the long run of the reliability issue. `SOAK_CYCLES` (default 10,000) CNI
//! ADD + DEL cycles through `cilium-cni` against one agent, each with a new container id, over
//! a few container namespaces used in turn. It checks, and exits non-zero when one fails:
//!
//! - every ADD and DEL succeeds;
//! - afterwards nothing is left: no endpoint, no address beyond the router's, no `lxc` link or
//!   route in the node namespace, no endpoint state file, no entry in the datapath's endpoint
//!   map;
//! - the agent's memory (RSS) at the end is within 10% of its value after the warm-up (the
//!   first 5% of the cycles), and it has no more open file descriptors than then (both
//!   measured at rest, a second after the last call).
//!
//! RSS and descriptors are printed every 10% of the run, with the ADD/DEL latencies.
//! Everything it creates lives in namespaces it deletes (also on panic).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::cni::{Invocation, Node};
use integration::{require_root, Netns};

const DEFAULT_CYCLES: usize = 10_000;
const CONTAINERS: usize = 4;

static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn track(name: &str) {
    CREATED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name.to_string());
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

/// (RSS in KiB, open descriptors) of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// What is left of endpoints on the node; empty when nothing.
fn leftovers(node: &Node, state_dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let (status, body) = node.agent.http("GET", "/endpoint", None);
    if status != 200 || body.trim() != "[]" {
        left.push(format!("endpoints: {status} {body}"));
    }
    let (_, health) = node.agent.http("GET", "/healthz", None);
    let v: serde_json::Value = serde_json::from_str(&health).unwrap_or_default();
    let held: usize = ["ipv4", "ipv6"]
        .iter()
        .map(|f| v["ipam"][f].as_array().map_or(0, Vec::len))
        .sum();
    if held > 2 {
        left.push(format!(
            "{held} addresses held (2 router addresses expected)"
        ));
    }
    let links = node.sh(&["ip", "-o", "link", "show"]);
    let lxc: Vec<&str> = links.lines().filter(|l| l.contains(": lxc")).collect();
    if !lxc.is_empty() {
        left.push(format!("links: {lxc:?}"));
    }
    for family in ["-4", "-6"] {
        let routes = node.sh(&["ip", family, "route", "show"]);
        let stale: Vec<&str> = routes.lines().filter(|l| l.contains("dev lxc")).collect();
        if !stale.is_empty() {
            left.push(format!("routes: {stale:?}"));
        }
    }
    let files: Vec<String> = std::fs::read_dir(state_dir.join("endpoints"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if !files.is_empty() {
        left.push(format!("endpoint state files: {files:?}"));
    }
    let map = node.agent.cli(&["bpf", "endpoint", "list"]).ok();
    let entries = map.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
    if entries > 0 {
        left.push(format!("endpoint map entries:\n{map}"));
    }
    left
}

fn main() -> ExitCode {
    if !require_root("soak-cni") {
        return ExitCode::SUCCESS;
    }
    install_panic_cleanup();
    let cycles: usize = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let node = Node::start("soakn");
    track(&node.netns.name);
    let containers: Vec<Netns> = (0..CONTAINERS)
        .map(|i| {
            let ns = Netns::new(&format!("soak{i}"));
            track(&ns.name);
            ns
        })
        .collect();
    let pid = node.agent.pid().expect("agent pid");
    let config = node.config(Some("1.0.0"));
    let warmup = (cycles / 20).max(1);
    let mut baseline = usage(pid);
    let (mut adds, mut dels) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
    let started = Instant::now();
    println!("soak: {cycles} CNI ADD/DEL cycles against one agent (pid {pid})");
    for i in 0..cycles {
        let ns = &containers[i % CONTAINERS];
        let id = format!("soak-{i:06}");
        let t = Instant::now();
        let add = node.cni(&Invocation::new("ADD", &id, &ns.path()), &config);
        adds.push(t.elapsed().as_secs_f64() * 1e3);
        if add.code != 0 {
            eprintln!("ADD {i} failed: {}\n{}", add.stdout, add.stderr);
            return ExitCode::FAILURE;
        }
        let t = Instant::now();
        let del = node.cni(&Invocation::new("DEL", &id, &ns.path()), &config);
        dels.push(t.elapsed().as_secs_f64() * 1e3);
        if del.code != 0 {
            eprintln!("DEL {i} failed: {}\n{}", del.stdout, del.stderr);
            return ExitCode::FAILURE;
        }
        if i + 1 == warmup {
            // Measured at rest, like the end: no plugin connection open.
            std::thread::sleep(Duration::from_secs(1));
            baseline = usage(pid);
        }
        if (i + 1) % (cycles / 10).max(1) == 0 {
            let (rss, fds) = usage(pid);
            println!(
                "  {:>6} cycles  {:>6.1} s  RSS {:>7} KiB  fds {:>4}",
                i + 1,
                started.elapsed().as_secs_f64(),
                rss,
                fds
            );
        }
    }
    // Let the agent's upkeep run once (conntrack GC, ipcache refresh) before the last look.
    std::thread::sleep(Duration::from_secs(1));
    let end = usage(pid);
    adds.sort_by(|a, b| a.total_cmp(b));
    dels.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  ADD p50 {:.1} ms p99 {:.1} ms; DEL p50 {:.1} ms p99 {:.1} ms",
        percentile(&adds, 50),
        percentile(&adds, 99),
        percentile(&dels, 50),
        percentile(&dels, 99)
    );
    let growth = (end.0 as f64 - baseline.0 as f64) / baseline.0.max(1) as f64 * 100.0;
    println!(
        "  after warm-up ({warmup} cycles): RSS {} KiB, fds {}; at the end: RSS {} KiB ({growth:+.1}%), fds {}",
        baseline.0, baseline.1, end.0, end.1
    );
    let mut failed = false;
    let left = leftovers(&node, &node.agent.state_dir);
    if !left.is_empty() {
        failed = true;
        println!("LEAK after {cycles} cycles:");
        for l in &left {
            println!("  {l}");
        }
    } else {
        println!("  nothing left: no endpoint, address, link, route, state file or map entry");
    }
    if growth.abs() > 10.0 {
        failed = true;
        println!("FAIL: agent memory moved {growth:+.1}% (limit ±10%)");
    }
    if end.1 > baseline.1 {
        failed = true;
        println!(
            "FAIL: agent file descriptors grew from {} to {}",
            baseline.1, end.1
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        println!("soak: ok");
        ExitCode::SUCCESS
    }
}
