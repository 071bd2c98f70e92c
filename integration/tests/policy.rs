//! Identities and policy end to end: containers attached through `cilium-cni` with labels
//! get identities; policy is imported, traced, waited for and deleted through the `cilium`
//! CLI exactly as the seed's guides do it; rules, revision and identities survive an agent
//! restart; a bad policy is refused and leaves nothing behind.

use std::fs;

use cilium_api::models::Endpoint;
use integration::cni::{Invocation, Node};
use integration::{require_root, Agent, AgentOptions, Netns};
use nix::sys::signal::Signal;
use serde_json::json;

const L3_L4_POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [
      {"matchLabels":{"id":"app2"}}
    ],
    "toPorts": [{
      "ports": [{"port": "80", "protocol": "tcp"}]
    }]
  }],
  "labels": ["unspec:guide=docker"]
}]"#;

/// ADD of a container whose runtime labels it `id=<app>`.
fn add_app(node: &Node, container: &Netns, app: &str) {
    let mut conf = node.config(Some("1.0.0"));
    conf["args"] = json!({"cni": {"labels": [{"key": "id", "value": app}]}});
    let inv = Invocation::new("ADD", &container.name, &container.path());
    node.cni(&inv, &conf).ok();
}

fn endpoint(agent: &Agent, container: &Netns) -> Endpoint {
    let (status, body) = agent.http(
        "GET",
        &format!("/endpoint/container-id:{}", container.name),
        None,
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("endpoint")
}

/// `cilium policy trace ARGS...`: the trace it prints.
fn trace(agent: &Agent, args: &[&str]) -> String {
    let mut argv = vec!["policy", "trace"];
    argv.extend_from_slice(args);
    agent.cli(&argv).ok()
}

/// The row of `cilium endpoint list` for an endpoint id.
fn row(list: &str, id: u16) -> String {
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("no row for endpoint {id} in\n{list}"))
        .to_string()
}

