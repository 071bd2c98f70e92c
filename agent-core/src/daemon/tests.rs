use std::fs;
use std::path::Path;

use cilium_api::models::{
    AddressPair, EndpointChangeRequest, EndpointState, Family, LabelsModifier, TraceSelector,
};

use super::*;

fn config(dir: &Path) -> AgentConfig {
    let mut c = AgentConfig::with_dirs(dir.join("sock"), dir.join("state"));
    c.ipv4_range = Some("10.77.0.0/16".parse().unwrap());
    c.ipv6_range = Some("f00d::4d:0:0/96".parse().unwrap());
    c.node_address = Some("192.0.2.77".parse().unwrap());
    c.node_name = Some("test-node".into());
    c
}

fn start(dir: &Path) -> Agent {
    Agent::start(config(dir), Box::new(|_| {})).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(s: &str) -> EndpointId {
    s.parse().unwrap()
}

fn create(agent: &Agent, container: &str, pair: AddressPair) -> Endpoint {
    let req = EndpointChangeRequest {
        addressing: Some(pair),
        labels: Some(vec!["container:app=web".into()]),
        ..Default::default()
    };
    agent
        .endpoint_create(&id(&format!("container-id:{container}")), req)
        .unwrap()
}

#[test]
fn endpoint_claims_addresses_and_delete_releases_them() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = start(tmp.path());
    let pair = agent.ipam_allocate(None, "cni").unwrap().endpoint;
    let ep = create(&agent, "c1", pair.clone());
    assert_eq!(ep.id, 1);
    assert_eq!(ep.container_id, "c1");
    // Its identity is resolved at once: the first allocated id, for its labels.
    assert_eq!(ep.state, EndpointState::Ready);
    let identity = ep.identity.clone().unwrap();
    assert_eq!(
        (identity.id, identity.labels),
        (256, vec!["container:app=web".to_string()])
    );
    assert_eq!(agent.identity_get(256).unwrap().references, Some(1));
    assert_eq!(
        agent.ipam.owner(&pair.ipv4.unwrap()).as_deref(),
        Some("endpoint:1")
    );
    // Its addresses cannot be released from under it.
    let err = agent.ipam_release(pair.ipv4.unwrap()).unwrap_err();
    assert!(
        matches!(err, AgentError::AddressInUse { endpoint: 1, .. }),
        "{err}"
    );
    // Nor claimed by another endpoint.
    let req = EndpointChangeRequest {
        addressing: Some(pair.clone()),
        ..Default::default()
    };
    let err = agent
        .endpoint_create(&id("container-id:c2"), req)
        .unwrap_err();
    assert!(matches!(err, AgentError::AddressInUse { .. }), "{err}");
    assert_eq!(agent.endpoint_count(), 1, "the failed create left nothing");

    let outcome = agent.endpoint_delete(&id("container-id:c1")).unwrap();
    assert!(outcome.errors.is_empty());
    assert_eq!(outcome.endpoint.state, EndpointState::Disconnected);
    assert!(agent.ipam.owner(&pair.ipv4.unwrap()).is_none());
    assert!(agent.ipam.owner(&pair.ipv6.unwrap()).is_none());
    assert!(matches!(
        agent.endpoint_get(&id("1")),
        Err(AgentError::Endpoint(EndpointError::NotFound(_)))
    ));
    // The identity went with its last endpoint.
    assert!(matches!(
        agent.identity_get(256),
        Err(AgentError::Identity(_))
    ));
}

#[test]
fn duplicate_endpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = start(tmp.path());
    create(&agent, "dup", AddressPair::default());
    let err = agent
        .endpoint_create(&id("container-id:dup"), EndpointChangeRequest::default())
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = agent
        .endpoint_create(&id("cilium-local:1"), EndpointChangeRequest::default())
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let body = EndpointChangeRequest {
        container_id: Some("other".into()),
        ..Default::default()
    };
    let err = agent
        .endpoint_create(&id("container-id:x"), body)
        .unwrap_err();
    assert!(
        err.to_string().contains("body says container-id other"),
        "{err}"
    );
}

#[test]
fn out_of_range_or_disabled_addresses_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = start(tmp.path());
    let req = EndpointChangeRequest {
        addressing: Some(AddressPair {
            ipv4: Some(ip("10.78.0.5")),
            ipv6: None,
        }),
        ..Default::default()
    };
    let err = agent
        .endpoint_create(&id("container-id:c"), req)
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Ipam(IpamError::OutOfRange { .. })),
        "{err}"
    );
    let router = AddressPair {
        ipv4: Some(ip("10.77.0.1")),
        ipv6: None,
    };
    let req = EndpointChangeRequest {
        addressing: Some(router),
        ..Default::default()
    };
    let err = agent
        .endpoint_create(&id("container-id:c"), req)
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Ipam(IpamError::AlreadyAllocated { .. })),
        "{err}"
    );
    assert_eq!(agent.endpoint_count(), 0);
    assert!(agent.ipam.allocations().is_empty());
}

