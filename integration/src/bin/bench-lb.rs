//! `make bench`: service load balancing between two containers on one node, side by side
//! with what a user would otherwise have (kube-proxy's iptables DNAT), in one run:
//!
//! - plain veth pairs + host routes, no program, client -> backend address (the physical
//!   baseline);
//! - the same plain topology with kube-proxy style iptables DNAT in the node namespace (nat
//!   `PREROUTING -> KUBE-SERVICES`, one `-d VIP/32 -p tcp --dport 80 -j KUBE-SVC-N` rule per
//!   service, `KUBE-SVC-N -> KUBE-SEP-N -> DNAT`), the measured service's rule last in
//!   `KUBE-SERVICES` (kube-proxy's linear list, worst case), with 1, 1,000 and 10,000
//!   services, loaded by one `iptables-restore --noflush`;
//! - this datapath: client and server containers attached by `cilium-cni` to one agent, no
//!   policy, client -> backend address directly, and client -> service frontend
//!   10.96.0.1:7777/tcp (the server as its only backend) with 1, 1,000 and 10,000 services
//!   installed (one agent node per count; the others have frontends 10.96.x.y:80 with one
//!   backend each). The single service is created by `PUT /service/{id}`; the 1,000 and
//!   10,000 are written to the agent's `services.json` while it is stopped, and the time the
//!   restarted agent takes to restore them (start to API ready, then to the measured service
//!   reported as served by the datapath) is printed as an informative figure.
//!
//! For each: request/response latency (1-byte TCP ping-pong on one connection, like netperf
//! TCP_RR: 10,000 round trips after 500 of warm-up, p50/p99) and connection rate (connect,
//! 1-byte request, 1-byte response, close, like TCP_CRR: 2,000 connections, per connection
//! p50/p99 and connections/s). The client closes first and normally (FIN, as TCP_CRR), so its
//! sockets go to TIME_WAIT: each client namespace gets `net.ipv4.tcp_tw_reuse=1` and
//! `net.ipv4.ip_local_port_range=1024 65535`. All setups are measured in turn, round after
//! round, and each figure is the median over the rounds (load drift spreads over all).
//! Client and server threads are pinned to one CPU (as `netperf -T`): the figures are the
//! path's cost, without cross-CPU wake-ups that on a virtual machine cost more than the path
//! and come and go with the scheduler. The cilium direct row has its own client container
//! (see [`CiliumNode::direct_client`]).
//!
//! Note that iptables NAT rules are walked only for the first packet of a connection
//! (conntrack NEW): the number of services shows in the connection rate, hardly in RR.
//!
//! Every topology lives in namespaces this program creates and deletes. A frontend that does
//! not answer is reported as unreachable, not a panic. Not a test: it prints numbers and
//! ratios and asserts nothing about time.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::cni::Node;
use integration::plain::PlainPair;
use integration::traffic::in_netns;
use integration::{require_root, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;
use serde_json::json;

/// Round trips measured per RR run (after `RR_WARMUP`).
const RR_ROUNDS: usize = 10_000;
const RR_WARMUP: usize = 500;
/// Connections per CRR run.
const CRR_CONNS: usize = 2_000;
/// Measurement rounds over all setups.
const ROUNDS: usize = 5;
/// Service counts compared.
const COUNTS: [usize; 3] = [1, 1_000, 10_000];
/// The server's port, and the measured frontend.
const PORT: u16 = 7777;
const FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// How long a connect or a read may take before the path counts as broken.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a restarted agent may take to answer, and then to serve the measured service.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const REALIZED_TIMEOUT: Duration = Duration::from_secs(30);

/// Namespaces to delete if the bench panics (release builds abort: no destructors run).
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Likewise the agents this program runs: node directory (with its bpffs) and agent pid.
static AGENTS: Mutex<Vec<(PathBuf, u32)>> = Mutex::new(Vec::new());

fn track(ns: &Netns) {
    CREATED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ns.name.clone());
}

/// Records the agent now running for the node in `dir`.
fn track_agent(dir: &Path, agent: &Agent) {
    let mut agents = AGENTS.lock().unwrap_or_else(|p| p.into_inner());
    agents.retain(|(d, _)| d != dir);
    if let Some(pid) = agent.pid() {
        agents.push((dir.to_path_buf(), pid));
    }
}

fn install_panic_cleanup() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        for (dir, pid) in AGENTS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGKILL);
            let _ = Command::new("umount")
                .arg("-l")
                .arg(dir.join("bpf"))
                .status();
            let _ = std::fs::remove_dir_all(dir);
        }
        for name in CREATED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }));
}

