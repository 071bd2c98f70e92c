//! Reliability under load and under crashes, with the real binaries on the real kernel:
//!
//! - 100 CNI ADDs started at once, as containerd starts them, all succeed with distinct
//!   addresses and working containers (the latencies are printed, never asserted), and 100
//!   parallel DELs leave nothing behind;
//! - the agent is killed with SIGKILL at random moments (seeded, the seed is printed) during
//!   parallel ADDs and DELs and restarted on the same state: every ADD that got a result works,
//!   every ADD that failed left nothing behind, every DEL that succeeded left nothing behind,
//!   DEL of everything succeeds, and no endpoint, address, link, route, state file, map entry
//!   or tc filter is left.
//!
//! 100 ADDs take well under a second, so the kills are placed by progress (a random share of
//! the operations started, plus random jitter) rather than by wall time alone. While the agent
//! is down the workers retry an invocation that could not reach it at all, as a runtime does;
//! an invocation cut off mid-request is not retried: its failure is what is checked.
//!
//! Set `RELIABILITY_SEED=<n>` to replay the kill schedule of a failed run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use cilium_api::models::{BpfEndpointEntry, BpfIpcacheEntry, Endpoint, StatusResponse};
use integration::cni::{Invocation, Node, PluginRun};
use integration::traffic::ping;
use integration::{require_root, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;
use serde_json::Value;

const N: usize = 100;
const ROUTER_V4: &str = "10.23.0.1";
const ROUTER_V6: &str = "f00d::c000:217:0:1";

// ---------------------------------------------------------------------------------------------
// What the node holds.

fn endpoints(agent: &Agent) -> Vec<Endpoint> {
    let (status, body) = agent.http("GET", "/endpoint", None);
    assert_eq!(status, 200, "GET /endpoint: {body}");
    serde_json::from_str(&body).expect("endpoint list JSON")
}

/// Addresses IPAM holds, the routers' included.
fn allocated(agent: &Agent) -> BTreeSet<IpAddr> {
    let (status, body) = agent.http("GET", "/healthz", None);
    assert_eq!(status, 200, "GET /healthz: {body}");
    let status: StatusResponse = serde_json::from_str(&body).expect("status JSON");
    status
        .ipam
        .ipv4
        .iter()
        .chain(&status.ipam.ipv6)
        .map(|a| a.parse().expect("IPAM address"))
        .collect()
}

fn routers() -> BTreeSet<IpAddr> {
    [ROUTER_V4, ROUTER_V6]
        .iter()
        .map(|a| a.parse().expect("router address"))
        .collect()
}

fn bpf_endpoints(agent: &Agent) -> Vec<BpfEndpointEntry> {
    serde_json::from_str(&agent.cli(&["-o", "json", "bpf", "endpoint", "list"]).ok())
        .expect("bpf endpoint list JSON")
}

fn bpf_ipcache(agent: &Agent) -> Vec<BpfIpcacheEntry> {
    serde_json::from_str(&agent.cli(&["-o", "json", "bpf", "ipcache", "list"]).ok())
        .expect("bpf ipcache list JSON")
}

/// Names of the links in a namespace.
fn links(ns: &str) -> Vec<String> {
    let out = run_in(ns, &["ip", "-o", "link", "show"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn lxc_links(node: &Node) -> BTreeSet<String> {
    links(&node.netns.name)
        .into_iter()
        .filter(|n| n.starts_with("lxc"))
        .collect()
}

/// Stdout of a command run inside a namespace (which must succeed).
fn run_in(ns: &str, cmd: &[&str]) -> String {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    integration::text(&integration::run_ok("ip", &args).stdout)
}

/// Routes of the node (every table, both families) that name one of `addresses`.
fn routes_to(node: &Node, addresses: &BTreeSet<IpAddr>) -> Vec<String> {
    let mut shown = run_in(
        &node.netns.name,
        &["ip", "-4", "route", "show", "table", "all"],
    );
    shown.push_str(&run_in(
        &node.netns.name,
        &["ip", "-6", "route", "show", "table", "all"],
    ));
    shown
        .lines()
        .filter(|line| {
            line.split_whitespace().any(|word| {
                let bare = word.split('/').next().unwrap_or(word);
                bare.parse::<IpAddr>()
                    .is_ok_and(|ip| addresses.contains(&ip))
            })
        })
        .map(str::to_string)
        .collect()
}

/// Files in the agent's endpoint state directory.
fn endpoint_files(agent: &Agent) -> Vec<String> {
    std::fs::read_dir(agent.state_dir.join("endpoints"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// tc filters on any device of the node namespace, as `dev hook: filter`.
fn tc_filters(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for dev in links(&node.netns.name) {
        for hook in ["ingress", "egress"] {
            let shown = integration::text(
                &std::process::Command::new("ip")
                    .args(["netns", "exec", &node.netns.name])
                    .args(["tc", "filter", "show", "dev", &dev, hook])
                    .output()
                    .expect("run tc")
                    .stdout,
            );
            out.extend(
                shown
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("{dev} {hook}: {l}")),
            );
        }
    }
    out
}

/// Everything of an endpoint still on the node: endpoints, addresses beyond the routers',
/// lxc links, routes to `old` addresses, endpoint state files, endpoint and ipcache map
/// entries of `old` addresses, tc filters.
fn leftovers(node: &Node, old: &BTreeSet<IpAddr>) -> Vec<String> {
    let agent = &node.agent;
    let mut left: Vec<String> = endpoints(agent)
        .iter()
        .map(|e| format!("endpoint {} of {}", e.id, e.container_id))
        .collect();
    let routers = routers();
    left.extend(
        allocated(agent)
            .difference(&routers)
            .map(|a| format!("allocated address {a}")),
    );
    left.extend(lxc_links(node).into_iter().map(|l| format!("link {l}")));
    left.extend(
        routes_to(node, old)
            .into_iter()
            .map(|r| format!("route {r}")),
    );
    left.extend(
        endpoint_files(agent)
            .into_iter()
            .map(|f| format!("state file endpoints/{f}")),
    );
    left.extend(
        bpf_endpoints(agent)
            .iter()
            .map(|e| format!("endpoint map entry {} (endpoint {})", e.ip, e.endpoint_id)),
    );
    left.extend(
        bpf_ipcache(agent)
            .iter()
            .filter(|e| {
                let bare = e.prefix.split('/').next().unwrap_or(&e.prefix);
                bare.parse::<IpAddr>().is_ok_and(|ip| old.contains(&ip))
            })
            .map(|e| format!("ipcache entry {} -> {}", e.prefix, e.identity)),
    );
    left.extend(
        tc_filters(node)
            .into_iter()
            .map(|f| format!("tc filter {f}")),
    );
    left
}

/// Waits (up to 10 s: the kernel removes veth pairs in the background, and the addresses
/// are released after them) until nothing of any endpoint is left on the node.
fn assert_nothing_left(node: &Node, containers: &[Netns], old: &BTreeSet<IpAddr>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = leftovers(node, old);
        for c in containers {
            left.extend(
                links(&c.name)
                    .into_iter()
                    .filter(|l| l != "lo")
                    .map(|l| format!("interface {l} in {}", c.name)),
            );
        }
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind ({}):\n{}\n{}",
            left.len(),
            left.join("\n"),
            integration::tail(&node.agent.output(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin runs.

fn invocation(command: &str, c: &Netns) -> Invocation {
    Invocation::new(command, &c.name, &c.path())
}

/// The container's IPv4 and IPv6 addresses from a 1.0.0 result.
fn result_ips(result: &Value) -> (IpAddr, IpAddr) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in result["ips"].as_array().expect("ips") {
        let addr = ip["address"].as_str().expect("ips[].address");
        let (bare, len) = addr.split_once('/').expect("address/len");
        let parsed: IpAddr = bare.parse().expect("address");
        match (parsed, len) {
            (IpAddr::V4(_), "32") => v4 = Some(parsed),
            (IpAddr::V6(_), "128") => v6 = Some(parsed),
            _ => panic!("unexpected address {addr} in {result}"),
        }
    }
    let v4 = v4.unwrap_or_else(|| panic!("no IPv4 address in {result}"));
    let v6 = v6.unwrap_or_else(|| panic!("no IPv6 address in {result}"));
    assert!(
        v4.to_string().starts_with("10.23."),
        "IPv4 {v4} not from the pool"
    );
    assert!(
        v6.to_string().starts_with("f00d::c000:217:0:"),
        "IPv6 {v6} not from the pool"
    );
    (v4, v6)
}

/// The plugin could not reach the agent at all (it was down): nothing was asked, and a
/// runtime retries.
fn unreachable(run: &PluginRun) -> bool {
    run.code != 0 && run.stdout.contains("cannot reach the agent")
}

/// Runs the plugin, retrying (as a runtime does) while the agent is down, for up to 30 s or
/// until `abort` is set (the agent did not come back).
fn run_retrying(node_config: &Value, inv: &Invocation, abort: &AtomicBool) -> PluginRun {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = integration::cni::exec_plugin(
            &integration::bin("cilium-cni"),
            inv,
            &node_config.to_string(),
        );
        if !unreachable(&run) || Instant::now() > deadline || abort.load(Ordering::Relaxed) {
            return run;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Each container pings both gateways (a few tries: the first packets may race neighbour
/// resolution on the node side).
fn assert_gateways_answer(containers: &[&Netns]) {
    let failed = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = containers.get(i) else {
                    return;
                };
                for gw in [ROUTER_V4, ROUTER_V6] {
                    if !(0..3).any(|_| ping(&c.name, &[], gw)) {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{} -> {gw}", c.name));
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(failed.is_empty(), "gateways do not answer: {failed:?}");
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------------
// The kill schedule.

/// splitmix64: a small seeded generator, so a failed run's schedule can be replayed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    std::env::var("RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        })
}

/// Workers running the plugin at once while the agent is being killed.
const WORKERS: usize = 12;

/// Runs `each(i, container)` for every container, `WORKERS` at a time, while the killer
/// SIGKILLs the agent `kills` times at random points of the phase and restarts it; returns
/// the kills made.
#[allow(clippy::too_many_arguments)]
fn run_under_kills(
    node: &mut Node,
    restart: &AgentOptions,
    rng: &mut Rng,
    kills: usize,
    containers: &[Netns],
    abort: &AtomicBool,
    phase: &str,
    each: impl Fn(usize, &Netns) + Sync,
) -> usize {
    let busy = AtomicBool::new(true);
    let next = AtomicUsize::new(0);
    let agent = &mut node.agent;
    let dir = node.dir.path();
    std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let progress = (&next, containers.len());
            killer(
                agent,
                (dir, restart),
                rng,
                kills,
                progress,
                &busy,
                abort,
                phase,
            )
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = containers.get(i) else {
                        return;
                    };
                    each(i, c);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        busy.store(false, Ordering::Relaxed);
        killer.join().expect("killer")
    })
}

/// Kills the agent with SIGKILL `kills` times while a phase of `total` operations runs, and
/// restarts it each time on the same socket, state and bpffs, with the `restart` options. The kills are spread over the
/// phase: the k-th comes once a random share of the operations (within the k-th of `kills`
/// slices of 10–90 %) has started, after a further random 0–60 ms, so that requests are cut
/// at any stage. Returns how many kills happened; the agent is up when this returns. When
/// the agent does not come back this panics, after setting `abort` for the workers.
#[allow(clippy::too_many_arguments)]
fn killer(
    agent: &mut Agent,
    node: (&Path, &AgentOptions),
    schedule: &mut Rng,
    kills: usize,
    (started, total): (&AtomicUsize, usize),
    busy: &AtomicBool,
    abort: &AtomicBool,
    phase: &str,
) -> usize {
    /// Sets the flag when dropped by a panic.
    struct OnPanic<'a>(&'a AtomicBool);
    impl Drop for OnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.store(true, Ordering::Relaxed);
            }
        }
    }
    let _abort = OnPanic(abort);
    let (dir, restart) = node;
    let begin = Instant::now();
    let mut done = 0;
    for k in 0..kills {
        let lo = 10 + 80 * k / kills;
        let hi = 10 + 80 * (k + 1) / kills - 1;
        let at = total * schedule.between(lo as u64, hi as u64) as usize / 100;
        let jitter = Duration::from_millis(schedule.between(0, 60));
        while started.load(Ordering::Relaxed) < at && busy.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(jitter);
        if !busy.load(Ordering::Relaxed) {
            break;
        }
        let progress = started.load(Ordering::Relaxed).min(total);
        agent.stop_with(Signal::SIGKILL);
        let down = Instant::now();
        *agent = Agent::start(dir, restart);
        done += 1;
        eprintln!(
            "{phase}: killed the agent at {:?} ({progress} of {total} started), up again after {:?}",
            down - begin,
            down.elapsed()
        );
    }
    done
}

// ---------------------------------------------------------------------------------------------

/// Runs `command` for every container at once (threads released together), as containerd
/// does; returns each run with its latency, in the containers' order.
fn all_at_once(
    node: &Node,
    conf: &serde_json::Value,
    containers: &[Netns],
    command: &str,
) -> Vec<(Duration, PluginRun)> {
    let barrier = Barrier::new(containers.len());
    std::thread::scope(|s| {
        let workers: Vec<_> = containers
            .iter()
            .map(|c| {
                let barrier = &barrier;
                s.spawn(move || {
                    let inv = invocation(command, c);
                    barrier.wait();
                    let start = Instant::now();
                    let run = node.cni(&inv, conf);
                    (start.elapsed(), run)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("plugin thread"))
            .collect()
    })
}

#[test]
fn hundred_parallel_adds_get_distinct_addresses() {
    if !require_root("hundred_parallel_adds_get_distinct_addresses") {
        return;
    }
    let node = Node::start("rlp");
    let containers: Vec<Netns> = (0..N).map(|_| Netns::new("rlpc")).collect();
    let conf = node.config(Some("1.0.0"));

    let runs = all_at_once(&node, &conf, &containers, "ADD");

    let mut latencies: Vec<Duration> = runs.iter().map(|(t, _)| *t).collect();
    latencies.sort();
    eprintln!(
        "{N} parallel ADDs: p50 {:?}, p99 {:?} (min {:?}, max {:?})",
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies[0],
        latencies[N - 1]
    );
    let mut v4s = BTreeSet::new();
    let mut v6s = BTreeSet::new();
    for (c, (_, run)) in containers.iter().zip(&runs) {
        let (v4, v6) = result_ips(&run.ok());
        assert!(v4s.insert(v4), "{v4} handed out twice (to {})", c.name);
        assert!(v6s.insert(v6), "{v6} handed out twice (to {})", c.name);
    }
    let eps = endpoints(&node.agent);
    assert_eq!(eps.len(), N, "endpoints after {N} ADDs");
    assert_eq!(lxc_links(&node).len(), N, "lxc links after {N} ADDs");
    assert_eq!(
        bpf_endpoints(&node.agent).len(),
        2 * N,
        "endpoint map entries"
    );
    assert_gateways_answer(&containers.iter().collect::<Vec<_>>());

    let dels = all_at_once(&node, &conf, &containers, "DEL");
    let mut del_latencies: Vec<Duration> = dels.iter().map(|(t, _)| *t).collect();
    del_latencies.sort();
    eprintln!(
        "{N} parallel DELs: p50 {:?}, p99 {:?}",
        percentile(&del_latencies, 50),
        percentile(&del_latencies, 99)
    );
    for (_, run) in &dels {
        run.ok();
    }
    let old: BTreeSet<IpAddr> = v4s.union(&v6s).copied().collect();
    assert_nothing_left(&node, &containers, &old);
}

/// How one container's ADD ended.
#[derive(Debug)]
enum Added {
    Ok(IpAddr, IpAddr),
    Failed(PluginRun),
}

#[test]
fn sigkill_during_parallel_adds_and_dels_leaves_nothing_behind() {
    if !require_root("sigkill_during_parallel_adds_and_dels_leaves_nothing_behind") {
        return;
    }
    let seed = seed();
    eprintln!("kill schedule seed {seed} (replay with RELIABILITY_SEED={seed})");
    let mut rng = Rng(seed);
    let mut node = Node::start("rlk");
    let restart = AgentOptions {
        netns: Some(node.netns.name.clone()),
        ..Default::default()
    };
    let containers: Vec<Netns> = (0..N).map(|_| Netns::new("rlkc")).collect();
    let conf = node.config(Some("1.0.0"));
    let abort = AtomicBool::new(false);

    // ADDs, 12 at a time, while the agent is killed 3 or 4 times.
    let kills = rng.between(3, 4) as usize;
    let outcomes: Vec<Mutex<Option<Added>>> = (0..N).map(|_| Mutex::new(None)).collect();
    let killed = run_under_kills(
        &mut node,
        &restart,
        &mut rng,
        kills,
        &containers,
        &abort,
        "ADD",
        |i, c| {
            let run = run_retrying(&conf, &invocation("ADD", c), &abort);
            let outcome = if run.code == 0 {
                let (v4, v6) = result_ips(&run.ok());
                Added::Ok(v4, v6)
            } else {
                Added::Failed(run)
            };
            *outcomes[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        },
    );
    let outcomes: Vec<Added> = outcomes
        .into_iter()
        .map(|o| {
            o.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every ADD ran")
        })
        .collect();
    let succeeded: Vec<(&Netns, IpAddr, IpAddr)> = containers
        .iter()
        .zip(&outcomes)
        .filter_map(|(c, o)| match o {
            Added::Ok(v4, v6) => Some((c, *v4, *v6)),
            Added::Failed(_) => None,
        })
        .collect();
    let failed: Vec<(&Netns, &PluginRun)> = containers
        .iter()
        .zip(&outcomes)
        .filter_map(|(c, o)| match o {
            Added::Failed(run) => Some((c, run)),
            Added::Ok(..) => None,
        })
        .collect();
    eprintln!(
        "ADD phase: {killed} kills, {} ADDs succeeded, {} failed",
        succeeded.len(),
        failed.len()
    );
    for (c, run) in &failed {
        eprintln!(
            "  failed ADD {}: {}",
            c.name,
            run.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    assert!(killed > 0, "the ADD phase ended before the first kill");

    // Every ADD that got a result works: the agent has the endpoint with those addresses,
    // the container has them, and reaches its gateways.
    let mut granted = BTreeSet::new();
    for (c, v4, v6) in &succeeded {
        assert!(granted.insert(*v4), "{v4} handed out twice");
        assert!(granted.insert(*v6), "{v6} handed out twice");
        let (status, body) =
            node.agent
                .http("GET", &format!("/endpoint/container-id:{}", c.name), None);
        assert_eq!(
            status, 200,
            "{}: ADD returned a result but the agent has no endpoint: {body}",
            c.name
        );
        let ep: Endpoint = serde_json::from_str(&body).expect("endpoint JSON");
        assert_eq!(ep.addressing.ipv4, Some(*v4), "{}", c.name);
        assert_eq!(ep.addressing.ipv6, Some(*v6), "{}", c.name);
        let shown = run_in(&c.name, &["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            shown.contains(&format!("inet {v4}/32")) && shown.contains(&format!("inet6 {v6}/128")),
            "{}: addresses {v4} {v6} missing on eth0:\n{shown}",
            c.name
        );
    }
    assert_gateways_answer(&succeeded.iter().map(|(c, ..)| *c).collect::<Vec<_>>());

    // Every ADD that failed left nothing behind (after a moment for background teardown).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for (c, _) in &failed {
            let (status, body) =
                node.agent
                    .http("GET", &format!("/endpoint/container-id:{}", c.name), None);
            if status != 404 {
                left.push(format!("{}: endpoint ({status}) {body}", c.name));
            }
            for l in links(&c.name).into_iter().filter(|l| l != "lo") {
                left.push(format!("{}: interface {l} in the container", c.name));
            }
            let host = agent_core::link::host_link_name(&c.name);
            if lxc_links(&node).contains(&host) {
                left.push(format!("{}: host link {host}", c.name));
            }
        }
        // Exactly the successful ADDs hold addresses, links and endpoints.
        let held: BTreeSet<IpAddr> = allocated(&node.agent)
            .difference(&routers())
            .copied()
            .collect();
        for ip in held.difference(&granted) {
            left.push(format!("address {ip} allocated, but no ADD returned it"));
        }
        for ip in granted.difference(&held) {
            left.push(format!("address {ip} of a successful ADD is not allocated"));
        }
        let want_links: BTreeSet<String> = succeeded
            .iter()
            .map(|(c, ..)| agent_core::link::host_link_name(&c.name))
            .collect();
        for l in lxc_links(&node).difference(&want_links) {
            left.push(format!("link {l} of no successful ADD"));
        }
        let eps = endpoints(&node.agent);
        if eps.len() != succeeded.len() {
            left.push(format!(
                "{} endpoints for {} successful ADDs",
                eps.len(),
                succeeded.len()
            ));
        }
        let files = endpoint_files(&node.agent);
        if files.len() != succeeded.len() {
            left.push(format!(
                "{} endpoint state files for {} successful ADDs: {files:?}",
                files.len(),
                succeeded.len()
            ));
        }
        let map_entries = bpf_endpoints(&node.agent).len();
        if map_entries != 2 * succeeded.len() {
            left.push(format!(
                "{map_entries} endpoint map entries for {} successful ADDs",
                succeeded.len()
            ));
        }
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the ADD phase:\n{}\n{}",
            left.join("\n"),
            integration::tail(&node.agent.output(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // DELs, 12 at a time, while the agent is killed again.
    let kills = rng.between(3, 4) as usize;
    let del_failures = Mutex::new(BTreeMap::new());
    let killed = run_under_kills(
        &mut node,
        &restart,
        &mut rng,
        kills,
        &containers,
        &abort,
        "DEL",
        |_, c| {
            let run = run_retrying(&conf, &invocation("DEL", c), &abort);
            if run.code != 0 {
                del_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(c.name.clone(), run.stdout);
            }
        },
    );
    let del_failures = del_failures.into_inner().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "DEL phase: {killed} kills, {} DELs failed",
        del_failures.len()
    );
    for (c, out) in &del_failures {
        eprintln!(
            "  failed DEL {c}: {}",
            out.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    // Every DEL that succeeded left nothing behind: no endpoint, interface, link or address
    // (a teardown a kill cut short is finished by the restarted agent).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        let mut may_hold = BTreeSet::new();
        for (c, v4, v6) in &succeeded {
            if del_failures.contains_key(&c.name) {
                may_hold.extend([*v4, *v6]);
            }
        }
        for c in containers
            .iter()
            .filter(|c| !del_failures.contains_key(&c.name))
        {
            let (status, body) =
                node.agent
                    .http("GET", &format!("/endpoint/container-id:{}", c.name), None);
            if status != 404 {
                left.push(format!("{}: endpoint ({status}) {body}", c.name));
            }
            for l in links(&c.name).into_iter().filter(|l| l != "lo") {
                left.push(format!("{}: interface {l} in the container", c.name));
            }
            let host = agent_core::link::host_link_name(&c.name);
            if lxc_links(&node).contains(&host) {
                left.push(format!("{}: host link {host}", c.name));
            }
        }
        for ip in allocated(&node.agent)
            .difference(&routers())
            .filter(|ip| !may_hold.contains(ip))
        {
            left.push(format!("address {ip} still allocated after its DEL"));
        }
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the DEL phase:\n{}\n{}",
            left.join("\n"),
            integration::tail(&node.agent.output(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // With the agent up, DEL of everything succeeds (also of what is gone already).
    let conf_text = conf.to_string();
    let failed_dels: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = containers
            .chunks(N / WORKERS + 1)
            .map(|chunk| {
                let conf_text = &conf_text;
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|c| {
                            let run = integration::cni::exec_plugin(
                                &integration::bin("cilium-cni"),
                                &invocation("DEL", c),
                                conf_text,
                            );
                            (run.code != 0).then(|| format!("{}: {}", c.name, run.stdout))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("DEL thread"))
            .collect()
    });
    assert!(
        failed_dels.is_empty(),
        "DEL with the agent up failed:\n{}",
        failed_dels.join("\n")
    );
    assert_nothing_left(&node, &containers, &granted);
}

/// Every address of the agent's endpoints.
fn endpoint_addresses(agent: &Agent) -> BTreeSet<IpAddr> {
    endpoints(agent)
        .iter()
        .flat_map(|e| [e.addressing.ipv4, e.addressing.ipv6])
        .flatten()
        .collect()
}

/// The addresses node `name` publishes in the cluster (`cilium/state/ip/v1/<ip>` records).
fn published(etcd: &integration::etcd::Etcd, name: &str) -> BTreeSet<IpAddr> {
    etcd.list("cilium/state/ip/v1/")
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice::<Value>(&value).ok())
        .filter(|record| record["node"] == name)
        .filter_map(|record| record["ip"].as_str()?.parse().ok())
        .collect()
}

/// Waits (up to 20 s) until node `name` publishes exactly `want`.
fn wait_published(etcd: &integration::etcd::Etcd, name: &str, want: &BTreeSet<IpAddr>, when: &str) {
    let mut last = BTreeSet::new();
    let exact = integration::cluster::eventually(Duration::from_secs(20), || {
        last = published(etcd, name);
        last == *want
    });
    assert!(
        exact,
        "{when}: the cluster records of {name} differ from its endpoints: published but gone {:?}, missing {:?}",
        last.difference(want).collect::<Vec<_>>(),
        want.difference(&last).collect::<Vec<_>>()
    );
}

/// A cluster node's records in the kvstore stay exact through crashes: SIGKILL during
/// parallel ADDs and then DELs, the agent restarted each time (resuming its lease); afterwards
/// the addresses it publishes are exactly its endpoints' (none lost, none stale), and none at
/// all once everything is deleted.
#[test]
fn sigkill_during_adds_and_dels_keeps_the_cluster_records_exact() {
    if !require_root("sigkill_during_adds_and_dels_keeps_the_cluster_records_exact") {
        return;
    }
    const CONTAINERS: usize = 40;
    let seed = seed();
    eprintln!("kill schedule seed {seed} (replay with RELIABILITY_SEED={seed})");
    let mut rng = Rng(seed);
    let underlay = integration::cluster::Underlay::new("rlu", 67);
    let etcd = underlay.etcd();
    let spec = integration::cluster::NodeSpec::new(1, "vxlan");
    let mut node = integration::cluster::start_node("rlcn", &underlay, &etcd, &spec);
    let restart = integration::cluster::node_options(&node.netns, &underlay, &etcd, &spec);
    let containers: Vec<Netns> = (0..CONTAINERS).map(|_| Netns::new("rlcc")).collect();
    let conf = node.config(Some("1.0.0"));
    let abort = AtomicBool::new(false);

    let kills = rng.between(2, 3) as usize;
    let killed = run_under_kills(
        &mut node,
        &restart,
        &mut rng,
        kills,
        &containers,
        &abort,
        "cluster ADD",
        |_, c| {
            run_retrying(&conf, &invocation("ADD", c), &abort);
        },
    );
    assert!(killed > 0, "the ADD phase ended before the first kill");
    let addresses = endpoint_addresses(&node.agent);
    eprintln!(
        "cluster ADD phase: {killed} kills, {} endpoints",
        addresses.len() / 2
    );
    assert!(!addresses.is_empty(), "no ADD succeeded");
    wait_published(&etcd, "node1", &addresses, "after the ADDs");

    // SIGKILL right after DELs return, before the agent may have withdrawn their records:
    // the restarted agent (same lease) withdraws what it no longer has.
    let added: Vec<&Netns> = containers
        .iter()
        .filter(|c| {
            node.agent
                .http("GET", &format!("/endpoint/container-id:{}", c.name), None)
                .0
                == 200
        })
        .take(3)
        .collect();
    for c in &added {
        let run = run_retrying(&conf, &invocation("DEL", c), &abort);
        assert_eq!(run.code, 0, "DEL {}: {}", c.name, run.stdout);
    }
    node.agent.stop_with(Signal::SIGKILL);
    node.agent = Agent::start(node.dir.path(), &restart);
    let addresses = endpoint_addresses(&node.agent);
    wait_published(&etcd, "node1", &addresses, "after DELs cut short by a kill");

    let killed = run_under_kills(
        &mut node,
        &restart,
        &mut rng,
        1,
        &containers,
        &abort,
        "cluster DEL",
        |_, c| {
            // Cut off or not, every DEL is run again below.
            run_retrying(&conf, &invocation("DEL", c), &abort);
        },
    );
    eprintln!("cluster DEL phase: {killed} kills");
    // DEL of everything once more, the agent up: all of it succeeds.
    for c in &containers {
        let run = run_retrying(&conf, &invocation("DEL", c), &abort);
        assert_eq!(
            run.code, 0,
            "DEL {} after the kills: {}",
            c.name, run.stdout
        );
    }
    assert!(endpoints(&node.agent).is_empty());
    wait_published(&etcd, "node1", &BTreeSet::new(), "after the DELs");
}
