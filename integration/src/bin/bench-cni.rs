//! `make bench`: the cost of putting a container on the network and taking it off again,
//! `cilium-cni` (with its agent) side by side with the reference plugins a user would pick
//! instead (Debian's `containernetworking-plugins`: `bridge` + `host-local`, `ptp` +
//! `host-local`).
//!
//! Every plugin runs as a runtime runs it: exec'd with the `CNI_*` environment and the config
//! on stdin, here as `ip netns exec <node> <plugin>` so each plugin works in a private node
//! namespace of its own (the bridge, the agent's devices); the exec floor of that is measured
//! too. Each ADD gets a fresh container namespace created beforehand (not timed).
//!
//! - sequential: N ADDs (`BENCH_N`, default 200), then their N DELs, each timed;
//! - concurrent: 32 ADDs started at once (32 threads, 32 containers), then the 32 DELs; wall
//!   time until the last one finished. All must succeed with distinct addresses.
//!
//! Not a test: it prints numbers and ratios, it asserts nothing about time. The release
//! profile aborts on panic, so everything this creates (namespaces, the agent, the tmpfs
//! mount, temp dirs) is also registered with a panic hook that removes it.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use integration::cni::{plugin_command, run_plugin, Invocation, PluginRun};
use integration::{bin, require_root, Agent, AgentOptions, Netns};
use serde_json::{json, Value};

const DEFAULT_N: usize = 200;
const WARMUP: usize = 5;
const CONCURRENT: usize = 32;
const REFERENCE_DIR: &str = "/usr/lib/cni";

// ---------------------------------------------------------------------------------------------
// Cleanup also on panic (panic = "abort" in release: no destructor runs then).

type Action = Box<dyn Fn() + Send>;

static ACTIONS: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static NEXT_ACTION: AtomicU64 = AtomicU64::new(0);

/// Registration of a cleanup action for the panic hook; dropping it (the normal path, where
/// the owner's own destructor cleans up) deregisters it.
#[derive(Debug)]
struct OnPanic(u64);

fn on_panic(action: impl Fn() + Send + 'static) -> OnPanic {
    let id = NEXT_ACTION.fetch_add(1, Ordering::Relaxed);
    ACTIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((id, Box::new(action)));
    OnPanic(id)
}

impl Drop for OnPanic {
    fn drop(&mut self) {
        ACTIONS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| *id != self.0);
    }
}

/// On panic: print as usual, then run every registered action, newest first.
fn install_panic_cleanup() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let actions = std::mem::take(&mut *ACTIONS.lock().unwrap_or_else(PoisonError::into_inner));
        if !actions.is_empty() {
            eprintln!(
                "bench-cni: cleaning up {} resources after the panic",
                actions.len()
            );
        }
        for (_, action) in actions.into_iter().rev() {
            action();
        }
    }));
}

/// A network namespace (node or container).
#[derive(Debug)]
struct Ns {
    ns: Netns,
    _on_panic: OnPanic,
}

impl Ns {
    fn new(prefix: &str) -> Ns {
        let ns = Netns::new(prefix);
        let name = ns.name.clone();
        let _on_panic = on_panic(move || {
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        });
        Ns { ns, _on_panic }
    }

    fn name(&self) -> &str {
        &self.ns.name
    }

    fn path(&self) -> String {
        self.ns.path()
    }
}

/// A private directory.
#[derive(Debug)]
struct Dir {
    dir: tempfile::TempDir,
    _on_panic: OnPanic,
}

