//! containerd as the runtime: a private `containerd` per test on its own socket, root, state,
//! config and namespace ([`Containerd`]), and the host's CNI paths, which `ctr run --cni` reads
//! with no flags for others: [`CniPathsLock`] only serializes their use between tests (across
//! processes), [`CniPaths`] also takes them over with a node's configuration and `cilium-cni`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cni::Node;
use crate::{bin, missing_ancestors, mounts_under, stop_child, tail, test_dir, text};

/// Upper bound for any single `ctr` call (via coreutils `timeout`), so a wedged daemon fails
/// the test instead of hanging it.
const CTR_TIMEOUT: &str = "60";

// ---------------------------------------------------------------------------------------------
// /etc/cni/net.d and /opt/cni/bin.

/// Held by whoever uses the host's CNI paths, across processes.
pub const CNI_PATHS_LOCK: &str = "/run/cilium-it-cni-paths.lock";
/// Where `ctr run --cni` (libcni) looks for network configurations.
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Where `ctr run --cni` (libcni) looks for plugins.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Where libcni caches ADD results (and reads them back for DEL).
pub const CNI_CACHE_DIR: &str = "/var/lib/cni";

/// The lock on the host's CNI paths, held while something may create, bind-mount over or move
/// [`CNI_CONF_DIR`] and [`CNI_BIN_DIR`]. On drop also removes libcni's cache directory and
/// (when empty) those two directories, as far as they did not exist before.
#[derive(Debug)]
pub struct CniPathsLock {
    cache_created: Vec<PathBuf>,
    mount_points_created: Vec<PathBuf>,
    // Last: released after the cleanup above.
    _lock: File,
}

impl CniPathsLock {
    /// Waits for the lock (another test may hold it) and takes it.
    pub fn take() -> CniPathsLock {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(CNI_PATHS_LOCK)
            .unwrap_or_else(|e| panic!("{CNI_PATHS_LOCK}: {e}"));
        lock.lock().expect("lock the CNI paths");
        let mut mount_points_created = missing_ancestors(Path::new(CNI_CONF_DIR));
        mount_points_created.extend(missing_ancestors(Path::new(CNI_BIN_DIR)));
        CniPathsLock {
            cache_created: missing_ancestors(Path::new(CNI_CACHE_DIR)),
            mount_points_created,
            _lock: lock,
        }
    }
}

impl Drop for CniPathsLock {
    fn drop(&mut self) {
        if let Some(top) = self.cache_created.last() {
            let _ = std::fs::remove_dir_all(top);
        }
        for dir in &self.mount_points_created {
            // Only what is empty: never anything someone put there meanwhile.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

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

/// The CNI paths `ctr run --cni` reads, taken over under the [`CniPathsLock`]: holding only
/// cilium-cni (and loopback) and the node's configuration; restored exactly on drop, and
/// libcni's result cache removed if this test created it.
#[derive(Debug)]
pub struct CniPaths {
    // Drop order: the paths are restored before the lock is released.
    _conf: TakenPath,
    _bin: TakenPath,
    _lock: CniPathsLock,
}

impl CniPaths {
    /// Takes the lock, then the paths, and installs `node`'s configuration (CNI 1.0.0) and
    /// the plugin.
    pub fn install(node: &Node) -> CniPaths {
        let lock = CniPathsLock::take();
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
            _lock: lock,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A private containerd.

/// A `containerd` with its own socket, root, state and config; on drop its containers and
/// tasks are removed, the daemon is stopped, leftover shims are killed and mounts unmounted,
/// and the host paths containerd 1.6 insists on (`/run/containerd/s` for shim sockets, cgroups
/// named after the namespace) are removed again.
#[derive(Debug)]
pub struct Containerd {
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
    /// Starts a daemon in a fresh test directory, its containers in the containerd namespace
    /// `<namespace_prefix>-<pid of this process>`; waits (up to 20 s) until it answers and
    /// picks the snapshotter.
    pub fn start(namespace_prefix: &str) -> Containerd {
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
            namespace: format!("{namespace_prefix}-{}", std::process::id()),
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

    /// Waits (up to 20 s) until `ctr version` answers; panics with the log if the daemon
    /// exits or never answers.
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

    /// The daemon's API socket (`ctr --address`, `CONTAINERD_ADDRESS`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The containerd namespace of this test's containers (`ctr --namespace`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The snapshotter to import images and run containers with: `overlayfs` or `native`.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `name` in the daemon's private directory (deleted on drop).
    pub fn path(&self, name: &str) -> PathBuf {
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

    /// Runs `ctr <args>` against this daemon and namespace (bounded in time).
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("run ctr")
    }

    /// Runs `ctr <args>`, asserts it succeeded and returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
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
    pub fn containers(&self) -> Vec<String> {
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
        mounts_under(self.dir.path())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers first: each task has a shim that outlives the daemon.
        for id in self.containers() {
            eprintln!("cleanup: removing leftover container {id}");
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
