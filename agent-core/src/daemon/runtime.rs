//! The container runtime's view of endpoints: what the Docker watcher ([`crate::docker`])
//! learns about a container (id, name, labels, the libnetwork endpoints it is joined to) is
//! written onto the agent's endpoints here, which resolves their identity; and the runtime's
//! state for `cilium status`.

use std::collections::HashMap;

use cilium_api::models::{EndpointChangeRequest, Status, StatusState};
use cilium_api::{EndpointId, DOCKER_IPAM_OWNER};

use super::attach::INIT_LABEL;
use super::{lock, Agent};
use crate::labels::{Label, LabelSource};

/// A container as the runtime describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    /// The container's labels, `key` → `value`.
    pub labels: Vec<(String, String)>,
    /// libnetwork endpoint ids of the networks the container is joined to.
    pub endpoint_ids: Vec<String>,
}

impl ContainerInfo {
    /// The container's labels as `container:key=value`, sorted; labels that are not valid
    /// endpoint labels are left out and returned as the second value.
    pub fn endpoint_labels(&self) -> (Vec<String>, Vec<String>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (key, value) in &self.labels {
            let label = Label::new(LabelSource::Container, key, value);
            let text = label.to_string();
            match Label::parse_concrete(&text) {
                Ok(parsed) if parsed == label => good.push(text),
                _ => bad.push(format!("{key}={value}")),
            }
        }
        good.sort();
        good.dedup();
        (good, bad)
    }
}

/// The containers Docker runs and their libnetwork endpoint ids.
#[derive(Debug)]
pub enum LiveContainers<'a> {
    /// Every running container (from a full listing).
    All(&'a HashMap<String, Vec<String>>),
    /// One container (from an event): its endpoints now, empty when it is gone or stopped.
    One {
        container: &'a str,
        endpoints: &'a [String],
    },
}

impl LiveContainers<'_> {
    /// Whether `container` still has endpoint `eid`; containers a [`LiveContainers::One`]
    /// does not name are assumed to.
    fn has(&self, container: &str, eid: &str) -> bool {
        match self {
            LiveContainers::All(map) => map
                .get(container)
                .is_some_and(|eids| eids.iter().any(|e| e == eid)),
            LiveContainers::One {
                container: c,
                endpoints,
            } => *c != container || endpoints.iter().any(|e| e == eid),
        }
    }
}

/// What [`Agent::container_update`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContainerUpdate {
    /// Endpoints whose container, name or labels changed.
    pub updated: Vec<u16>,
    /// Endpoints that already carried exactly this.
    pub unchanged: Vec<u16>,
    /// Why an endpoint could not be updated.
    pub errors: Vec<String>,
}

impl Agent {
    /// `ContainerRuntime` of `cilium status`.
    pub fn container_runtime(&self) -> Status {
        lock(&self.runtime_status).clone()
    }

    /// Records the runtime integration's state (logged when it changes).
    pub fn set_container_runtime(&self, state: StatusState, msg: impl Into<String>) {
        let status = Status::new(state, msg);
        let mut current = lock(&self.runtime_status);
        if *current != status {
            match state {
                StatusState::Ok | StatusState::Disabled => {
                    tracing::info!(state = %status.state, "container runtime: {}", status.msg)
                }
                _ => tracing::warn!(state = %status.state, "container runtime: {}", status.msg),
            }
            *current = status;
        }
    }