impl Dir {
    fn new(prefix: &str) -> Dir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_path_buf();
        let _on_panic = on_panic(move || {
            let _ = std::fs::remove_dir_all(&path);
        });
        Dir { dir, _on_panic }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A private tmpfs, as `/run` (the agent's default state dir) is on a standard host;
/// unmounted on drop.
#[derive(Debug)]
struct Tmpfs {
    _on_panic: OnPanic,
    // Dropped after the unmount in `drop`.
    dir: Dir,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = Dir::new("cilium-bench-tmpfs-");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "cilium-bench"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount tmpfs on {}", dir.path().display());
        let point = dir.path().to_path_buf();
        let _on_panic = on_panic(move || {
            let _ = Command::new("umount").arg(&point).status();
        });
        Tmpfs { _on_panic, dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// An agent running in a node namespace; killed on drop.
#[derive(Debug)]
struct NodeAgent {
    agent: Agent,
    _on_panic: OnPanic,
}

impl NodeAgent {
    fn start(state: &Path, node: &Ns) -> NodeAgent {
        let opts = AgentOptions {
            netns: Some(node.name().to_string()),
            ..Default::default()
        };
        let mut agent = Agent::spawn(state, &opts);
        let pid = agent.pid().expect("agent pid");
        let _on_panic = on_panic(move || {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        agent.wait_ready();
        NodeAgent { agent, _on_panic }
    }

    fn endpoint_count(&self) -> usize {
        let (status, body) = self.agent.http("GET", "/endpoint", None);
        assert_eq!(status, 200, "GET /endpoint: {body}");
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or_else(|| panic!("GET /endpoint: {body}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Plugins.

/// A plugin as a runtime would run it, in its node namespace.
#[derive(Debug)]
struct Plugin {
    label: String,
    exe: PathBuf,
    config: String,
    node: String,
}

impl Plugin {
    /// Execs the plugin in the node namespace; returns how long until it exited.
    fn exec(&self, inv: &Invocation) -> (Duration, PluginRun) {
        let cmd = plugin_command(&self.exe, Some(&self.node), inv);
        let start = Instant::now();
        let run = run_plugin(cmd, &self.config);
        (start.elapsed(), run)
    }

    fn invocation(command: &str, id: &str, container: &Ns) -> Invocation {
        Invocation {
            path: Some(REFERENCE_DIR.to_string()),
            ..Invocation::new(command, id, &container.path())
        }
    }

    /// ADD; returns the time and the container's IPv4 address.
    fn add(&self, id: &str, container: &Ns) -> (Duration, IpAddr) {
        let (t, run) = self.exec(&Plugin::invocation("ADD", id, container));
        assert_eq!(
            run.code, 0,
            "{}: ADD {id} failed: {}\n{}",
            self.label, run.stdout, run.stderr
        );
        let result = run.ok();
        let ip = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .find(IpAddr::is_ipv4)
            .unwrap_or_else(|| panic!("{}: no IPv4 in the ADD result {result}", self.label));
        (t, ip)
    }

    fn del(&self, id: &str, container: &Ns) -> Duration {
        let (t, run) = self.exec(&Plugin::invocation("DEL", id, container));
        assert_eq!(
            run.code, 0,
            "{}: DEL {id} failed: {}\n{}",
            self.label, run.stdout, run.stderr
        );
        t
    }
}

/// A node namespace with a plugin configured in it (and the agent, for cilium-cni).
#[derive(Debug)]
struct Setup {
    plugin: Plugin,
    // Drop order: agent, then the namespace, then the directories it used.
    agent: Option<NodeAgent>,
    _node: Ns,
    _dir: Option<Dir>,
}

impl Setup {
    /// cilium-cni with an agent whose socket and state live under `state`.
    fn cilium(label: &str, state: &Path) -> Setup {
        let node = Ns::new("bn");
        let agent = NodeAgent::start(state, &node);
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "cilium",
            "type": "cilium-cni",
            "mtu": 1450,
            "socket-path": agent.agent.socket,
        });
        Setup {
            plugin: Plugin {
                label: label.to_string(),
                exe: bin("cilium-cni"),
                config: config.to_string(),
                node: node.name().to_string(),
            },
            agent: Some(agent),
            _node: node,
            _dir: None,
        }
    }

    /// A reference plugin with `host-local` IPAM keeping its data in a private directory.
    fn reference(label: &str, plugin: &str, subnet: &str) -> Setup {
        let dir = Dir::new("cilium-bench-ref-");
        let node = Ns::new("bn");
        let mut config = json!({
            "cniVersion": "1.0.0",
            "name": format!("bench-{plugin}"),
            "type": plugin,
            "mtu": 1450,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet}]],
                "dataDir": dir.path().join("host-local"),
            },
        });
        if plugin == "bridge" {
            config["bridge"] = Value::from("cni-bench0");
            config["isGateway"] = Value::from(true);
        }
        Setup {
            plugin: Plugin {
                label: label.to_string(),
                exe: Path::new(REFERENCE_DIR).join(plugin),
                config: config.to_string(),
                node: node.name().to_string(),
            },
            agent: None,
            _node: node,
            _dir: Some(dir),
        }
    }

    fn containers(n: usize) -> Vec<Ns> {
        (0..n).map(|_| Ns::new("bc")).collect()
    }

    fn ids(&self, tag: &str, n: usize) -> Vec<String> {
        let base = self
            .plugin
            .label
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        (0..n).map(|i| format!("bench-{base}-{tag}-{i}")).collect()
    }

    /// Sequential ADDs, then their DELs; returns the samples and, for the agent, how long
    /// after the last DEL returned its background teardown had released every address.
    fn sequential(&self, n: usize) -> (Vec<Duration>, Vec<Duration>, Option<Duration>) {
        let warm = Setup::containers(WARMUP);
        for (id, c) in self.ids("warm", WARMUP).iter().zip(&warm) {
            self.plugin.add(id, c);
            self.plugin.del(id, c);
        }
        drop(warm);
        let containers = Setup::containers(n);
        let ids = self.ids("seq", n);
        let mut addresses = HashSet::new();
        let adds: Vec<Duration> = ids
            .iter()
            .zip(&containers)
            .map(|(id, c)| {
                let (t, ip) = self.plugin.add(id, c);
                assert!(
                    addresses.insert(ip),
                    "{}: {ip} handed out twice",
                    self.plugin.label
                );
                t
            })
            .collect();
        self.check_endpoints(n);
        let dels = ids
            .iter()
            .zip(&containers)
            .map(|(id, c)| self.plugin.del(id, c))
            .collect();
        let last_del = Instant::now();
        self.check_endpoints(0);
        let drained = self.agent.as_ref().map(|agent| {
            let deadline = last_del + Duration::from_secs(60);
            loop {
                let (_, body) = agent.agent.http("GET", "/healthz", None);
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                let held = ["ipv4", "ipv6"]
                    .iter()
                    .map(|f| v["ipam"][f].as_array().map_or(0, Vec::len))
                    .sum::<usize>();
                // Only the two router addresses left.
                if held <= 2 || Instant::now() > deadline {
                    return last_del.elapsed();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        (adds, dels, drained)
    }

    /// `CONCURRENT` ADDs at once, then the DELs at once; returns the wall times.
    fn concurrent(&self) -> (Duration, Duration) {
        let containers = Setup::containers(CONCURRENT);
        let ids = self.ids("par", CONCURRENT);
        let run = |del: bool| -> (Duration, Vec<IpAddr>) {
            let barrier = Barrier::new(CONCURRENT + 1);
            std::thread::scope(|s| {
                let workers: Vec<_> = ids
                    .iter()
                    .zip(&containers)
                    .map(|(id, c)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            if del {
                                self.plugin.del(id, c);
                                None
                            } else {
                                Some(self.plugin.add(id, c).1)
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                let ips: Vec<IpAddr> = workers
                    .into_iter()
                    .filter_map(|w| w.join().expect("worker panicked"))
                    .collect();
                (start.elapsed(), ips)
            })
        };
        let (add_wall, ips) = run(false);
        let distinct: HashSet<_> = ips.iter().collect();
        assert_eq!(
            distinct.len(),
            CONCURRENT,
            "{}: concurrent ADDs gave {} distinct addresses: {ips:?}",
            self.plugin.label,
            distinct.len()
        );
        self.check_endpoints(CONCURRENT);
        let (del_wall, _) = run(true);
        self.check_endpoints(0);
        (add_wall, del_wall)
    }

    /// The agent (if any) has exactly `n` endpoints.
    fn check_endpoints(&self, n: usize) {
        if let Some(agent) = &self.agent {
            assert_eq!(
                agent.endpoint_count(),
                n,
                "{}: endpoints at the agent",
                self.plugin.label
            );
        }
    }

    /// The fixed cost of each row: `ip netns exec <node> /bin/true`.
    fn exec_floor(&self, n: usize) -> Vec<Duration> {
        (0..n)
            .map(|_| {
                let start = Instant::now();
                let ok = Command::new("ip")
                    .args(["netns", "exec", &self.plugin.node, "/bin/true"])
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "ip netns exec /bin/true");
                start.elapsed()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers.

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |p: f64| {
        let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[idx.min(samples.len() - 1)]
    };
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:>7.2} ms", us / 1000.0)
    } else {
        format!("{us:>7.0} µs")
    }
}

fn ratio(ours: Duration, theirs: Duration) -> f64 {
    ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9)
}

#[derive(Debug)]
struct Row {
    label: String,
    add: Stats,
    del: Stats,
}

/// The filesystem type `path` is on, as mounted (`stat -f` says "ext2/ext3" for ext4).
fn fs_type(path: &Path) -> String {
    let ask = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .arg(path)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    ask("findmnt", &["-n", "-o", "FSTYPE", "--target"])
        .or_else(|| ask("stat", &["-f", "-c", "%T"]))
        .unwrap_or_else(|| "disk".to_string())
}

fn main() {
    if !require_root("bench-cni") {
        return;
    }
    install_panic_cleanup();
    let n = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(DEFAULT_N);
    for plugin in ["bridge", "ptp", "host-local"] {
        let path = Path::new(REFERENCE_DIR).join(plugin);
        if !path.exists() {
            println!(
                "bench-cni: {} is missing; apt-get install containernetworking-plugins",
                path.display()
            );
            return;
        }
    }
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "cilium-cni vs the reference CNI plugins ({} cores, kernel {kernel}); every plugin exec'd \
         as `ip netns exec <node> <plugin>`, cniVersion 1.0.0",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "cilium-cni: dual-stack endpoint (IPv4 + IPv6) from an agent in the node namespace, \
         state written with fsync; reference plugins: IPv4 only, ipMasq off, host-local data \
         in a temp dir"
    );
    println!();

    // Declared first, dropped last: the agents using them are gone by then.
    let tmpfs = Tmpfs::mount();
    let disk = Dir::new("cilium-bench-state-");
    let disk_fs = fs_type(disk.path());

    let cilium_tmpfs = Setup::cilium("cilium-cni, agent state on tmpfs", tmpfs.dir.path());
    let cilium_disk = Setup::cilium(
        &format!("cilium-cni, agent state on {disk_fs}"),
        disk.path(),
    );
    let bridge = Setup::reference("bridge + host-local", "bridge", "10.24.0.0/16");
    let ptp = Setup::reference("ptp + host-local", "ptp", "10.25.0.0/16");

    let mut rows = Vec::new();
    let mut drains = Vec::new();
    for setup in [&cilium_tmpfs, &cilium_disk, &bridge, &ptp] {
        eprintln!(
            "bench-cni: {} ({n} ADDs, then {n} DELs)...",
            setup.plugin.label
        );
        let (adds, dels, drained) = setup.sequential(n);
        if let Some(d) = drained {
            drains.push((setup.plugin.label.clone(), d));
        }
        rows.push(Row {
            label: setup.plugin.label.clone(),
            add: stats(adds),
            del: stats(dels),
        });
    }
    let floor = stats(bridge.exec_floor(n));

    eprintln!("bench-cni: {CONCURRENT} concurrent ADDs and DELs...");
    let par_cilium = cilium_tmpfs.concurrent();
    let par_bridge = bridge.concurrent();
    drop((cilium_tmpfs, cilium_disk, bridge, ptp));

    println!("sequential: {n} ADDs, then their {n} DELs, one container namespace each");
    println!(
        "  {:<42} {:>10} {:>10}   {:>10} {:>10}",
        "", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    for r in &rows {
        println!(
            "  {:<42} {} {}   {} {}",
            r.label,
            show(r.add.p50),
            show(r.add.p99),
            show(r.del.p50),
            show(r.del.p99)
        );
    }
    println!(
        "  {:<42} {} {}",
        "floor: ip netns exec <node> /bin/true",
        show(floor.p50),
        show(floor.p99)
    );
    for (label, d) in &drains {
        println!(
            "  {label}: DEL replies once the endpoint is forgotten; the kernel's veth teardown \
             runs after it, and every address was released {} after the last DEL returned",
            show(*d)
        );
    }
    println!();
    println!("ratios cilium-cni / reference (below 1 = cilium-cni faster)");
    println!(
        "  {:<42} {:>10} {:>10}   {:>10} {:>10}",
        "", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    for ours in &rows[..2] {
        for theirs in &rows[2..] {
            println!(
                "  {:<42} {:>9.2}x {:>9.2}x   {:>9.2}x {:>9.2}x",
                format!(
                    "{} / {}",
                    ours.label.trim_start_matches("cilium-cni, agent state on "),
                    theirs.label
                ),
                ratio(ours.add.p50, theirs.add.p50),
                ratio(ours.add.p99, theirs.add.p99),
                ratio(ours.del.p50, theirs.del.p50),
                ratio(ours.del.p99, theirs.del.p99)
            );
        }
    }
    println!();
    println!("concurrent: {CONCURRENT} ADDs started at once (all succeeded, distinct addresses), then the {CONCURRENT} DELs; wall time");
    println!("  {:<42} {:>10}   {:>10}", "", "ADD wall", "DEL wall");
    println!(
        "  {:<42} {}   {}",
        "cilium-cni, agent state on tmpfs",
        show(par_cilium.0),
        show(par_cilium.1)
    );
    println!(
        "  {:<42} {}   {}",
        "bridge + host-local",
        show(par_bridge.0),
        show(par_bridge.1)
    );
    println!(
        "  {:<42} {:>9.2}x   {:>9.2}x",
        "ratio cilium-cni / bridge + host-local",
        ratio(par_cilium.0, par_bridge.0),
        ratio(par_cilium.1, par_bridge.1)
    );
    println!();
    let (ours, theirs) = (&rows[0], &rows[2]);
    let met =
        ratio(ours.add.p50, theirs.add.p50) <= 0.5 && ratio(ours.del.p50, theirs.del.p50) <= 0.5;
    println!(
        "target: ADD and DEL p50 at most half of bridge+host-local (agent state on tmpfs): {}",
        if met { "met" } else { "not met" }
    );
    drop(disk);
    drop(tmpfs);
}
