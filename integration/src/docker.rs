//! Docker as the runtime: a private `dockerd` per test, with its own socket, data root, exec
//! root, configuration, containerd namespace and cgroup parent, so it never uses or touches the
//! system's `/var/run/docker.sock`, `/var/lib/docker` or `/etc/docker/daemon.json`.
//!
//! No `--containerd` is given: dockerd then starts its own containerd with its sockets, state and
//! pid file under the exec root (`<dir>/exec/containerd/`) and stops it again on shutdown. Only
//! if a system containerd answers on `/run/containerd/containerd.sock` would dockerd use that one
//! instead; the containerd namespaces are unique per daemon, so even then the containers of a
//! test stay apart from everyone else's.
//!
//! What dockerd and its containerd still create outside the directory, and the last harness
//! daemon of the process removes again if they were not there before (and only while empty):
//! `/run/docker/plugins` (plugin discovery), `/run/containerd/s` (shim sockets, hard-coded in
//! containerd 1.6) and `/opt/containerd/{bin,lib}` (containerd's `opt` plugin). The containers'
//! cgroups are under a cgroup parent of the daemon's own, removed by its drop.
//!
//! Network plugins are found by socket name under [`PLUGIN_DIR`], shared with the whole host:
//! see [`plugin_socket`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::image::{busybox_applets, BUSYBOX};
use crate::{missing_ancestors, mounts_under, tail, text, unique_name};

/// The daemon (Debian: `docker.io`).
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// The client of the same release. Named explicitly: a newer static `docker` may come first on
/// `PATH`.
pub const DOCKER: &str = "/usr/bin/docker";

/// Where docker looks for network plugins by socket name (global: the same for every daemon).
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Upper bound for one `docker` call (via coreutils `timeout`), so a wedged daemon or plugin
/// fails the test instead of hanging it.
const DOCKER_TIMEOUT: &str = "60";

/// The same during cleanup, where a plugin that is already gone must not stall the drop long.
const CLEANUP_TIMEOUT: &str = "20";

/// Host paths dockerd and its containerd create outside their directories.
const HOST_PATHS: &[&str] = &[
    PLUGIN_DIR,
    "/run/containerd/s",
    "/opt/containerd/bin",
    "/opt/containerd/lib",
];

/// Host paths some harness daemon of this process found missing (deepest first), and how many
/// daemons are running: the last one to go removes those paths (while empty), so a daemon that
/// came later, or a plugin serving in [`PLUGIN_DIR`], never loses them underneath.
static HOST_CREATED: Mutex<(usize, Vec<PathBuf>)> = Mutex::new((0, Vec::new()));

fn host_paths_acquire() {
    let mut created = HOST_CREATED.lock().unwrap_or_else(|p| p.into_inner());
    created.0 += 1;
    for path in HOST_PATHS
        .iter()
        .flat_map(|p| missing_ancestors(Path::new(p)))
    {
        if !created.1.contains(&path) {
            created.1.push(path);
        }
    }
    created
        .1
        .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
}

fn host_paths_release() {
    let mut created = HOST_CREATED.lock().unwrap_or_else(|p| p.into_inner());
    created.0 = created.0.saturating_sub(1);
    if created.0 == 0 {
        for dir in std::mem::take(&mut created.1) {
            // Only while empty: never anything someone else put there meanwhile.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The socket a docker network plugin called `name` serves: `/run/docker/plugins/<name>.sock`.
///
/// The directory is shared by every daemon on the host, so a test must use a name of its own
/// (e.g. from [`unique_name`]`("cil")`), pass it as the driver (`docker network create -d
/// <name>`), and remove the socket when done. Whoever serves the socket creates the directory
/// first (`create_dir_all`); if a harness daemon created it, the last one to go removes it
/// again when empty.
pub fn plugin_socket(name: &str) -> PathBuf {
    Path::new(PLUGIN_DIR).join(format!("{name}.sock"))
}

/// Whether `pid` is a live process (not a zombie) whose command line mentions `marker`.
fn running_with(pid: i32, marker: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // Zombies have an empty command line.
    !cmdline.is_empty() && text(&cmdline).contains(marker)
}

/// Waits until `pid` is gone or a zombie.
fn wait_gone(pid: i32, marker: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while running_with(pid, marker) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether this dockerd knows `--ip6tables` (added in 20.10).
fn dockerd_has_ip6tables() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new(DOCKERD)
            .arg("--help")
            .output()
            .is_ok_and(|o| text(&o.stdout).contains("--ip6tables"))
    })
}

/// Storage drivers to try, best first: overlay2 where the kernel has overlayfs (dockerd refuses
/// it at start on a backing filesystem it cannot use, then vfs follows), vfs (plain copies)
/// always.
fn storage_drivers() -> Vec<&'static str> {
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    if overlay {
        vec!["overlay2", "vfs"]
    } else {
        vec!["vfs"]
    }
}