#[test]
fn patch_labels_and_options() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = start(tmp.path());
    create(&agent, "p", AddressPair::default());
    let patch = EndpointChangeRequest {
        state: Some(EndpointState::Regenerating),
        interface_name: Some("lxc12345".into()),
        ..Default::default()
    };
    let ep = agent.endpoint_patch(&id("container-id:p"), patch).unwrap();
    assert_eq!(ep.state, EndpointState::Regenerating);
    assert_eq!(ep.interface_name, "lxc12345");
    let back = EndpointChangeRequest {
        state: Some(EndpointState::Creating),
        ..Default::default()
    };
    assert!(agent.endpoint_patch(&id("1"), back).is_err());
    let readdress = EndpointChangeRequest {
        addressing: Some(AddressPair {
            ipv4: Some(ip("10.77.0.9")),
            ipv6: None,
        }),
        ..Default::default()
    };
    assert!(agent
        .endpoint_patch(&id("1"), readdress)
        .unwrap_err()
        .to_string()
        .contains("cannot be changed"));

    let modifier = LabelsModifier {
        add: vec!["container:tier=db".into()],
        delete: vec![],
    };
    let labels = agent.endpoint_labels_modify(&id("1"), &modifier).unwrap();
    assert_eq!(labels.custom, vec!["container:tier=db"]);
    let ep = agent.endpoint_get(&id("1")).unwrap();
    assert_eq!(ep.labels, vec!["container:app=web", "container:tier=db"]);

    let opts = agent
        .endpoint_config_patch(&id("1"), &[("debug".to_string(), "on".to_string())].into())
        .unwrap();
    assert_eq!(opts.get("Debug").map(String::as_str), Some("Enabled"));
}

#[test]
fn restart_restores_endpoints_and_allocations() {
    let tmp = tempfile::tempdir().unwrap();
    let (pair, reserved) = {
        let agent = start(tmp.path());
        let pair = agent.ipam_allocate(None, "cni").unwrap().endpoint;
        create(&agent, "r1", pair.clone());
        agent.ipam_reserve(ip("10.77.3.3"), "docker").unwrap();
        (pair, ip("10.77.3.3"))
    };
    let agent = start(tmp.path());
    assert!(agent.warnings().is_empty(), "{:?}", agent.warnings());
    let ep = agent.endpoint_get(&id("container-id:r1")).unwrap();
    assert_eq!(ep.addressing, pair);
    assert_eq!(agent.ipam.owner(&reserved).as_deref(), Some("docker"));
    // The next allocation does not hand out anything in use.
    let next = agent
        .ipam_allocate(Some(Family::Ipv4), "cni")
        .unwrap()
        .endpoint
        .ipv4
        .unwrap();
    assert!(next != pair.ipv4.unwrap() && next != reserved);
    // The endpoint id counter continues.
    assert_eq!(create(&agent, "r2", AddressPair::default()).id, 2);
}

#[test]
fn restore_false_discards_state() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let agent = start(tmp.path());
        create(&agent, "gone", AddressPair::default());
    }
    let mut c = config(tmp.path());
    c.restore = false;
    let agent = Agent::start(c, Box::new(|_| {})).unwrap();
    assert_eq!(agent.endpoint_count(), 0);
    drop(agent);
    assert_eq!(start(tmp.path()).endpoint_count(), 0, "discarded for good");
}

#[test]
fn reconcile_after_crash_between_the_two_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    {
        let agent = start(tmp.path());
        let pair = agent.ipam_allocate(None, "cni").unwrap().endpoint;
        create(&agent, "kept", pair);
        let pair = agent.ipam_allocate(None, "cni").unwrap().endpoint;
        create(&agent, "lost", pair);
    }
    // Crash 1: endpoint 2's file written, IPAM not (simulate: its addresses free in ipam.json).
    // Crash 2: endpoint 1's file gone, its allocations still in ipam.json.
    let ipam_path = state.join("ipam.json");
    let text = fs::read_to_string(&ipam_path)
        .unwrap()
        .replace("endpoint:2", "REMOVED");
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    for family in ["ipv4", "ipv6"] {
        value[family]["allocations"]
            .as_object_mut()
            .unwrap()
            .retain(|_, v| v != "REMOVED");
    }
    fs::write(&ipam_path, value.to_string()).unwrap();
    fs::remove_file(state.join("endpoints/1.json")).unwrap();

    let agent = start(tmp.path());
    let owners: Vec<String> = agent
        .ipam
        .allocations()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(
        owners,
        vec!["endpoint:2", "endpoint:2"],
        "1's leaked, 2's re-claimed"
    );
    assert_eq!(agent.endpoint_count(), 1);
}

