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
use integration::containerd::{CniPaths, Containerd, CNI_CACHE_DIR};
use integration::image::{busybox_oci_tar, BUSYBOX, BUSYBOX_IMAGE};
use integration::{require_root, stop_child, tail, text, unique_name, wait_child, Netns};

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
            ctrd.snapshotter(),
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
            .arg(ctrd.socket())
            .args(["--namespace", ctrd.namespace()])
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

    let ctrd = Containerd::start("cilium-it");
    let archive = busybox_oci_tar(&ctrd.path("image"));
    let archive = archive.display().to_string();
    let imported = ctrd.ctr_ok(&[
        "images",
        "import",
        "--all-platforms",
        "--snapshotter",
        ctrd.snapshotter(),
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
    let full_id = format!("{}-{id}", ctrd.namespace());
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
