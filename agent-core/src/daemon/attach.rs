//! Endpoints the agent puts on the network itself (CNI): create in three steps so that the
//! netlink work runs without the agent lock held. (1) Under the lock: validate, take an id,
//! allocate or claim the addresses, register the endpoint as attaching and write its record
//! in state `creating`. (2) Unlocked: build the veth pair, addresses and routes. (3) Under
//! the lock: record the links and write the endpoint and IPAM state. A failure at any step
//! undoes the steps before it; a crash between (1) and (3) is undone at the next start.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cilium_api::models::{
    AddressPair, Endpoint, EndpointChangeRequest, EndpointHealth, EndpointState, Family,
};
use cilium_api::{EndpointId, DOCKER_IPAM_OWNER};

use super::{lock, merge_path_id, save_ipam, Agent, AgentError, Claim, DeleteOutcome, Inner};
use crate::endpoint::{check_ifname, check_mac, EndpointError, EndpointRecord, Plumbing};
use crate::ipam::Ipam;
use crate::ipam::IpamError;
use crate::link::{self, Attachment};
use crate::netns::Netns;

/// The label of an endpoint whose labels are not known yet (identity [`crate::identity::INIT`]).
pub const INIT_LABEL: &str = "reserved:init";
/// Default MTU of endpoint links.
pub const DEFAULT_MTU: u32 = 1500;
/// Default interface name inside the container.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The background half of deleting an attached endpoint.
struct Teardown {
    id: u16,
    link_index: u32,
    link_name: String,
    owner: String,
    addresses: Vec<IpAddr>,
    ipam: Arc<Ipam>,
    inner: Arc<Mutex<Inner>>,
}

impl Teardown {
    fn run(self) {
        // By index: a new endpoint of the same container may already use the name.
        if self.link_index != 0 {
            if let Err(e) = link::detach_index(self.link_index) {
                tracing::warn!(link = %self.link_name, "cannot delete the links: {e}");
            }
        }
        let inner = lock(&self.inner);
        for ip in &self.addresses {
            if self.ipam.owner(ip).as_deref() == Some(self.owner.as_str()) {
                if let Err(e) = self.ipam.release(*ip) {
                    tracing::warn!(%ip, "cannot release: {e}");
                }
            }
        }
        if let Err(e) = save_ipam(&self.ipam, &inner) {
            tracing::warn!("cannot save IPAM after a teardown: {e}");
        }
        // Done: the next start has nothing of this endpoint left to remove.
        let record = inner.state.teardown_path(self.id, self.link_index);
        if let Err(e) = inner.state.remove(&record) {
            tracing::warn!("cannot remove the record of a finished teardown: {e}");
        }
    }
}

/// What step (1) hands to step (2).
struct Reserved {
    id: u16,
    claims: Vec<Claim>,
    allocated: AddressPair,
}

impl Agent {
    pub(super) fn routers(&self) -> AddressPair {
        let router = |f| self.ipam.pool(f).ok().map(|p| p.router());
        AddressPair {
            ipv4: router(Family::Ipv4),
            ipv6: router(Family::Ipv6),
        }
    }

