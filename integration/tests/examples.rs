//! The getting-started walkthroughs of `examples/` run against harness nodes, as a user runs
//! them on a host: `getting-started-mesos/walkthrough.sh` execs `cilium-cni` as the Mesos CNI
//! isolator would, `getting-started-containerd/walkthrough.sh` starts containers with
//! `ctr run --cni` on a private containerd. Each test asserts the script's exit status and
//! its allowed/denied result lines, and that nothing is left behind: the scripts clean up
//! after themselves, and guards remove what a killed script could not.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration::cni::Node;
use integration::containerd::{CniPathsLock, Containerd};
use integration::image::BUSYBOX;
use integration::{bin, require_root, test_dir, unique_name, wait_child};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Upper bound for one walkthrough run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// A script run to its end, in its own process group: on a timeout it gets SIGTERM (its
/// trap cleans up), then the group it leads gets SIGKILL.
#[derive(Debug)]
struct ScriptRun {
    code: Option<i32>,
    output: String,
}

fn run_script(mut cmd: Command) -> ScriptRun {
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CILIUM_")) {
        cmd.env_remove(k);
    }
    let dir = test_dir();
    let log = dir.path().join("script.log");
    let out = File::create(&log).expect("script log");
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out)
        .spawn()
        .expect("run the walkthrough");
    let pid = child.id() as i32;
    let status = match wait_child(&mut child, SCRIPT_TIMEOUT) {
        Some(status) => Some(status),
        None => {
            eprintln!("walkthrough still running after {SCRIPT_TIMEOUT:?}: stopping it");
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let status = wait_child(&mut child, Duration::from_secs(60));
            // Whatever the script started and left running.
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            if status.is_none() {
                let _ = child.wait();
            }
            None
        }
    };
    let mut output = String::new();
    File::open(&log)
        .and_then(|mut f| f.read_to_string(&mut output))
        .expect("read the script log");
    ScriptRun {
        code: status.and_then(|s| s.code()),
        output,
    }
}

/// Network namespaces named `<prefix>...` that a killed walkthrough may leave; deleted on drop.
struct NamespacesNamed(String);

impl Drop for NamespacesNamed {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.0) {
                eprintln!("cleanup: deleting leftover netns {name}");
                let _ = Command::new("ip").args(["netns", "delete", &name]).status();
            }
        }
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn assert_node_clean(node: &Node) {
    let endpoints = node.agent.cli(&["-o", "json", "endpoint", "list"]).ok();
    let list: serde_json::Value = serde_json::from_str(&endpoints).expect("endpoint list JSON");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(0),
        "the walkthrough left endpoints: {endpoints}"
    );
    let rules = node.agent.cli(&["policy", "get"]).ok();
    assert!(
        rules.starts_with("[]"),
        "the walkthrough left policy rules: {rules}"
    );
}

#[test]
fn getting_started_mesos_example_runs() {
    if !require_root("getting_started_mesos_example_runs") {
        return;
    }
    let node = Node::start("exm");
    let dir = test_dir();
    // What a Mesos agent would have: --network_cni_config_dir with the example's network
    // configuration (pointed at this node's agent), --network_cni_plugins_dir with the plugin.
    let config_dir = dir.path().join("net.d");
    let plugins_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::create_dir_all(&plugins_dir).expect("plugins dir");
    let conf_text = std::fs::read_to_string(example("getting-started-mesos/10-cilium.conf"))
        .expect("the example's 10-cilium.conf");
    let mut conf: serde_json::Value = serde_json::from_str(&conf_text).expect("config JSON");
    assert_eq!(conf["name"], "cilium", "{conf_text}");
    conf["socket-path"] = serde_json::Value::from(node.agent.socket.display().to_string());
    std::fs::write(config_dir.join("10-cilium.conf"), conf.to_string()).expect("write config");
    std::fs::copy(bin("cilium-cni"), plugins_dir.join("cilium-cni")).expect("copy cilium-cni");

    let prefix = unique_name("m");
    let _leftovers = NamespacesNamed(format!("{prefix}mesos-"));
    let mut cmd = Command::new(example("getting-started-mesos/walkthrough.sh"));
    cmd.env("CILIUM", bin("cilium"))
        .env("CILIUM_SOCK", &node.agent.socket)
        .env("NETWORK_CNI_CONFIG_DIR", &config_dir)
        .env("NETWORK_CNI_PLUGINS_DIR", &plugins_dir)
        .env("BUSYBOX", BUSYBOX)
        .env("PREFIX", &prefix);
    let run = run_script(cmd);
    let out = &run.output;
    println!("{out}");
    assert_eq!(
        run.code,
        Some(0),
        "walkthrough failed:\n{out}\n--- agent\n{}",
        node.agent.output()
    );
    for label in [
        "mesos:id=web-server",
        "mesos:id=goodclient",
        "mesos:id=badclient",
    ] {
        assert!(out.contains(label), "no endpoint with {label}:\n{out}");
    }
    // Before the policy, under it, and (badclient) after `cilium policy delete --all`.
    assert_eq!(
        count(out, "result: goodclient -> web-server: reachable"),
        2,
        "{out}"
    );
    assert_eq!(
        count(out, "result: badclient -> web-server: reachable"),
        2,
        "{out}"
    );
    assert_eq!(
        count(out, "result: badclient -> web-server: timeout"),
        1,
        "{out}"
    );
    assert!(out.contains("Reply:    Timeout!"), "{out}");
    assert!(
        out.contains("walkthrough.sh: all steps gave the expected results"),
        "{out}"
    );
    assert!(
        out.contains("removed: tasks detached [web-server goodclient badclient]"),
        "{out}"
    );
    assert_node_clean(&node);
    for task in ["web-server", "goodclient", "badclient"] {
        let ns = format!("/var/run/netns/{prefix}mesos-{task}");
        assert!(!Path::new(&ns).exists(), "{ns} left behind");
    }
}

