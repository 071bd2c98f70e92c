//! `ADD`: asks the agent to create the endpoint (veth pair, addresses, routes) and answers
//! with the result, after the `prevResult` when chained.

use cilium_api::models::EndpointChangeRequest;
use cilium_api::EndpointId;
use serde_json::Value;

use super::require_netns;
use crate::agent::{agent_error, Agent};
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
    let endpoint = agent
        .endpoint_create(&id, &request)
        .await
        .map_err(|e| agent_error(e, &format!("creating endpoint {id}")))?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;
    use crate::testing::{block_on, config, target, FakeAgent, GATEWAY_V4};

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
}
