//! containerd as the runtime: a private `containerd` on its own socket and directories runs a
//! busybox image built here, `ctr run --cni` execs `cilium-cni` from `/opt/cni/bin` with the
//! config from `/etc/cni/net.d` (ctr has no flags for other paths), and the container talks
//! to another endpoint of the same node. Stopping the container makes ctr run CNI DEL, after
//! which the agent must have forgotten the endpoint and released its address.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cilium_api::models::{Endpoint, StatusResponse};
use integration::cni::Node;
use integration::image::{busybox_oci_tar, BUSYBOX, BUSYBOX_IMAGE};
use integration::{bin, require_root, test_dir, unique_name, Netns};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Upper bound for any single `ctr` call (via coreutils `timeout`), so a wedged daemon fails
/// the test instead of hanging it.
const CTR_TIMEOUT: &str = "60";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
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

/// Kills a child we started (by its pid) and reaps it.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        if wait_child(child, Duration::from_secs(5)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /etc/cni/net.d and /opt/cni/bin, owned for the duration of the test.

/// Held by whoever owns the host's CNI paths, across processes.
const CNI_PATHS_LOCK: &str = "/run/cilium-it-cni-paths.lock";
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Where libcni caches ADD results (and reads them back for DEL).
const CNI_CACHE_DIR: &str = "/var/lib/cni";

/// One host path taken over: what was there is moved aside and comes back on drop.
#[derive(Debug)]
struct TakenPath {
    path: PathBuf,
    backup: Option<PathBuf>,
    /// Ancestors that did not exist before, deepest first: removed again (when empty).
    created: Vec<PathBuf>,
}

impl TakenPath {
    /// Moves whatever is at `path` aside (if anything) and leaves a fresh empty directory.
    fn take(path: &str) -> TakenPath {
        let path = PathBuf::from(path);
        let mut taken = TakenPath {
            path: path.clone(),
            backup: None,
            created: Vec::new(),
        };
        if path.symlink_metadata().is_ok() {
            let name = path.file_name().expect("file name").to_string_lossy();
            let backup =
                path.with_file_name(format!(".{name}.cilium-it-backup-{}", std::process::id()));
            std::fs::rename(&path, &backup)
                .unwrap_or_else(|e| panic!("move {} aside: {e}", path.display()));
            taken.backup = Some(backup);
        } else {
            taken.created = missing_ancestors(&path);
        }
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        taken
    }
}

/// `path` and those of its ancestors that do not exist, deepest first.
fn missing_ancestors(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .take_while(|p| p.symlink_metadata().is_err())
        .map(Path::to_path_buf)
        .collect()
}