// ---------------------------------------------------------------------------------------------
// containerd: a private daemon (as in tests/containerd.rs), the host's CNI paths locked (the
// walkthrough bind-mounts NETCONFPATH and CNI_PATH on them in private mount namespaces).

#[test]
fn getting_started_containerd_example_runs() {
    if !require_root("getting_started_containerd_example_runs") {
        return;
    }
    // Dropped in reverse: containerd, the lock, the node.
    let node = Node::start("exc");
    let _paths = CniPathsLock::take();
    let ctrd = Containerd::start("cilium-it-ex");
    let dir = test_dir();
    // NETCONFPATH with this node's cilium network configuration, CNI_PATH with the plugin.
    let netconf = dir.path().join("net.d");
    let cni_bin = dir.path().join("cni-bin");
    std::fs::create_dir_all(&netconf).expect("net.d");
    std::fs::create_dir_all(&cni_bin).expect("cni bin");
    std::fs::write(
        netconf.join("10-cilium.conf"),
        serde_json::to_string_pretty(&node.config(Some("1.0.0"))).expect("json"),
    )
    .expect("write 10-cilium.conf");
    std::fs::copy(bin("cilium-cni"), cni_bin.join("cilium-cni")).expect("copy cilium-cni");
    let loopback = Path::new("/usr/lib/cni/loopback");
    if loopback.exists() {
        std::fs::copy(loopback, cni_bin.join("loopback")).expect("copy loopback");
    }
    let image = "docker.io/library/cilium-demo-busybox:latest";
    let with_ctrd = |cmd: &mut Command| {
        cmd.env("CONTAINERD_ADDRESS", ctrd.socket())
            .env("CONTAINERD_NAMESPACE", ctrd.namespace())
            .env("CONTAINERD_SNAPSHOTTER", ctrd.snapshotter())
            .env("IMAGE", image);
    };

    // The example's image builder, from the host's static busybox.
    let mut build = Command::new(example("getting-started-containerd/build-image.sh"));
    build.env("BUSYBOX", BUSYBOX);
    with_ctrd(&mut build);
    let built = run_script(build);
    assert_eq!(
        built.code,
        Some(0),
        "build-image.sh failed:\n{}",
        built.output
    );
    assert!(
        built.output.contains(&format!("imported {image}")),
        "{}",
        built.output
    );

    let prefix = unique_name("c");
    let runc_root = ctrd.path("runc").display().to_string();
    let fifo_dir = ctrd.path("fifo").display().to_string();
    let mut cmd = Command::new(example("getting-started-containerd/walkthrough.sh"));
    with_ctrd(&mut cmd);
    cmd.env("CNI_PATH", &cni_bin)
        .env("NETCONFPATH", &netconf)
        .env("CILIUM", bin("cilium"))
        .env("CILIUM_SOCK", &node.agent.socket)
        .env("PREFIX", &prefix)
        .env(
            "CTR_RUN_FLAGS",
            format!("--runc-root {runc_root} --fifo-dir {fifo_dir}"),
        )
        .env("CTR_EXEC_FLAGS", format!("--fifo-dir {fifo_dir}"));
    let run = run_script(cmd);
    let out = &run.output;
    println!("{out}");
    assert_eq!(
        run.code,
        Some(0),
        "walkthrough failed:\n{out}\n--- agent\n{}\n--- containerd log (tail)\n{}",
        node.agent.output(),
        ctrd.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for label in [
        "container:id=app1",
        "container:id=app2",
        "container:id=app3",
    ] {
        assert!(out.contains(label), "no endpoint with {label}:\n{out}");
    }
    let (app2, app3) = (format!("{prefix}app2"), format!("{prefix}app3"));
    // Before the policy and under it.
    assert_eq!(
        count(out, &format!("result: {app2} -> app1 port 80: allowed")),
        2,
        "{out}"
    );
    assert_eq!(
        count(out, &format!("result: {app3} -> app1 port 80: allowed")),
        1,
        "{out}"
    );
    assert!(
        out.contains(&format!("result: {app2} -> app1 port 8080: denied")),
        "{out}"
    );
    assert!(
        out.contains(&format!("result: {app3} -> app1 port 80: denied")),
        "{out}"
    );
    assert!(out.contains("xx drop (Policy denied (L3))"), "{out}");
    assert!(out.contains("xx drop (Policy denied (L4))"), "{out}");
    let trace = out
        .split("policy trace -s container:id=app3 -d container:id=app1")
        .nth(1)
        .unwrap_or_default();
    assert!(trace.contains("\nVerdict: denied\n"), "{out}");
    assert!(
        out.contains("walkthrough.sh: all steps gave the expected results"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "removed: containers [{prefix}app1 {app2} {app3}], policy [l3_l4_policy.json]"
        )),
        "{out}"
    );
    assert_node_clean(&node);
    assert!(
        ctrd.containers().is_empty(),
        "containers left: {:?}",
        ctrd.containers()
    );
}
