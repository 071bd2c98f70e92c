//! The agent: node addressing, IPAM and the endpoint registry behind one lock, with every
//! change written to the state directory before it is acknowledged. The API server only
//! turns requests into calls on this type.

mod attach;
mod cluster;
mod datapath;
mod policy;
mod process;
mod proxy;
mod restore;
mod runtime;
mod service;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use cilium_api::endpoint_id::validate_name;
use cilium_api::models::{
    ConfigurationMap, DaemonConfiguration, DaemonConfigurationResponse, Endpoint,
    EndpointChangeRequest, EndpointState, Family, IpamAllocation, IpamResponse, LabelConfiguration,
    LabelsModifier, Status, StatusResponse, StatusState,
};
use cilium_api::EndpointId;

use crate::cidr::Cidr;
use crate::config::AgentConfig;
use crate::datapath::DatapathError;
use crate::endpoint::{owner_endpoint, EndpointError, EndpointRecord, Registry};
use crate::identity::{IdentityAllocator, IdentityError};
use crate::ipam::{Ipam, IpamError, ROUTER_OWNER};
use crate::kvstore::{Embedded, Kvstore, KvstoreError};
use crate::labels::{Label, LabelError};
use crate::link::LinkError;
use crate::node::{AddressingReport, Node, NodeError};
use crate::options::{OptionError, OptionSet};
use crate::policy::{PolicyEngine, PolicyError};
use crate::state::{StateDir, StateError};

pub use policy::POLICY_ENFORCEMENT;
pub use process::{Daemon, RunError};
pub use runtime::{ContainerInfo, ContainerUpdate, LiveContainers};

/// Mutable agent options (`PATCH /config`).
pub const AGENT_OPTIONS: &[&str] = &["Debug"];

/// Called when the `Debug` option changes, to switch the log level.
pub type DebugSwitch = Box<dyn Fn(bool) + Send + Sync>;

/// Errors of API operations. The API server maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("cannot save state: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("{0}")]
    Invalid(String),
    #[error("address {ip} belongs to endpoint {endpoint}; delete the endpoint to release it")]
    AddressInUse { ip: IpAddr, endpoint: u16 },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

impl From<LabelError> for AgentError {
    fn from(e: LabelError) -> Self {
        AgentError::Endpoint(e.into())
    }
}

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterStartError),
    #[error("cannot open the kvstore: {0}")]
    Kvstore(#[from] KvstoreError),
    #[error("cannot restore identities: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("cannot start the L7 proxy: {0}")]
    Proxy(String),
}

/// Result of deleting an endpoint: the endpoint as it was, and what could not be cleaned.
#[derive(Debug)]
pub struct DeleteOutcome {
    pub endpoint: Endpoint,
    pub errors: Vec<String>,
}

struct Inner {
    endpoints: Registry,
    state: StateDir,
    /// Endpoints whose links are being built or removed right now (without the lock held).
    attaching: HashSet<u16>,
    /// Rules, identities and the resolved policy of every local identity.
    policy: PolicyEngine,
    /// Identities of the prefixes the rules name.
    cidr_identities: BTreeMap<Cidr, u32>,
    /// Load-balanced services (`daemon::service`).
    services: crate::service::ServiceTable,
}

