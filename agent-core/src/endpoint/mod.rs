//! Endpoints: what the agent records of each container (or pod) it put on the network, their
//! life-cycle states, and the registry that finds them by any of their ids.

mod lifecycle;
mod registry;

use std::collections::VecDeque;
use std::net::IpAddr;

use cilium_api::endpoint_id::{validate_name, EndpointIdError};
use cilium_api::models::{
    AddressPair, Endpoint, EndpointChangeRequest, EndpointState, EndpointStatusChange, Identity,
    LabelConfiguration, StatusCode,
};
use serde::{Deserialize, Serialize};

pub use lifecycle::can_transition;
pub use registry::Registry;

use crate::labels::{self, Label, LabelError};
use crate::options::OptionSet;
use crate::timestamp;

/// Mutable per-endpoint options.
///
/// `Debug`: the datapath sends debug events for the endpoint; `Policy`: policy is enforced on
/// it (off: everything to and from it is allowed, whatever the rules say).
pub const ENDPOINT_OPTIONS: &[(&str, bool)] = &[("Debug", false), ("Policy", true)];

/// Entries kept in an endpoint's status log.
const STATUS_LOG_LEN: usize = 16;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Errors of endpoint operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {0} not found")]
    NotFound(String),
    #[error("{id} matches several endpoints ({matches}); use the endpoint id")]
    Ambiguous { id: String, matches: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    BadId(#[from] EndpointIdError),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error("label {label} to delete is not on endpoint {id}; nothing was changed")]
    LabelNotFound { id: u16, label: String },
    #[error("no free endpoint id: all of 1-65535 are in use")]
    NoFreeId,
    #[error("endpoint {id} cannot go from state {from} to {to}")]
    BadTransition {
        id: u16,
        from: EndpointState,
        to: EndpointState,
    },
}

/// What the agent built for an endpoint it put on the network itself: the container side of
/// the veth pair (the host side is `interface-name`/`interface-index`/`host-mac`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Plumbing {
    #[serde(default)]
    pub netns_path: String,
    #[serde(default)]
    pub container_interface_name: String,
    #[serde(default)]
    pub mtu: u32,
    /// Router addresses the container routes through.
    #[serde(default)]
    pub gateway: AddressPair,
    /// The CNI network that attached the endpoint, if CNI did.
    #[serde(default)]
    pub cni_network: String,
    /// Docker: the peer the agent left in the node's namespace for the runtime to move.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub veth_peer: String,
}

impl Plumbing {
    /// The agent made no links for this endpoint.
    pub fn is_empty(&self) -> bool {
        self.netns_path.is_empty() && self.veth_peer.is_empty()
    }

    /// The runtime (Docker) moved and configured the container side itself.
    pub fn is_docker(&self) -> bool {
        !self.veth_peer.is_empty()
    }
}

/// An endpoint as the agent keeps and persists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EndpointRecord {
    pub id: u16,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub container_name: String,
    #[serde(default)]
    pub docker_endpoint_id: String,
    #[serde(default)]
    pub docker_network_id: String,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub interface_name: String,
    #[serde(default)]
    pub interface_index: u32,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub host_mac: String,
    #[serde(default)]
    pub addressing: AddressPair,
    /// Network plumbing the agent made for this endpoint (empty when it made none).
    #[serde(default, skip_serializing_if = "Plumbing::is_empty")]
    pub plumbing: Plumbing,
    #[serde(default)]
    pub labels: LabelConfiguration,
    pub state: EndpointState,
    #[serde(default)]
    pub status: VecDeque<EndpointStatusChange>,
    #[serde(default)]
    pub identity: Option<Identity>,
    #[serde(default)]
    pub policy_enabled: bool,
    #[serde(default)]
    pub policy_revision: u64,
    pub options: OptionSet,
}

