//! The agent foundation end to end: the real `cilium-agent` and `cilium` binaries, the API
//! over the unix socket by hand-written HTTP, restarts, bad input, a second agent.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cilium_api::models::{DaemonConfigurationResponse, Endpoint, IpamResponse, StatusResponse};
use integration::{error_message, test_dir, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;

fn healthz(agent: &Agent) -> StatusResponse {
    let (status, body) = agent.http("GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("healthz reply")
}

/// Everything a client can observe of the agent's state.
fn snapshot(agent: &Agent) -> (Vec<String>, Vec<String>, String) {
    let h = healthz(agent);
    let (_, endpoints) = agent.http("GET", "/endpoint", None);
    (h.ipam.ipv4, h.ipam.ipv6, endpoints)
}

fn allocate(agent: &Agent, owner: &str) -> IpamResponse {
    let (status, body) = agent.http("POST", &format!("/ipam?owner={owner}"), None);
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).expect("ipam reply")
}

#[test]
fn allocate_reserve_release_and_endpoints_through_cli_and_http() {
    let dir = test_dir();
    let agent = Agent::start(dir.path(), &AgentOptions::default());
    let mode = fs::metadata(&agent.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "API socket is root-only");

    let out = agent.cli(&["status"]).ok();
    assert!(out.contains("Cilium:            Ok"), "{out}");
    assert!(
        out.contains("Allocated IPv4 addresses:\n 10.23.0.1\n"),
        "{out}"
    );

    // Allocate both families, then one family.
    let both = allocate(&agent, "cni-test");
    assert_eq!(both.endpoint.ipv4.unwrap().to_string(), "10.23.0.2");
    assert_eq!(
        both.endpoint.ipv6.unwrap().to_string(),
        "f00d::c000:217:0:2"
    );
    assert_eq!(
        both.host_addressing.ipv4.ip.unwrap().to_string(),
        "10.23.0.1"
    );
    let (status, body) = agent.http("POST", "/ipam?family=ipv6&owner=cni-test", None);
    assert_eq!(status, 201, "{body}");
    let v6only: IpamResponse = serde_json::from_str(&body).unwrap();
    assert!(v6only.endpoint.ipv4.is_none() && v6only.endpoint.ipv6.is_some());

    // Reserve and release a given address.
    let (status, body) = agent.http("POST", "/ipam/10.23.0.50?owner=docker", None);
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"ip":"10.23.0.50","owner":"docker"}"#)
    );
    let (status, body) = agent.http("DELETE", "/ipam/10.23.0.50", None);
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"ip":"10.23.0.50","owner":"docker"}"#)
    );
    let (status, body) = agent.http("DELETE", "/ipam/10.23.0.50", None);
    assert_eq!(status, 404, "{body}");

    // Create an endpoint holding the first pair.
    let request = format!(
        r#"{{"container-name":"web","labels":["container:id=app1","k8s:io.kubernetes.pod.namespace=default"],
            "addressing":{{"ipv4":"{}","ipv6":"{}"}}}}"#,
        both.endpoint.ipv4.unwrap(),
        both.endpoint.ipv6.unwrap()
    );
    let (status, body) = agent.http("PUT", "/endpoint/container-id:c0ffee", Some(&request));
    assert_eq!(status, 201, "{body}");
    let created: Endpoint = serde_json::from_str(&body).unwrap();
    assert_eq!(created.container_id, "c0ffee");
    let id = created.id.to_string();

    let table = agent.cli(&["endpoint", "list"]).ok();
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("container:id=app1") && row.contains("10.23.0.2"),
        "{table}"
    );
    assert!(
        table.contains("k8s:io.kubernetes.pod.namespace=default"),
        "{table}"
    );

    let json = agent.cli(&["endpoint", "list", "-o", "json"]).ok();
    let listed: Vec<Endpoint> = serde_json::from_str(&json).unwrap();
    assert_eq!(listed, vec![created.clone()]);
    for by in [
        "container-id:c0ffee",
        "container-name:web",
        id.as_str(),
        &format!("cilium-local:{id}"),
    ] {
        let got: Endpoint =
            serde_json::from_str(&agent.cli(&["-o", "json", "endpoint", "get", by]).ok()).unwrap();
        assert_eq!(got.id, created.id, "lookup by {by}");
    }
    let all = agent.cli(&["status", "--all"]).ok();
    assert!(all.contains("Endpoints:         1 ("), "{all}");
    assert!(
        all.contains("Nodes:             1 (it-node, this node)"),
        "{all}"
    );
    let all: serde_json::Value =
        serde_json::from_str(&agent.cli(&["-o", "json", "status", "--all"]).ok()).unwrap();
    assert_eq!(all["endpoints"]["total"], 1, "{all}");
    // Label filter.
    let (status, body) = agent.http("GET", "/endpoint?labels=any:id=app1", None);
    assert_eq!(status, 200, "{body}");
    let (status, _) = agent.http("GET", "/endpoint?labels=container:id=app2", None);
    assert_eq!(status, 404);

    let out = agent
        .cli(&["endpoint", "delete", "container-id:c0ffee"])
        .ok();
    assert!(out.contains("deleted"), "{out}");
    let h = healthz(&agent);
    assert!(
        !h.ipam.ipv4.contains(&"10.23.0.2".to_string()),
        "endpoint's address released"
    );
    assert!(!h.ipam.ipv6.contains(&"f00d::c000:217:0:2".to_string()));
    let gone = agent.cli(&["endpoint", "get", &id]);
    assert_eq!(gone.code, Some(1));
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
    assert!(
        gone.stderr.contains("cilium endpoint list"),
        "says what to do next: {}",
        gone.stderr
    );
}