    /// `PUT /endpoint/{id}` with a `netns-path`: creates the endpoint and its plumbing.
    pub(super) fn endpoint_attach(
        &self,
        id: &EndpointId,
        mut req: EndpointChangeRequest,
    ) -> Result<Endpoint, AgentError> {
        merge_path_id(id, &mut req)?;
        let netns_path = req.netns_path.clone().unwrap_or_default();
        let ifname = req
            .container_interface_name
            .clone()
            .unwrap_or_else(|| DEFAULT_IFNAME.to_string());
        check_ifname(&ifname)?;
        let mtu = req.mtu.unwrap_or_else(|| self.default_mtu());
        if !(68..=65535).contains(&mtu) {
            return Err(AgentError::Invalid(format!(
                "mtu {mtu} is outside 68-65535"
            )));
        }
        let container_id = match req.container_id.as_deref() {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => {
                return Err(AgentError::Invalid(
                    "an endpoint with a netns-path needs a container-id".into(),
                ))
            }
        };
        if req.interface_name.is_some()
            || req.interface_index.is_some()
            || req.mac.is_some()
            || req.host_mac.is_some()
        {
            return Err(AgentError::Invalid(
                "interface-name, interface-index, mac and host-mac are set by the agent when it \
                 creates the links (netns-path given)"
                    .into(),
            ));
        }
        let netns = Netns::open(Path::new(&netns_path)).map_err(link::LinkError::from)?;
        let host_name = link::host_link_name(&container_id);
        let routers = self.routers();

        let reserved = self.reserve_endpoint(
            id,
            &req,
            &host_name,
            Plumbing {
                netns_path: netns_path.clone(),
                container_interface_name: ifname.clone(),
                mtu,
                gateway: routers.clone(),
                cni_network: req.cni_network.clone().unwrap_or_default(),
                veth_peer: String::new(),
            },
        )?;
        let addresses: Vec<IpAddr> = {
            let inner = lock(&self.inner);
            inner
                .endpoints
                .get(reserved.id)
                .map(|r| r.addresses().collect())
                .unwrap_or_default()
        };
        let router_list: Vec<IpAddr> = [routers.ipv4, routers.ipv6].into_iter().flatten().collect();

        let built = self.ensure_host_device().and_then(|()| {
            link::attach(&Attachment {
                netns: &netns,
                host_name: &host_name,
                container_name: &ifname,
                mtu,
                addresses,
                routers: router_list,
            })
            .map_err(AgentError::from)
        });
        self.finish_attach(&reserved, built, &host_name, |host| {
            format!("attached: {host} in node, {ifname} in {netns_path}")
        })
    }

