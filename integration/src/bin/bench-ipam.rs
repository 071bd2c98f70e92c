//! `make bench`: the cost of getting an address and giving it back, side by side.
//!
//! - cilium-agent: `POST /ipam?family=ipv4` + `DELETE /ipam/{ip}` over the unix socket (state
//!   written with fsync before each reply), on one keep-alive connection and with a new
//!   connection per pair (as a plugin process does).
//! - host-local, the reference CNI IPAM plugin users pick today: `ADD` + `DEL` by exec, as a
//!   runtime runs it. Exec of `/bin/true` twice shows the part of that which is process start.
//! - Resident memory and open file descriptors of the agent, idle and after the load.
//!
//! Not a test: it prints numbers and ratios, it asserts nothing about time.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cilium_api::models::Family;
use cilium_api::Client;
use integration::{Agent, AgentOptions};

const PAIRS: usize = 5000;
const WARMUP: usize = 200;
const EXEC_PAIRS: usize = 500;
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    Stats {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
    }
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:>8.2} ms", us / 1000.0)
    } else {
        format!("{us:>8.1} µs")
    }
}

fn row(name: &str, s: &Stats) {
    println!("  {name:<50} p50 {}   p99 {}", show(s.p50), show(s.p99));
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn memory_line(label: &str, pid: u32) {
    let rss = proc_status(pid, "VmRSS:").unwrap_or(0);
    println!(
        "  {label:<50} RSS {:>6.1} MiB   fds {}",
        rss as f64 / 1024.0,
        fd_count(pid)
    );
}

/// Two requests that change nothing: the HTTP + JSON floor of a pair.
async fn read_pairs(socket: &Path, n: usize) -> Vec<Duration> {
    let client = Client::new(socket);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.config().await.expect("config");
        client.config().await.expect("config");
        samples.push(start.elapsed());
    }
    samples
}

async fn agent_pairs(client_per_pair: bool, socket: &Path, n: usize) -> Vec<Duration> {
    let shared = Client::new(socket);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let fresh;
        let client = if client_per_pair {
            fresh = Client::new(socket);
            &fresh
        } else {
            &shared
        };
        let reply = client
            .ipam_allocate(Some(Family::Ipv4), "bench")
            .await
            .expect("allocate");
        let ip: IpAddr = reply.endpoint.ipv4.expect("an IPv4 address");
        client.ipam_release(ip).await.expect("release");
        samples.push(start.elapsed());
    }
    samples
}

fn exec_cni(command: &str, container: &str, config: &[u8]) -> bool {
    let mut child = Command::new(HOST_LOCAL)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("exec host-local");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config);
    }
    child.wait().map(|s| s.success()).unwrap_or(false)
}

fn host_local_pairs(data_dir: &Path) -> Option<Vec<Duration>> {
    if !Path::new(HOST_LOCAL).exists() {
        println!("  host-local: not installed ({HOST_LOCAL}); apt-get install containernetworking-plugins");
        return None;
    }
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "host-local",
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.250.0.0/16"}]],
            "dataDir": data_dir,
        }
    })
    .to_string();
    let mut samples = Vec::with_capacity(EXEC_PAIRS);
    for i in 0..EXEC_PAIRS {
        let id = format!("bench-{i}");
        let start = Instant::now();
        assert!(
            exec_cni("ADD", &id, config.as_bytes()),
            "host-local ADD failed"
        );
        assert!(
            exec_cni("DEL", &id, config.as_bytes()),
            "host-local DEL failed"
        );
        samples.push(start.elapsed());
    }
    Some(samples)
}

fn exec_floor() -> Vec<Duration> {
    (0..EXEC_PAIRS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..2 {
                let _ = Command::new("/bin/true").status();
            }
            start.elapsed()
        })
        .collect()
}

