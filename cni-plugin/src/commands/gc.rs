//! `GC`: removes the endpoints this network attached for containers the runtime no longer
//! lists in `cni.dev/valid-attachments`. Keeps going past failures and reports them all.

use std::collections::HashSet;

use cilium_api::models::Endpoint;
use cilium_api::EndpointId;

use crate::agent::{agent_error, Agent, NOT_FOUND};
use crate::config::{GcAttachment, NetworkConfig};
use crate::error::{CniError, ErrorCode};

/// Endpoints of `network` whose (container id, interface) is not in `valid`. Endpoints
/// without a container id (not made by CNI) are never stale.
pub(crate) fn stale<'a>(
    endpoints: &'a [Endpoint],
    network: &str,
    valid: &[GcAttachment],
) -> Vec<&'a Endpoint> {
    let valid: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    endpoints
        .iter()
        .filter(|ep| ep.cni_network == network && !ep.container_id.is_empty())
        .filter(|ep| {
            !valid.contains(&(
                ep.container_id.as_str(),
                ep.container_interface_name.as_str(),
            ))
        })
        .collect()
}

/// Deletes the stale endpoints of the config's network.
pub(super) async fn gc<A: Agent>(
    config: &NetworkConfig,
    agent: &A,
    log: &mut Vec<String>,
) -> Result<(), CniError> {
    let valid = config.valid_attachments()?;
    let endpoints = agent
        .endpoint_list()
        .await
        .map_err(|e| agent_error(e, "listing endpoints"))?;
    let mut errors = Vec::new();
    for ep in stale(&endpoints, &config.name, &valid) {
        // By the agent's own id: a container may have other, valid, attachments.
        let id = EndpointId::CiliumLocal(ep.id);
        let what = format!(
            "endpoint {} of container {} ({})",
            ep.id, ep.container_id, ep.container_interface_name
        );
        match agent.endpoint_delete(&id).await {
            Ok(None) => log.push(format!("GC: removed {what}")),
            Ok(Some(partial)) => log.push(format!(
                "GC: removed {what}, but {} resource(s) could not be released: {}",
                partial.errors, partial.error
            )),
            Err(e) if e.status() == Some(NOT_FOUND) => {}
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::AgentRefused,
            format!(
                "GC could not remove {} endpoint(s): {}",
                errors.len(),
                errors.join("; ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{block_on, config, endpoint, FakeAgent};

    fn ep(id: u16, container: &str, ifname: &str, network: &str) -> Endpoint {
        let mut ep = endpoint(Some(&format!("10.11.0.{id}")), None);
        ep.id = id;
        ep.container_id = container.into();
        ep.container_interface_name = ifname.into();
        ep.cni_network = network.into();
        ep
    }

    fn endpoints() -> Vec<Endpoint> {
        vec![
            ep(10, "keep", "eth0", "cilium"),
            ep(11, "gone", "eth0", "cilium"),
            ep(12, "keep", "net1", "cilium"),
            ep(13, "other-net", "eth0", "other"),
            ep(14, "", "", "cilium"),
        ]
    }

    fn attachments() -> serde_json::Value {
        json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    }

    #[test]
    fn selects_only_stale_endpoints_of_this_network() {
        let endpoints = endpoints();
        let valid = [GcAttachment {
            container_id: "keep".into(),
            ifname: "eth0".into(),
        }];
        let ids: Vec<u16> = stale(&endpoints, "cilium", &valid)
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [11, 12]);
        assert_eq!(stale(&endpoints, "none", &valid).len(), 0);
    }

    #[test]
    fn deletes_stale_endpoints() {
        let agent = FakeAgent::with_endpoints(endpoints());
        let mut log = vec![];
        block_on(gc(&config(attachments()), &agent, &mut log)).unwrap();
        assert_eq!(
            agent.calls(),
            ["list", "delete cilium-local:11", "delete cilium-local:12"]
        );
        assert_eq!(log.len(), 2);
        let left: Vec<u16> = agent.endpoints.borrow().iter().map(|e| e.id).collect();
        assert_eq!(left, [10, 13, 14]);
    }

    #[test]
    fn keeps_going_and_reports_every_failure() {
        let agent = FakeAgent::with_endpoints(endpoints());
        agent.fail("delete", 500);
        let err = block_on(gc(&config(attachments()), &agent, &mut vec![])).unwrap_err();
        assert_eq!(err.code, ErrorCode::AgentRefused);
        assert!(
            err.msg.starts_with("GC could not remove 2 endpoint(s): "),
            "{}",
            err.msg
        );
        assert!(err.msg.contains("endpoint 11 of container gone (eth0)"));
        assert!(err.msg.contains("endpoint 12 of container keep (net1)"));
        assert_eq!(agent.calls().len(), 3);
    }

    #[test]
    fn refuses_without_the_list() {
        let agent = FakeAgent::with_endpoints(endpoints());
        let err = block_on(gc(&config(json!({})), &agent, &mut vec![])).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfig);
        assert!(err.msg.contains("GC needs cni.dev/valid-attachments"));
        assert!(agent.calls().is_empty());
    }

    #[test]
    fn unreachable_agent() {
        let agent = FakeAgent::new();
        agent.unreachable.set(true);
        let err = block_on(gc(&config(attachments()), &agent, &mut vec![])).unwrap_err();
        assert_eq!(err.code, ErrorCode::TryAgainLater);
    }
}