impl EndpointRecord {
    /// A new endpoint from a create request. Validates every field; `id` is set by the caller.
    pub fn from_request(id: u16, req: &EndpointChangeRequest) -> Result<Self, EndpointError> {
        let state = req.state.unwrap_or(EndpointState::WaitingForIdentity);
        if !matches!(
            state,
            EndpointState::Creating | EndpointState::WaitingForIdentity
        ) {
            return Err(EndpointError::Invalid(format!(
                "an endpoint is created in state creating or waiting-for-identity, not {state}"
            )));
        }
        let mut record = EndpointRecord {
            id,
            container_id: String::new(),
            container_name: String::new(),
            docker_endpoint_id: String::new(),
            docker_network_id: String::new(),
            pod_name: String::new(),
            interface_name: String::new(),
            interface_index: 0,
            mac: String::new(),
            host_mac: String::new(),
            addressing: req.addressing.clone().unwrap_or_default(),
            plumbing: Plumbing::default(),
            labels: LabelConfiguration::default(),
            state,
            status: VecDeque::new(),
            identity: None,
            policy_enabled: false,
            policy_revision: 0,
            options: OptionSet::with_defaults(ENDPOINT_OPTIONS),
        };
        check_addressing(&record.addressing)?;
        record.apply_fields(req)?;
        record.log(StatusCode::Ok, "endpoint created");
        Ok(record)
    }

    /// Applies the descriptive fields of a request (everything but id, addressing and state).
    pub fn apply_fields(&mut self, req: &EndpointChangeRequest) -> Result<(), EndpointError> {
        let text = |v: &Option<String>| -> Result<Option<String>, EndpointError> {
            match v {
                Some(s) => {
                    validate_name(s)?;
                    Ok(Some(s.clone()))
                }
                None => Ok(None),
            }
        };
        let container_id = text(&req.container_id)?;
        let container_name = text(&req.container_name)?;
        let docker_endpoint_id = text(&req.docker_endpoint_id)?;
        let docker_network_id = text(&req.docker_network_id)?;
        let pod_name = text(&req.pod_name)?;
        if let Some(name) = &req.interface_name {
            check_ifname(name)?;
        }
        for mac in [&req.mac, &req.host_mac].into_iter().flatten() {
            check_mac(mac)?;
        }
        let labels = req
            .labels
            .as_ref()
            .map(|l| labels::parse_list(l))
            .transpose()?;

        // Everything is valid: apply.
        if let Some(v) = container_id {
            self.container_id = v;
        }
        if let Some(v) = container_name {
            self.container_name = v;
        }
        if let Some(v) = docker_endpoint_id {
            self.docker_endpoint_id = v;
        }
        if let Some(v) = docker_network_id {
            self.docker_network_id = v;
        }
        if let Some(v) = pod_name {
            self.pod_name = v;
        }
        if let Some(v) = &req.interface_name {
            self.interface_name = v.clone();
        }
        if let Some(v) = req.interface_index {
            self.interface_index = v;
        }
        if let Some(v) = &req.mac {
            self.mac = v.to_ascii_lowercase();
        }
        if let Some(v) = &req.host_mac {
            self.host_mac = v.to_ascii_lowercase();
        }
        if let Some(labels) = labels {
            self.labels.orchestration_system = labels.iter().map(ToString::to_string).collect();
        }
        Ok(())
    }

    /// The owner tag IPAM records for this endpoint's addresses.
    pub fn owner_tag(&self) -> String {
        owner_tag(self.id)
    }