    /// Gives every endpoint of `container` (by libnetwork endpoint id) the container's id,
    /// name and labels; their identity follows the labels. Endpoints of other drivers are not
    /// the agent's and are skipped.
    pub fn container_update(&self, container: &ContainerInfo) -> ContainerUpdate {
        let mut outcome = ContainerUpdate::default();
        let (labels, bad) = container.endpoint_labels();
        if !bad.is_empty() {
            tracing::warn!(
                container = %container.name,
                "labels ignored (not valid endpoint labels): {}",
                bad.join(", ")
            );
        }
        for eid in &container.endpoint_ids {
            let id = EndpointId::DockerEndpoint(eid.clone());
            let current = {
                let inner = lock(&self.inner);
                match inner.endpoints.find(&id) {
                    Ok(record) => Some((
                        record.id,
                        record.container_id.clone(),
                        record.container_name.clone(),
                        record.labels.orchestration_system.clone(),
                    )),
                    Err(_) => None,
                }
            };
            let Some((n, cid, name, orchestration)) = current else {
                continue;
            };
            if cid == container.id && name == container.name && orchestration == labels {
                outcome.unchanged.push(n);
                continue;
            }
            let req = EndpointChangeRequest {
                container_id: Some(container.id.clone()),
                container_name: Some(container.name.clone()).filter(|n| !n.is_empty()),
                labels: Some(labels.clone()),
                ..EndpointChangeRequest::default()
            };
            match self.endpoint_patch(&id, req) {
                Ok(endpoint) => {
                    tracing::info!(
                        endpoint = n,
                        container = %container.name,
                        identity = endpoint.identity.as_ref().map_or(0, |i| i.id),
                        "container labels applied"
                    );
                    outcome.updated.push(n);
                }
                Err(e) => outcome.errors.push(format!("endpoint {n}: {e}")),
            }
        }
        outcome
    }

    /// Docker endpoints linked to a container that no longer has them: `containers` maps
    /// each container Docker runs to its libnetwork endpoint ids (`None`: only `container`
    /// is known, with endpoints `current`). Docker leaves a network without the plugin
    /// deleting the endpoint when the plugin was down at the time; such endpoints are deleted
    /// here, and the addresses the IPAM driver had reserved for them are released (Docker
    /// does not ask again). Endpoints not linked to a container yet are never touched.
    pub fn remove_stale_docker_endpoints(&self, live: &LiveContainers<'_>) -> Vec<u16> {
        let stale: Vec<(u16, String, Vec<std::net::IpAddr>)> = {
            let inner = lock(&self.inner);
            inner
                .endpoints
                .iter()
                .filter(|r| r.plumbing.is_docker() && !r.container_id.is_empty())
                .filter(|r| !live.has(&r.container_id, &r.docker_endpoint_id))
                .map(|r| (r.id, r.docker_endpoint_id.clone(), r.addresses().collect()))
                .collect()
        };
        let mut removed = Vec::new();
        for (n, eid, addresses) in stale {
            match self.endpoint_delete(&EndpointId::DockerEndpoint(eid)) {
                Ok(outcome) => {
                    for e in outcome.errors {
                        tracing::warn!(endpoint = n, "stale endpoint: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = n, "cannot delete the stale endpoint: {e}");
                    continue;
                }
            }
            for ip in addresses {
                if self.ipam.owner(&ip).as_deref() == Some(DOCKER_IPAM_OWNER) {
                    if let Err(e) = self.ipam_release(ip) {
                        tracing::warn!(endpoint = n, %ip, "cannot release: {e}");
                    }
                }
            }
            tracing::info!(
                endpoint = n,
                "deleted: its container left the network without the plugin deleting it"
            );
            removed.push(n);
        }
        removed
    }

    /// Docker endpoints whose container's labels are not known yet (`reserved:init`).
    pub fn pending_docker_endpoints(&self) -> Vec<u16> {
        let inner = lock(&self.inner);
        inner
            .endpoints
            .iter()
            .filter(|r| {
                r.plumbing.is_docker()
                    && r.labels
                        .orchestration_system
                        .iter()
                        .any(|l| l == INIT_LABEL)
            })
            .map(|r| r.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_labels_become_container_source_labels() {
        let c = ContainerInfo {
            labels: vec![
                ("id".into(), "app1".into()),
                ("com.example.tier".into(), "web".into()),
                ("bad key".into(), "x".into()),
            ],
            ..ContainerInfo::default()
        };
        let (good, bad) = c.endpoint_labels();
        assert_eq!(
            good,
            vec!["container:com.example.tier=web", "container:id=app1"]
        );
        assert_eq!(bad, vec!["bad key=x"]);
    }
}
