//! Docker end to end: a private dockerd and `cilium-docker` in a node namespace with its own
//! agent; `docker network create --driver <plugin> --ipam-driver <plugin>` and `docker run`.

use std::time::{Duration, Instant};

use integration::cni::Node;
use integration::docker::{DockerPlugin, Dockerd};
use integration::{require_root, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;
use serde_json::Value;

const IMAGE: &str = "cilium-it-busybox:latest";

/// Dropped in field order: containers and networks go while the plugin still serves, then
/// the plugin, then the agent and its namespace.
struct Setup {
    dockerd: Dockerd,
    plugin: DockerPlugin,
    node: Node,
}

fn setup(tag: &str) -> Setup {
    setup_with(tag, &[])
}

/// [`setup`] with extra agent flags.
fn setup_with(tag: &str, agent_args: &[&str]) -> Setup {
    let netns = Netns::new("dkn");
    let dockerd = Dockerd::start_in(tag, Some(&netns.name));
    let host = dockerd.host();
    let mut args = vec!["--docker", host.as_str()];
    args.extend_from_slice(agent_args);
    let node = Node::start_in(netns, &args);
    let plugin = DockerPlugin::start(&node.netns.name, &node.agent.socket, node.dir.path());
    dockerd.import_busybox(IMAGE);
    Setup {
        dockerd,
        plugin,
        node,
    }
}

impl Setup {
    fn docker(&self, args: &[&str]) -> String {
        let out = self.dockerd.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}):\n{}{}\n--- plugin log\n{}\n--- agent\n{}\n--- dockerd \
             log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.plugin.log(),
            self.node.agent.output(),
            self.dockerd.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker network create` with the plugin as network and IPAM driver.
    fn network(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "network",
            "create",
            "--driver",
            &self.plugin.name,
            "--ipam-driver",
            &self.plugin.name,
        ];
        args.extend_from_slice(extra);
        args.push(name);
        self.docker(&args)
    }

    /// `docker run -d` of a long-running busybox on `network` with labels.
    fn run(&self, name: &str, network: &str, labels: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--net", network];
        for l in labels {
            args.extend_from_slice(&["-l", l]);
        }
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// An HTTP server on port 80 answering `/public` and `/private`.
    fn web(&self, name: &str, network: &str, labels: &[&str]) -> String {
        self.run(
            name,
            network,
            labels,
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo public > /www/public && echo private > /www/private && \
                 exec httpd -f -p 80 -h /www",
            ],
        )
    }

    fn idle(&self, name: &str, network: &str, labels: &[&str]) -> String {
        self.run(name, network, labels, &["sleep", "1000000"])
    }

    /// The container's global addresses on eth0, v4 and v6.
    fn addresses(&self, container: &str) -> (Option<String>, Option<String>) {
        let out = self.docker(&["exec", container, "ip", "-o", "addr", "show", "dev", "eth0"]);
        let mut v4 = None;
        let mut v6 = None;
        for line in out.lines() {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "inet" || w == "inet6" {
                    let addr = words.next().unwrap_or_default();
                    let ip = addr.split('/').next().unwrap_or_default().to_string();
                    if w == "inet" {
                        v4 = Some(ip);
                    } else if !line.contains("scope link") {
                        v6 = Some(ip);
                    }
                }
            }
        }
        (v4, v6)
    }

    /// `GET path` (HTTP/1.0 over busybox `nc`: Debian's busybox `wget` crashes) from `from`
    /// to `ip:80`; the body of a 200 reply, the status line otherwise, `None` without reply.
    fn get(&self, from: &str, ip: &str, path: &str) -> Option<String> {
        let script = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80");
        let out = self.dockerd.docker(&["exec", from, "sh", "-c", &script]);
        let reply = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        let (head, body) = reply.split_once("\n\n")?;
        let status = head.lines().next()?.to_string();
        Some(if status.contains(" 200 ") {
            body.trim().to_string()
        } else {
            status
        })
    }

    fn ping(&self, from: &str, ip: &str) -> bool {
        self.dockerd
            .docker(&["exec", from, "ping", "-c", "1", "-W", "2", ip])
            .status
            .success()
    }

    /// The agent's allocated addresses (`GET /healthz` `ipam`), v4 then v6.
    fn allocated(&self) -> (Vec<String>, Vec<String>) {
        let (status, body) = self.node.agent.http("GET", "/healthz", None);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("healthz json");
        let list = |k: &str| -> Vec<String> {
            v["ipam"][k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        (list("ipv4"), list("ipv6"))
    }

    /// Waits (up to 10 s) until the endpoint of container `name` (`container-name:` id)
    /// has left the init identity; returns it.
    fn wait_labels(&self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) =
                self.node
                    .agent
                    .http("GET", &format!("/endpoint/container-name:{name}"), None);
            if status == 200 {
                let ep: Value = serde_json::from_str(&body).expect("endpoint json");
                if ep["identity"]["id"].as_u64().is_some_and(|id| id >= 256) {
                    return ep;
                }
            }
            assert!(
                Instant::now() < deadline,
                "endpoint of {name} never got its labels: {status} {body}\n{}",
                self.node.agent.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to 15 s) until `cilium status` says the container runtime is `Ok` again.
    fn wait_runtime_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.node.agent.cli(&["status"]).ok();
            if out.contains("ContainerRuntime:  Ok") {
                return;
            }
            assert!(Instant::now() < deadline, "runtime never Ok again: {out}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn endpoints(&self) -> Vec<Value> {
        let (status, body) = self.node.agent.http("GET", "/endpoint", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<Value>>(&body).expect("endpoint list")
    }
}

fn in_v4_range(ip: &str) -> bool {
    ip.starts_with("10.23.")
}

fn in_v6_range(ip: &str) -> bool {
    ip.starts_with("f00d::c000:217:")
}

#[test]
fn docker_networks_ipv4_and_ipv6_end_to_end() {
    if !require_root("docker_networks_ipv4_and_ipv6_end_to_end") {
        return;
    }
    let mut s = setup("net");
    let (before4, before6) = s.allocated();

    s.network("dual", &["--ipv6"]);
    s.network("only4", &[]);
    let inspect = s.docker(&["network", "inspect", "dual", "-f", "{{json .IPAM.Config}}"]);
    assert!(
        inspect.contains("\"10.23.0.0/16\"") && inspect.contains("\"f00d::c000:217:0:0/112\""),
        "pools are the agent's ranges: {inspect}"
    );

    s.web("app1", "dual", &["id=app1"]);
    s.idle("app2", "dual", &["id=app2"]);
    s.idle("app4", "only4", &["id=app4"]);

    let (a1v4, a1v6) = s.addresses("app1");
    let (a1v4, a1v6) = (a1v4.expect("app1 v4"), a1v6.expect("app1 v6"));
    assert!(in_v4_range(&a1v4) && in_v6_range(&a1v6), "{a1v4} {a1v6}");
    let (a4v4, a4v6) = s.addresses("app4");
    let a4v4 = a4v4.expect("app4 v4");
    assert!(in_v4_range(&a4v4));
    assert_eq!(
        a4v6, None,
        "an IPv4-only network gives no global IPv6 address"
    );

    // The default route goes to the agent's router.
    let routes = s.docker(&["exec", "app2", "ip", "route"]);
    assert!(routes.contains("default via 10.23."), "{routes}");
    let routes6 = s.docker(&["exec", "app2", "ip", "-6", "route"]);
    assert!(routes6.contains("default via f00d::c000:217:"), "{routes6}");

    // The agent hands out exactly these addresses, for the IPAM driver.
    let (now4, now6) = s.allocated();
    assert_eq!(now4.len(), before4.len() + 3, "{now4:?}");
    assert_eq!(now6.len(), before6.len() + 2, "{now6:?}");
    assert!(now4.contains(&a1v4) && now6.contains(&a1v6));
    let endpoints = s.endpoints();
    assert_eq!(endpoints.len(), 3, "{endpoints:#?}");
    // The watcher gives each endpoint its container's name and labels.
    for (name, label) in [
        ("app1", "container:id=app1"),
        ("app2", "container:id=app2"),
        ("app4", "container:id=app4"),
    ] {
        let ep = s.wait_labels(name);
        assert!(
            ep["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == label)),
            "{ep:#}"
        );
    }

    // Connectivity: IPv4 and IPv6 across containers and networks.
    assert_eq!(s.get("app2", &a1v4, "/public").as_deref(), Some("public"));
    assert_eq!(s.get("app2", &a1v6, "/public").as_deref(), Some("public"));
    assert_eq!(s.get("app4", &a1v4, "/private").as_deref(), Some("private"));
    assert!(s.ping("app1", &a4v4));
    assert!(s.ping("app2", &a1v6));

    // Bad requests on the plugin socket get `Err` replies and change nothing.
    let net_id = s.docker(&["network", "inspect", "-f", "{{.Id}}", "dual"]);
    let ep_id = s.docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}",
        "app2",
    ]);
    let state = (s.allocated(), s.endpoints().len());
    let err = |method: &str, body: &str| -> String {
        let (status, reply) = s.plugin.call(method, body).expect("plugin call");
        let v: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("{method}: not JSON ({e}): {reply}"));
        // libnetwork reads `Err` from the network driver, `Error` from the IPAM driver.
        let field = if method.starts_with("IpamDriver.") {
            "Error"
        } else {
            "Err"
        };
        let message = v[field].as_str().unwrap_or_default().to_string();
        assert!(
            !message.is_empty(),
            "{method} {body}: expected an Err, got {status} {reply}"
        );
        message
    };
    let m = err("NetworkDriver.CreateEndpoint", "{\"NetworkID\": ");
    assert!(m.contains("invalid request body"), "{m}");
    let m = err(
        "NetworkDriver.CreateEndpoint",
        r#"{"NetworkID": "nosuchnetwork", "EndpointID": "e1", "Interface": {"Address": "10.23.7.7/32"}}"#,
    );
    assert!(m.contains("unknown network nosuchnetwork"), "{m}");
    let m = err(
        "NetworkDriver.Join",
        &format!(r#"{{"NetworkID": "{net_id}", "EndpointID": "{ep_id}", "SandboxKey": "/x"}}"#),
    );
    assert!(m.contains("already joined"), "double Join: {m}");
    let m = err(
        "IpamDriver.RequestAddress",
        r#"{"PoolID": "CiliumPoolv4", "Address": "10.99.0.1"}"#,
    );
    assert!(m.contains("10.99.0.1"), "{m}");
    let (status, _) = s.plugin.call("NetworkDriver.Bogus", "{}").expect("call");
    assert_eq!(status, 404, "unknown methods are 404");
    assert_eq!(
        (s.allocated(), s.endpoints().len()),
        state,
        "nothing changed"
    );
    assert_eq!(s.get("app2", &a1v4, "/public").as_deref(), Some("public"));

    // A second network for a running container: a second endpoint with the same container,
    // labels and identity; disconnecting removes it again.
    let app2_identity = s.wait_labels("app2")["identity"]["id"].clone();
    s.docker(&["network", "connect", "only4", "app2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mine: Vec<Value> = s
            .endpoints()
            .into_iter()
            .filter(|e| e["container-name"] == "app2")
            .collect();
        if mine.len() == 2 && mine.iter().all(|e| e["identity"]["id"] == app2_identity) {
            break;
        }
        assert!(Instant::now() < deadline, "{mine:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let eth1 = s.docker(&["exec", "app2", "ip", "-o", "addr", "show", "dev", "eth1"]);
    assert!(eth1.contains("inet 10.23."), "{eth1}");
    s.docker(&["network", "disconnect", "only4", "app2"]);
    assert_eq!(s.endpoints().len(), 3);

    // docker rm releases the endpoint and its addresses; network rm works afterwards.
    s.docker(&["rm", "-f", "app4"]);
    let (after4, _) = s.allocated();
    assert!(
        !after4.contains(&a4v4),
        "{a4v4} still allocated: {after4:?}"
    );
    assert_eq!(s.endpoints().len(), 2);
    s.docker(&["network", "rm", "only4"]);

    s.docker(&["rm", "-f", "app1", "app2"]);
    s.docker(&["network", "rm", "dual"]);
    let (end4, end6) = s.allocated();
    assert_eq!((end4, end6), (before4, before6), "every address released");
    assert!(s.endpoints().is_empty());
    let links = s.node.sh(&["ip", "-o", "link"]);
    assert!(
        !links.contains("lxc") && !links.contains("tmp"),
        "no veth left: {links}"
    );

    // Docker restarts: the watcher notices, reconnects and resyncs.
    let pid = s.dockerd.pid();
    s.dockerd.restart();
    assert_ne!(pid, s.dockerd.pid());
    s.wait_runtime_ok();
    s.network("again", &[]);
    s.idle("app5", "again", &["id=app5"]);
    let ep = s.wait_labels("app5");
    assert!(
        ep["labels"].to_string().contains("container:id=app5"),
        "{ep}"
    );
    s.docker(&["rm", "-f", "app5"]);
    s.docker(&["network", "rm", "again"]);
}

/// The seed's Docker guide policy (§2.2) as the example ships it: app2 may reach app1 on
/// TCP/80, nothing else may.
const L3_L4_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/getting-started-docker/l3_l4_policy.json"
);

/// The identity of container `name`'s endpoint.
fn identity_of(s: &Setup, name: &str) -> u64 {
    s.wait_labels(name)["identity"]["id"]
        .as_u64()
        .expect("identity")
}

#[test]
fn docker_guide_policy_survives_plugin_and_agent_restarts() {
    if !require_root("docker_guide_policy_survives_plugin_and_agent_restarts") {
        return;
    }
    let mut s = setup("pol");
    let status = s.node.agent.cli(&["status"]).ok();
    assert!(status.contains("ContainerRuntime:  Ok"), "{status}");

    s.network("cilium-net", &["--ipv6"]);
    s.web("app1", "cilium-net", &["id=app1"]);
    s.idle("app2", "cilium-net", &["id=app2"]);
    s.idle("app3", "cilium-net", &["id=app3"]);
    let (v4, v6) = s.addresses("app1");
    let (v4, v6) = (v4.expect("app1 v4"), v6.expect("app1 v6"));
    let ids: Vec<u64> = ["app1", "app2", "app3"]
        .iter()
        .map(|n| identity_of(&s, n))
        .collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");

    // Without policy everyone reaches app1.
    assert_eq!(s.get("app3", &v4, "/public").as_deref(), Some("public"));

    s.node.agent.cli(&["policy", "import", L3_L4_POLICY]).ok();
    let list = s.node.agent.cli(&["endpoint", "list"]).ok();
    let app1_row = list
        .lines()
        .find(|l| l.contains("container:id=app1"))
        .unwrap_or_default();
    assert!(app1_row.contains("Enabled"), "{list}");
    assert!(
        app1_row.split_whitespace().last() == Some("app1"),
        "container name in the last column: {list}"
    );

    let guide = |s: &Setup, when: &str| {
        assert_eq!(
            s.get("app2", &v4, "/public").as_deref(),
            Some("public"),
            "{when}: app2 -> app1 v4"
        );
        assert_eq!(
            s.get("app2", &v6, "/private").as_deref(),
            Some("private"),
            "{when}: app2 -> app1 v6"
        );
        assert_eq!(s.get("app3", &v4, "/public"), None, "{when}: app3 -> app1");
        assert!(!s.ping("app2", &v4), "{when}: ping is not TCP/80");
    };
    guide(&s, "after import");

    // cilium-docker restarts: nothing changes for the running containers.
    assert_eq!(s.plugin.stop(), Some(0), "{}", s.plugin.log());
    assert!(!s.plugin.socket.exists(), "SIGTERM removes the socket");
    guide(&s, "plugin down");
    s.plugin.restart();

    // The agent restarts: endpoints, identities and policy come back, the watcher resyncs.
    s.node.agent.stop_with(Signal::SIGTERM);
    guide(&s, "agent down");
    s.node.agent = Agent::start(
        s.node.dir.path(),
        &AgentOptions {
            netns: Some(s.node.netns.name.clone()),
            args: vec!["--docker".into(), s.dockerd.host()],
            ..Default::default()
        },
    );
    guide(&s, "agent restarted");
    let after: Vec<u64> = ["app1", "app2", "app3"]
        .iter()
        .map(|n| identity_of(&s, n))
        .collect();
    assert_eq!(ids, after, "identities kept across the restart");
    let status = s.node.agent.cli(&["status"]).ok();
    assert!(status.contains("ContainerRuntime:  Ok"), "{status}");

    // The containers stay manageable, and new ones get their labels.
    let (app2_v4, _) = s.addresses("app2");
    let app2_v4 = app2_v4.expect("app2 v4");
    s.docker(&["stop", "-t", "1", "app2"]);
    s.docker(&["rm", "app2"]);
    assert!(
        !s.allocated().0.contains(&app2_v4),
        "app2's address released"
    );
    s.idle("app2b", "cilium-net", &["id=app2"]);
    // (app2's identity went with its last endpoint; app2b's labels give it one again.)
    identity_of(&s, "app2b");
    assert_eq!(s.get("app2b", &v4, "/public").as_deref(), Some("public"));
    s.docker(&["rm", "-f", "app1", "app2b", "app3"]);
    s.docker(&["network", "rm", "cilium-net"]);
    assert!(s.endpoints().is_empty());
}

#[test]
fn ipv4_only_agent_refuses_ipv6_networks_with_the_reason() {
    if !require_root("ipv4_only_agent_refuses_ipv6_networks_with_the_reason") {
        return;
    }
    let s = setup_with("v4", &["--disable-ipv6"]);
    let before = s.allocated();
    let mut args = vec![
        "network",
        "create",
        "--driver",
        &s.plugin.name,
        "--ipam-driver",
        &s.plugin.name,
        "--ipv6",
        "v6net",
    ];
    let out = s.dockerd.docker(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--ipv6 on an IPv4-only agent");
    // The driver's reason reaches the user.
    assert!(
        stderr.contains("the agent has no IPv6 allocation range (IPv6 disabled)"),
        "{stderr}\n{}",
        s.plugin.log()
    );
    let out = s.dockerd.docker(&[
        "network",
        "create",
        "--driver",
        &s.plugin.name,
        "--ipam-driver",
        &s.plugin.name,
        "--subnet",
        "10.99.0.0/16",
        "foreign",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is not the agent's IPv4 range 10.23.0.0/16"),
        "{stderr}"
    );
    assert_eq!(
        s.allocated(),
        before,
        "nothing left by the refused networks"
    );
    args.retain(|a| *a != "--ipv6");
    args.pop();
    args.push("v4net");
    s.docker(&args);
    s.idle("c4", "v4net", &["id=c4"]);
    let (v4, v6) = s.addresses("c4");
    assert!(v4.as_deref().is_some_and(in_v4_range), "{v4:?}");
    assert_eq!(v6, None);
    s.wait_labels("c4");
    assert!(s.ping("c4", "10.23.0.1"), "the IPv4 gateway works");

    // An endpoint Docker dropped while the plugin could not delete it (made here by hand,
    // linked to c4): when c4 stops, the watcher deletes it and frees its address.
    let c4_id = s.docker(&["inspect", "-f", "{{.Id}}", "c4"]);
    let (status, body) = s
        .node
        .agent
        .http("POST", "/ipam/10.23.0.200?owner=docker-ipam", None);
    assert_eq!(status, 200, "{body}");
    let stale = serde_json::json!({
        "veth-peer-name": "tmpstale1",
        "docker-endpoint-id": "stale1",
        "container-id": c4_id,
        "addressing": {"ipv4": "10.23.0.200"},
    });
    let (status, body) = s.node.agent.http(
        "PUT",
        "/endpoint/docker-endpoint:stale1",
        Some(&stale.to_string()),
    );
    assert_eq!(status, 201, "{body}");
    // A late ReleaseAddress cannot take the address from the endpoint using it.
    let (status, body) = s.node.agent.http("DELETE", "/ipam/10.23.0.200", None);
    assert_eq!(status, 409, "{body}");
    s.docker(&["stop", "-t", "1", "c4"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = s
            .node
            .agent
            .http("GET", "/endpoint/docker-endpoint:stale1", None);
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale endpoint kept:\n{}",
            s.node.agent.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!s.allocated().0.contains(&"10.23.0.200".to_string()));
    let links = s.node.sh(&["ip", "-o", "link"]);
    assert!(!links.contains("tmpstale1"), "{links}");
    assert!(s.endpoints().is_empty(), "{:#?}", s.endpoints());
}

#[test]
fn getting_started_docker_example_runs() {
    if !require_root("getting_started_docker_example_runs") {
        return;
    }
    let s = setup("ex");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/getting-started-docker");
    let run = |script: &str| -> String {
        let out = std::process::Command::new(example.join(script))
            .env("DOCKER", integration::docker::DOCKER)
            .env("DOCKER_HOST", s.dockerd.host())
            .env("DOCKER_CONFIG", s.dockerd.dir().join("client"))
            .env("CILIUM", integration::bin("cilium"))
            .env("CILIUM_SOCK", &s.node.agent.socket)
            .env("DRIVER", &s.plugin.name)
            .output()
            .expect("run the example");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{script} failed:\n{text}");
        text
    };
    run("build-images.sh");
    let out = run("walkthrough.sh");
    assert!(out.contains("container:id=app1"), "{out}");
    assert!(out.contains("this is public"), "{out}");
    // Step 9, the L7 policy: the proxy denies /private.
    assert!(out.contains("Access denied"), "{out}");
    assert!(
        s.endpoints().is_empty(),
        "the walkthrough cleans up after itself"
    );
}