/// Frontend and backend of the `i`-th other service (1-based): 10.96.x.y:80 (from
/// 10.96.0.2 on, clear of the measured frontend) -> 172.16.x.y:8080.
fn other_service(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let f = i + 1;
    (
        Ipv4Addr::new(10, 96, (f >> 8) as u8, (f & 255) as u8),
        Ipv4Addr::new(172, 16 + (i >> 16) as u8, (i >> 8) as u8, (i & 255) as u8),
    )
}

/// Pins the calling thread to the last CPU. Client and server threads share it, and with
/// them all the packet processing (veth delivery and tc programs run in the sender's
/// softirq): no cross-CPU wake-ups, whose cost on a virtual machine (an IPI, ~50 µs) swamps
/// the path being measured and comes and goes with where the scheduler puts the threads.
fn pin() {
    // SAFETY: sysconf has no preconditions; the cpu_set_t is zeroed and then filled by the
    // libc macros; sched_setaffinity(0) affects only this thread.
    unsafe {
        let cpu = (libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) - 1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// An echo server on `0.0.0.0:PORT` inside `netns` for the whole run: one connection at a
/// time, handled on the accepting thread (as netserver does), 1 byte back per byte read
/// until the client closes. Serves RR and CRR alike.
fn serve(netns: &str) {
    let listener = in_netns(netns, || {
        TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))
            .expect("bind server")
    });
    std::thread::spawn(move || {
        pin();
        loop {
            let Ok((mut conn, _)) = listener.accept() else {
                continue;
            };
            let _ = conn.set_nodelay(true);
            // A client that vanished must not hold the server forever.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut b = [0u8; 1];
            while conn.read_exact(&mut b).is_ok() {
                if conn.write_all(&b).is_err() {
                    break;
                }
            }
        }
    });
}

/// Sets a client namespace up for many short connections (TIME_WAIT reuse, wide port range).
fn client_sysctls(ns: &str) {
    integration::run_ok(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ],
    );
}

