//! `make bench`: the time from `docker run` until the container is on the network, with a
//! cilium network (`cilium-docker` as network and IPAM driver, its agent in a node namespace)
//! side by side with a network of Docker's own `bridge` driver on the same private dockerd.
//!
//! Setup (not timed): a node namespace with its agent, `cilium-docker` serving a unique driver
//! name, a private dockerd inside the node namespace (`--bridge=none --iptables=false`, which a
//! user-defined bridge network does not need), a locally imported busybox image, and two IPv4
//! networks: `docker network create --driver <plugin> --ipam-driver <plugin>` and
//! `docker network create --driver bridge`.
//!
//! What is timed, per container: the wall time from spawning `docker run -d` until
//!
//! - `docker run -d` returned (the client has the container id: created and started), and
//! - the network is ready: the container's first ping to its network's gateway was answered.
//!   On the cilium network that also covers the agent learning the container's labels: the
//!   endpoint has the `reserved:init` identity, on which everything is dropped, until the
//!   agent's Docker watcher has them, so a container is ready when the network *and* its
//!   security identity are there.
//!
//! How "ready" is observed, with the least overhead we found: the container's own command is
//! `ping -i 0.01 -w 30 <gw> | while read line; do <on the first "bytes from" line: echo N >
//! /bench/<name>; break>; done; exec sleep ...`, where `/bench` is a bind mount of a host
//! directory and `/bench/<name>` a FIFO the bench created and holds open (read-write, so the
//! container's open never blocks and the bench never reads EOF). The bench `poll()`s the FIFO
//! together with the `docker run` client's stdout, so both moments are taken when they
//! happen: no `docker exec` per probe (each exec is itself a round trip through dockerd,
//! containerd and runc, tens of milliseconds, and would load the daemon the measured
//! container is going through), no sleep-and-retry granularity on the bench's side.
//!
//! Why not one `ping -c1 -W1` per probe: a probe that is dropped (the cilium endpoint before
//! its labels arrive) costs its whole one-second wait, which would round the result up to
//! seconds. One ping process probing every 10 ms stops at the first answer instead, and its
//! `seq=N` says how many probes it took (N + 1). The remaining cost inside the container (a
//! busybox fork+exec of `ping`, one ICMP round trip, at most 10 ms of probe spacing) is the
//! same for every driver and part of "ready" by definition.
//!
//! A third row, `--network none` with the same command minus the ping, is the floor: what
//! Docker itself costs to create and start a container with this image and bind mount.
//!
//! Rounds are interleaved (each round runs one container per network, the order alternating
//! from round to round), so load drift (the growing number of running containers, the page
//! cache, whatever else the machine does) hits all rows alike; the first rounds are warm-up
//! and not counted. Containers stay up until the end, then everything is removed in reverse:
//! containers, networks, then (by the harness' drops) dockerd, the plugin, the agent and its
//! namespace.
//!
//! Not a test: it prints numbers and the ratio of the medians, and never fails on them.
//! `BENCH_DOCKER_CONTAINERS` sets the containers per network (default 20).
//!
//! The release profile aborts on panic, so no destructor would run: the harness objects are
//! held in [`Guarded`] boxes that the panic hook drops (dockerd first, then the plugin, then
//! the node), so a failed run leaves no daemon, mount or namespace behind either.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use integration::cni::Node;
use integration::docker::{DockerPlugin, Dockerd, DOCKER, DOCKERD};
use integration::image::BUSYBOX;
use integration::{require_root, test_dir, Agent, AgentOptions, Netns};

const DEFAULT_CONTAINERS: usize = 20;
/// Rounds run first and not counted (image and page cache, first plugin calls).
const WARMUP_ROUNDS: usize = 2;
const IMAGE: &str = "cilium-bench-busybox:latest";
/// Seconds between the container's pings to its gateway (busybox ping takes fractions).
const PROBE_INTERVAL: &str = "0.01";
/// Upper bound for one container to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The user-defined bridge network's subnet (IPv4 only, as the cilium network here).
const BRIDGE_SUBNET: &str = "10.24.0.0/16";
/// Its gateway (the bridge's address), given explicitly: with `--subnet` alone, Docker's
/// network inspect leaves the gateway empty.
const BRIDGE_GATEWAY: &str = "10.24.0.1";