    /// `PUT /endpoint/{id}` with a `veth-peer-name` (Docker): the veth pair is made in the
    /// node's namespace and the runtime moves the peer into the container and configures
    /// it. The addresses were reserved by the IPAM driver and stay its own: they are
    /// released by its `ReleaseAddress`, not by the endpoint's deletion.
    pub(super) fn endpoint_attach_docker(
        &self,
        id: &EndpointId,
        mut req: EndpointChangeRequest,
    ) -> Result<Endpoint, AgentError> {
        merge_path_id(id, &mut req)?;
        let peer = req.veth_peer_name.clone().unwrap_or_default();
        check_ifname(&peer)?;
        let mtu = req.mtu.unwrap_or_else(|| self.default_mtu());
        if !(68..=65535).contains(&mtu) {
            return Err(AgentError::Invalid(format!(
                "mtu {mtu} is outside 68-65535"
            )));
        }
        if req.container_interface_name.is_some() {
            return Err(AgentError::Invalid(
                "container-interface-name does not apply with veth-peer-name: the runtime names \
                 the interface"
                    .into(),
            ));
        }
        if req.interface_name.is_some() || req.interface_index.is_some() || req.host_mac.is_some() {
            return Err(AgentError::Invalid(
                "interface-name, interface-index and host-mac are set by the agent when it \
                 creates the links (veth-peer-name given)"
                    .into(),
            ));
        }
        let peer_mac = req.mac.take().filter(|m| !m.is_empty());
        if let Some(mac) = &peer_mac {
            check_mac(mac)?;
        }
        let addressing = req.addressing.clone().unwrap_or_default();
        if addressing.is_empty() {
            return Err(AgentError::Invalid(
                "an endpoint with a veth-peer-name needs its addressing (reserved through the \
                 IPAM driver)"
                    .into(),
            ));
        }
        let key = req
            .docker_endpoint_id
            .clone()
            .or_else(|| req.container_id.clone())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                AgentError::Invalid(
                    "an endpoint with a veth-peer-name needs a docker-endpoint-id".into(),
                )
            })?;
        let host_name = link::host_link_name(&key);
        let routers = self.routers();
        let reserved = self.reserve_endpoint(
            id,
            &req,
            &host_name,
            Plumbing {
                mtu,
                gateway: routers.clone(),
                veth_peer: peer.clone(),
                ..Plumbing::default()
            },
        )?;
        let router_list: Vec<IpAddr> = [routers.ipv4, routers.ipv6].into_iter().flatten().collect();
        let built = self.ensure_host_device().and_then(|()| {
            link::attach_host_pair(&link::HostPair {
                host_name: &host_name,
                peer_name: &peer,
                peer_mac: peer_mac.as_deref(),
                mtu,
                addresses: [addressing.ipv4, addressing.ipv6]
                    .into_iter()
                    .flatten()
                    .collect(),
                routers: router_list,
            })
            .map_err(AgentError::from)
        });
        self.finish_attach(&reserved, built, &host_name, |host| {
            format!("attached: {host} in node, peer {peer} left for the runtime")
        })
    }

    /// Step (3) after step (2)'s `built`: record the links, resolve the identity, enforce,
    /// persist; or undo it all. `describe` gets the host-side name for the endpoint's log.
    fn finish_attach(
        &self,
        reserved: &Reserved,
        built: Result<link::Attached, AgentError>,
        host_name: &str,
        describe: impl FnOnce(&str) -> String,
    ) -> Result<Endpoint, AgentError> {
        let attached = match built {
            Ok(a) => a,
            Err(e) => {
                self.abandon(reserved);
                return Err(e);
            }
        };
        let description = describe(&attached.host.name);
        let mut inner = lock(&self.inner);
        inner.attaching.remove(&reserved.id);
        let Some(mut record) = inner.endpoints.get(reserved.id).cloned() else {
            drop(inner);
            let _ = link::detach(host_name);
            return Err(EndpointError::Conflict(format!(
                "endpoint {} vanished while it was being attached",
                reserved.id
            ))
            .into());
        };
        record.interface_name = attached.host.name.clone();
        record.interface_index = attached.host.index;
        record.host_mac = attached.host.mac.clone();
        record.mac = attached.container.mac.clone();
        record.log(cilium_api::models::StatusCode::Ok, &description);
        let _ = record.set_state(EndpointState::WaitingForIdentity, "network plumbing ready");
        let resolved = self.resolve_identity(&mut inner, &mut record);
        // Enforced before the runtime gets the result (and starts the workload).
        let enforced = resolved.and_then(|()| {
            inner.endpoints.insert(record.clone());
            let r = self.enforce_endpoint(&inner, &record);
            if r.is_err() {
                inner.endpoints.remove(record.id);
            }
            r
        });
        let persisted = enforced.and_then(|()| {
            self.persist_new_endpoint(&inner, &record)
                .map_err(AgentError::from)
        });
        if let Err(e) = persisted {
            self.unenforce_endpoint(&inner, &record);
            self.release_endpoint_identity(&mut inner, &record);
            inner.endpoints.remove(record.id);
            self.undo_claims(&reserved.claims);
            self.ipam.release_pair(&reserved.allocated);
            let _ = self.persist_ipam(&inner);
            // The record of step (1); persist_new_endpoint removed it already if it failed.
            let _ = inner.state.remove(&inner.state.endpoint_path(record.id));
            drop(inner);
            let _ = link::detach(host_name);
            return Err(e);
        }
        tracing::info!(endpoint = record.id, container = %record.container_id, link = %record.interface_name, "endpoint attached");
        let api = record.to_api();
        inner.endpoints.insert(record);
        Ok(api)
    }

    /// Step (1): register the endpoint with its addresses, in state `creating`, and write
    /// that record before any link exists: after a crash from here until step (3), the next
    /// start finds the record and removes the endpoint with the links of `host_name`. (Not
    /// flushed to disk: a reboot removes the links as well.)
    fn reserve_endpoint(
        &self,
        id: &EndpointId,
        req: &EndpointChangeRequest,
        host_name: &str,
        plumbing: Plumbing,
    ) -> Result<Reserved, AgentError> {
        let mut inner = lock(&self.inner);
        let req = EndpointChangeRequest {
            state: Some(EndpointState::Creating),
            ..req.clone()
        };
        let mut record = self.new_record(&mut inner, id, &req)?;
        record.plumbing = plumbing;
        record.interface_name = host_name.to_string();
        let (claims, allocated) = if record.plumbing.is_docker() {
            self.check_docker_addresses(&inner, &record)?;
            // The container's labels come from the Docker watcher; until then the endpoint
            // has the init identity, on which policy is enforced.
            if record.labels.orchestration_system.is_empty() {
                record.labels.orchestration_system = vec![INIT_LABEL.to_string()];
            }
            (Vec::new(), AddressPair::default())
        } else if record.addressing.is_empty() {
            let pair = self.ipam.allocate(None, &record.owner_tag())?;
            record.addressing = pair.clone();
            (Vec::new(), pair)
        } else {
            (
                self.claim_addresses(&inner, &record)?,
                AddressPair::default(),
            )
        };
        let id = record.id;
        if let Err(e) = inner
            .state
            .write_json_unsynced(&inner.state.endpoint_path(id), &record)
        {
            self.undo_claims(&claims);
            self.ipam.release_pair(&allocated);
            return Err(e.into());
        }
        inner.attaching.insert(id);
        inner.endpoints.insert(record);
        Ok(Reserved {
            id,
            claims,
            allocated,
        })
    }

    /// A Docker endpoint's addresses: reserved through the IPAM driver and used by no other
    /// endpoint.
    fn check_docker_addresses(
        &self,
        inner: &Inner,
        record: &EndpointRecord,
    ) -> Result<(), AgentError> {
        for ip in record.addresses() {
            match self.ipam.owner(&ip) {
                Some(owner) if owner == DOCKER_IPAM_OWNER => {}
                Some(owner) => {
                    return Err(IpamError::AlreadyAllocated { ip, owner }.into());
                }
                None => {
                    return Err(AgentError::Invalid(format!(
                        "address {ip} was not reserved through the IPAM driver (owner {DOCKER_IPAM_OWNER})"
                    )))
                }
            }
            if let Some(other) = inner
                .endpoints
                .iter()
                .find(|r| r.id != record.id && r.addresses().any(|a| a == ip))
            {
                return Err(AgentError::AddressInUse {
                    ip,
                    endpoint: other.id,
                });
            }
        }
        Ok(())
    }

    /// Undoes step (1) after a failed step (2) (which removed the links it made).
    fn abandon(&self, reserved: &Reserved) {
        let mut inner = lock(&self.inner);
        inner.attaching.remove(&reserved.id);
        inner.endpoints.remove(reserved.id);
        self.undo_claims(&reserved.claims);
        self.ipam.release_pair(&reserved.allocated);
        if let Err(e) = inner.state.remove(&inner.state.endpoint_path(reserved.id)) {
            tracing::warn!(
                endpoint = reserved.id,
                "cannot remove the record of a failed attach: {e}"
            );
        }
    }

    /// Sets up `cilium_host` once per agent process (again after a failure).
    fn ensure_host_device(&self) -> Result<(), AgentError> {
        let mut ready = lock(&self.host_ready);
        if !*ready {
            let routers = self.routers();
            let list: Vec<IpAddr> = [routers.ipv4, routers.ipv6].into_iter().flatten().collect();
            link::ensure_host_device(&list)?;
            *ready = true;
            // The router addresses are the node's own (`host` in the ipcache).
            self.refresh_host_addresses();
        }
        Ok(())
    }

    /// `DELETE /endpoint/{id}` of an endpoint with plumbing. The endpoint is forgotten at
    /// once (registry and state file); its veth pair is deleted on a background thread,
    /// because the kernel's teardown of a veth pair waits for RCU grace periods (20-50 ms
    /// here) while nothing else needs to wait for it. Its addresses stay allocated until the
    /// links are gone, so no new endpoint can get an address whose route still exists. The
    /// endpoint's file moves to the teardown records until then: an agent stopped in between
    /// finishes the teardown at its next start (links removed, addresses released).
    pub(super) fn endpoint_detach(&self, n: u16) -> Result<DeleteOutcome, AgentError> {
        let mut inner = lock(&self.inner);
        if inner.attaching.contains(&n) {
            return Err(EndpointError::Conflict(format!(
                "endpoint {n} is being attached; try again"
            ))
            .into());
        }
        let mut record = inner
            .endpoints
            .remove(n)
            .ok_or_else(|| EndpointError::NotFound(n.to_string()))?;
        let _ = record.set_state(EndpointState::Disconnected, "endpoint deleted");
        self.unenforce_endpoint(&inner, &record);
        self.release_endpoint_identity(&mut inner, &record);
        let mut errors = Vec::new();
        if let Err(e) = inner.state.begin_teardown(n, record.interface_index) {
            errors.push(e.to_string());
        }
        drop(inner);
        let teardown = Teardown {
            id: n,
            link_index: record.interface_index,
            link_name: record.interface_name.clone(),
            owner: record.owner_tag(),
            addresses: record.addresses().collect(),
            ipam: Arc::clone(&self.ipam),
            inner: Arc::clone(&self.inner),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("teardown-{n}"))
            .spawn(move || teardown.run());
        if let Err(e) = spawned {
            errors.push(format!("cannot start the teardown of endpoint {n}: {e}"));
        }
        tracing::info!(endpoint = n, link = %record.interface_name, "endpoint deleted");
        Ok(DeleteOutcome {
            endpoint: record.to_api(),
            errors,
        })
    }

    /// The links of a container whose endpoint is unknown (an attach cut short by a crash):
    /// removed so the runtime's retry or DEL finds a clean node.
    pub(super) fn remove_stale_links(&self, id: &EndpointId) {
        if let EndpointId::ContainerId(cid) = id {
            let name = link::host_link_name(cid);
            match link::detach(&name) {
                Ok(true) => {
                    tracing::info!(link = %name, "removed the links of an unknown endpoint")
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(link = %name, "no stale links removed: {e}"),
            }
        }
    }

    /// `GET /endpoint/{id}/healthz`.
    pub fn endpoint_health(&self, id: &EndpointId) -> Result<EndpointHealth, AgentError> {
        let record = {
            let inner = lock(&self.inner);
            let record = inner.endpoints.find(id)?;
            if inner.attaching.contains(&record.id) {
                return Ok(EndpointHealth {
                    connected: false,
                    problems: vec![format!(
                        "endpoint {} is being attached or deleted",
                        record.id
                    )],
                });
            }
            record.clone()
        };
        if record.plumbing.is_empty() {
            return Ok(EndpointHealth {
                connected: false,
                problems: vec![format!(
                    "endpoint {} has no links made by the agent (created without netns-path)",
                    record.id
                )],
            });
        }
        let mut problems = if record.plumbing.is_docker() {
            // The runtime owns the container side; the host side is the agent's.
            match link::rtnl::Rtnl::node().and_then(|mut n| n.link(&record.interface_name)) {
                Ok(Some(l)) if l.index == record.interface_index && l.up => Vec::new(),
                Ok(Some(_)) => vec![format!(
                    "link {} was replaced or is down",
                    record.interface_name
                )],
                Ok(None) => vec![format!("link {} is missing", record.interface_name)],
                Err(e) => vec![e.to_string()],
            }
        } else {
            match Netns::open(Path::new(&record.plumbing.netns_path)) {
                Err(e) => vec![e.to_string()],
                Ok(netns) => link::inspect(&Attachment {
                    netns: &netns,
                    host_name: &record.interface_name,
                    container_name: &record.plumbing.container_interface_name,
                    mtu: record.plumbing.mtu,
                    addresses: record.addresses().collect(),
                    routers: [record.plumbing.gateway.ipv4, record.plumbing.gateway.ipv6]
                        .into_iter()
                        .flatten()
                        .collect(),
                }),
            }
        };
        if let Some(dp) = &self.datapath {
            let attached = dp.attached(&record.interface_name, record.interface_index);
            for (program, hook) in crate::datapath::loader::PROGRAMS {
                if !attached.iter().any(|(h, n)| *h == hook && n == program) {
                    problems.push(format!(
                        "{program} is not attached to {} {hook}",
                        record.interface_name
                    ));
                }
            }
        }
        Ok(EndpointHealth {
            connected: problems.is_empty(),
            problems,
        })
    }
}