#[test]
fn restart_finds_allocations_and_endpoints_again() {
    let dir = test_dir();
    let mut agent = Agent::start(dir.path(), &AgentOptions::default());
    let pair = allocate(&agent, "before-restart");
    let request = format!(
        r#"{{"addressing":{{"ipv4":"{}"}}}}"#,
        pair.endpoint.ipv4.unwrap()
    );
    let (status, body) = agent.http("PUT", "/endpoint/container-id:persist", Some(&request));
    assert_eq!(status, 201, "{body}");
    agent.http("POST", "/ipam/10.23.1.1?owner=docker", None);
    let before = snapshot(&agent);

    // Clean stop: the socket goes away with the agent.
    assert_eq!(agent.stop_with(Signal::SIGTERM), Some(0));
    assert!(!agent.socket.exists(), "socket removed on SIGTERM");
    let mut agent = Agent::start(dir.path(), &AgentOptions::default());
    assert_eq!(
        snapshot(&agent),
        before,
        "same allocations and endpoints after SIGTERM"
    );

    // Crash: the socket file stays behind and is replaced at the next start.
    agent.stop_with(Signal::SIGKILL);
    assert!(agent.socket.exists(), "a killed agent leaves its socket");
    let agent = Agent::start(dir.path(), &AgentOptions::default());
    assert_eq!(
        snapshot(&agent),
        before,
        "same allocations and endpoints after SIGKILL"
    );

    // Nothing in use is handed out again.
    let (used_v4, _, _) = before;
    for _ in 0..5 {
        let next = allocate(&agent, "after").endpoint.ipv4.unwrap().to_string();
        assert!(!used_v4.contains(&next), "{next} handed out twice");
    }
    let ep: Endpoint = serde_json::from_str(
        &agent
            .cli(&["-o", "json", "endpoint", "get", "container-id:persist"])
            .ok(),
    )
    .unwrap();
    assert_eq!(ep.addressing.ipv4, pair.endpoint.ipv4);
}