#[test]
fn corrupt_endpoint_file_is_moved_aside_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let agent = start(tmp.path());
        create(&agent, "a", AddressPair::default());
        create(&agent, "b", AddressPair::default());
    }
    let file = tmp.path().join("state/endpoints/2.json");
    fs::write(&file, b"{ not json").unwrap();
    let agent = start(tmp.path());
    assert_eq!(agent.endpoint_count(), 1);
    assert_eq!(agent.warnings().len(), 1);
    assert!(
        agent.warnings()[0].contains("2.json"),
        "{:?}",
        agent.warnings()
    );
    assert_eq!(
        agent.status().cilium.state,
        cilium_api::models::StatusState::Warning
    );
    let moved = fs::read_dir(tmp.path().join("state/endpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count();
    assert_eq!(moved, 1);
}

#[test]
fn range_change_under_saved_allocations_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let agent = start(tmp.path());
        agent.ipam_allocate(None, "cni").unwrap();
    }
    let mut c = config(tmp.path());
    c.ipv4_range = Some("10.88.0.0/16".parse().unwrap());
    let err = Agent::start(c, Box::new(|_| {})).unwrap_err();
    assert!(err.to_string().contains("--restore=false"), "{err}");
}

#[test]
fn owners_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = start(tmp.path());
    for bad in ["", "router", "endpoint:3"] {
        assert!(
            matches!(agent.ipam_allocate(None, bad), Err(AgentError::Invalid(_))),
            "{bad}"
        );
    }
    assert!(agent.ipam.allocations().is_empty());
}

#[test]
fn debug_option_switches_logging() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let agent = Agent::start(
        config(tmp.path()),
        Box::new(move |on| log.lock().unwrap().push(on)),
    )
    .unwrap();
    let out = agent
        .patch_configuration(&[("Debug".to_string(), "true".to_string())].into())
        .unwrap();
    assert_eq!(
        out.configuration.mutable.get("Debug").map(String::as_str),
        Some("Enabled")
    );
    assert_eq!(*seen.lock().unwrap(), vec![true]);
    assert!(agent
        .patch_configuration(&[("Nope".to_string(), "1".to_string())].into())
        .is_err());
}

const APP1_POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]
  }],
  "labels": ["unspec:guide=docker"]
}]"#;

fn create_labeled(agent: &Agent, container: &str, labels: &[&str]) -> Endpoint {
    let req = EndpointChangeRequest {
        labels: Some(labels.iter().map(|l| l.to_string()).collect()),
        ..Default::default()
    };
    agent
        .endpoint_create(&id(&format!("container-id:{container}")), req)
        .unwrap()
}

