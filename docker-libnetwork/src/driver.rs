//! The libnetwork `NetworkDriver` and `IpamDriver` calls, one method each, over an [`Agent`].
//! Addresses come from the agent's node ranges as host routes (`/32`, `/128`): containers
//! reach everything, the other containers of the node included, through the router.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use cilium_api::models::{
    AddressPair, EndpointChangeRequest, Family, NodeAddressing, NodeAddressingElement,
};
use cilium_api::{ClientError, EndpointId};
use serde_json::Value;
use tokio::sync::RwLock;

use crate::agent::Agent;
use crate::protocol::*;
use crate::state::{is_valid_id, NetworkRecord, NetworkStore, StateError, MAX_ID_LEN};

/// IPAM owner of the addresses this driver takes from the agent; the agent lets a Docker
/// endpoint use them without taking them over, so only `ReleaseAddress` frees them.
pub use cilium_api::DOCKER_IPAM_OWNER as IPAM_OWNER;
pub const POOL_V4: &str = "CiliumPoolv4";
pub const POOL_V6: &str = "CiliumPoolv6";
/// Where the plugin looks for the veth peer before `Join`.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// Why a call failed; the message becomes the `Err` of the reply.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("invalid request body for {method}: {source}")]
    InvalidBody {
        method: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "invalid {kind} id '{id}': expected 1-{MAX_ID_LEN} characters of [0-9a-zA-Z_.-] \
         without '..'"
    )]
    InvalidId { kind: &'static str, id: String },
    #[error("unknown network {0}")]
    UnknownNetwork(String),
    #[error("network {0} already exists with other settings")]
    NetworkExists(String),
    #[error(
        "network {network}: pool {pool} is not the agent's {family} range {range}; create the \
         network with --ipam-driver cilium"
    )]
    ForeignPool {
        network: String,
        pool: String,
        family: FamilyName,
        range: String,
    },
    #[error("the agent has no {0} allocation range ({0} disabled)")]
    FamilyDisabled(FamilyName),
    #[error("requested pool {pool} is not the agent's {family} range {range}")]
    PoolMismatch {
        pool: String,
        family: FamilyName,
        range: String,
    },
    #[error("sub-pools are not supported (requested {0})")]
    SubPool(String),
    #[error("unknown pool {0} (expected {POOL_V4} or {POOL_V6})")]
    UnknownPool(String),
    #[error("endpoint {0} is already joined or was not created")]
    NotJoinable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cilium-agent: {op}: {source}")]
    Agent {
        op: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// `IPv4`/`IPv6` in messages (the API's own names are lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyName(pub Family);

impl fmt::Display for FamilyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self.0 {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

fn agent_err(op: impl Into<String>) -> impl FnOnce(ClientError) -> DriverError {
    let op = op.into();
    move |source| DriverError::Agent { op, source }
}

fn check_id(kind: &'static str, id: &str) -> Result<(), DriverError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(DriverError::InvalidId {
            kind,
            id: id.to_string(),
        })
    }
}

/// Name of the veth peer the agent leaves in the node's namespace for Docker to move:
/// `tmp` + the first 11 characters of the endpoint id (at most 14, a valid link name for a
/// checked id).
pub fn peer_name(endpoint_id: &str) -> String {
    format!("tmp{}", endpoint_id.get(..11).unwrap_or(endpoint_id))
}

/// `ip/32` or `ip/128`.
pub fn host_prefix(ip: IpAddr) -> String {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{bits}")
}

/// A parsed `address/prefix`, compared by value so `fd00::/112` equals `fd00:0::/112`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ip, prefix) = s.trim().split_once('/').ok_or(())?;
        let ip: IpAddr = ip.parse().map_err(drop)?;
        let prefix: u8 = prefix.parse().map_err(drop)?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(());
        }
        Ok(Cidr { ip, prefix })
    }
}