/// A private `dockerd` for one test; on drop its containers and networks are removed, the
/// daemon and its containerd are stopped (by pid), everything mounted under its directory is
/// unmounted, its cgroups and the host paths it created are removed, and the directory is
/// deleted. This also happens when the test panics.
#[derive(Debug)]
pub struct Dockerd {
    child: Option<Child>,
    pid: u32,
    socket: PathBuf,
    /// Containerd namespace and cgroup parent: `cilium-it-<unique>`.
    namespace: String,
    storage_driver: &'static str,
    /// The network namespace (`/var/run/netns/<name>`) the daemon runs in, if not the host's.
    netns: Option<String>,
    // Last: deleted after everything above is stopped and unmounted.
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts a daemon in a fresh directory `/tmp/dk-<tag>-XXXXXX` and waits (up to 30 s)
    /// until it answers; panics with the tail of its log if it does not.
    pub fn start(tag: &str) -> Dockerd {
        Dockerd::start_in(tag, None)
    }

    /// [`Dockerd::start`] with the daemon (and so its containerd and shims) in the network
    /// namespace `netns` (a name under `/var/run/netns`), entered with `nsenter --net` only:
    /// the mounts stay in the host's mount namespace, where the drop finds them. A network
    /// plugin's veth peers are looked up there, so a node namespace with its own agent gets a
    /// daemon of its own this way.
    pub fn start_in(tag: &str, netns: Option<&str>) -> Dockerd {
        for path in [DOCKERD, DOCKER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's docker.io"
            );
        }
        // Under /tmp with a short name: unix socket paths must stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix(&format!("dk-{tag}-"))
            .tempdir_in("/tmp")
            .expect("temp dir");
        let longest = dir.path().join("exec/containerd/containerd.sock.ttrpc");
        assert!(
            longest.as_os_str().len() < 108,
            "socket path {} too long: use a shorter tag",
            longest.display()
        );
        std::fs::create_dir_all(dir.path().join("client")).expect("client config dir");
        // An explicit configuration, so /etc/docker/daemon.json is not read; the trust key
        // (which 20.10 would otherwise create as /etc/docker/key.json) stays in the directory.
        let config = json!({ "deprecated-key-path": dir.path().join("key.json") });
        std::fs::write(
            dir.path().join("daemon.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("write daemon.json");
        if Path::new("/run/containerd/containerd.sock").exists() {
            eprintln!(
                "dockerd: a system containerd is running, its containers go to a namespace of \
                 their own there"
            );
        }
        // Released by the drop of what follows.
        host_paths_acquire();
        let mut dockerd = Dockerd {
            child: None,
            pid: 0,
            socket: dir.path().join("docker.sock"),
            namespace: format!("cilium-it-{}", unique_name("")),
            storage_driver: "vfs",
            netns: netns.map(str::to_string),
            dir,
        };
        let drivers = storage_drivers();
        for (i, driver) in drivers.iter().enumerate() {
            dockerd.spawn(driver);
            match dockerd.wait_ready() {
                Ok(()) => return dockerd,
                Err(why) if i + 1 < drivers.len() => {
                    eprintln!(
                        "dockerd: {why} with storage driver {driver}, trying {}:\n{}",
                        drivers[i + 1],
                        tail(&dockerd.log(), 5)
                    );
                    dockerd.stop_daemon();
                    dockerd.kill_strays();
                    dockerd.unmount_all();
                    for sub in ["data", "exec"] {
                        let _ = std::fs::remove_dir_all(dockerd.path(sub));
                    }
                }
                Err(why) => panic!("{why}:\n{}", tail(&dockerd.log(), 40)),
            }
        }
        unreachable!("vfs is always tried last")
    }

    fn spawn(&mut self, driver: &'static str) {
        let d = self.dir.path();
        let mut cmd = match &self.netns {
            // nsenter execs dockerd: the child's pid is the daemon's.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}"))
                    .arg("--")
                    .arg(DOCKERD);
                c
            }
            None => Command::new(DOCKERD),
        };
        cmd.arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(self.host())
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--log-level=warn",
            ]);
        if dockerd_has_ip6tables() {
            cmd.arg("--ip6tables=false");
        }
        cmd.arg(format!("--storage-driver={driver}"))
            // cgroupfs, so the cgroup parent is a plain directory in each hierarchy.
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg(format!("--cgroup-parent=/{}", self.namespace))
            .arg(format!("--containerd-namespace={}", self.namespace))
            .arg(format!(
                "--containerd-plugins-namespace={}-plugins",
                self.namespace
            ));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCKER_")) {
            cmd.env_remove(k);
        }
        cmd.stdin(Stdio::null())
            .stdout(File::create(d.join("dockerd.out")).expect("stdout file"))
            .stderr(File::create(d.join("dockerd.log")).expect("log file"));
        let child = cmd.spawn().expect("spawn dockerd");
        self.pid = child.id();
        self.child = Some(child);
        self.storage_driver = driver;
    }

    /// Waits (up to 30 s) until `docker version` answers. `Err` if the daemon exited; panics
    /// with the log if it keeps running without answering.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("dockerd exited early ({status})"));
            }
            if self.socket.exists() && self.docker(&["version"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "dockerd did not answer within 30 s:\n{}",
            tail(&self.log(), 40)
        );
    }

    /// Stops the daemon (SIGTERM; its containers stop with it) and starts it again on the
    /// same directories; waits until it answers.
    pub fn restart(&mut self) {
        self.stop_daemon();
        let driver = self.storage_driver;
        self.spawn(driver);
        if let Err(why) = self.wait_ready() {
            panic!(
                "dockerd did not come back: {why}:\n{}",
                tail(&self.log(), 40)
            );
        }
    }

    /// The daemon's pid (it changes only with [`Dockerd::restart`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The daemon's private directory (deleted on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>`, as `-H` and `DOCKER_HOST` want it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The storage driver the daemon runs with (`overlay2` or `vfs`).
    pub fn storage_driver(&self) -> &str {
        self.storage_driver
    }

    /// What the daemon (and the containerd it runs) logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H unix://<socket> <args>` with a private client configuration, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with_timeout(DOCKER_TIMEOUT, args)
    }

    fn command_with_timeout(&self, timeout: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", timeout, DOCKER, "-H"])
            .arg(self.host())
            .args(args);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCKER_")) {
            cmd.env_remove(k);
        }
        cmd.env("DOCKER_CONFIG", self.path("client"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `docker <args>` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run docker")
    }

    /// Runs `docker <args>`, asserts it succeeded and returns its stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}):\n{}{}\n--- dockerd log (tail)\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            tail(&self.log(), 20)
        );
        text(&out.stdout)
    }

    /// Imports a busybox image as `reference`: `/bin/busybox`, a symlink per applet (`/bin/sh`
    /// among them), empty `/etc`, `/tmp`, `/proc`, `/sys` and `/dev`, and `CMD ["/bin/sh"]`.
    pub fn import_busybox(&self, reference: &str) {
        let scratch = self.path("image-build");
        let rootfs = scratch.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("rootfs/bin");
        std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
        for applet in busybox_applets() {
            std::os::unix::fs::symlink("busybox", bin.join(&applet))
                .unwrap_or_else(|e| panic!("symlink {applet}: {e}"));
        }
        for dir in ["etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(dir)).expect("rootfs dir");
        }
        let archive = scratch.join("busybox.tar");
        let out = Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .output()
            .expect("run tar");
        assert!(out.status.success(), "tar failed: {}", text(&out.stderr));
        let archive = archive.display().to_string();
        self.docker_ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            &archive,
            reference,
        ]);
        let _ = std::fs::remove_dir_all(&scratch);
    }

    /// Lines of a listing command's output.
    fn list(&self, args: &[&str]) -> Vec<String> {
        let out = self.command_with_timeout(CLEANUP_TIMEOUT, args).output();
        out.map(|o| text(&o.stdout))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Runs a cleanup command, reporting (never panicking) when it fails.
    fn cleanup(&self, args: &[&str]) {
        match self.command_with_timeout(CLEANUP_TIMEOUT, args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: docker {args:?} failed ({}): {}",
                out.status,
                text(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: docker {args:?}: {e}"),
        }
    }

    /// SIGTERM to the daemon, SIGKILL after 10 s; reaps it.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "cleanup: dockerd {} ignored SIGTERM, killing it",
                        child.id()
                    );
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.wait();
    }

    /// The sockets of the shims of our namespace (under `/run/containerd/s`; a shim that is
    /// killed leaves its socket behind).
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let tasks = self
            .path("exec/containerd/daemon/io.containerd.runtime.v2.task")
            .join(&self.namespace);
        let Ok(bundles) = std::fs::read_dir(tasks) else {
            return Vec::new();
        };
        bundles
            .flatten()
            .filter_map(|b| std::fs::read_to_string(b.path().join("address")).ok())
            .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
            .filter(|p| p.starts_with("/run/containerd/s"))
            .collect()
    }

    /// Our cgroup parent in every hierarchy (cgroup v1 controllers, or v2 at the root).
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = vec![root.join(&self.namespace)];
        if let Ok(hierarchies) = std::fs::read_dir(root) {
            dirs.extend(
                hierarchies
                    .flatten()
                    .map(|h| h.path().join(&self.namespace)),
            );
        }
        // Controllers mounted together show up under several names (`cpu -> cpu,cpuacct`).
        let mut dirs: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .filter(|d| d.is_dir())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Kills whatever still runs in our cgroups (containers whose shim went away) and removes
    /// the cgroups, innermost first.
    fn remove_cgroups(&self) {
        for parent in self.cgroup_dirs() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(&parent)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            inner.push(parent.clone());
            for cgroup in inner {
                let procs =
                    std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    eprintln!("cleanup: killing {pid} left in {}", cgroup.display());
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                // A killed process leaves its cgroup a moment later.
                let deadline = Instant::now() + Duration::from_secs(2);
                while let Err(e) = std::fs::remove_dir(&cgroup) {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        break;
                    }
                    if Instant::now() > deadline {
                        eprintln!("cleanup: remove {}: {e}", cgroup.display());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// What the command line of a process of ours names: a path inside our exec root
    /// (containerd's config and socket, a shim's `-address`). Not just the directory: an
    /// agent watching this daemon names its API socket, and is not ours to kill.
    fn marker(&self) -> String {
        format!("{}/exec/", self.dir.path().display())
    }

    /// Last resort: kills any process still naming our directory on its command line (a
    /// shim's `-address`, a containerd whose dockerd died).
    fn kill_strays(&self) {
        let marker = self.marker();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let me = std::process::id() as i32;
        for pid in procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| p != me && running_with(p, &marker))
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            eprintln!(
                "cleanup: killing leftover process {pid} of {}: {}",
                self.dir().display(),
                text(&cmdline).replace('\0', " ")
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, &marker, Duration::from_secs(2));
        }
    }

    /// Mount points under our directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        mounts_under(self.dir.path())
    }

    /// Unmounts everything under our directory (overlay mounts, netns bind mounts, the data
    /// root's bind mount), deepest first; lazily if busy.
    fn unmount_all(&self) {
        // Stacked mounts need more than one pass.
        for _ in 0..3 {
            let points = self.mounts();
            if points.is_empty() {
                return;
            }
            for point in points {
                eprintln!("cleanup: unmounting leftover {point}");
                let ok = Command::new("umount")
                    .arg(&point)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").args(["-l", &point]).status();
                }
            }
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let marker = self.marker();
        if self.child.is_some() {
            // Containers first (their netns mounts and cgroups go with them), then the
            // networks: a plugin still serving sees the leaves and deletes.
            let containers = self.list(&["ps", "-aq"]);
            if !containers.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(containers.iter().map(String::as_str));
                self.cleanup(&args);
            }
            for network in self.list(&["network", "ls", "-q", "--filter", "type=custom"]) {
                self.cleanup(&["network", "rm", &network]);
            }
        }
        // Known before the daemon goes: dockerd removes some pid files on the way out.
        let containerd = read_pid(&self.path("exec/containerd/containerd.pid"));
        let shim_sockets = self.shim_sockets();
        self.stop_daemon();
        // dockerd stops its containerd itself; if it could not, by pid (if it is still ours).
        if let Some(pid) = containerd.filter(|&p| running_with(p, &marker)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if !wait_gone(pid, &marker, Duration::from_secs(5)) {
                eprintln!("cleanup: containerd {pid} ignored SIGTERM, killing it");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(pid, &marker, Duration::from_secs(2));
            }
        }
        // Shims of containers that could not be removed (they name our exec root), then the
        // containers' processes (known by our cgroups).
        self.kill_strays();
        // A shim that exits cleanly removes its socket; a killed one does not.
        for socket in shim_sockets.iter().filter(|s| s.exists()) {
            eprintln!("cleanup: removing leftover {}", socket.display());
            let _ = std::fs::remove_file(socket);
        }
        self.remove_cgroups();
        self.unmount_all();
        host_paths_release();
        if let Err(e) = std::fs::remove_dir_all(self.dir.path()) {
            eprintln!("cleanup: remove {}: {e}", self.dir().display());
        }
    }
}