// ---------------------------------------------------------------------------------------------
// Cleanup also on panic (panic = "abort" in release: no destructor runs then).

type Action = Box<dyn FnOnce() + Send>;

/// (id, rank, action): the hook runs the actions by ascending rank.
static ACTIONS: Mutex<Vec<(u64, u8, Action)>> = Mutex::new(Vec::new());
static NEXT_ACTION: AtomicU64 = AtomicU64::new(0);

/// A value on the heap that the panic hook drops if the process panics while it is alive
/// (only installed where panics abort: with unwinding, the normal drops run anyway).
///
/// Dropping a `Guarded` normally deregisters the hook's action first, then drops the value.
/// The hook runs on the panicking thread right before the process aborts, and this bench is
/// single-threaded, so nothing uses the value after the hook dropped it.
#[derive(Debug)]
struct Guarded<T> {
    ptr: *mut T,
    id: u64,
}

impl<T: Send + 'static> Guarded<T> {
    /// Guards `value`; after a panic, values of lower `rank` are dropped first.
    fn new(value: T, rank: u8) -> Guarded<T> {
        let ptr = Box::into_raw(Box::new(value));
        let id = NEXT_ACTION.fetch_add(1, Ordering::Relaxed);
        let addr = ptr as usize;
        let action: Action = Box::new(move || {
            // SAFETY: `addr` is the pointer from `Box::into_raw` above; the action runs at most
            // once (the hook takes it out of the list), only if `Guarded::drop` has not run
            // (that removes it first), and the process aborts right after the hook.
            drop(unsafe { Box::from_raw(addr as *mut T) });
        });
        ACTIONS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, rank, action));
        Guarded { ptr, id }
    }

    /// The value, no longer guarded.
    fn into_inner(self) -> T {
        deregister(self.id);
        // SAFETY: the pointer came from `Box::into_raw` and its action is gone; `forget`
        // keeps `drop` from freeing it a second time.
        let value = *unsafe { Box::from_raw(self.ptr) };
        std::mem::forget(self);
        value
    }
}

/// Removes the hook's action for `id` (unrun: it owns nothing but an address).
fn deregister(id: u64) {
    ACTIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(i, _, _)| *i != id);
}

impl<T> Deref for Guarded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the box lives until `drop` below (or the hook, after which nothing runs).
        unsafe { &*self.ptr }
    }
}

impl<T> DerefMut for Guarded<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference.
        unsafe { &mut *self.ptr }
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        deregister(self.id);
        // SAFETY: the pointer came from `Box::into_raw`, and the hook's action for it is gone.
        drop(unsafe { Box::from_raw(self.ptr) });
    }
}

/// On panic: print as usual, then drop every guarded value by rank.
fn install_panic_cleanup() {
    if !cfg!(panic = "abort") {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let mut actions =
            std::mem::take(&mut *ACTIONS.lock().unwrap_or_else(PoisonError::into_inner));
        if !actions.is_empty() {
            eprintln!("bench-docker: cleaning up after the panic");
        }
        actions.sort_by_key(|(_, rank, _)| *rank);
        for (_, _, action) in actions {
            action();
        }
    }));
}

// ---------------------------------------------------------------------------------------------
// The setup.

/// Dropped in field order: containers and networks go while the plugin still serves, then
/// the plugin, then the agent and its namespace; the panic hook follows the same order
/// (the ranks).
#[derive(Debug)]
struct Setup {
    dockerd: Guarded<Dockerd>,
    plugin: Guarded<DockerPlugin>,
    node: Guarded<Node>,
    /// Bind-mounted into every container as `/bench`; holds the FIFOs (inside the node's
    /// directory, removed with it).
    markers: PathBuf,
}