fn family_of_pool(pool_id: &str) -> Result<Family, DriverError> {
    match pool_id {
        POOL_V4 => Ok(Family::Ipv4),
        POOL_V6 => Ok(Family::Ipv6),
        other => Err(DriverError::UnknownPool(other.to_string())),
    }
}

fn pool_id(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => POOL_V4,
        Family::Ipv6 => POOL_V6,
    }
}

fn element(addressing: &NodeAddressing, family: Family) -> &NodeAddressingElement {
    match family {
        Family::Ipv4 => &addressing.ipv4,
        Family::Ipv6 => &addressing.ipv6,
    }
}

/// The agent's allocation range of `family`, parsed and as the agent wrote it.
fn agent_range(addressing: &NodeAddressing, family: Family) -> Result<(Cidr, &str), DriverError> {
    let element = element(addressing, family);
    let range = match (&element.alloc_range, element.enabled) {
        (Some(range), true) => range,
        _ => return Err(DriverError::FamilyDisabled(FamilyName(family))),
    };
    let cidr = range.parse().map_err(|()| {
        DriverError::Invalid(format!(
            "the agent's {} allocation range '{range}' is not a CIDR",
            FamilyName(family)
        ))
    })?;
    Ok((cidr, range))
}

fn router(addressing: &NodeAddressing, family: Family) -> Result<IpAddr, DriverError> {
    let element = element(addressing, family);
    match element.ip {
        Some(ip) if element.enabled => Ok(ip),
        _ => Err(DriverError::FamilyDisabled(FamilyName(family))),
    }
}

/// Parses `ip` or `ip/prefix` of the given family; empty is `None`.
fn parse_address(value: &str, family: Family) -> Result<Option<IpAddr>, DriverError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let ip = value.split('/').next().unwrap_or(value);
    match ip.parse::<IpAddr>() {
        Ok(ip) if Family::of(&ip) == family => Ok(Some(ip)),
        _ => Err(DriverError::Invalid(format!(
            "invalid {} address '{value}'",
            FamilyName(family)
        ))),
    }
}

/// The MTU of `docker network create -o com.docker.network.driver.mtu=N`, a string or a
/// number depending on how the option reached Docker.
fn network_mtu(options: Option<&HashMap<String, Value>>) -> Result<Option<u32>, DriverError> {
    let Some(value) = options
        .and_then(|o| o.get(GENERIC_OPTIONS))
        .and_then(|generic| generic.get(MTU_OPTION))
    else {
        return Ok(None);
    };
    let mtu = match value {
        Value::String(s) => s.trim().parse::<u32>().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    };
    match mtu {
        Some(mtu) if (68..=65535).contains(&mtu) => Ok(Some(mtu)),
        _ => Err(DriverError::Invalid(format!(
            "invalid {MTU_OPTION} {value}: expected a number from 68 to 65535"
        ))),
    }
}

