//! `ADD`: asks the agent to create the endpoint (veth pair, addresses, routes) and answers
//! with the result, after the `prevResult` when chained. An ADD that fails after the agent
//! may have acted on it (the connection broke, the reply was unusable) undoes it before
//! reporting the failure, so a failed ADD leaves nothing behind even before the runtime's
//! DEL.

use std::time::Duration;

use cilium_api::models::EndpointChangeRequest;
use cilium_api::{ClientError, EndpointId};
use serde_json::Value;

use super::require_netns;
use crate::agent::{agent_error, Agent, NOT_FOUND};
use crate::config::NetworkConfig;
use crate::env::Target;
use crate::error::CniError;
use crate::labels;
use crate::result::CniResult;

/// Creates the endpoint of `target` and returns the result in the config's version.
pub(super) async fn add<A: Agent>(
    target: &Target,
    config: &NetworkConfig,
    agent: &A,
    log: &mut Vec<String>,
) -> Result<Value, CniError> {
    let labels = labels::collect(
        config.args.as_ref(),
        config.runtime_config.as_ref(),
        &target.args,
    )?;
    let prev = config
        .prev_result
        .as_ref()
        .map(CniResult::parse)
        .transpose()?;
    require_netns(&target.netns)?;

    let id = EndpointId::ContainerId(target.container_id.clone());
    let request = EndpointChangeRequest {
        container_id: Some(target.container_id.clone()),
        netns_path: Some(target.netns.clone()),
        container_interface_name: Some(target.ifname.clone()),
        mtu: config.mtu,
        cni_network: Some(config.name.clone()),
        labels: (!labels.labels.is_empty()).then_some(labels.labels),
        pod_name: labels.pod_name,
        ..EndpointChangeRequest::default()
    };
    let endpoint = match agent.endpoint_create(&id, &request).await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            let outcome_unknown = may_have_acted(&e);
            let err = agent_error(e, &format!("creating endpoint {id}"));
            if outcome_unknown {
                roll_back(&id, agent, ROLLBACK_WAIT, log).await;
            }
            return Err(err);
        }
    };
    log.push(format!(
        "ADD {}: endpoint {} on {} ({})",
        target.container_id, endpoint.id, endpoint.interface_name, target.ifname
    ));

    let ours = CniResult::from_endpoint(&endpoint, &target.ifname, &target.netns);
    let result = match prev {
        Some(prev) => prev.chain(ours),
        None => ours,
    };
    Ok(result.to_json(config.cni_version))
}

/// How long a failed ADD waits for the agent (restarting, say) to undo what it may have made.
const ROLLBACK_WAIT: Duration = Duration::from_secs(10);
/// Pause between two attempts of the rollback.
const ROLLBACK_RETRY: Duration = Duration::from_millis(100);
/// The agent's answer while an endpoint is being attached or deleted.
const CONFLICT: u16 = 409;

/// Whether the agent may have created the endpoint although the request failed: the request
/// was sent but the exchange broke (the agent died, say, before or after acting on it), or
/// the agent accepted it and its reply was unusable. Not when the agent could not be
/// reached at all or answered with an error (it undoes its own failures).
fn may_have_acted(err: &ClientError) -> bool {
    matches!(err, ClientError::Http { .. } | ClientError::Decode { .. })
}