/// One row: a network (or none) and the containers run on it.
#[derive(Debug)]
struct Variant {
    label: String,
    /// Container name prefix.
    tag: &'static str,
    /// `--network` value.
    network: String,
    /// What the container pings; `None`: no ping (the floor row).
    gateway: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// `docker run -d` returned.
    run: Duration,
    /// The container's first answered ping (the floor row: its command started).
    ready: Duration,
    /// Ping probes the container sent until the first answer (1: the first was answered).
    probes: u32,
}

impl Setup {
    /// The daemon first: the agent watches it for the containers' labels. Every piece is
    /// guarded from the moment it exists.
    fn start() -> Setup {
        let netns = Guarded::new(Netns::new("dkb"), 4);
        let dir = Guarded::new(test_dir(), 5);
        let dockerd = Guarded::new(Dockerd::start_in("bench", Some(&netns.name)), 0);
        // The agent as `Node::start_in` runs it, but given the Docker endpoint by environment
        // (`CILIUM_DOCKER`) rather than `--docker`: the dockerd's drop kills every process that
        // names its directory on the command line, and the agent is meant to stop after it.
        let mut agent = Guarded::new(
            Agent::spawn(
                dir.path(),
                &AgentOptions {
                    netns: Some(netns.name.clone()),
                    env: vec![("CILIUM_DOCKER".to_string(), dockerd.host())],
                    ..Default::default()
                },
            ),
            2,
        );
        agent.wait_ready();
        let node = Guarded::new(
            Node {
                agent: agent.into_inner(),
                netns: netns.into_inner(),
                dir: dir.into_inner(),
            },
            2,
        );
        let plugin = Guarded::new(
            DockerPlugin::start(&node.netns.name, &node.agent.socket, node.dir.path()),
            1,
        );
        let markers = node.dir.path().join("markers");
        std::fs::create_dir_all(&markers).expect("marker dir");
        Setup {
            dockerd,
            plugin,
            node,
            markers,
        }
    }