/// The driver: the agent, the network records and the agent's node addressing.
#[derive(Debug)]
pub struct Driver<A> {
    agent: A,
    networks: NetworkStore,
    sys_class_net: PathBuf,
    addressing: RwLock<Option<Arc<NodeAddressing>>>,
    /// Endpoints joined to each sandbox (by sandbox key), to route a container on several
    /// cilium networks through the first one only (see [`Driver::join`]).
    sandboxes: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

impl<A: Agent> Driver<A> {
    pub fn new(agent: A, networks: NetworkStore) -> Self {
        Driver {
            agent,
            networks,
            sys_class_net: PathBuf::from(SYS_CLASS_NET),
            addressing: RwLock::new(None),
            sandboxes: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Looks for veth peers under `dir` instead of `/sys/class/net` (for tests).
    pub fn with_sys_class_net(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sys_class_net = dir.into();
        self
    }

    pub fn agent(&self) -> &A {
        &self.agent
    }

    /// Reads the node addressing from the agent and caches it.
    pub async fn refresh_addressing(&self) -> Result<Arc<NodeAddressing>, DriverError> {
        let addressing = Arc::new(
            self.agent
                .addressing()
                .await
                .map_err(agent_err("read the node addressing"))?,
        );
        *self.addressing.write().await = Some(Arc::clone(&addressing));
        Ok(addressing)
    }

    /// The cached node addressing, read from the agent if the start-up read failed.
    async fn addressing(&self) -> Result<Arc<NodeAddressing>, DriverError> {
        if let Some(addressing) = self.addressing.read().await.as_ref() {
            return Ok(Arc::clone(addressing));
        }
        self.refresh_addressing().await
    }

    fn network(&self, id: &str) -> Result<NetworkRecord, DriverError> {
        check_id("network", id)?;
        self.networks
            .load(id)?
            .ok_or_else(|| DriverError::UnknownNetwork(id.to_string()))
    }

    pub fn activate(&self) -> ActivateResponse {
        ActivateResponse {
            implements: &["NetworkDriver", "IpamDriver"],
        }
    }

    pub fn network_capabilities(&self) -> NetworkCapabilities {
        NetworkCapabilities {
            scope: "local",
            connectivity_scope: "local",
        }
    }

    pub async fn create_network(&self, req: CreateNetworkRequest) -> Result<Empty, DriverError> {
        let id = req.network_id;
        check_id("network", &id)?;
        let addressing = self.addressing().await?;
        let v4 = req.ipv4_data.unwrap_or_default();
        let v6 = req.ipv6_data.unwrap_or_default();
        for (family, data) in [(Family::Ipv4, &v4), (Family::Ipv6, &v6)] {
            if data.is_empty() {
                continue;
            }
            let (range, range_text) = agent_range(&addressing, family)?;
            if let Some(foreign) = data.iter().find(|d| d.pool.parse() != Ok(range)) {
                return Err(DriverError::ForeignPool {
                    network: id,
                    pool: foreign.pool.clone(),
                    family: FamilyName(family),
                    range: range_text.to_string(),
                });
            }
        }
        if v4.is_empty() && v6.is_empty() {
            return Err(DriverError::Invalid(format!(
                "network {id} has neither an IPv4 nor an IPv6 pool"
            )));
        }
        let record = NetworkRecord {
            mtu: network_mtu(req.options.as_ref())?,
            ipv4: !v4.is_empty(),
            ipv6: !v6.is_empty(),
            id,
        };
        match self.networks.load(&record.id)? {
            Some(existing) if existing == record => return Ok(Empty {}),
            Some(_) => return Err(DriverError::NetworkExists(record.id)),
            None => {}
        }
        self.networks.save(&record)?;
        tracing::info!(
            network = %record.id,
            ipv4 = record.ipv4,
            ipv6 = record.ipv6,
            mtu = ?record.mtu,
            "network created"
        );
        Ok(Empty {})
    }

    pub async fn delete_network(&self, req: NetworkRequest) -> Result<Empty, DriverError> {
        check_id("network", &req.network_id)?;
        if !self.networks.remove(&req.network_id)? {
            return Err(DriverError::UnknownNetwork(req.network_id));
        }
        tracing::info!(network = %req.network_id, "network deleted");
        Ok(Empty {})
    }

    pub async fn create_endpoint(
        &self,
        req: CreateEndpointRequest,
    ) -> Result<CreateEndpointResponse, DriverError> {
        check_id("endpoint", &req.endpoint_id)?;
        let network = self.network(&req.network_id)?;
        let iface = req.interface.unwrap_or_default();
        let addressing = AddressPair {
            ipv4: parse_address(&iface.address, Family::Ipv4)?,
            ipv6: parse_address(&iface.address_ipv6, Family::Ipv6)?,
        };
        if addressing.is_empty() {
            return Err(DriverError::Invalid(format!(
                "endpoint {}: Docker supplied no address; create the network with \
                 --ipam-driver cilium",
                req.endpoint_id
            )));
        }
        let mac = Some(iface.mac_address).filter(|m| !m.is_empty());
        let request = EndpointChangeRequest {
            docker_endpoint_id: Some(req.endpoint_id.clone()),
            docker_network_id: Some(req.network_id),
            addressing: Some(addressing),
            mac: mac.clone(),
            mtu: network.mtu,
            veth_peer_name: Some(peer_name(&req.endpoint_id)),
            ..EndpointChangeRequest::default()
        };
        let id = EndpointId::DockerEndpoint(req.endpoint_id);
        let endpoint = self
            .agent
            .endpoint_create(&id, &request)
            .await
            .map_err(agent_err(format!("create endpoint {id}")))?;
        tracing::info!(
            endpoint = %id,
            agent_id = endpoint.id,
            peer = ?request.veth_peer_name,
            "endpoint created"
        );
        // Docker refuses a MAC it already has; only fill in the one it left to the driver.
        let mac_address = match mac {
            None if !endpoint.mac.is_empty() => Some(endpoint.mac),
            _ => None,
        };
        Ok(CreateEndpointResponse {
            interface: InterfaceReply { mac_address },
        })
    }

    pub fn endpoint_oper_info(&self, _req: EndpointRequest) -> OperInfoResponse {
        OperInfoResponse { value: Empty {} }
    }

    pub async fn delete_endpoint(&self, req: EndpointRequest) -> Result<Empty, DriverError> {
        check_id("network", &req.network_id)?;
        check_id("endpoint", &req.endpoint_id)?;
        let id = EndpointId::DockerEndpoint(req.endpoint_id);
        match self.agent.endpoint_delete(&id).await {
            Ok(None) => tracing::info!(endpoint = %id, "endpoint deleted"),
            Ok(Some(partial)) => {
                tracing::warn!(endpoint = %id, "endpoint deleted, but: {}", partial.error)
            }
            Err(e) if e.status() == Some(404) => {
                tracing::debug!(endpoint = %id, "endpoint already gone")
            }
            Err(e) => return Err(agent_err(format!("delete endpoint {id}"))(e)),
        }
        Ok(Empty {})
    }

    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, DriverError> {
        check_id("endpoint", &req.endpoint_id)?;
        let network = self.network(&req.network_id)?;
        let peer = peer_name(&req.endpoint_id);
        // Docker moves the peer into the sandbox at the first Join, so a missing peer means
        // a second Join or an endpoint the agent never plumbed.
        if !self.sys_class_net.join(&peer).exists() {
            return Err(DriverError::NotJoinable(req.endpoint_id));
        }
        let addressing = self.addressing().await?;
        // Every cilium network routes through the same router: a sandbox's second cilium
        // endpoint gets no gateway and no router route (the first one's would collide, and the
        // container reaches everything through the first already).
        let first = {
            let mut sandboxes = self
                .sandboxes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let joined = sandboxes.entry(req.sandbox_key.clone()).or_default();
            let first = req.sandbox_key.is_empty() || joined.is_empty();
            if !joined.contains(&req.endpoint_id) {
                joined.push(req.endpoint_id.clone());
            }
            first
        };
        let mut reply = JoinResponse {
            interface_name: InterfaceName {
                src_name: peer,
                dst_prefix: "eth",
            },
            gateway: String::new(),
            gateway_ipv6: String::new(),
            static_routes: Vec::new(),
            disable_gateway_service: true,
        };
        for (family, used) in [(Family::Ipv4, network.ipv4), (Family::Ipv6, network.ipv6)] {
            if !used || !first {
                continue;
            }
            let router = router(&addressing, family)?;
            match family {
                Family::Ipv4 => reply.gateway = router.to_string(),
                Family::Ipv6 => reply.gateway_ipv6 = router.to_string(),
            }
            // The router is on-link, so Docker can install the default route via it.
            reply.static_routes.push(StaticRoute {
                destination: host_prefix(router),
                route_type: ROUTE_CONNECTED,
                next_hop: String::new(),
            });
        }
        tracing::info!(endpoint = %req.endpoint_id, sandbox = %req.sandbox_key, "joined");
        Ok(reply)
    }

    pub fn leave(&self, req: EndpointRequest) -> Empty {
        let mut sandboxes = self
            .sandboxes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sandboxes.retain(|_, joined| {
            joined.retain(|e| *e != req.endpoint_id);
            !joined.is_empty()
        });
        Empty {}
    }

    pub fn ipam_capabilities(&self) -> IpamCapabilities {
        IpamCapabilities {
            requires_mac_address: false,
            requires_request_replay: false,
        }
    }

    pub fn address_spaces(&self) -> AddressSpaces {
        AddressSpaces {
            local_default_address_space: "CiliumLocal",
            global_default_address_space: "CiliumGlobal",
        }
    }

    pub async fn request_pool(
        &self,
        req: RequestPoolRequest,
    ) -> Result<RequestPoolResponse, DriverError> {
        let family = if req.v6 { Family::Ipv6 } else { Family::Ipv4 };
        let addressing = self.addressing().await?;
        let (range, range_text) = agent_range(&addressing, family)?;
        if !req.pool.is_empty() && req.pool.parse() != Ok(range) {
            return Err(DriverError::PoolMismatch {
                pool: req.pool,
                family: FamilyName(family),
                range: range_text.to_string(),
            });
        }
        if !req.sub_pool.is_empty() {
            return Err(DriverError::SubPool(req.sub_pool));
        }
        Ok(RequestPoolResponse {
            pool_id: pool_id(family),
            pool: range_text.to_string(),
            data: HashMap::new(),
        })
    }

    pub fn release_pool(&self, req: PoolRequest) -> Result<Empty, DriverError> {
        family_of_pool(&req.pool_id).map(|_| Empty {})
    }

    pub async fn request_address(
        &self,
        req: AddressRequest,
    ) -> Result<RequestAddressResponse, DriverError> {
        let family = family_of_pool(&req.pool_id)?;
        let wanted = parse_address(&req.address, family)?;
        let is_gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
            .is_some_and(|t| t == GATEWAY_ADDRESS_TYPE);
        let ip = if is_gateway {
            // The router already exists on cilium_host; nothing to allocate.
            let addressing = self.addressing().await?;
            let router = router(&addressing, family)?;
            if wanted.is_some_and(|w| w != router) {
                return Err(DriverError::Invalid(format!(
                    "the gateway of a cilium network is the agent's router {router}, not {}",
                    req.address
                )));
            }
            router
        } else if let Some(ip) = wanted {
            self.agent
                .ipam_reserve(ip, IPAM_OWNER)
                .await
                .map_err(agent_err(format!("reserve {ip}")))?;
            ip
        } else {
            let pair = self
                .agent
                .ipam_allocate(family, IPAM_OWNER)
                .await
                .map_err(agent_err(format!(
                    "allocate an {} address",
                    FamilyName(family)
                )))?;
            let ip = match family {
                Family::Ipv4 => pair.ipv4,
                Family::Ipv6 => pair.ipv6,
            };
            ip.ok_or_else(|| {
                DriverError::Invalid(format!(
                    "the agent allocated no {} address",
                    FamilyName(family)
                ))
            })?
        };
        Ok(RequestAddressResponse {
            address: host_prefix(ip),
            data: HashMap::new(),
        })
    }

    pub async fn release_address(&self, req: AddressRequest) -> Result<Empty, DriverError> {
        let family = family_of_pool(&req.pool_id)?;
        let Some(ip) = parse_address(&req.address, family)? else {
            return Err(DriverError::Invalid(
                "ReleaseAddress without an address".into(),
            ));
        };
        let addressing = self.addressing().await?;
        if router(&addressing, family).is_ok_and(|r| r == ip) {
            return Ok(Empty {});
        }
        match self.agent.ipam_release(ip).await {
            Ok(()) => {}
            // Already released, e.g. with its endpoint.
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(agent_err(format!("release {ip}"))(e)),
        }
        Ok(Empty {})
    }
}

#[cfg(test)]
mod tests;