/// The agent of this node.
pub struct Agent {
    config: AgentConfig,
    node: Node,
    ipam: Arc<Ipam>,
    inner: Arc<Mutex<Inner>>,
    kvstore: Arc<dyn Kvstore>,
    identities: IdentityAllocator,
    options: Mutex<OptionSet>,
    /// Whether `cilium_host` has been set up by this process.
    host_ready: Mutex<bool>,
    debug_switch: DebugSwitch,
    /// Problems found while restoring state; shown by `cilium status`.
    warnings: Vec<String>,
    /// The eBPF datapath (absent only for control-plane tests).
    datapath: Option<Arc<crate::datapath::Datapath>>,
    /// `ContainerRuntime` of `cilium status`, kept by the Docker watcher.
    runtime_status: Mutex<Status>,
    /// The node registry and what other nodes publish (`daemon::cluster`).
    cluster: cluster::Cluster,
    /// Direct routing: the routes to other nodes' ranges this agent installed.
    cluster_routes: Mutex<BTreeMap<Cidr, std::net::IpAddr>>,
    /// The L7 proxy (`daemon::proxy`); absent without a datapath or a tokio runtime.
    proxy: Option<proxy::AgentProxy>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is applied in memory only after it was validated, so a
    // panic in another request cannot leave half-applied state behind: keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Agent {
    /// Settles the node addressing, opens (locks) the state directory and restores state.
    pub fn start(config: AgentConfig, debug_switch: DebugSwitch) -> Result<Agent, StartError> {
        let node = Node::resolve(&config)?;
        let ipam = Ipam::new(node.ipv4_range, node.ipv6_range)?;
        let state = StateDir::open(&config.state_dir)?;
        let mut endpoints = Registry::default();
        let mut warnings = restore::restore(&state, &ipam, &mut endpoints, config.restore)?;
        let kvstore: Arc<dyn Kvstore> = if config.kvstore == "embedded" {
            let embedded = Embedded::open(&config.state_dir)?;
            warnings.extend(embedded.warnings());
            Arc::new(embedded)
        } else {
            crate::kvstore::connect(&config.kvstore, &config.kvstore_opts, &config.state_dir)?
        };
        let identities = IdentityAllocator::new(Arc::clone(&kvstore), &node.name)?;
        let mut engine = PolicyEngine::new(config.enable_policy);
        for identity in identities.list() {
            engine.add_identity(identity.id, identity.labels);
        }
        let mut options = OptionSet::new(AGENT_OPTIONS);
        options.set("Debug", config.debug);
        let datapath = match &config.bpf_root {
            Some(root) => Some(Arc::new(crate::datapath::Datapath::open(
                root,
                config.proxy_sockmap,
            )?)),
            None => None,
        };
        let cluster =
            cluster::Cluster::join(&config, &node, Arc::clone(&kvstore), datapath.is_some())?;
        let proxy = match datapath {
            Some(_) => Some(proxy::AgentProxy::start(&config).map_err(StartError::Proxy)?),
            None => None,
        };
        let mut agent = Agent {
            config,
            node,
            ipam: Arc::new(ipam),
            inner: Arc::new(Mutex::new(Inner {
                endpoints,
                state,
                attaching: HashSet::new(),
                policy: engine,
                cidr_identities: BTreeMap::new(),
                services: Default::default(),
            })),
            kvstore,
            identities,
            options: Mutex::new(options),
            host_ready: Mutex::new(false),
            debug_switch,
            warnings: Vec::new(),
            datapath,
            runtime_status: Mutex::new(Status::new(
                StatusState::Disabled,
                "Docker integration turned off (--docker is empty)",
            )),
            cluster,
            cluster_routes: Mutex::new(BTreeMap::new()),
            proxy,
        };
        if let Some(socket) = &agent.config.docker {
            agent.set_container_runtime(
                StatusState::Failure,
                format!("not connected to Docker at unix://{} yet", socket.display()),
            );
        }
        agent.restore_policy(&mut warnings)?;
        agent.restore_services(&mut warnings)?;
        agent.attach_overlay(&mut warnings);
        agent.reconcile_datapath(&mut warnings);
        agent.warnings = warnings;
        Ok(agent)
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Problems found while restoring state.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of endpoints.
    pub fn endpoint_count(&self) -> usize {
        lock(&self.inner).endpoints.len()
    }

    /// Endpoints by state, identities, policy revision and rules for `GET /metrics`
    /// ([`crate::metrics`]).
    pub fn metric_counts(&self) -> crate::metrics::AgentCounts {
        let mut counts = crate::metrics::AgentCounts {
            identities: self.identities.list().len() as u64,
            ..Default::default()
        };
        let inner = lock(&self.inner);
        for record in inner.endpoints.iter() {
            counts.count_endpoint(record.state);
        }
        counts.policy_revision = inner.policy.revision();
        counts.policy_rules = inner.policy.rule_count() as u64;
        counts
    }

    /// The node addressing lines printed at start.
    pub fn addressing_report(&self) -> String {
        let pool = |f| {
            self.ipam
                .pool(f)
                .ok()
                .map(|p| (p.router(), p.alloc_range()))
        };
        let v4 = pool(Family::Ipv4);
        let v6 = pool(Family::Ipv6);
        AddressingReport {
            node: &self.node,
            ipv4_router: v4.map(|p| p.0),
            ipv6_router: v6.map(|p| p.0),
            ipv4_alloc: v4.map(|p| p.1),
            ipv6_alloc: v6.map(|p| p.1),
        }
        .to_string()
    }

    /// `GET /healthz`.
    pub fn status(&self) -> StatusResponse {
        let count = self.endpoint_count();
        let cilium = if self.warnings.is_empty() {
            Status::new(StatusState::Ok, format!("{count} endpoints"))
        } else {
            Status::new(StatusState::Warning, self.warnings.join("; "))
        };
        let kvstore = match self.kvstore.status() {
            Ok(msg) => Status::new(StatusState::Ok, msg),
            Err(e) => Status::new(StatusState::Failure, e.to_string()),
        };
        StatusResponse {
            cilium,
            kvstore,
            container_runtime: self.container_runtime(),
            kubernetes: Status::new(StatusState::Disabled, ""),
            ipam: self.ipam.status(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            datapath: self.datapath_status(),
            cluster: Some(self.cluster_status()),
            proxy: self.datapath.is_some().then(|| self.proxy_status()),
        }
    }

    /// `GET /config`.
    pub fn configuration(&self) -> DaemonConfigurationResponse {
        let c = &self.config;
        let show = |v: Option<String>| v.unwrap_or_default();
        let immutable: ConfigurationMap = [
            ("socket-path", c.socket_path.display().to_string()),
            ("state-dir", c.state_dir.display().to_string()),
            (
                "ipv4-range",
                show(self.node.ipv4_range.map(|r| r.to_string())),
            ),
            (
                "ipv6-range",
                show(self.node.ipv6_range.map(|r| r.to_string())),
            ),
            ("disable-ipv4", (!c.enable_ipv4).to_string()),
            ("disable-ipv6", (!c.enable_ipv6).to_string()),
            ("node-address", show(c.node_address.map(|a| a.to_string()))),
            ("node-name", self.node.name.clone()),
            ("restore", c.restore.to_string()),
            ("labels", c.label_filter.describe().join(",")),
            ("kvstore", c.kvstore.clone()),
            (
                "kvstore-opt",
                c.kvstore_opts
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "kvstore-lease-ttl",
                c.kvstore_lease_ttl.as_secs().to_string(),
            ),
            ("tunnel", c.tunnel.as_str().to_string()),
            ("device", show(c.device.clone())),
            ("masquerade", c.masquerade.to_string()),
            ("proxy-sockmap", c.proxy_sockmap.to_string()),
            (
                "access-log",
                show(c.access_log.as_ref().map(|p| p.display().to_string())),
            ),
            (
                "config",
                show(c.config_file.as_ref().map(|p| p.display().to_string())),
            ),
            (
                "bpf-root",
                show(c.bpf_root.as_ref().map(|p| p.display().to_string())),
            ),
            (
                "docker",
                show(c.docker.as_ref().map(|p| format!("unix://{}", p.display()))),
            ),
            (
                "prometheus-serve-addr",
                show(c.prometheus_serve_addr.map(|a| a.to_string())),
            ),
            (
                "log-format",
                match c.log_format {
                    crate::config::LogFormat::Text => "text",
                    crate::config::LogFormat::Json => "json",
                }
                .to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut mutable = lock(&self.options).to_map();
        mutable.insert(
            POLICY_ENFORCEMENT.to_string(),
            self.enforcement().to_string(),
        );
        DaemonConfigurationResponse {
            node_name: self.node.name.clone(),
            addressing: self.ipam.node_addressing(),
            configuration: DaemonConfiguration { mutable, immutable },
        }
    }

    /// `PATCH /config`.
    pub fn patch_configuration(
        &self,
        changes: &ConfigurationMap,
    ) -> Result<DaemonConfigurationResponse, AgentError> {
        let mut changes = changes.clone();
        let enforcement = changes
            .keys()
            .find(|k| k.eq_ignore_ascii_case(POLICY_ENFORCEMENT))
            .cloned()
            .and_then(|k| changes.remove(&k));
        // Validate everything before changing anything.
        let mode = enforcement
            .as_deref()
            .map(policy::parse_enforcement)
            .transpose()?;
        let changed = lock(&self.options).apply(&changes)?;
        if let Some(mode) = mode {
            self.set_enforcement(mode);
        }
        for (name, on) in changed {
            tracing::info!(option = %name, enabled = on, "agent option changed");
            if name == "Debug" {
                (self.debug_switch)(on);
                self.set_datapath_debug(on);
            }
        }
        Ok(self.configuration())
    }

    // ---- IPAM ----

    fn persist_ipam(&self, inner: &Inner) -> Result<(), StateError> {
        save_ipam(&self.ipam, inner)
    }

    /// `POST /ipam`.
    pub fn ipam_allocate(
        &self,
        family: Option<Family>,
        owner: &str,
    ) -> Result<IpamResponse, AgentError> {
        check_owner(owner)?;
        let inner = lock(&self.inner);
        let pair = self.ipam.allocate(family, owner)?;
        if let Err(e) = self.persist_ipam(&inner) {
            self.ipam.release_pair(&pair);
            return Err(e.into());
        }
        tracing::debug!(?pair, owner, "allocated");
        Ok(IpamResponse {
            endpoint: pair,
            host_addressing: self.ipam.node_addressing(),
        })
    }

    /// `POST /ipam/{ip}`.
    pub fn ipam_reserve(&self, ip: IpAddr, owner: &str) -> Result<IpamAllocation, AgentError> {
        check_owner(owner)?;
        let inner = lock(&self.inner);
        self.ipam.reserve(ip, owner)?;
        if let Err(e) = self.persist_ipam(&inner) {
            // Undo the reservation made just above; it cannot fail.
            let _ = self.ipam.release(ip);
            return Err(e.into());
        }
        Ok(IpamAllocation {
            ip,
            owner: owner.to_string(),
        })
    }

    /// `DELETE /ipam/{ip}`. Addresses of live endpoints are released by deleting the endpoint.
    pub fn ipam_release(&self, ip: IpAddr) -> Result<IpamAllocation, AgentError> {
        let inner = lock(&self.inner);
        if let Some(endpoint) = self.ipam.owner(&ip).as_deref().and_then(owner_endpoint) {
            if inner.endpoints.contains(endpoint) {
                return Err(AgentError::AddressInUse { ip, endpoint });
            }
        }
        // An IPAM driver's address in use by a live endpoint: a late release for an endpoint
        // that was cleaned up already must not take it from the one using it now.
        if self.ipam.owner(&ip).as_deref() == Some(cilium_api::DOCKER_IPAM_OWNER) {
            if let Some(record) = inner
                .endpoints
                .iter()
                .find(|r| r.addresses().any(|a| a == ip))
            {
                return Err(AgentError::AddressInUse {
                    ip,
                    endpoint: record.id,
                });
            }
        }
        let owner = self.ipam.release(ip)?;
        if let Err(e) = self.persist_ipam(&inner) {
            // Put the allocation back as it was; the address was ours a moment ago.
            let _ = self.ipam.reserve(ip, &owner);
            return Err(e.into());
        }
        tracing::debug!(%ip, owner, "released");
        Ok(IpamAllocation { ip, owner })
    }

    // ---- endpoints ----

    /// `GET /endpoint`, with an optional label filter.
    pub fn endpoint_list(&self, filter: &[Label]) -> Vec<Endpoint> {
        let inner = lock(&self.inner);
        inner
            .endpoints
            .iter()
            .filter(|r| r.matches_labels(filter))
            .map(|r| r.to_api())
            .collect()
    }

    /// `GET /endpoint/{id}`.
    pub fn endpoint_get(&self, id: &EndpointId) -> Result<Endpoint, AgentError> {
        let inner = lock(&self.inner);
        let record = inner.endpoints.find(id)?;
        let mut api = record.to_api();
        api.policy = self.endpoint_policy(&inner, record);
        Ok(api)
    }

    /// `PUT /endpoint/{id}`: creates an endpoint and claims its addresses in IPAM. With a
    /// `netns-path`, the agent also allocates the addresses and builds the links.
    pub fn endpoint_create(
        &self,
        id: &EndpointId,
        mut req: EndpointChangeRequest,
    ) -> Result<Endpoint, AgentError> {
        if req.netns_path.is_some() && req.veth_peer_name.is_some() {
            return Err(AgentError::Invalid(
                "netns-path and veth-peer-name exclude each other: the agent either builds the \
                 container side itself (CNI) or leaves it to the runtime (Docker)"
                    .into(),
            ));
        }
        if req.netns_path.is_some() {
            return self.endpoint_attach(id, req);
        }
        if req.veth_peer_name.is_some() {
            return self.endpoint_attach_docker(id, req);
        }
        if req.container_interface_name.is_some() || req.mtu.is_some() {
            return Err(AgentError::Invalid(
                "container-interface-name and mtu need a netns-path".into(),
            ));
        }
        merge_path_id(id, &mut req)?;
        let mut inner = lock(&self.inner);
        let mut record = self.new_record(&mut inner, id, &req)?;
        let claims = self.claim_addresses(&inner, &record)?;
        if let Err(e) = self.resolve_identity(&mut inner, &mut record) {
            self.undo_claims(&claims);
            return Err(e);
        }
        if let Err(e) = self.persist_new_endpoint(&inner, &record) {
            self.undo_claims(&claims);
            let _ = self.persist_ipam(&inner);
            self.release_endpoint_identity(&mut inner, &record);
            return Err(e.into());
        }
        tracing::info!(endpoint = record.id, container = %record.container_id, "endpoint created");
        let api = record.to_api();
        inner.endpoints.insert(record);
        Ok(api)
    }

    /// Writes a new endpoint's file and the IPAM state. On failure the file is removed again
    /// (best effort: a leftover would be reconciled away at the next start anyway); the caller
    /// undoes its in-memory changes and saves IPAM once more.
    fn persist_new_endpoint(
        &self,
        inner: &Inner,
        record: &EndpointRecord,
    ) -> Result<(), StateError> {
        let path = inner.state.endpoint_path(record.id);
        let saved = inner
            .state
            .write_json(&path, record)
            .and_then(|()| self.persist_ipam(inner));
        if saved.is_err() {
            let _ = inner.state.remove(&path);
        }
        saved
    }

    /// A validated record for a create request, with its id taken (not yet registered).
    fn new_record(
        &self,
        inner: &mut Inner,
        id: &EndpointId,
        req: &EndpointChangeRequest,
    ) -> Result<EndpointRecord, AgentError> {
        if let Ok(existing) = inner.endpoints.lookup(id) {
            return Err(EndpointError::Conflict(format!(
                "endpoint {id} already exists (endpoint {existing})"
            ))
            .into());
        }
        if req.id == Some(0) {
            return Err(AgentError::Invalid("endpoint ids are 1-65535".into()));
        }
        if let Some(n) = req.id {
            if inner.endpoints.contains(n) {
                return Err(EndpointError::Conflict(format!("endpoint {n} already exists")).into());
            }
        }
        let mut record = EndpointRecord::from_request(0, req)?;
        inner.endpoints.check_unique(&record)?;
        record.id = match req.id {
            Some(n) => n,
            None => inner.endpoints.allocate_id()?,
        };
        Ok(record)
    }

    /// Makes every address of `record` owned by it in IPAM. All or nothing.
    fn claim_addresses(
        &self,
        inner: &Inner,
        record: &EndpointRecord,
    ) -> Result<Vec<Claim>, AgentError> {
        let tag = record.owner_tag();
        let mut claims: Vec<Claim> = Vec::new();
        for ip in record.addresses() {
            let result = self.claim_one(inner, ip, &tag);
            match result {
                Ok(claim) => claims.push(claim),
                Err(e) => {
                    self.undo_claims(&claims);
                    return Err(e);
                }
            }
        }
        Ok(claims)
    }

    fn claim_one(&self, inner: &Inner, ip: IpAddr, tag: &str) -> Result<Claim, AgentError> {
        let family = Family::of(&ip);
        if !self.ipam.enabled(family) {
            return Err(AgentError::Invalid(format!(
                "addressing.{family}: {family} is disabled on this agent"
            )));
        }
        match self.ipam.owner(&ip) {
            None => {
                self.ipam.reserve(ip, tag)?;
                Ok(Claim {
                    ip,
                    previous_owner: None,
                })
            }
            Some(owner) if owner == ROUTER_OWNER => {
                Err(IpamError::AlreadyAllocated { ip, owner }.into())
            }
            Some(owner) => match owner_endpoint(&owner) {
                Some(endpoint) if inner.endpoints.contains(endpoint) => {
                    Err(AgentError::AddressInUse { ip, endpoint })
                }
                _ => {
                    self.ipam.set_owner(&ip, tag)?;
                    Ok(Claim {
                        ip,
                        previous_owner: Some(owner),
                    })
                }
            },
        }
    }

    fn undo_claims(&self, claims: &[Claim]) {
        for claim in claims {
            // Each claim was made a moment ago under the same lock; undoing cannot conflict.
            let _ = match &claim.previous_owner {
                Some(owner) => self.ipam.set_owner(&claim.ip, owner),
                None => self.ipam.release(claim.ip).map(|_| ()),
            };
        }
    }

    /// `PATCH /endpoint/{id}`.
    pub fn endpoint_patch(
        &self,
        id: &EndpointId,
        req: EndpointChangeRequest,
    ) -> Result<Endpoint, AgentError> {
        let mut inner = lock(&self.inner);
        let current = inner.endpoints.find(id)?;
        let n = current.id;
        if req.id.is_some_and(|x| x != n) {
            return Err(AgentError::Invalid(
                "the endpoint id cannot be changed".into(),
            ));
        }
        if let Some(cid) = &req.container_id {
            if !current.container_id.is_empty() && *cid != current.container_id {
                return Err(AgentError::Invalid(format!(
                    "container-id of endpoint {n} is {} and cannot be changed",
                    current.container_id
                )));
            }
        }
        if req
            .addressing
            .as_ref()
            .is_some_and(|a| *a != current.addressing)
        {
            return Err(AgentError::Invalid(
                "the addressing of an endpoint cannot be changed; delete and re-create it".into(),
            ));
        }
        let mut updated = current.clone();
        updated.apply_fields(&req)?;
        if let Some(state) = req.state {
            updated.set_state(state, "state changed through the API")?;
        }
        inner.endpoints.check_unique(&updated)?;
        if req.labels.is_some() || req.state == Some(EndpointState::WaitingForIdentity) {
            self.resolve_identity(&mut inner, &mut updated)?;
        }
        self.save_endpoint(&mut inner, updated)
    }

    /// Writes a changed endpoint, then replaces it in memory.
    fn save_endpoint(
        &self,
        inner: &mut Inner,
        record: EndpointRecord,
    ) -> Result<Endpoint, AgentError> {
        inner
            .state
            .write_json(&inner.state.endpoint_path(record.id), &record)?;
        let api = record.to_api();
        if record.options.get("Debug") {
            tracing::info!(endpoint = record.id, state = %record.state, "endpoint updated");
        }
        if let Err(e) = self.sync_endpoint_datapath(inner, &record) {
            tracing::warn!(endpoint = record.id, "cannot update the datapath: {e}");
        }
        if let Err(e) = self.sync_endpoint_ipcache(inner, &record, true) {
            tracing::warn!("cannot update the ipcache: {e}");
        }
        inner.endpoints.insert(record);
        Ok(api)
    }

    /// `DELETE /endpoint/{id}`: removes the endpoint, its links if the agent made them, and
    /// releases its addresses. The endpoint is gone even when some cleanup fails; those
    /// failures are reported.
    pub fn endpoint_delete(&self, id: &EndpointId) -> Result<DeleteOutcome, AgentError> {
        let (n, plumbed) = {
            let inner = lock(&self.inner);
            match inner.endpoints.find(id) {
                Ok(record) => (record.id, !record.plumbing.is_empty()),
                Err(e) => {
                    drop(inner);
                    if matches!(e, EndpointError::NotFound(_)) {
                        self.remove_stale_links(id);
                    }
                    return Err(e.into());
                }
            }
        };
        if plumbed {
            return self.endpoint_detach(n);
        }
        let inner = lock(&self.inner);
        if inner.attaching.contains(&n) {
            return Err(EndpointError::Conflict(format!(
                "endpoint {n} is being attached or deleted; try again"
            ))
            .into());
        }
        drop(inner);
        self.forget_endpoint(n)
    }

    /// Removes endpoint `n` from the registry and the state directory and releases its
    /// addresses.
    fn forget_endpoint(&self, n: u16) -> Result<DeleteOutcome, AgentError> {
        let mut inner = lock(&self.inner);
        inner.attaching.remove(&n);
        let mut record = inner
            .endpoints
            .remove(n)
            .ok_or_else(|| EndpointError::NotFound(n.to_string()))?;
        // Every state may go to disconnected.
        let _ = record.set_state(EndpointState::Disconnected, "endpoint deleted");
        self.release_endpoint_identity(&mut inner, &record);
        let tag = record.owner_tag();
        let mut errors = Vec::new();
        for ip in record.addresses() {
            if self.ipam.owner(&ip).as_deref() == Some(tag.as_str()) {
                if let Err(e) = self.ipam.release(ip) {
                    errors.push(format!("release {ip}: {e}"));
                }
            }
        }
        if let Err(e) = inner.state.remove(&inner.state.endpoint_path(n)) {
            errors.push(e.to_string());
        }
        if let Err(e) = self.persist_ipam(&inner) {
            errors.push(e.to_string());
        }
        tracing::info!(endpoint = n, errors = errors.len(), "endpoint deleted");
        Ok(DeleteOutcome {
            endpoint: record.to_api(),
            errors,
        })
    }

    /// `GET /endpoint/{id}/labels`.
    pub fn endpoint_labels(&self, id: &EndpointId) -> Result<LabelConfiguration, AgentError> {
        let inner = lock(&self.inner);
        Ok(inner.endpoints.find(id)?.labels.clone())
    }

    /// `PUT /endpoint/{id}/labels`.
    pub fn endpoint_labels_modify(
        &self,
        id: &EndpointId,
        modifier: &LabelsModifier,
    ) -> Result<LabelConfiguration, AgentError> {
        let add = crate::labels::parse_list(&modifier.add)?;
        let delete = crate::labels::parse_list(&modifier.delete)?;
        let mut inner = lock(&self.inner);
        let mut updated = inner.endpoints.find(id)?.clone();
        updated.modify_labels(&add, &delete)?;
        self.resolve_identity(&mut inner, &mut updated)?;
        let labels = updated.labels.clone();
        self.save_endpoint(&mut inner, updated)?;
        Ok(labels)
    }

    /// `GET /endpoint/{id}/config`.
    pub fn endpoint_config(&self, id: &EndpointId) -> Result<ConfigurationMap, AgentError> {
        let inner = lock(&self.inner);
        Ok(inner.endpoints.find(id)?.options.to_map())
    }

    /// `PATCH /endpoint/{id}/config`.
    pub fn endpoint_config_patch(
        &self,
        id: &EndpointId,
        changes: &ConfigurationMap,
    ) -> Result<ConfigurationMap, AgentError> {
        let mut inner = lock(&self.inner);
        let mut updated = inner.endpoints.find(id)?.clone();
        for (name, on) in updated.options.apply(changes)? {
            let message = format!(
                "option {name} {}",
                crate::options::render(on).to_lowercase()
            );
            updated.log(cilium_api::models::StatusCode::Ok, &message);
        }
        let identity = updated.identity.as_ref().map_or(0, |i| i.id);
        updated.policy_enabled = updated.options.get("Policy")
            && inner.policy.policy(identity).is_some_and(|p| p.enforcing());
        let options = updated.options.to_map();
        self.save_endpoint(&mut inner, updated)?;
        Ok(options)
    }
}

fn save_ipam(ipam: &Ipam, inner: &Inner) -> Result<(), StateError> {
    inner
        .state
        .write_json(&inner.state.ipam_path(), &ipam.to_state())
}

/// An address claimed for an endpoint, with whom it belonged to before.
#[derive(Debug)]
struct Claim {
    ip: IpAddr,
    previous_owner: Option<String>,
}

/// Owners named by API callers must not impersonate the agent's own tags.
fn check_owner(owner: &str) -> Result<(), AgentError> {
    if owner.is_empty() {
        return Err(AgentError::Invalid(
            "missing owner: say who the address is for (?owner=...)".into(),
        ));
    }
    validate_name(owner).map_err(|e| AgentError::Invalid(format!("invalid owner: {e}")))?;
    if owner == ROUTER_OWNER || owner.starts_with("endpoint:") {
        return Err(AgentError::Invalid(format!(
            "owner '{owner}' is reserved for the agent's own records"
        )));
    }
    Ok(())
}

/// Puts the id from the path into the request, refusing a body that says otherwise.
fn merge_path_id(id: &EndpointId, req: &mut EndpointChangeRequest) -> Result<(), AgentError> {
    let (slot, value, field): (&mut Option<String>, &str, &str) = match id {
        EndpointId::CiliumLocal(n) => {
            if req.id.is_some_and(|b| b != *n) {
                return Err(AgentError::Invalid(format!(
                    "the path names endpoint {n} but the body says id {}",
                    req.id.unwrap_or_default()
                )));
            }
            req.id = Some(*n);
            return Ok(());
        }
        EndpointId::ContainerId(v) => (&mut req.container_id, v, "container-id"),
        EndpointId::DockerEndpoint(v) => (&mut req.docker_endpoint_id, v, "docker-endpoint-id"),
        EndpointId::ContainerName(v) => (&mut req.container_name, v, "container-name"),
        EndpointId::PodName(v) => (&mut req.pod_name, v, "pod-name"),
    };
    match slot {
        Some(body) if body != value => Err(AgentError::Invalid(format!(
            "the path names {id} but the body says {field} {body}"
        ))),
        _ => {
            *slot = Some(value.to_string());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