    /// `docker <args>`; stdout on success, a message with stderr otherwise.
    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .dockerd
            .command(args)
            .output()
            .map_err(|e| format!("docker {args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "docker {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The IPv4 gateway Docker recorded for `network`.
    fn gateway(&self, network: &str) -> Result<String, String> {
        let gw = self.docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
            network,
        ])?;
        gw.split_whitespace()
            .find(|g| g.parse::<std::net::Ipv4Addr>().is_ok())
            .map(str::to_string)
            .ok_or_else(|| format!("network {network} has no IPv4 gateway: {gw:?}"))
    }

    /// One container on `variant`'s network: spawns `docker run -d` and waits for the
    /// container's marker and the client's exit, whichever comes first, both timed.
    fn measure(&self, variant: &Variant, name: &str) -> Result<Sample, String> {
        let fifo_path = self.markers.join(name);
        let ok = Command::new("mkfifo")
            .arg(&fifo_path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("mkfifo {}", fifo_path.display()));
        }
        // Read-write: opening never blocks, and the FIFO never reads EOF, whenever the
        // container opens and closes its end.
        let mut fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo_path)
            .map_err(|e| format!("open {}: {e}", fifo_path.display()))?;
        // The first reply line ("64 bytes from <gw>: seq=N ...") ends the loop; N + 1 probes
        // were sent. ping itself goes on until SIGPIPE (or its deadline), unobserved.
        let script = match &variant.gateway {
            Some(gw) => format!(
                "ping -i {PROBE_INTERVAL} -w 30 {gw} 2>/dev/null | while read -r line; do \
                 case \"$line\" in *' bytes from '*) set -- ${{line#*seq=}}; \
                 echo $(($1 + 1)) > /bench/{name}; break;; esac; done; exec sleep 1000000"
            ),
            None => format!("echo 0 > /bench/{name}; exec sleep 1000000"),
        };
        let volume = format!("{}:/bench", self.markers.display());
        // A label of its own: on cilium every container gets a new security identity, the
        // costlier case (replicas sharing their labels would share one identity).
        let label = format!("bench={name}");
        let args = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &variant.network,
            "-v",
            &volume,
            "-l",
            &label,
            IMAGE,
            "sh",
            "-c",
            &script,
        ];
        let mut cmd = self.dockerd.command(&args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());

        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("spawn docker run: {e}"))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut run: Option<Duration> = None;
        let mut ready: Option<(Duration, String)> = None;
        let mut marker = String::new();
        let deadline = start + READY_TIMEOUT;
        while run.is_none() || ready.is_none() {
            let now = Instant::now();
            if now >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let logs = self.docker(&["logs", name]).unwrap_or_else(|e| e);
                return Err(format!(
                    "{name} on {}: not ready within {READY_TIMEOUT:?} (docker run {}); \
                     container output: {logs}",
                    variant.network,
                    if run.is_some() {
                        "returned"
                    } else {
                        "still running"
                    }
                ));
            }
            let mut fds = Vec::with_capacity(2);
            if ready.is_none() {
                fds.push(libc::pollfd {
                    fd: fifo.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if run.is_none() {
                fds.push(libc::pollfd {
                    fd: stdout.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let timeout = (deadline - now).as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs of open descriptors.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            let t = start.elapsed();
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            for pfd in fds.iter().filter(|p| p.revents != 0) {
                if pfd.fd == fifo.as_raw_fd() {
                    read_available(&mut fifo, &mut marker)?;
                    if marker.ends_with('\n') {
                        ready = Some((t, marker.trim().to_string()));
                    }
                } else {
                    let mut chunk = [0u8; 256];
                    let got = stdout
                        .read(&mut chunk)
                        .map_err(|e| format!("docker run stdout: {e}"))?;
                    if got == 0 {
                        // EOF: the client (and the `timeout` wrapping it) exited.
                        run = Some(t);
                        let status = child.wait().map_err(|e| format!("wait: {e}"))?;
                        if !status.success() {
                            let mut err = String::new();
                            if let Some(mut stderr) = child.stderr.take() {
                                let _ = stderr.read_to_string(&mut err);
                            }
                            return Err(format!(
                                "docker run of {name} on {} failed ({status}): {}",
                                variant.network,
                                err.trim()
                            ));
                        }
                    }
                }
            }
        }
        let (run, (ready, probes)) = (run.expect("loop ends with both"), ready.expect("both"));
        let _ = std::fs::remove_file(&fifo_path);
        Ok(Sample {
            run,
            ready,
            probes: probes.parse().unwrap_or(0),
        })
    }

    /// Everything this bench made on the daemon, newest first: containers, then networks.
    /// The drops would do it too; here failures are reported.
    fn remove(&self, containers: &[String], networks: &[&str]) {
        let started = Instant::now();
        for chunk in containers.rchunks(16).map(<[String]>::to_vec) {
            let mut args = vec!["rm", "-f"];
            args.extend(chunk.iter().rev().map(String::as_str));
            if let Err(e) = self.docker(&args) {
                eprintln!("bench-docker: cleanup: {e}");
            }
        }
        for network in networks.iter().rev() {
            if let Err(e) = self.docker(&["network", "rm", network]) {
                eprintln!("bench-docker: cleanup: {e}");
            }
        }
        eprintln!(
            "bench-docker: removed {} containers and {} networks in {:.1} s",
            containers.len(),
            networks.len(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Appends what the non-blocking `file` has to read now to `into`.
fn read_available(file: &mut File, into: &mut String) -> Result<(), String> {
    let mut buf = [0u8; 64];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => into.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read marker: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers.

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: Duration,
    p90: Duration,
    max: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |p: f64| {
        let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[idx.min(samples.len() - 1)]
    };
    Stats {
        p50: at(0.50),
        p90: at(0.90),
        max: samples[samples.len() - 1],
    }
}

fn show(d: Duration) -> String {
    format!("{:>8.1} ms", d.as_secs_f64() * 1e3)
}

fn ratio(ours: Duration, theirs: Duration) -> f64 {
    ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9)
}

fn text_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The workspace binary `name` next to this one (target/<profile>/), if built.
fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.exists().then_some(path)
}

fn main() {
    if !require_root("bench-docker") {
        eprintln!(
            "bench-docker: needs root: it runs cilium-agent in a network namespace, a private \
             dockerd and cilium-docker; run it as root (make bench does, under sudo)"
        );
        return;
    }
    for (path, hint) in [
        (DOCKERD, "apt-get install docker.io"),
        (DOCKER, "apt-get install docker.io"),
        (BUSYBOX, "apt-get install busybox-static"),
    ] {
        if !Path::new(path).exists() {
            println!("bench-docker: {path} is missing; {hint}");
            return;
        }
    }
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    for name in ["cilium-agent", "cilium-docker"] {
        if sibling(name).is_none() {
            println!(
                "bench-docker: {name} is not built next to this binary; run `cargo build{profile} \
                 -p agent-core -p cilium-docker --bins` first"
            );
            return;
        }
    }
    let n = std::env::var("BENCH_DOCKER_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(DEFAULT_CONTAINERS);
    install_panic_cleanup();
    if let Err(e) = run(n) {
        eprintln!("bench-docker: {e}");
        std::process::exit(1);
    }
}

fn run(n: usize) -> Result<(), String> {
    eprintln!("bench-docker: starting the agent, cilium-docker and a private dockerd...");
    let setup = Setup::start();
    setup.dockerd.import_busybox(IMAGE);
    let cilium_net = "cilium-bench";
    let bridge_net = "bridge-bench";
    let mut networks = Vec::new();
    let mut containers = Vec::new();
    let result = (|| -> Result<Vec<Variant>, String> {
        setup.docker(&[
            "network",
            "create",
            "--driver",
            &setup.plugin.name,
            "--ipam-driver",
            &setup.plugin.name,
            cilium_net,
        ])?;
        networks.push(cilium_net);
        setup.docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            BRIDGE_SUBNET,
            "--gateway",
            BRIDGE_GATEWAY,
            bridge_net,
        ])?;
        networks.push(bridge_net);
        let mut variants = vec![
            Variant {
                label: "cilium".to_string(),
                tag: "cil",
                network: cilium_net.to_string(),
                gateway: Some(setup.gateway(cilium_net)?),
                samples: Vec::new(),
            },
            Variant {
                label: "bridge".to_string(),
                tag: "br",
                network: bridge_net.to_string(),
                gateway: Some(setup.gateway(bridge_net)?),
                samples: Vec::new(),
            },
            Variant {
                label: "floor: --network none".to_string(),
                tag: "none",
                network: "none".to_string(),
                gateway: None,
                samples: Vec::new(),
            },
        ];
        let rounds = WARMUP_ROUNDS + n;
        eprintln!(
            "bench-docker: {rounds} rounds ({WARMUP_ROUNDS} warm-up) of one container per row..."
        );
        for round in 0..rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..variants.len()).collect()
            } else {
                (0..variants.len()).rev().collect()
            };
            for i in order {
                let name = format!("{}-{round}", variants[i].tag);
                containers.push(name.clone());
                let sample = setup.measure(&variants[i], &name)?;
                if round >= WARMUP_ROUNDS {
                    variants[i].samples.push(sample);
                }
            }
        }
        Ok(variants)
    })();
    // Every endpoint the plugin made is at the agent (checked before removing anything).
    let (_, body) = setup.node.agent.http("GET", "/endpoint", None);
    let endpoints = serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap_or_default();
    // Those whose identity carries their container's labels (not `reserved:init`).
    let labelled = endpoints
        .iter()
        .filter(|e| {
            e["identity"]["labels"].as_array().is_some_and(|l| {
                l.iter().any(|l| {
                    l.as_str()
                        .is_some_and(|l| l.starts_with("container:bench="))
                })
            })
        })
        .count();
    let endpoints = endpoints.len();
    setup.remove(&containers, &networks);
    let variants = result?;
    let header = format!(
        "docker run -> container network ready: cilium vs Docker's bridge driver ({} cores, \
         kernel {}, dockerd {}, storage driver {})",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        text_of("uname", &["-r"]),
        setup
            .docker(&["version", "-f", "{{.Server.Version}}"])
            .unwrap_or_default(),
        setup.dockerd.storage_driver()
    );
    drop(setup);

    println!("{header}");
    println!(
        "cilium: `docker network create --driver <cilium-docker> --ipam-driver <cilium-docker>`, \
         agent in the node namespace watching the dockerd for labels (endpoints at the agent \
         before cleanup: {endpoints}, with their container's labels: {labelled}); \
         bridge: `docker network create --driver bridge --subnet {BRIDGE_SUBNET} --gateway \
         {BRIDGE_GATEWAY}`; IPv4 only, same private dockerd, same busybox image; every container \
         has a label of its own (-l bench=<name>: on cilium a new security identity each)"
    );
    println!(
        "{n} containers per row, rounds interleaved (order alternating each round) after \
         {WARMUP_ROUNDS} warm-up rounds; containers kept running until the end"
    );
    println!(
        "run -d: wall time from spawning `docker run -d --network <net> -v <dir>:/bench ...` \
         until the client exited (container created and started)"
    );
    println!(
        "ready:  wall time from the same spawn until the container's first ping to its \
         gateway was answered: its own command runs `ping -i {PROBE_INTERVAL} <gateway>` and at \
         the first reply writes to a FIFO on a bind mount that the bench poll()s (no docker \
         exec); on cilium this includes the agent learning the container's labels (the \
         endpoint drops everything under the reserved:init identity until then); ready may \
         come before run -d returns"
    );
    println!();
    println!(
        "  {:<24} {:>11} {:>11} {:>11}   {:>11} {:>11} {:>11}   {:>7}",
        "",
        "run -d p50",
        "run -d p90",
        "run -d max",
        "ready p50",
        "ready p90",
        "ready max",
        "probes"
    );
    let mut rows = Vec::new();
    for v in &variants {
        let run = stats(v.samples.iter().map(|s| s.run).collect());
        let ready = stats(v.samples.iter().map(|s| s.ready).collect());
        let mut probes: Vec<u32> = v.samples.iter().map(|s| s.probes).collect();
        probes.sort_unstable();
        let label = match &v.gateway {
            Some(gw) => format!("{} (gw {gw})", v.label),
            None => v.label.clone(),
        };
        println!(
            "  {:<24} {} {} {}   {} {} {}   {:>7}",
            label,
            show(run.p50),
            show(run.p90),
            show(run.max),
            show(ready.p50),
            show(ready.p90),
            show(ready.max),
            if v.gateway.is_some() {
                format!(
                    "{} / {}",
                    probes[(probes.len() - 1) / 2],
                    probes[probes.len() - 1]
                )
            } else {
                "-".to_string()
            }
        );
        rows.push((run, ready));
    }
    println!(
        "  (probes: median / most ping probes a container of the row sent until the first \
         answer, {PROBE_INTERVAL} s apart; 1 = the first one was answered)"
    );
    println!();
    let (cilium, bridge, floor) = (rows[0], rows[1], rows[2]);
    let ready_ratio = ratio(cilium.1.p50, bridge.1.p50);
    println!(
        "ratio cilium / bridge of the medians: ready {:.2}x, run -d {:.2}x; above the \
         --network none floor: cilium +{:.1} ms, bridge +{:.1} ms (ready p50)",
        ready_ratio,
        ratio(cilium.0.p50, bridge.0.p50),
        (cilium.1.p50.as_secs_f64() - floor.1.p50.as_secs_f64()) * 1e3,
        (bridge.1.p50.as_secs_f64() - floor.1.p50.as_secs_f64()) * 1e3,
    );
    println!(
        "target: ready p50 of cilium at most 1.2x that of bridge: {}",
        if ready_ratio <= 1.2 {
            "target met"
        } else {
            "target missed"
        }
    );
    Ok(())
}
