//! The docker harness itself: a private dockerd runs a busybox image built here (no registry),
//! and dropping the harness leaves no daemon, container, mount or directory behind.

use std::path::Path;
use std::time::Instant;

use integration::docker::Dockerd;
use integration::{require_root, unique_name};

const IMAGE: &str = "cilium-it-busybox:latest";

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

#[test]
fn private_dockerd_runs_a_busybox_container() {
    if !require_root("private_dockerd_runs_a_busybox_container") {
        return;
    }
    let started = Instant::now();
    let dockerd = Dockerd::start("harness");
    println!(
        "dockerd {} up in {:?} ({} storage, {})",
        dockerd.pid(),
        started.elapsed(),
        dockerd.storage_driver(),
        dockerd.host()
    );

    let step = Instant::now();
    dockerd.import_busybox(IMAGE);
    println!("busybox imported in {:?}", step.elapsed());

    let step = Instant::now();
    let out = dockerd.docker_ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        IMAGE,
        "/bin/sh",
        "-c",
        "echo hello; ip link",
    ]);
    println!("run --rm in {:?}:\n{}", step.elapsed(), out.trim());
    assert!(out.contains("hello"), "no hello from the container:\n{out}");
    assert!(
        out.lines().any(|l| l.contains(": lo:")),
        "no lo in the container:\n{out}"
    );

    // Docker wants container names of two characters at least.
    let name = unique_name("x");
    dockerd.docker_ok(&[
        "run", "-d", "--net", "none", "--name", &name, IMAGE, "sleep", "300",
    ]);
    let running = dockerd.docker_ok(&["inspect", "-f", "{{.State.Running}}", &name]);
    assert_eq!(running.trim(), "true", "container {name} not running");
    let sleep_pid: u32 = dockerd
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", &name])
        .trim()
        .parse()
        .expect("container pid");
    assert!(alive(sleep_pid), "container process {sleep_pid} not alive");
    let mounted = mounts_under(dockerd.dir());
    println!("mounted under the directory: {mounted:?}");

    let pid = dockerd.pid();
    let dir = dockerd.dir().to_path_buf();
    let step = Instant::now();
    drop(dockerd);
    println!("dropped in {:?}", step.elapsed());
    assert!(!alive(pid), "dockerd {pid} still running after drop");
    assert!(
        !alive(sleep_pid),
        "container process {sleep_pid} still running after drop"
    );
    assert!(!dir.exists(), "{} left after drop", dir.display());
    let left = mounts_under(&dir);
    assert!(left.is_empty(), "mounts left after drop: {left:?}");
    println!("total {:?}", started.elapsed());
}