/// Deletes the endpoint of a failed ADD, retrying for up to `wait` while the agent cannot be
/// reached or is still busy with the endpoint (409). The agent deletes a half-made
/// endpoint's links also when it has no record of it (404). Best effort: the outcome is
/// logged, and the runtime's DEL remains the last word.
async fn roll_back<A: Agent>(id: &EndpointId, agent: &A, wait: Duration, log: &mut Vec<String>) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match agent.endpoint_delete(id).await {
            Ok(_) => {
                log.push(format!("ADD failed: rolled back, endpoint {id} deleted"));
                return;
            }
            Err(e) if e.status() == Some(NOT_FOUND) => {
                log.push(format!(
                    "ADD failed: rolled back, no endpoint {id} was left"
                ));
                return;
            }
            Err(e) => {
                let transient = matches!(e, ClientError::Connect { .. } | ClientError::Http { .. })
                    || e.status() == Some(CONFLICT);
                if !transient || tokio::time::Instant::now() >= deadline {
                    log.push(format!(
                        "ADD failed and could not be rolled back (the runtime's DEL will): {e}"
                    ));
                    return;
                }
            }
        }
        tokio::time::sleep(ROLLBACK_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;
    use crate::testing::{block_on, config, endpoint, target, FakeAgent, GATEWAY_V4};

    #[test]
    fn creates_the_endpoint_and_answers_in_the_callers_version() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let agent = FakeAgent::new();
        let config = config(json!({"cniVersion": "0.3.1", "mtu": 1450, "args": {"cni": {
            "labels": [{"key": "id", "value": "app1"}]}}}));
        let target = target(netns.path(), "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web");
        let mut log = vec![];
        let out = block_on(add(&target, &config, &agent, &mut log)).unwrap();

        let request = agent.created.borrow().clone().unwrap();
        assert_eq!(
            request,
            EndpointChangeRequest {
                container_id: Some("c1".into()),
                netns_path: Some(target.netns.clone()),
                container_interface_name: Some("eth0".into()),
                mtu: Some(1450),
                cni_network: Some("cilium".into()),
                labels: Some(vec![
                    "container:id=app1".into(),
                    "k8s:io.kubernetes.pod.namespace=default".into()
                ]),
                pod_name: Some("default/web".into()),
                ..EndpointChangeRequest::default()
            }
        );
        assert_eq!(agent.calls(), ["create container-id:c1"]);
        assert_eq!(out["cniVersion"], "0.3.1");
        assert_eq!(out["ips"][0]["version"], "4");
        assert_eq!(out["ips"][0]["address"], "10.11.0.5/32");
        assert_eq!(out["ips"][0]["gateway"], GATEWAY_V4);
        assert_eq!(out["interfaces"][1]["sandbox"], target.netns.as_str());
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn no_labels_means_no_label_field() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let agent = FakeAgent::new();
        let out = block_on(add(
            &target(netns.path(), ""),
            &config(json!({})),
            &agent,
            &mut vec![],
        ))
        .unwrap();
        let request = agent.created.borrow().clone().unwrap();
        assert_eq!(request.labels, None);
        assert_eq!(request.pod_name, None);
        assert_eq!(request.mtu, None);
        // No cniVersion: 0.1.0, the legacy shape.
        assert_eq!(out["cniVersion"], "0.1.0");
        assert_eq!(out["ip4"]["ip"], "10.11.0.5/32");
    }

    #[test]
    fn chained_after_prev_result() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let agent = FakeAgent::new();
        let config = config(json!({"cniVersion": "1.0.0", "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "bond0"}],
            "ips": [{"address": "192.168.0.2/24", "interface": 0}],
            "dns": {"nameservers": ["10.0.0.53"]}
        }}));
        let out = block_on(add(&target(netns.path(), ""), &config, &agent, &mut vec![])).unwrap();
        assert_eq!(out["interfaces"][0]["name"], "bond0");
        assert_eq!(out["interfaces"][1]["name"], "lxc1234");
        assert_eq!(out["ips"][0]["address"], "192.168.0.2/24");
        assert_eq!(out["ips"][1]["interface"], 2);
        assert_eq!(out["dns"]["nameservers"], json!(["10.0.0.53"]));
    }

    #[test]
    fn missing_netns_is_code_3_before_the_agent_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let agent = FakeAgent::new();
        let err = block_on(add(
            &target(&dir.path().join("gone"), ""),
            &config(json!({})),
            &agent,
            &mut vec![],
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownContainer);
        assert!(agent.calls().is_empty());
    }

    #[test]
    fn bad_labels_or_prev_result_are_code_7() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        for bad in [
            json!({"args": {"cni": {"labels": "x"}}}),
            json!({"prevResult": {"ips": [{"address": "nope"}]}}),
        ] {
            let agent = FakeAgent::new();
            let err = block_on(add(
                &target(netns.path(), ""),
                &config(bad.clone()),
                &agent,
                &mut vec![],
            ))
            .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidConfig, "{bad}");
            assert!(agent.calls().is_empty());
        }
    }

    #[test]
    fn agent_failures() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let agent = FakeAgent::new();
        agent.fail("create", 500);
        let err = block_on(add(
            &target(netns.path(), ""),
            &config(json!({})),
            &agent,
            &mut vec![],
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::AgentRefused);
        assert_eq!(err.msg, "injected create failure (HTTP 500)");

        let agent = FakeAgent::new();
        agent.unreachable.set(true);
        let err = block_on(add(
            &target(netns.path(), ""),
            &config(json!({})),
            &agent,
            &mut vec![],
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::TryAgainLater);
        assert!(err.msg.contains("/run/fake/cilium.sock"), "{}", err.msg);

        // A second ADD of the same container: the agent refuses, the plugin reports it.
        let agent = FakeAgent::new();
        let t = target(netns.path(), "");
        block_on(add(&t, &config(json!({})), &agent, &mut vec![])).unwrap();
        let err = block_on(add(&t, &config(json!({})), &agent, &mut vec![])).unwrap_err();
        assert_eq!(err.code, ErrorCode::AgentRefused);
        assert!(err.msg.contains("HTTP 409"), "{}", err.msg);
    }

    #[test]
    fn an_add_whose_reply_is_lost_is_rolled_back() {
        let netns = tempfile::NamedTempFile::new().unwrap();
        let agent = FakeAgent::new();
        agent.lost_reply.set(true);
        let mut log = vec![];
        let err = block_on(add(
            &target(netns.path(), ""),
            &config(json!({})),
            &agent,
            &mut log,
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::AgentProtocol);
        assert_eq!(
            agent.calls(),
            ["create container-id:c1", "delete container-id:c1"]
        );
        assert!(agent.endpoints.borrow().is_empty(), "nothing left");
        assert!(log[0].contains("rolled back"), "{log:?}");
    }

    #[test]
    fn the_rollback_waits_for_the_agent_to_come_back() {
        let agent = FakeAgent::with_endpoints(vec![endpoint(Some("10.11.0.5"), None)]);
        agent.unreachable_for.set(2);
        let id = EndpointId::ContainerId("c1".into());
        let mut log = vec![];
        block_on(roll_back(&id, &agent, Duration::from_secs(5), &mut log));
        assert_eq!(agent.calls().len(), 3, "{:?}", agent.calls());
        assert!(agent.endpoints.borrow().is_empty());
        assert!(
            log[0].contains("endpoint container-id:c1 deleted"),
            "{log:?}"
        );

        // Nothing there: done at once.
        let mut log = vec![];
        block_on(roll_back(&id, &agent, Duration::from_secs(5), &mut log));
        assert!(log[0].contains("no endpoint"), "{log:?}");

        // An agent that stays away: the wait is bounded.
        let agent = FakeAgent::new();
        agent.unreachable.set(true);
        let mut log = vec![];
        block_on(roll_back(&id, &agent, Duration::from_millis(250), &mut log));
        let calls = agent.calls().len();
        assert!((2..=5).contains(&calls), "{calls} attempts");
        assert!(log[0].contains("could not be rolled back"), "{log:?}");

        // A refusal other than "busy" is not retried.
        let agent = FakeAgent::new();
        agent.fail("delete", 500);
        let mut log = vec![];
        block_on(roll_back(&id, &agent, Duration::from_secs(5), &mut log));
        assert_eq!(agent.calls().len(), 1);
    }

    #[test]
    fn what_may_have_reached_the_agent() {
        let connect = ClientError::Connect {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(!may_have_acted(&connect), "never sent");
        let refused = ClientError::Api {
            status: 409,
            message: "exists".into(),
        };
        assert!(!may_have_acted(&refused), "the agent undid it");
        let decode = ClientError::Decode {
            what: "PUT".into(),
            source: serde_json::from_str::<u8>("").unwrap_err(),
        };
        assert!(may_have_acted(&decode));
    }
}
