//! Harness of the end-to-end tests: runs the real binaries (`cilium-agent`, `cilium`) as a
//! runtime or an operator would, each test with its own socket, state directory and network
//! namespaces, all removed by guards also when the test fails.
//!
//! The binaries are taken from the target directory of this build: run
//! `cargo build --workspace --bins` first (`make test` does).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod cni;
pub mod containerd;
pub mod docker;
pub mod etcd;
pub mod http;
pub mod image;
pub mod measure;
pub mod monitor;
pub mod plain;
pub mod traffic;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Path of a binary of this workspace.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    let mut dir = exe.parent().expect("target directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// Whether privileged tests can run. Outside root they are skipped with a printed reason;
/// under `CI=true` they must run, so not being root fails the test.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: privileged test cannot run without root, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces)");
    false
}

/// A name unique to this test process and call, for namespaces and devices (≤ 15 chars).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long");
    name
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and asserts it succeeded.
    pub fn exec_ok(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        run_ok("ip", &args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Runs a command and asserts it succeeded.
pub fn run_ok(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Bytes a process wrote, as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `path` and those of its ancestors that do not exist, deepest first.
pub(crate) fn missing_ancestors(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .take_while(|p| p.symlink_metadata().is_err())
        .map(Path::to_path_buf)
        .collect()
}

/// Mount points at or under `dir` (from this process's mountinfo), deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let inside = format!("{dir}/");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| *p == dir || p.starts_with(&inside))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

/// Waits up to `timeout` for a child to exit; `None` if it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child we started (SIGTERM by its pid, SIGKILL after 5 s) and reaps it.
pub fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        if wait_child(child, Duration::from_secs(5)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace.
    pub netns: Option<String>,
    /// Pass `--ipv4-range`/`--ipv6-range`/`--node-address` so no detection is needed.
    pub fixed_ranges: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            args: Vec::new(),
            env: Vec::new(),
            netns: None,
            fixed_ranges: true,
        }
    }
}

/// A running `cilium-agent`, killed on drop.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// The agent's private BPF filesystem (`--bpf-root`).
    pub bpf_root: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// How many harness agents use each private bpffs mount: the last one to go unmounts it,
/// so an agent restarted on the same directory finds the pins of the previous one.
static BPF_MOUNTS: std::sync::Mutex<Vec<(PathBuf, usize)>> = std::sync::Mutex::new(Vec::new());

/// Mounts a private BPF filesystem at `path` (once per path while agents use it).
pub fn bpffs_acquire(path: &Path) {
    let mut mounts = BPF_MOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(entry) = mounts.iter_mut().find(|(p, _)| p == path) {
        entry.1 += 1;
        return;
    }
    std::fs::create_dir_all(path).expect("bpf root dir");
    run_ok(
        "mount",
        &["-t", "bpf", "bpffs", &path.display().to_string()],
    );
    mounts.push((path.to_path_buf(), 1));
}

/// Drops one use of a private bpffs; unmounts it with the last (pins, maps and links go).
pub fn bpffs_release(path: &Path) {
    let mut mounts = BPF_MOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(i) = mounts.iter().position(|(p, _)| p == path) else {
        return;
    };
    mounts[i].1 -= 1;
    if mounts[i].1 == 0 {
        mounts.remove(i);
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// A test's private directory.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cilium-it-")
        .tempdir()
        .expect("temp dir")
}

/// The range flags every harness agent gets unless told otherwise.
pub const IPV4_RANGE: &str = "10.23.0.0/16";
pub const IPV6_RANGE: &str = "f00d::c000:217:0:0/96";

impl Agent {
    /// Spawns an agent with its socket and state under `dir`, without waiting for it.
    pub fn spawn(dir: &Path, opts: &AgentOptions) -> Agent {
        let socket = dir.join("cilium.sock");
        let state_dir = dir.join("state");
        Agent::spawn_at(dir, &socket, &state_dir, opts)
    }

    pub fn spawn_at(dir: &Path, socket: &Path, state_dir: &Path, opts: &AgentOptions) -> Agent {
        let n = unique_name("");
        let stdout = dir.join(format!("agent{n}.out"));
        let stderr = dir.join(format!("agent{n}.err"));
        let mut cmd = match &opts.netns {
            Some(ns) => {
                // `ip netns exec` execs the agent: the child's pid is the agent's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("cilium-agent"));
                c
            }
            None => Command::new(bin("cilium-agent")),
        };
        let bpf_root = dir.join("bpf");
        bpffs_acquire(&bpf_root);
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--bpf-root")
            .arg(&bpf_root);
        if opts.fixed_ranges {
            cmd.args(["--ipv4-range", IPV4_RANGE, "--ipv6-range", IPV6_RANGE]);
            cmd.args(["--node-address", "192.0.2.23", "--node-name", "it-node"]);
        }
        cmd.args(&opts.args);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CILIUM_")) {
            cmd.env_remove(k);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let child = cmd.spawn().expect("spawn cilium-agent");
        Agent {
            child: Some(child),
            socket: socket.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            bpf_root,
            stdout,
            stderr,
        }
    }

    /// Starts an agent and waits until its API answers.
    pub fn start(dir: &Path, opts: &AgentOptions) -> Agent {
        let mut agent = Agent::spawn(dir, opts);
        agent.wait_ready();
        agent
    }

    /// Waits (up to 10 s) until `GET /healthz` answers 200; panics with the agent's output
    /// if it exits or never answers.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("cilium-agent exited early ({status}):\n{}", self.output());
            }
            if http(&self.socket, "GET", "/healthz", None).is_ok_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "cilium-agent did not answer within 10 s:\n{}",
            self.output()
        );
    }

    /// What the agent printed so far.
    pub fn output(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal and waits (up to 10 s) for the agent to exit; returns its exit code.
    pub fn stop_with(&mut self, signal: Signal) -> Option<i32> {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the agent to exit; kills it and panics with its output after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cilium-agent kept running past {timeout:?}:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The datapath's packet counter of drop `reason` in `direction` (`ingress`, `egress`),
    /// from `GET /healthz`.
    pub fn drops(&self, reason: u8, direction: &str) -> u64 {
        let (status, body) = self.http("GET", "/healthz", None);
        assert_eq!(status, 200, "{body}");
        let s: cilium_api::models::StatusResponse = serde_json::from_str(&body).expect("status");
        s.datapath
            .expect("datapath status")
            .counters
            .iter()
            .filter(|c| c.reason == reason && c.direction == direction)
            .map(|c| c.packets)
            .sum()
    }

    /// Runs the `cilium` CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let host = format!("unix://{}", self.socket.display());
        let mut full = vec!["-H", host.as_str()];
        full.extend_from_slice(args);
        cli(&full)
    }

    /// A raw HTTP request to this agent.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(&self.socket, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.output()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        bpffs_release(&self.bpf_root);
    }
}

/// Output of a CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "cilium failed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// Runs the `cilium` CLI with a clean environment.
pub fn cli(args: &[&str]) -> CliOutput {
    let mut cmd = Command::new(bin("cilium"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CILIUM_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).output().expect("run cilium");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One HTTP/1.1 request written by hand on the agent's unix socket, `path` under `/v1`;
/// returns status and body.
pub fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_raw(socket, method, &format!("/v1{path}"), body)
}

/// [`http`] with the path as given (e.g. a libnetwork plugin's `/NetworkDriver.Join`).
pub fn http_raw(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: cilium\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::other(format!("malformed reply: {text}"));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The `error` field of an error reply.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("not an error reply: {body}"))
}