fn percentile(sorted: &[f64], pct: usize) -> f64 {
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

/// RR: p50 and p99 µs per round trip.
fn request_response(client: &str, to: SocketAddr) -> Result<(f64, f64), String> {
    in_netns(client, move || {
        pin();
        let mut conn =
            TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        conn.set_nodelay(true).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut samples = Vec::with_capacity(RR_ROUNDS);
        let mut b = [1u8; 1];
        for i in 0..RR_ROUNDS + RR_WARMUP {
            let t = Instant::now();
            conn.write_all(&b)
                .and_then(|()| conn.read_exact(&mut b))
                .map_err(|e| format!("round trip {i}: {e}"))?;
            if i >= RR_WARMUP {
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        Ok((percentile(&samples, 50), percentile(&samples, 99)))
    })
}

/// CRR: p50 and p99 µs per connection, connections per second.
fn connect_request_close(client: &str, to: SocketAddr) -> Result<(f64, f64, f64), String> {
    in_netns(client, move || {
        pin();
        let mut samples = Vec::with_capacity(CRR_CONNS);
        let start = Instant::now();
        for i in 0..CRR_CONNS {
            let t = Instant::now();
            let mut conn = TcpStream::connect_timeout(&to, IO_TIMEOUT)
                .map_err(|e| format!("connection {i}: connect: {e}"))?;
            let mut b = [1u8; 1];
            conn.set_read_timeout(Some(IO_TIMEOUT))
                .and_then(|()| conn.write_all(&b))
                .and_then(|()| conn.read_exact(&mut b))
                .map_err(|e| format!("connection {i}: {e}"))?;
            drop(conn);
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let rate = CRR_CONNS as f64 / start.elapsed().as_secs_f64();
        samples.sort_by(|a, b| a.total_cmp(b));
        Ok((percentile(&samples, 50), percentile(&samples, 99), rate))
    })
}

/// A node namespace with two containers wired like the agent wires them (veth, /32
/// routes, link-scoped gateway), without any program.
struct Plain {
    node: Netns,
    client: Netns,
    /// Kept (and deleted) with the topology.
    _server: Netns,
    server_ip: IpAddr,
}

impl Plain {
    fn new(tag: &str, subnet: u8) -> Plain {
        let p = PlainPair::new(&format!("bl{tag}"), subnet);
        for ns in [&p.node, &p.client, &p.server] {
            track(ns);
        }
        serve(&p.server.name);
        client_sysctls(&p.client.name);
        Plain {
            node: p.node,
            client: p.client,
            _server: p.server,
            server_ip: p.server_ip,
        }
    }

    /// kube-proxy style DNAT for `count` services, the measured one (FRONTEND:PORT -> the
    /// server) last in KUBE-SERVICES. Returns the time `iptables-restore` took.
    fn kube_proxy(&self, count: usize) -> Duration {
        let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
        let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n");
        let mut service = |n: usize, vip: Ipv4Addr, port: u16, backend: String| {
            chains.push_str(&format!(":KUBE-SVC-{n} - [0:0]\n:KUBE-SEP-{n} - [0:0]\n"));
            rules.push_str(&format!(
                "-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port} -j KUBE-SVC-{n}\n\
                 -A KUBE-SVC-{n} -j KUBE-SEP-{n}\n\
                 -A KUBE-SEP-{n} -p tcp -m tcp -j DNAT --to-destination {backend}\n"
            ));
        };
        for i in 1..count {
            let (vip, backend) = other_service(i);
            service(i, vip, 80, format!("{backend}:8080"));
        }
        service(count, FRONTEND, PORT, format!("{}:{PORT}", self.server_ip));
        let input = format!("{chains}{rules}COMMIT\n");
        let t = Instant::now();
        let mut restore = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                "iptables-restore",
                "--noflush",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        restore
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("rules");
        assert!(
            restore.wait().expect("wait").success(),
            "iptables-restore failed"
        );
        t.elapsed()
    }
}

/// An agent node with two client containers and a server container, and `count` services
/// whose last (id `count`) is FRONTEND:PORT -> the server.
struct CiliumNode {
    node: Node,
    /// The client of the service frontend.
    client: Netns,
    /// The client of the backend address: its own container, so that the two rows share no
    /// conntrack entries (a port reused straight to the backend after a connection through
    /// the frontend once got that connection's reverse translation; fixed in the datapath and
    /// covered by `bpf-programs/tests/unit.py`, "the same tuple straight to B").
    direct_client: Netns,
    _server: Netns,
    server_ip: IpAddr,
    count: usize,
}

impl CiliumNode {
    fn new(tag: &str, count: usize) -> CiliumNode {
        let node = Node::start(&format!("bl{tag}n"));
        track(&node.netns);
        track_agent(node.dir.path(), &node.agent);
        let client = Netns::new(&format!("bl{tag}c"));
        let direct_client = Netns::new(&format!("bl{tag}d"));
        let server = Netns::new(&format!("bl{tag}s"));
        let mut ips = Vec::new();
        for ns in [&client, &direct_client, &server] {
            track(ns);
            let r = node.add(ns);
            let ip = r["ips"][0]["address"].as_str().expect("address");
            ips.push(ip.split('/').next().expect("ip").parse().expect("ip"));
        }
        serve(&server.name);
        client_sysctls(&client.name);
        client_sysctls(&direct_client.name);
        CiliumNode {
            node,
            client,
            direct_client,
            _server: server,
            server_ip: ips[2],
            count,
        }
    }

    fn spec(&self, id: usize) -> serde_json::Value {
        let (frontend, backend) = if id == self.count {
            (
                json!({"ip": FRONTEND.to_string(), "port": PORT, "protocol": "tcp"}),
                json!({"ip": self.server_ip.to_string(), "port": PORT, "weight": 1}),
            )
        } else {
            let (vip, backend) = other_service(id);
            (
                json!({"ip": vip.to_string(), "port": 80, "protocol": "tcp"}),
                json!({"ip": backend.to_string(), "port": 8080, "weight": 1}),
            )
        };
        json!({"id": id, "frontend-address": frontend, "backend-addresses": [backend]})
    }

    /// The single service through the API; returns how long the PUT took.
    fn put_service(&self) -> Duration {
        let body = self.spec(self.count).to_string();
        let t = Instant::now();
        let (status, reply) =
            self.node
                .agent
                .http("PUT", &format!("/service/{}", self.count), Some(&body));
        let took = t.elapsed();
        assert!(
            status == 201 || status == 200,
            "PUT /service: {status} {reply}"
        );
        took
    }

    /// Stops the agent; writes all `count` services to its `services.json` unless
    /// `keep_file`; starts it again on the same directories. Returns the time from start to
    /// the API answering, and to the measured service being served (`None` if the agent does
    /// not report it as served within REALIZED_TIMEOUT).
    fn restart(&mut self, keep_file: bool) -> (Duration, Option<Duration>) {
        let code = self.node.agent.stop_with(Signal::SIGTERM);
        track_agent(self.node.dir.path(), &self.node.agent);
        if code != Some(0) {
            println!(
                "  (note: agent of the {}-service node exited with {code:?} on SIGTERM)",
                self.count
            );
        }
        if !keep_file {
            let services: Vec<serde_json::Value> = (1..=self.count).map(|i| self.spec(i)).collect();
            let path = self.node.agent.state_dir.join("services.json");
            std::fs::write(&path, json!({"services": services}).to_string())
                .expect("write services.json");
        }
        let opts = AgentOptions {
            netns: Some(self.node.netns.name.clone()),
            ..Default::default()
        };
        let t = Instant::now();
        // The new agent takes the bpffs before the old handle releases it: pins stay.
        self.node.agent = Agent::spawn(self.node.dir.path(), &opts);
        track_agent(self.node.dir.path(), &self.node.agent);
        let socket = self.node.agent.socket.clone();
        while !integration::http(&socket, "GET", "/healthz", None).is_ok_and(|(s, _)| s == 200) {
            assert!(
                t.elapsed() < READY_TIMEOUT,
                "agent with {} services did not answer within {READY_TIMEOUT:?}:\n{}",
                self.count,
                self.node.agent.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = t.elapsed();
        let (status, list) = self.node.agent.http("GET", "/service", None);
        let listed = serde_json::from_str::<serde_json::Value>(&list)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len));
        assert!(
            status == 200 && listed == Some(self.count),
            "restored {listed:?} of {} services ({status}): {}",
            self.count,
            self.node.agent.output()
        );
        let path = format!("/service/{}", self.count);
        loop {
            let (status, body) = self.node.agent.http("GET", &path, None);
            let served = status == 200
                && serde_json::from_str::<serde_json::Value>(&body)
                    .is_ok_and(|v| !v["status"]["realized"].is_null());
            if served {
                return (ready, Some(t.elapsed()));
            }
            if t.elapsed() > ready + REALIZED_TIMEOUT {
                return (ready, None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// "1 service", "10,000 services".
fn services(n: usize) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(c);
    }
    format!("{text} service{}", if n == 1 { "" } else { "s" })
}

fn join(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join("/")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One setup: where its client connects to, and its results over all rounds.
struct Series {
    label: String,
    client: String,
    to: SocketAddr,
    rr_p50: Vec<f64>,
    rr_p99: Vec<f64>,
    crr_p50: Vec<f64>,
    crr_p99: Vec<f64>,
    rate: Vec<f64>,
    /// Why the path failed; not measured again after a failure.
    error: Option<String>,
}

/// Medians of one setup: RR p50, CRR p50, connections/s.
#[derive(Clone, Copy)]
struct Figures {
    rr: f64,
    crr: f64,
    rate: f64,
}

impl Series {
    fn new(label: &str, client: &Netns, to: SocketAddr) -> Series {
        Series {
            label: label.to_string(),
            client: client.name.clone(),
            to,
            rr_p50: Vec::new(),
            rr_p99: Vec::new(),
            crr_p50: Vec::new(),
            crr_p99: Vec::new(),
            rate: Vec::new(),
            error: None,
        }
    }

    fn measure(&mut self) {
        if self.error.is_some() {
            return;
        }
        let result = request_response(&self.client, self.to)
            .and_then(|rr| connect_request_close(&self.client, self.to).map(|crr| (rr, crr)));
        match result {
            Ok(((p50, p99), (c50, c99, rate))) => {
                self.rr_p50.push(p50);
                self.rr_p99.push(p99);
                self.crr_p50.push(c50);
                self.crr_p99.push(c99);
                self.rate.push(rate);
            }
            Err(e) => self.error = Some(format!("{e} (after {} good rounds)", self.rr_p50.len())),
        }
    }

    fn report(&self) -> Option<Figures> {
        if let Some(e) = &self.error {
            let what = if self.to.ip() == IpAddr::V4(FRONTEND) {
                "frontend"
            } else {
                "backend"
            };
            println!("  {:<38} {what} unreachable ({}): {e}", self.label, self.to);
            if self.rr_p50.is_empty() {
                return None;
            }
        }
        let f = Figures {
            rr: median(&self.rr_p50),
            crr: median(&self.crr_p50),
            rate: median(&self.rate),
        };
        println!(
            "  {:<38} RR p50 {:>6.1} p99 {:>6.1} µs   CRR p50 {:>6.1} p99 {:>7.1} µs {:>7.0} conn/s   (rounds: RR p50 {}; conn/s {})",
            self.label,
            f.rr,
            median(&self.rr_p99),
            f.crr,
            median(&self.crr_p99),
            f.rate,
            join(&self.rr_p50, 0),
            join(&self.rate, 0),
        );
        Some(f)
    }
}

/// `a/b` of RR p50, CRR p50 and conn/s, or "n/a" when either side was not measured.
fn ratio(what: &str, a: Option<Figures>, b: Option<Figures>, target: &str) {
    match (a, b) {
        (Some(a), Some(b)) => println!(
            "  {what:<40} RR p50 {:.2}  CRR p50 {:.2}  conn/s {:.2}{target}",
            a.rr / b.rr,
            a.crr / b.crr,
            a.rate / b.rate
        ),
        _ => println!("  {what:<40} n/a (not measured)"),
    }
}

fn main() {
    if !require_root("bench-lb") {
        return;
    }
    install_panic_cleanup();
    println!(
        "service load balancing, two containers on one node ({ROUNDS} rounds of {RR_ROUNDS} round trips and {CRR_CONNS} connections each; medians)"
    );
    let frontend = SocketAddr::new(IpAddr::V4(FRONTEND), PORT);

    // Plain topologies: the baseline, and iptables DNAT with 1, 1,000, 10,000 services.
    let direct = Plain::new("p", 71);
    let iptables: Vec<(usize, Plain)> = COUNTS
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let p = Plain::new(&format!("i{i}"), 72 + i as u8);
            let took = p.kube_proxy(count);
            println!(
                "  iptables-restore of {} ({} rules): {:.0} ms",
                services(count),
                3 * count + 1,
                took.as_secs_f64() * 1e3
            );
            (count, p)
        })
        .collect();

    // Agent nodes, one per service count.
    let mut nodes: Vec<CiliumNode> = Vec::new();
    for (i, &count) in COUNTS.iter().enumerate() {
        let mut n = CiliumNode::new(&format!("c{i}"), count);
        if count == 1 {
            let put = n.put_service();
            println!(
                "  PUT /service/1 (1 service): {:.1} ms",
                put.as_secs_f64() * 1e3
            );
        }
        let (ready, served) = n.restart(count == 1);
        println!(
            "  agent restart with {}: API ready after {:.0} ms; measured service served {}",
            services(count),
            ready.as_secs_f64() * 1e3,
            served.map_or_else(
                || format!("not reported within {REALIZED_TIMEOUT:?}"),
                |d| format!("after {:.0} ms", d.as_secs_f64() * 1e3)
            )
        );
        nodes.push(n);
    }

    let mut series = vec![Series::new(
        "plain veth, backend directly",
        &direct.client,
        SocketAddr::new(direct.server_ip, PORT),
    )];
    for (count, p) in &iptables {
        series.push(Series::new(
            &format!("iptables DNAT, {}", services(*count)),
            &p.client,
            frontend,
        ));
    }
    series.push(Series::new(
        "cilium, backend directly",
        &nodes[0].direct_client,
        SocketAddr::new(nodes[0].server_ip, PORT),
    ));
    for n in &nodes {
        series.push(Series::new(
            &format!("cilium frontend, {}", services(n.count)),
            &n.client,
            frontend,
        ));
    }
    for round in 0..ROUNDS {
        for s in &mut series {
            s.measure();
        }
        eprintln!("  round {}/{ROUNDS} done", round + 1);
    }
    let figures: Vec<Option<Figures>> = series.iter().map(Series::report).collect();
    let (plain, ipt, cil_direct, cil) = (figures[0], &figures[1..4], figures[4], &figures[5..8]);
    println!("ratios (medians):");
    ratio(
        "cilium frontend (1) / direct",
        cil[0],
        cil_direct,
        "   (target RR <= 1.10)",
    );
    for (i, &count) in COUNTS.iter().enumerate().skip(1) {
        ratio(
            &format!("cilium frontend {} / 1", services(count)),
            cil[i],
            cil[0],
            "   (target: flat)",
        );
    }
    for (i, &count) in COUNTS.iter().enumerate().skip(1) {
        ratio(
            &format!("iptables {} / 1", services(count)),
            ipt[i],
            ipt[0],
            "",
        );
    }
    ratio("cilium direct / plain direct", cil_direct, plain, "");
    ratio("iptables 1 / plain direct", ipt[0], plain, "");
    for (i, &count) in COUNTS.iter().enumerate() {
        ratio(
            &format!("cilium / iptables, {}", services(count)),
            cil[i],
            ipt[i],
            "",
        );
    }
}