#[test]
fn bad_input_gets_the_documented_error_and_changes_nothing() {
    let dir = test_dir();
    let agent = Agent::start(dir.path(), &AgentOptions::default());
    allocate(&agent, "existing");
    agent.http("POST", "/ipam/10.23.0.77?owner=docker", None);
    let before = snapshot(&agent);

    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "PUT",
            "/endpoint/container-id:x",
            Some(r#"{"container-name": "#),
            400,
            "invalid an endpoint change request",
        ),
        (
            "PUT",
            "/endpoint/container-id:x",
            Some(r#"{"bogus-field": 1}"#),
            400,
            "unknown field `bogus-field`",
        ),
        (
            "PUT",
            "/endpoint/container-id:x",
            Some(r#"{"addressing":{"ipv4":"10.99.0.5"}}"#),
            400,
            "outside the allocation range 10.23.0.0/16",
        ),
        (
            "PUT",
            "/endpoint/container-id:x",
            Some(r#"{"addressing":{"ipv4":"10.23.0.3"}}"#),
            201,
            "",
        ),
        (
            "PUT",
            "/endpoint/container-id:y",
            Some(r#"{"addressing":{"ipv4":"10.23.0.3"}}"#),
            409,
            "belongs to endpoint",
        ),
        (
            "PUT",
            "/endpoint/container-id:x",
            Some("{}"),
            409,
            "already exists",
        ),
        (
            "POST",
            "/ipam/10.99.0.5?owner=a",
            None,
            400,
            "outside the allocation range",
        ),
        (
            "POST",
            "/ipam/10.23.0.77?owner=a",
            None,
            409,
            "already allocated (owner: docker)",
        ),
        (
            "POST",
            "/ipam/10.23.0.1?owner=a",
            None,
            409,
            "owner: router",
        ),
        (
            "POST",
            "/ipam/banana?owner=a",
            None,
            400,
            "invalid IP address 'banana'",
        ),
        (
            "POST",
            "/ipam?family=ipv5&owner=a",
            None,
            400,
            "unknown address family 'ipv5'",
        ),
        ("POST", "/ipam", None, 400, "missing owner"),
        (
            "DELETE",
            "/ipam/10.23.0.3",
            None,
            409,
            "belongs to endpoint",
        ),
        (
            "GET",
            "/endpoint/container-idd:x",
            None,
            400,
            "unknown endpoint id prefix",
        ),
        ("GET", "/endpoint/0", None, 400, "between 1 and 65535"),
        (
            "PATCH",
            "/config",
            Some(r#"{"Turbo": "on"}"#),
            400,
            "unknown option 'Turbo'",
        ),
        ("GET", "/nothing-here", None, 404, "no such API path"),
        ("DELETE", "/healthz", None, 405, "not allowed"),
    ];
    for (method, path, body, want, message) in cases {
        let (status, reply) = agent.http(method, path, *body);
        assert_eq!(status, *want, "{method} {path}: {reply}");
        if !message.is_empty() {
            let error = error_message(&reply);
            assert!(
                error.contains(message),
                "{method} {path}: '{error}' lacks '{message}'"
            );
        }
    }
    // Only the one successful create changed anything: undo it and compare.
    let (status, _) = agent.http("DELETE", "/endpoint/container-id:x", None);
    assert_eq!(status, 200);
    let after = snapshot(&agent);
    assert_eq!(after.0, before.0);
    assert_eq!(after.1, before.1);
    assert_eq!(after.2, before.2);
}

#[test]
fn exhausted_pool_answers_502() {
    let dir = test_dir();
    let opts = AgentOptions {
        args: vec![
            "--ipv4-range".into(),
            "10.24.0.0/29".into(),
            "--disable-ipv6".into(),
        ],
        fixed_ranges: false,
        ..Default::default()
    };
    let agent = Agent::start(dir.path(), &opts);
    for _ in 0..5 {
        allocate(&agent, "fill");
    }
    let (status, body) = agent.http("POST", "/ipam?owner=late", None);
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        error_message(&body),
        "no free ipv4 address left in 10.24.0.0/29"
    );
    let (status, body) = agent.http("POST", "/ipam?family=ipv6&owner=late", None);
    assert_eq!(status, 501, "{body}");
}

#[test]
fn second_agent_refuses_to_start() {
    let dir = test_dir();
    let first = Agent::start(dir.path(), &AgentOptions::default());

    // Same socket, another state directory.
    let other_state = dir.path().join("state-2");
    let mut second = Agent::spawn_at(
        dir.path(),
        &first.socket,
        &other_state,
        &AgentOptions::default(),
    );
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(1));
    let err = fs::read_to_string(&second.stderr).unwrap();
    assert!(
        err.contains("another cilium-agent is already serving"),
        "{err}"
    );

    // Same state directory, another socket.
    let other_socket = dir.path().join("other.sock");
    let mut third = Agent::spawn_at(
        dir.path(),
        &other_socket,
        &first.state_dir,
        &AgentOptions::default(),
    );
    assert_eq!(third.wait_exit(Duration::from_secs(10)), Some(1));
    let err = fs::read_to_string(&third.stderr).unwrap();
    assert!(err.contains("is in use by another cilium-agent"), "{err}");
    assert!(
        !other_socket.exists(),
        "the refused agent removed the socket it bound"
    );

    // The first agent is untouched.
    assert_eq!(
        healthz(&first).cilium.state,
        cilium_api::models::StatusState::Ok
    );
}

#[test]
fn cli_without_an_agent_says_so() {
    let dir = test_dir();
    let missing = dir.path().join("absent.sock");
    let host = format!("unix://{}", missing.display());
    for args in [
        vec!["status"],
        vec!["endpoint", "list"],
        vec!["config"],
        vec!["version"],
    ] {
        let mut full = vec!["-H", host.as_str()];
        full.extend(args.iter());
        let out = integration::cli(&full);
        assert_eq!(out.code, Some(1), "{args:?}");
        let expected = format!("cannot reach the agent at {}: ", missing.display());
        assert!(
            out.stderr.starts_with(&expected),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn env_config_file_and_flag_precedence() {
    let dir = test_dir();
    let file = dir.path().join("agent.yaml");
    fs::write(&file, "# test\nipv4-range: 10.31.0.0/16\nipv6-range: \"f00d::1f:0:0/96\"\ndebug: true\nnode-name: from-file\n")
        .unwrap();
    let opts = AgentOptions {
        args: vec![
            "--config".into(),
            file.display().to_string(),
            "--node-name".into(),
            "from-flag".into(),
        ],
        env: vec![
            ("CILIUM_IPV4_RANGE".into(), "10.32.0.0/16".into()),
            ("CILIUM_NODE_ADDRESS".into(), "192.0.2.32".into()),
        ],
        fixed_ranges: false,
        ..Default::default()
    };
    let agent = Agent::start(dir.path(), &opts);
    let config: DaemonConfigurationResponse =
        serde_json::from_str(&agent.cli(&["config", "-o", "json"]).ok()).unwrap();
    assert_eq!(config.node_name, "from-flag", "flag beats file");
    assert_eq!(
        config.addressing.ipv4.alloc_range.as_deref(),
        Some("10.32.0.0/16"),
        "env beats file"
    );
    assert_eq!(
        config.addressing.ipv6.alloc_range.as_deref(),
        Some("f00d::1f:0:0/112"),
        "file beats default"
    );
    assert_eq!(config.configuration.mutable["Debug"], "Enabled");

    // Debug can be switched off live.
    let out = agent.cli(&["config", "Debug=false"]).ok();
    assert!(out.contains("Debug                Disabled"), "{out}");
}

#[test]
fn bad_flags_and_config_fail_with_a_clear_message() {
    let dir = test_dir();
    let cases: &[(&[&str], &str)] = &[
        (&["--ipv4-range", "10.2.0.1/16"], "host bits set"),
        (&["--ipv4-range", "10.2.0.0/31"], "too small"),
        (&["--disable-ipv4", "--disable-ipv6"], "no address family"),
        (
            &["--config", "/nonexistent/agent.yaml"],
            "cannot read config file /nonexistent/agent.yaml",
        ),
        (
            &["--docker", "tcp://127.0.0.1:2375"],
            "TCP endpoints are not supported",
        ),
    ];
    for (args, message) in cases {
        let opts = AgentOptions {
            args: args.iter().map(|s| s.to_string()).collect(),
            fixed_ranges: false,
            ..Default::default()
        };
        let mut agent = Agent::spawn(dir.path(), &opts);
        let code = agent.wait_exit(Duration::from_secs(10));
        assert!(matches!(code, Some(1) | Some(2)), "{args:?}: {code:?}");
        let err = fs::read_to_string(&agent.stderr).unwrap();
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn corrupt_state_is_moved_aside_and_reported() {
    let dir = test_dir();
    let mut agent = Agent::start(dir.path(), &AgentOptions::default());
    allocate(&agent, "x");
    agent.stop_with(Signal::SIGTERM);
    fs::write(agent.state_dir.join("ipam.json"), "{ this is not json").unwrap();
    let agent = Agent::start(dir.path(), &AgentOptions::default());
    let status = agent.cli(&["status"]).ok();
    assert!(
        status.contains("Cilium:            Warning") && status.contains("is corrupt"),
        "{status}"
    );
    let moved: Vec<String> = fs::read_dir(&agent.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ipam.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
}

#[test]
fn default_ranges_come_from_the_node_address() {
    if !integration::require_root("default_ranges_come_from_the_node_address") {
        return;
    }
    // A node namespace whose first global IPv4 address is 192.0.2.77.
    let ns = Netns::new("ciltn");
    ns.exec_ok(&[
        "ip", "link", "add", "node0", "type", "veth", "peer", "name", "node1",
    ]);
    ns.exec_ok(&["ip", "addr", "add", "192.0.2.77/24", "dev", "node0"]);
    ns.exec_ok(&["ip", "link", "set", "node0", "up"]);
    let dir = test_dir();
    let opts = AgentOptions {
        netns: Some(ns.name.clone()),
        fixed_ranges: false,
        ..Default::default()
    };
    let agent = Agent::start(dir.path(), &opts);
    let printed = fs::read_to_string(&agent.stdout).unwrap();
    let lines: BTreeSet<&str> = printed.lines().collect();
    for want in [
        "Node-IPv6: f00d::c000:24d:0:1",
        "External-Node IPv4: 192.0.2.77",
        "Internal-Node IPv4: 10.77.0.1",
        "IPv4 allocation prefix: 10.77.0.0/16",
        "IPv6 allocation prefix: f00d::c000:24d:0:0/112",
    ] {
        assert!(lines.contains(want), "missing '{want}' in:\n{printed}");
    }
    let pair = allocate(&agent, "ns-test");
    assert_eq!(pair.endpoint.ipv4.unwrap().to_string(), "10.77.0.2");

    // Without any global address and without ranges the agent says what to pass.
    let bare = Netns::new("ciltb");
    let opts = AgentOptions {
        netns: Some(bare.name.clone()),
        fixed_ranges: false,
        ..Default::default()
    };
    let dir2 = test_dir();
    let mut refused = Agent::spawn(dir2.path(), &opts);
    assert_eq!(refused.wait_exit(Duration::from_secs(10)), Some(1));
    let err = fs::read_to_string(&refused.stderr).unwrap();
    assert!(
        err.contains("no global IPv4 address") && err.contains("--ipv4-range"),
        "{err}"
    );
}

#[test]
fn cli_finds_the_agent_through_cilium_sock() {
    let dir = test_dir();
    let agent = Agent::start(dir.path(), &AgentOptions::default());
    for value in [
        agent.socket.display().to_string(),
        format!("unix://{}", agent.socket.display()),
    ] {
        let out = std::process::Command::new(integration::bin("cilium"))
            .env("CILIUM_SOCK", &value)
            .args(["status", "-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: StatusResponse = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status.ipam.ipv4, vec!["10.23.0.1"]);
    }
}

#[test]
fn ipv6_only_agent() {
    let dir = test_dir();
    let opts = AgentOptions {
        args: vec![
            "--disable-ipv4".into(),
            "--ipv6-range".into(),
            "f00d::/112".into(),
        ],
        fixed_ranges: false,
        ..Default::default()
    };
    let agent = Agent::start(dir.path(), &opts);
    let pair = allocate(&agent, "v6");
    assert!(pair.endpoint.ipv4.is_none());
    assert_eq!(pair.endpoint.ipv6.unwrap().to_string(), "f00d::2");
    assert!(!pair.host_addressing.ipv4.enabled);
    let (status, body) = agent.http("POST", "/ipam?family=ipv4&owner=x", None);
    assert_eq!(status, 501, "{body}");
    let printed = fs::read_to_string(&agent.stdout).unwrap();
    assert!(
        printed.contains("Internal-Node IPv4: disabled"),
        "{printed}"
    );
    assert!(printed.contains("Node-IPv6: f00d::1"), "{printed}");
}

#[test]
fn completion_scripts_need_no_agent() {
    for shell in ["bash", "zsh", "fish"] {
        let out = integration::cli(&["-H", "/nonexistent.sock", "completion", shell]);
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("cilium"), "{shell}");
    }
}

#[test]
fn container_runtime_status_without_docker() {
    let dir = test_dir();
    // Docker absent: the agent serves, and says why the runtime is not there.
    let missing = dir.path().join("no-docker.sock");
    let agent = Agent::start(
        dir.path(),
        &AgentOptions {
            args: vec!["--docker".into(), format!("unix://{}", missing.display())],
            ..Default::default()
        },
    );
    let out = agent.cli(&["status"]).ok();
    let line = out
        .lines()
        .find(|l| l.starts_with("ContainerRuntime:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("Failure") && line.contains(&missing.display().to_string()),
        "{out}"
    );
    assert!(line.contains("no socket"), "{out}");
    // Something that is not dockerd on the socket: still a Failure with the reason, no crash.
    drop(agent);
    let fake = std::os::unix::net::UnixListener::bind(&missing).expect("bind");
    let agent = Agent::start(
        dir.path(),
        &AgentOptions {
            args: vec!["--docker".into(), format!("unix://{}", missing.display())],
            ..Default::default()
        },
    );
    drop(fake);
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.cli(&["status"]).ok();
    assert!(out.contains("ContainerRuntime:  Failure"), "{out}");
    assert_eq!(healthz(&agent).cilium.state.to_string(), "Ok");
    drop(agent);

    let agent = Agent::start(
        dir.path(),
        &AgentOptions {
            args: vec!["--docker".into(), String::new()],
            ..Default::default()
        },
    );
    let out = agent.cli(&["status"]).ok();
    assert!(out.contains("ContainerRuntime:  Disabled"), "{out}");
}

#[test]
fn json_log_lines() {
    let dir = test_dir();
    let mut agent = Agent::start(
        dir.path(),
        &AgentOptions {
            args: vec![
                "--log-format".into(),
                "json".into(),
                "--docker".into(),
                String::new(),
            ],
            ..Default::default()
        },
    );
    agent.cli(&["config", "Debug=true"]).ok();
    agent.cli(&["status"]).ok();
    agent.stop_with(Signal::SIGTERM);
    let log = fs::read_to_string(&agent.stderr).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(
        lines.iter().all(|l| l["level"].is_string()
            && l["message"].is_string()
            && l["timestamp"].is_string()),
        "{log}"
    );
}