    /// Addresses of the endpoint.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        [self.addressing.ipv4, self.addressing.ipv6]
            .into_iter()
            .flatten()
    }

    /// Moves to another state, recording it in the status log.
    pub fn set_state(&mut self, to: EndpointState, why: &str) -> Result<(), EndpointError> {
        if self.state == to {
            return Ok(());
        }
        if !can_transition(self.state, to) {
            return Err(EndpointError::BadTransition {
                id: self.id,
                from: self.state,
                to,
            });
        }
        self.state = to;
        self.log(StatusCode::Ok, why);
        Ok(())
    }

    /// Appends to the status log, keeping its last entries.
    pub fn log(&mut self, code: StatusCode, message: &str) {
        if self.status.len() == STATUS_LOG_LEN {
            self.status.pop_front();
        }
        self.status.push_back(EndpointStatusChange {
            timestamp: timestamp::now_rfc3339(),
            code,
            message: message.to_string(),
            state: self.state,
        });
    }

    /// Labels in effect: orchestration labels not disabled, plus custom labels; sorted.
    pub fn effective_labels(&self) -> Vec<String> {
        let lc = &self.labels;
        let mut out: Vec<String> = lc
            .orchestration_system
            .iter()
            .filter(|l| !lc.disabled.contains(l))
            .chain(lc.custom.iter())
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether the endpoint carries every label of `filter`.
    pub fn matches_labels(&self, filter: &[Label]) -> bool {
        let have: Vec<Label> = self
            .effective_labels()
            .iter()
            .filter_map(|l| l.parse().ok())
            .collect();
        filter.iter().all(|f| have.iter().any(|h| f.matches(h)))
    }

    /// Applies `{add, delete}` to the label configuration, all or nothing.
    pub fn modify_labels(&mut self, add: &[Label], delete: &[Label]) -> Result<(), EndpointError> {
        let mut lc = self.labels.clone();
        for label in delete.iter().map(ToString::to_string) {
            if let Some(pos) = lc.custom.iter().position(|l| *l == label) {
                lc.custom.remove(pos);
            } else if lc.orchestration_system.contains(&label) {
                if !lc.disabled.contains(&label) {
                    lc.disabled.push(label);
                }
            } else if !lc.disabled.contains(&label) {
                return Err(EndpointError::LabelNotFound { id: self.id, label });
            }
        }
        for label in add.iter().map(ToString::to_string) {
            if let Some(pos) = lc.disabled.iter().position(|l| *l == label) {
                lc.disabled.remove(pos);
            } else if !lc.orchestration_system.contains(&label) && !lc.custom.contains(&label) {
                lc.custom.push(label);
            }
        }
        lc.custom.sort();
        lc.disabled.sort();
        self.labels = lc;
        Ok(())
    }

    /// The endpoint as the API shows it.
    pub fn to_api(&self) -> Endpoint {
        Endpoint {
            id: self.id,
            container_id: self.container_id.clone(),
            container_name: self.container_name.clone(),
            docker_endpoint_id: self.docker_endpoint_id.clone(),
            docker_network_id: self.docker_network_id.clone(),
            pod_name: self.pod_name.clone(),
            labels: self.effective_labels(),
            interface_name: self.interface_name.clone(),
            interface_index: self.interface_index,
            state: self.state,
            status: self.status.iter().cloned().collect(),
            mac: self.mac.clone(),
            host_mac: self.host_mac.clone(),
            addressing: self.addressing.clone(),
            gateway: self.plumbing.gateway.clone(),
            netns_path: self.plumbing.netns_path.clone(),
            container_interface_name: self.plumbing.container_interface_name.clone(),
            mtu: self.plumbing.mtu,
            cni_network: self.plumbing.cni_network.clone(),
            identity: self.identity.clone(),
            policy_enabled: self.policy_enabled,
            policy_revision: self.policy_revision,
            policy: None,
            options: self.options.to_map(),
        }
    }
}

/// The IPAM owner tag of endpoint `id`.
pub fn owner_tag(id: u16) -> String {
    format!("endpoint:{id}")
}

/// The endpoint id an IPAM owner tag names, if it names one.
pub fn owner_endpoint(owner: &str) -> Option<u16> {
    owner.strip_prefix("endpoint:")?.parse().ok()
}

fn check_addressing(pair: &AddressPair) -> Result<(), EndpointError> {
    if pair.ipv4.is_some_and(|ip| !ip.is_ipv4()) {
        return Err(EndpointError::Invalid(
            "addressing.ipv4 holds an IPv6 address".into(),
        ));
    }
    if pair.ipv6.is_some_and(|ip| !ip.is_ipv6()) {
        return Err(EndpointError::Invalid(
            "addressing.ipv6 holds an IPv4 address".into(),
        ));
    }
    Ok(())
}

/// Interface names become device names: the kernel's rules.
pub fn check_ifname(name: &str) -> Result<(), EndpointError> {
    let bad = |why: &str| EndpointError::Invalid(format!("invalid interface name '{name}': {why}"));
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(bad("must be 1 to 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("reserved name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            "must not contain '/', ':', whitespace or control characters",
        ));
    }
    Ok(())
}

pub fn check_mac(mac: &str) -> Result<(), EndpointError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(EndpointError::Invalid(format!(
            "invalid MAC address '{mac}': expected xx:xx:xx:xx:xx:xx"
        )))
    }
}

#[cfg(test)]
mod tests;