/// A private tmpfs, as `/run` is on a standard Debian host; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "cilium-bench"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Runs the agent with its state under `base` and measures it.
fn measure_agent(base: &Path, label: &str) -> (Stats, Stats, Stats) {
    let agent = Agent::start(base, &AgentOptions::default());
    let pid = agent.pid().expect("agent pid");
    std::thread::sleep(Duration::from_millis(500));
    println!("{label}: state dir {}", agent.state_dir.display());
    memory_line("idle agent after start", pid);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (keepalive, fresh, reads) = runtime.block_on(async {
        agent_pairs(false, &agent.socket, WARMUP).await;
        let keepalive = agent_pairs(false, &agent.socket, PAIRS).await;
        let fresh = agent_pairs(true, &agent.socket, PAIRS).await;
        let reads = read_pairs(&agent.socket, PAIRS).await;
        (keepalive, fresh, reads)
    });
    memory_line(&format!("after {} allocate+release pairs", 2 * PAIRS), pid);
    std::thread::sleep(Duration::from_secs(1));
    memory_line("idle again, 1 s later", pid);
    let rss_ok = proc_status(pid, "VmRSS:").unwrap_or(u64::MAX) <= 15 * 1024;
    println!(
        "  target: idle RSS <= 15 MiB: {}",
        if rss_ok { "met" } else { "NOT met" }
    );
    (stats(keepalive), stats(fresh), stats(reads))
}

fn main() {
    println!(
        "cilium-agent IPAM benchmark ({} cores); every agent reply waits for its state to be \
         written with fsync",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    // 1. State where the default state dir is (/var/run), on this machine's filesystem.
    let on_run = tempfile::Builder::new()
        .prefix("cilium-bench-")
        .tempdir_in("/var/run")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let fs_type = Command::new("stat")
        .args(["-f", "-c", "%T", "/var/run"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let run_label = format!("/var/run of this machine ({fs_type})");
    let on_disk = measure_agent(on_run.path(), &run_label);
    println!();
    // 2. State on tmpfs, as /var/run is on a standard Debian host.
    let tmpfs = Tmpfs::mount();
    let on_tmpfs = tmpfs.as_ref().map(|t| {
        let m = measure_agent(t.dir.path(), "tmpfs (a standard Debian /run)");
        println!();
        m
    });

    let host_local_dir = tempfile::tempdir().expect("temp dir");
    let host_local = host_local_pairs(host_local_dir.path()).map(stats);
    let floor = stats(exec_floor());

    println!("allocate + release one IPv4 address ({PAIRS} pairs per agent row, {EXEC_PAIRS} per exec row)");
    row(
        &format!("agent, {fs_type}, keep-alive connection"),
        &on_disk.0,
    );
    row(
        &format!("agent, {fs_type}, new connection per pair"),
        &on_disk.1,
    );
    if let Some((keepalive, fresh, reads)) = &on_tmpfs {
        row("agent, tmpfs, keep-alive connection", keepalive);
        row("agent, tmpfs, new connection per pair", fresh);
        row("agent, two GET /config (no state write), keep-alive", reads);
    }
    if let Some(h) = &host_local {
        row("host-local ADD + DEL (exec, as a runtime runs it)", h);
    }
    row("floor: exec of /bin/true twice", &floor);
    let best = on_tmpfs.as_ref().map_or(&on_disk.0, |t| &t.0);
    println!(
        "  target: agent p50 <= 200 µs (default /var/run on tmpfs): {}",
        if best.p50 <= Duration::from_micros(200) {
            "met"
        } else {
            "NOT met"
        }
    );
    if let Some(h) = &host_local {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!();
        println!("ratios host-local / agent (higher = agent faster)");
        let mut rows = vec![(format!("{fs_type}, new connection per pair"), &on_disk.1)];
        if let Some((_, fresh, _)) = &on_tmpfs {
            rows.push(("tmpfs, new connection per pair".to_string(), fresh));
        }
        for (name, s) in rows {
            println!(
                "  {name:<50} p50 {:>6.1}x   p99 {:>6.1}x",
                ratio(h.p50, s.p50),
                ratio(h.p99, s.p99)
            );
        }
    }
}