#[test]
fn seed_docker_guide_policy_through_the_cli_and_across_a_restart() {
    if !require_root("seed_docker_guide_policy_through_the_cli_and_across_a_restart") {
        return;
    }
    let mut node = Node::start("pol");
    let c1 = Netns::new("polc1");
    let c2 = Netns::new("polc2");
    let c3 = Netns::new("polc3");
    add_app(&node, &c1, "app1");
    add_app(&node, &c2, "app2");
    add_app(&node, &c3, "app3");
    let (e1, e2, e3) = (
        endpoint(&node.agent, &c1),
        endpoint(&node.agent, &c2),
        endpoint(&node.agent, &c3),
    );
    for e in [&e1, &e2, &e3] {
        assert_eq!(e.state.as_str(), "ready", "{e:?}");
    }
    let ids: Vec<u32> = [&e1, &e2, &e3]
        .iter()
        .map(|e| e.identity.as_ref().expect("identity").id)
        .collect();
    assert!(
        ids.iter().all(|id| *id >= 256) && ids[0] != ids[1] && ids[1] != ids[2],
        "{ids:?}"
    );
    let identities = node.agent.cli(&["identity", "list"]).ok();
    assert!(
        identities.contains("container:id=app1") && identities.contains("reserved:host"),
        "{identities}"
    );
    let one = node
        .agent
        .cli(&["identity", "get", &ids[0].to_string()])
        .ok();
    assert!(one.contains("container:id=app1"), "{one}");

    let list = node.agent.cli(&["endpoint", "list"]).ok();
    assert!(row(&list, e1.id).contains("Disabled"), "{list}");

    // A policy with a mistake is refused, names the problem, and imports nothing.
    let dir = node.dir.path().to_path_buf();
    let bad = dir.join("bad.json");
    fs::write(
        &bad,
        L3_L4_POLICY.replace("\"port\": \"80\"", "\"port\": \"80000\""),
    )
    .expect("write");
    let out = node
        .agent
        .cli(&["policy", "validate", bad.to_str().expect("path")]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("rule 0: ingress[0].toPorts[0].ports[0].port: '80000' is not a port number"),
        "{}",
        out.stderr
    );
    let out = node
        .agent
        .cli(&["policy", "import", bad.to_str().expect("path")]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("'80000' is not a port number"),
        "{}",
        out.stderr
    );
    assert!(node
        .agent
        .cli(&["policy", "get"])
        .ok()
        .contains("Revision: 0"));

    // The guide's policy.
    let good = dir.join("l3_l4_policy.json");
    fs::write(&good, L3_L4_POLICY).expect("write");
    let out = node
        .agent
        .cli(&["policy", "validate", good.to_str().expect("path")])
        .ok();
    assert!(out.contains("All policy elements are valid."), "{out}");
    let out = node
        .agent
        .cli(&["policy", "import", good.to_str().expect("path")])
        .ok();
    assert_eq!(out.trim(), "Revision: 1");
    let out = node.agent.cli(&["policy", "wait", "1"]).ok();
    assert!(
        out.contains("All endpoints have policy revision 1"),
        "{out}"
    );
    let list = node.agent.cli(&["endpoint", "list"]).ok();
    assert!(row(&list, e1.id).contains("Enabled"), "{list}");
    assert!(row(&list, e2.id).contains("Disabled"), "{list}");
    let detail = node
        .agent
        .cli(&["endpoint", "get", &e1.id.to_string()])
        .ok();
    assert!(
        detail.contains("container:id=app2") && detail.contains("80/tcp"),
        "{detail}"
    );

    // Trace, by labels and by endpoint.
    let allowed = trace(
        &node.agent,
        &[
            "-s",
            "container:id=app2",
            "-d",
            "container:id=app1",
            "--dport",
            "80/tcp",
        ],
    );
    assert!(
        allowed.contains("L3 verdict: allowed") && allowed.trim_end().ends_with("Verdict: allowed"),
        "{allowed}"
    );
    let denied = trace(
        &node.agent,
        &[
            "--src-endpoint",
            &e3.id.to_string(),
            "--dst-endpoint",
            &e1.id.to_string(),
            "--dport",
            "80",
        ],
    );
    assert!(
        denied.contains("L3 verdict: denied") && denied.trim_end().ends_with("Verdict: denied"),
        "{denied}"
    );
    let other_port = trace(
        &node.agent,
        &[
            "-s",
            "container:id=app2",
            "-d",
            "container:id=app1",
            "--dport",
            "8080",
        ],
    );
    assert!(
        other_port.trim_end().ends_with("Verdict: denied"),
        "{other_port}"
    );

    // Restart: the rules, the revision and the identities are still there.
    node.agent.stop_with(Signal::SIGTERM);
    node.agent = Agent::start(
        node.dir.path(),
        &AgentOptions {
            netns: Some(node.netns.name.clone()),
            ..Default::default()
        },
    );
    let got = node.agent.cli(&["policy", "get"]).ok();
    assert!(
        got.contains("\"any:id\": \"app1\"") && got.trim_end().ends_with("Revision: 1"),
        "{got}"
    );
    assert_eq!(
        endpoint(&node.agent, &c1).identity.expect("identity").id,
        ids[0]
    );
    let list = node.agent.cli(&["endpoint", "list"]).ok();
    assert!(row(&list, e1.id).contains("Enabled"), "{list}");
    let denied = trace(
        &node.agent,
        &[
            "-s",
            "container:id=app3",
            "-d",
            "container:id=app1",
            "--dport",
            "80",
        ],
    );
    assert!(denied.trim_end().ends_with("Verdict: denied"), "{denied}");

    // Delete by label, then --all on an empty repository.
    let out = node
        .agent
        .cli(&["policy", "delete", "unspec:guide=docker"])
        .ok();
    assert_eq!(out.trim(), "Revision: 2");
    let out = node.agent.cli(&["policy", "delete", "--all"]).ok();
    assert_eq!(out.trim(), "Revision: 2");
    let list = node.agent.cli(&["endpoint", "list"]).ok();
    assert!(row(&list, e1.id).contains("Disabled"), "{list}");

    // Live enforcement mode.
    node.agent.cli(&["config", "PolicyEnforcement=always"]).ok();
    let list = node.agent.cli(&["endpoint", "list"]).ok();
    assert!(row(&list, e2.id).contains("Enabled"), "{list}");
    node.agent
        .cli(&["config", "PolicyEnforcement=default"])
        .ok();

    // The last endpoint of an identity takes it away.
    for c in [&c1, &c2, &c3] {
        let inv = Invocation::new("DEL", &c.name, &c.path());
        node.cni(&inv, &node.config(Some("1.0.0"))).ok();
    }
    let (status, body) = node
        .agent
        .http("GET", &format!("/identity/{}", ids[0]), None);
    assert_eq!(status, 404, "{body}");
}