impl Drop for TakenPath {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cleanup: remove {}: {e}", self.path.display());
        }
        if let Some(backup) = &self.backup {
            if let Err(e) = std::fs::rename(backup, &self.path) {
                eprintln!(
                    "cleanup: could not restore {} from {}: {e}",
                    self.path.display(),
                    backup.display()
                );
            }
        }
        for dir in &self.created {
            // Only what is empty again: never anything someone else put there meanwhile.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The CNI paths `ctr run --cni` reads, holding only cilium-cni (and loopback) and the node's
/// configuration; restored exactly on drop. Also removes libcni's result cache if this test
/// created it.
#[derive(Debug)]
struct CniPaths {
    // Drop order: the paths are restored before the lock is released.
    _conf: TakenPath,
    _bin: TakenPath,
    cache_created: Vec<PathBuf>,
    _lock: File,
}

impl CniPaths {
    fn install(node: &Node) -> CniPaths {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(CNI_PATHS_LOCK)
            .unwrap_or_else(|e| panic!("{CNI_PATHS_LOCK}: {e}"));
        lock.lock().expect("lock the CNI paths");
        let cache_created = missing_ancestors(Path::new(CNI_CACHE_DIR));
        let conf = TakenPath::take(CNI_CONF_DIR);
        let bin_dir = TakenPath::take(CNI_BIN_DIR);
        let config = node.config(Some("1.0.0"));
        std::fs::write(
            conf.path.join("10-cilium.conf"),
            serde_json::to_string_pretty(&config).expect("json"),
        )
        .expect("write 10-cilium.conf");
        std::fs::copy(bin("cilium-cni"), bin_dir.path.join("cilium-cni")).expect("copy cilium-cni");
        let loopback = Path::new("/usr/lib/cni/loopback");
        if loopback.exists() {
            std::fs::copy(loopback, bin_dir.path.join("loopback")).expect("copy loopback");
        }
        CniPaths {
            _conf: conf,
            _bin: bin_dir,
            cache_created,
            _lock: lock,
        }
    }
}

impl Drop for CniPaths {
    fn drop(&mut self) {
        if let Some(top) = self.cache_created.last() {
            let _ = std::fs::remove_dir_all(top);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A private containerd.

/// A `containerd` with its own socket, root, state and config; on drop its containers and
/// tasks are removed, the daemon is stopped, leftover mounts are unmounted, and the host
/// paths containerd 1.6 insists on (`/run/containerd/s` for shim sockets, cgroups named
/// after the namespace) are removed again.
#[derive(Debug)]
struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    namespace: String,
    /// overlayfs where containerd can use it, native (plain copies) otherwise.
    snapshotter: String,
    log: PathBuf,
    run_created: Vec<PathBuf>,
    // Last: removed after everything above is stopped and unmounted.
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = test_dir();
        let socket = dir.path().join("containerd.sock");
        let log = dir.path().join("containerd.log");
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{root}/containerd.sock"

[ttrpc]
  address = "{root}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#,
            root = dir.path().display()
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config.toml");
        let run_created = missing_ancestors(Path::new("/run/containerd/s"));
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("containerd.out")).expect("stdout file"))
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn containerd");
        let mut ctrd = Containerd {
            child: Some(child),
            socket,
            namespace: format!("cilium-it-{}", std::process::id()),
            snapshotter: String::new(),
            log,
            run_created,
            dir,
        };
        ctrd.wait_ready();
        ctrd.snapshotter = ctrd.pick_snapshotter();
        ctrd
    }

    /// overlayfs if its plugin loaded (it needs a filesystem with d_type and overlay support
    /// in the kernel), else native.
    fn pick_snapshotter(&self) -> String {
        let plugins = self.ctr_ok(&["plugins", "list"]);
        let overlay_ok = plugins.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&"io.containerd.snapshotter.v1")
                && cols.get(1) == Some(&"overlayfs")
                && cols.last() == Some(&"ok")
        });
        if overlay_ok {
            "overlayfs".to_string()
        } else {
            eprintln!("containerd: overlayfs snapshotter unavailable, using native");
            "native".to_string()
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("containerd exited early ({status}):\n{}", self.log());
            }
            if self.socket.exists() && self.ctr(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("containerd did not answer within 20 s:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ctr` against this daemon and namespace, not yet run.
    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", CTR_TIMEOUT, "ctr", "--address"])
            .arg(&self.socket)
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("run ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\n{}{}\n--- containerd log (tail)\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            tail(&self.log(), 30)
        );
        text(&out.stdout)
    }

    /// Ids of the containers in our namespace.
    fn containers(&self) -> Vec<String> {
        text(&self.ctr(&["containers", "list", "--quiet"]).stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Pids of the shims still running for our namespace.
    fn shim_pids(&self) -> Vec<i32> {
        let tasks = self
            .path("state/io.containerd.runtime.v2.task")
            .join(&self.namespace);
        let Ok(entries) = std::fs::read_dir(tasks) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("shim.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }

    /// Mount points under our directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.path().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points.dedup();
        points
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers first: each task has a shim that outlives the daemon.
        for id in self.containers() {
            let _ = self.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", &id]);
            let _ = self.ctr(&["tasks", "delete", "--force", &id]);
            let _ = self.ctr(&["containers", "delete", &id]);
        }
        for pid in self.shim_pids() {
            // A shim that survived (its task could not be deleted): ours, known by its pid file.
            if Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("cleanup: killing leftover shim {pid}");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        for point in self.mounts() {
            eprintln!("cleanup: unmounting leftover {point}");
            let ok = Command::new("umount")
                .args(["-R", &point])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").args(["-R", "-l", &point]).status();
            }
        }
        // runc's cgroups are `/<namespace>/<id>` in every hierarchy; it removes the inner one.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let ns = h.path().join(&self.namespace);
                if let Ok(inner) = std::fs::read_dir(&ns) {
                    for c in inner.flatten().filter(|c| c.path().is_dir()) {
                        let _ = std::fs::remove_dir(c.path());
                    }
                    let _ = std::fs::remove_dir(&ns);
                }
            }
        }
        for dir in &self.run_created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Processes of the test.

/// A background process, killed by its pid on drop.
#[derive(Debug)]
struct Background {
    child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A foreground `ctr run --rm --cni` (ctr only runs CNI DEL for containers it runs in the
/// foreground): on drop its task is killed so ctr runs DEL and removes the container.
#[derive(Debug)]
struct Container<'a> {
    ctrd: &'a Containerd,
    id: String,
    child: Child,
    out: PathBuf,
}

impl<'a> Container<'a> {
    fn run(ctrd: &'a Containerd, id: &str, cmd: &[&str]) -> Container<'a> {
        let out = ctrd.path(&format!("{id}.out"));
        let runc_root = ctrd.path("runc").display().to_string();
        let fifo_dir = ctrd.path("fifo").display().to_string();
        let mut args = vec![
            "run",
            "--rm",
            "--cni",
            "--snapshotter",
            &ctrd.snapshotter,
            "--runc-root",
            &runc_root,
            "--fifo-dir",
            &fifo_dir,
            BUSYBOX_IMAGE,
            id,
        ];
        args.extend_from_slice(cmd);
        // Not through `timeout`: this one runs as long as the container does.
        let child = Command::new("ctr")
            .arg("--address")
            .arg(&ctrd.socket)
            .args(["--namespace", &ctrd.namespace])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("ctr output file"))
            .stderr(Stdio::from(
                File::options()
                    .append(true)
                    .open(&out)
                    .expect("ctr output file"),
            ))
            .spawn()
            .expect("spawn ctr run");
        Container {
            ctrd,
            id: id.to_string(),
            child,
            out,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Whether ctr has exited (and how).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Runs a command in the container; returns its output.
    fn exec(&self, exec_id: &str, cmd: &[&str]) -> Output {
        let fifo_dir = self.ctrd.path("fifo").display().to_string();
        let mut args = vec![
            "tasks",
            "exec",
            "--fifo-dir",
            &fifo_dir,
            "--exec-id",
            exec_id,
            &self.id,
        ];
        args.extend_from_slice(cmd);
        self.ctrd.ctr(&args)
    }

    /// Kills the task and waits for ctr to finish (CNI DEL, task and container removal).
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited().is_none() {
            let _ = self
                .ctrd
                .ctr(&["tasks", "kill", "--signal", "SIGKILL", &self.id]);
        }
        wait_child(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if self.stop().is_none() {
            stop_child(&mut self.child);
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn endpoints(node: &Node) -> Vec<Endpoint> {
    let json = node.agent.cli(&["-o", "json", "endpoint", "list"]).ok();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("endpoint list: {e}: {json}"))
}

fn allocated(node: &Node) -> Vec<String> {
    let json = node.agent.cli(&["-o", "json", "status"]).ok();
    let status: StatusResponse =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("status: {e}: {json}"));
    status
        .ipam
        .ipv4
        .into_iter()
        .chain(status.ipam.ipv6)
        .collect()
}

fn ipv4_of(result: &serde_json::Value) -> Ipv4Addr {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no IPv4 address in the result: {result}"))
}

fn in_node_range(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    (a, b) == (10, 23)
}

#[test]
fn ctr_run_cni_container_gets_address_traffic_and_release() {
    if !require_root("ctr_run_cni_container_gets_address_traffic_and_release") {
        return;
    }
    // Dropped in reverse: container, containerd, CNI paths, listener, peer, node.
    let node = Node::start("ctrd");
    let peer = Netns::new("ctrp");
    let peer_ip = ipv4_of(&node.add(&peer));
    assert!(in_node_range(peer_ip), "peer address {peer_ip}");
    let _listener = Background {
        child: Command::new("ip")
            .args([
                "netns", "exec", &peer.name, BUSYBOX, "nc", "-ll", "-p", "8080", "-e",
            ])
            .args([BUSYBOX, "echo", "hello"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nc listener"),
    };
    let _paths = CniPaths::install(&node);

    let ctrd = Containerd::start();
    let archive = busybox_oci_tar(&ctrd.path("image"));
    let archive = archive.display().to_string();
    let imported = ctrd.ctr_ok(&[
        "images",
        "import",
        "--all-platforms",
        "--snapshotter",
        &ctrd.snapshotter,
        &archive,
    ]);
    println!("{}", imported.trim());
    assert!(
        ctrd.ctr_ok(&["images", "list", "--quiet"])
            .lines()
            .any(|l| l.trim() == BUSYBOX_IMAGE),
        "image not imported as {BUSYBOX_IMAGE}:\n{imported}"
    );

    let id = unique_name("ctr");
    // What ctr passes as CNI_CONTAINERID: `<namespace>-<id>`.
    let full_id = format!("{}-{id}", ctrd.namespace);
    let before = endpoints(&node).len();
    let mut container = Container::run(&ctrd, &id, &["/bin/sleep", "300"]);

    // ctr runs CNI ADD between task create and start; wait for the endpoint and the task.
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = loop {
        if let Some(status) = container.exited() {
            panic!(
                "ctr run exited ({status}):\n{}\n--- agent\n{}\n--- containerd log (tail)\n{}",
                container.output(),
                node.agent.output(),
                tail(&ctrd.log(), 30)
            );
        }
        let running = text(&ctrd.ctr(&["tasks", "list"]).stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .any(|cols| cols.first() == Some(&id.as_str()) && cols.contains(&"RUNNING"));
        let found = endpoints(&node)
            .into_iter()
            .find(|e| e.container_id == full_id);
        if let (true, Some(ep)) = (running, found) {
            break ep;
        }
        assert!(
            Instant::now() < deadline,
            "container did not come up within 30 s:\n{}\nendpoints: {:?}",
            container.output(),
            endpoints(&node)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(endpoints(&node).len(), before + 1);
    let ep_ip = match endpoint.addressing.ipv4 {
        Some(std::net::IpAddr::V4(ip)) => ip,
        other => panic!("endpoint without IPv4: {other:?} ({endpoint:?})"),
    };
    assert!(in_node_range(ep_ip), "endpoint address {ep_ip}");

    // The container sees that address on eth0.
    let out = container.exec("addr", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(out.status.success(), "ip addr in the container: {out:?}");
    let shown = text(&out.stdout);
    println!("container eth0: {}", shown.trim());
    let addr: Ipv4Addr = shown
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 on eth0: {shown}"));
    assert_eq!(addr, ep_ip, "container address vs the agent's endpoint");
    assert!(in_node_range(addr));

    // ICMP both ways, TCP from the container to the peer.
    let out = container.exec(
        "ping",
        &["ping", "-c", "1", "-W", "2", &peer_ip.to_string()],
    );
    assert!(
        out.status.success(),
        "ping {peer_ip} from the container failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    peer.exec_ok(&[BUSYBOX, "ping", "-c", "1", "-W", "2", &addr.to_string()]);
    let out = container.exec(
        "tcp",
        &["sh", "-c", &format!("echo x | nc -w 5 {peer_ip} 8080")],
    );
    assert!(
        text(&out.stdout).contains("hello"),
        "TCP to {peer_ip}:8080 from the container:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // libcni cached the ADD result; DEL must remove it again.
    let cache = Path::new(CNI_CACHE_DIR).join(format!("results/cilium-{full_id}-eth0"));
    assert!(
        cache.exists(),
        "no libcni cache {}: {:?}",
        cache.display(),
        std::fs::read_dir(Path::new(CNI_CACHE_DIR).join("results"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );

    // Stop it: ctr runs CNI DEL, deletes the task and (--rm) the container.
    let status = container
        .stop()
        .expect("ctr run did not finish after the kill");
    println!("ctr run finished ({status}):\n{}", container.output());
    assert!(
        !container.output().contains("network review"),
        "ctr reported a failed CNI DEL:\n{}",
        container.output()
    );
    assert!(
        !ctrd.containers().contains(&id),
        "container not removed: {:?}",
        ctrd.containers()
    );
    let left = endpoints(&node);
    assert!(
        left.iter().all(|e| e.container_id != full_id),
        "endpoint of {full_id} left after DEL: {left:?}"
    );
    assert_eq!(left.len(), before, "endpoints after DEL: {left:?}");
    // The veth pair is torn down in the background; the address is released after it.
    let released_by = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs = allocated(&node);
        let held = addrs
            .iter()
            .any(|a| a.split_whitespace().next() == Some(&ep_ip.to_string()));
        if !held {
            break;
        }
        assert!(
            Instant::now() < released_by,
            "{ep_ip} still allocated 5 s after DEL: {addrs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!cache.exists(), "libcni cache {} left", cache.display());
}