#[test]
fn identities_follow_labels_and_policy_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = start(tmp.path());
    let a1 = create_labeled(&agent, "c1", &["container:id=app1"]);
    let a1b = create_labeled(
        &agent,
        "c1b",
        &["container:id=app1", "container:io.kubernetes.pod.name=x"],
    );
    let a2 = create_labeled(&agent, "c2", &["container:id=app2"]);
    // Same identity-relevant labels, same identity: the pod name is filtered out.
    let app1 = a1.identity.clone().unwrap().id;
    assert_eq!(a1b.identity.clone().unwrap().id, app1);
    assert_eq!(agent.identity_get(app1).unwrap().references, Some(2));
    assert!(!a1.policy_enabled);

    let reply = agent.policy_import(APP1_POLICY).unwrap();
    assert_eq!(reply.revision, 1);
    let ep = agent.endpoint_get(&id("container-id:c1")).unwrap();
    assert!(ep.policy_enabled);
    assert_eq!(ep.policy_revision, 1);
    let table = ep.policy.unwrap();
    assert!(table.ingress.enforcing && !table.egress.enforcing);
    let app2 = a2.identity.clone().unwrap().id;
    assert_eq!(table.ingress.entries.len(), 1);
    assert_eq!(table.ingress.entries[0].identity, Some(app2));
    assert_eq!(
        (
            table.ingress.entries[0].port,
            table.ingress.entries[0].protocol.as_str()
        ),
        (80, "tcp")
    );
    assert!(
        !agent
            .endpoint_get(&id("container-id:c2"))
            .unwrap()
            .policy_enabled
    );

    // A trace by endpoint agrees.
    let trace = agent
        .policy_resolve(&TraceSelector {
            from_endpoint: Some("container-id:c2".into()),
            to_endpoint: Some("container-id:c1".into()),
            dports: vec![cilium_api::models::PortProtocol {
                port: 80,
                protocol: "tcp".into(),
            }],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        trace.verdict,
        cilium_api::models::Decision::Allowed,
        "{}",
        trace.log
    );

    // A label change moves the endpoint to another identity, and its policy with it.
    let modifier = LabelsModifier {
        add: vec!["container:id=app2".into()],
        delete: vec!["container:id=app1".into()],
    };
    agent
        .endpoint_labels_modify(&id("container-id:c1"), &modifier)
        .unwrap();
    let moved = agent.endpoint_get(&id("container-id:c1")).unwrap();
    assert_eq!(moved.identity.clone().unwrap().id, app2);
    assert!(!moved.policy_enabled);
    assert_eq!(moved.state, EndpointState::Ready);
    assert_eq!(agent.identity_get(app1).unwrap().references, Some(1));

    // Bad policy: nothing imported, revision unchanged.
    let err = agent
        .policy_import(
            r#"[{"endpointSelector":{"matchLabels":{"a":"b"}}},{"endpointSelector":{}}]"#,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("rule 1: endpointSelector"),
        "{err}"
    );
    assert_eq!(agent.policy_get(&[]).unwrap().revision, 1);

    // Enforcement mode, live.
    agent
        .patch_configuration(&[("PolicyEnforcement".to_string(), "always".to_string())].into())
        .unwrap();
    assert!(
        agent
            .endpoint_get(&id("container-id:c2"))
            .unwrap()
            .policy_enabled
    );
    assert_eq!(
        agent
            .configuration()
            .configuration
            .mutable
            .get("PolicyEnforcement")
            .map(String::as_str),
        Some("always")
    );
    let err = agent
        .patch_configuration(&[("PolicyEnforcement".to_string(), "sometimes".to_string())].into())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected default, always or never"),
        "{err}"
    );
    agent
        .patch_configuration(&[("PolicyEnforcement".to_string(), "default".to_string())].into())
        .unwrap();

    // Restart: rules, revision, identities and enforcement come back.
    drop(agent);
    let agent = start(tmp.path());
    let policy = agent.policy_get(&[]).unwrap();
    assert_eq!(policy.revision, 1);
    assert!(
        policy.policy.contains("\"any:id\": \"app1\""),
        "{}",
        policy.policy
    );
    let ep = agent.endpoint_get(&id("container-id:c1b")).unwrap();
    assert_eq!(ep.identity.unwrap().id, app1);
    assert!(ep.policy_enabled);
    assert_eq!(ep.policy_revision, 1);
    assert_eq!(agent.identity_get(app2).unwrap().references, Some(2));

    // Delete by label, then everything.
    let err = agent
        .policy_delete(&["unspec:guide=k8s".parse().unwrap()])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Policy(crate::policy::PolicyError::NotFound(_))
        ),
        "{err}"
    );
    let deleted = agent
        .policy_delete(&["guide=docker".parse().unwrap()])
        .unwrap();
    assert_eq!(deleted.revision, 2);
    assert!(
        !agent
            .endpoint_get(&id("container-id:c1b"))
            .unwrap()
            .policy_enabled
    );
    assert_eq!(agent.policy_delete(&[]).unwrap().revision, 2);
}

#[test]
fn cidr_rules_get_identities_that_go_with_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = start(tmp.path());
    create_labeled(&agent, "c1", &["container:app=myService"]);
    agent
        .policy_import(r#"[{"endpointSelector":{"matchLabels":{"app":"myService"}},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.96.0.0/12"]}]}]}]"#)
        .unwrap();
    let cidr: Vec<_> = agent
        .identity_list(&["cidr:10.0.0.0/8".parse().unwrap()])
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(cidr.len(), 1);
    assert!(cidr[0] >= 1 << 24, "{cidr:?}");
    let table = agent
        .endpoint_get(&id("container-id:c1"))
        .unwrap()
        .policy
        .unwrap();
    assert_eq!(table.egress.entries.len(), 1, "{:?}", table.egress);
    assert_eq!(table.egress.entries[0].identity, Some(cidr[0]));
    agent.policy_delete(&[]).unwrap();
    assert!(agent
        .identity_list(&["cidr:10.0.0.0/8".parse().unwrap()])
        .is_empty());
}