/// A running `cilium-docker` serving [`plugin_socket`]`(name)` for one agent, inside that
/// agent's node namespace (entered with `ip netns exec`, so `/sys/class/net` shows the node's
/// links); stopped with SIGTERM on drop, its socket removed if it left one.
#[derive(Debug)]
pub struct DockerPlugin {
    child: Option<Child>,
    /// The driver name: `docker network create -d <name> --ipam-driver <name>`.
    pub name: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    netns: String,
    agent_socket: PathBuf,
    log: PathBuf,
}

impl DockerPlugin {
    /// Starts a plugin under a fresh unique name (state and log under `dir`) and waits until
    /// its socket answers.
    pub fn start(netns: &str, agent_socket: &Path, dir: &Path) -> DockerPlugin {
        let name = unique_name("cil");
        let mut plugin = DockerPlugin {
            child: None,
            socket: plugin_socket(&name),
            state_dir: dir.join(format!("docker-{name}")),
            log: dir.join(format!("docker-{name}.log")),
            name,
            netns: netns.to_string(),
            agent_socket: agent_socket.to_path_buf(),
        };
        plugin.restart();
        plugin
    }

    /// Starts the plugin again under the same name, state and log (appended), after
    /// [`DockerPlugin::stop`]; waits until it serves.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "plugin {} still running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("plugin log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(crate::bin("cilium-docker"))
            .arg("--plugin-socket")
            .arg(&self.socket)
            .arg("--agent-socket")
            .arg(&self.agent_socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--debug")
            .env_remove("CILIUM_SOCK")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn cilium-docker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("cilium-docker exited early ({status}):\n{}", self.log());
            }
            if self
                .call("Plugin.Activate", "")
                .is_ok_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cilium-docker did not serve {} within 20 s:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One libnetwork call (`/NetworkDriver.Join` is `"NetworkDriver.Join"`); status and body.
    pub fn call(&self, method: &str, body: &str) -> std::io::Result<(u16, String)> {
        crate::http_raw(&self.socket, "POST", &format!("/{method}"), Some(body))
    }

    /// What the plugin logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then waits (up to 10 s, then SIGKILL) for the plugin to exit; returns its
    /// exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                eprintln!("cleanup: cilium-docker {} ignored SIGTERM", child.id());
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DockerPlugin {
    fn drop(&mut self) {
        self.stop();
        if self.socket.exists() {
            eprintln!("cleanup: removing leftover {}", self.socket.display());
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}
