//! The agent's part in the cluster (DESIGN §7): the overlay device or the direct routes, the
//! node registry ([`crate::cluster::Registry`]) and what the other nodes publish there
//! turned into datapath state: their endpoints' identities and tunnel endpoints in the
//! ipcache, their ranges in the tunnel map (or as routes), the masquerade exceptions, and
//! their identities in the policy resolution.
//!
//! Kvstore work never runs under the agent's lock: endpoint changes are queued to the
//! cluster thread, which publishes them (and retries what failed), and applies the other
//! nodes' events to the maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cilium_api::models::{NodeEntry, Status, StatusState};

use super::{lock, Agent};
use crate::cidr::Cidr;
use crate::cluster::{ClusterEvent, NodeRecord, Registry};
use crate::config::TunnelMode;
use crate::datapath::abi::IpcacheValue;
use crate::datapath::Prefix;
use crate::link::tunnel;

/// The file in the state dir that names the node's lease, resumed by the next run.
const LEASE_FILE: &str = "cluster-lease";

/// How often the cluster thread re-publishes what failed and re-reads identities.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// Work for the cluster thread.
#[derive(Debug)]
pub(super) enum Work {
    /// Another node changed.
    Event(ClusterEvent),
    /// A local endpoint address has this identity (0 = withdraw it).
    Publish(IpAddr, u32),
    /// Cluster identities changed in the kvstore: the ids and labels created (if any).
    Identities(Vec<(u32, crate::labels::LabelSet)>),
}

/// What the agent keeps of the cluster.
pub(super) struct Cluster {
    pub(super) registry: Mutex<Option<Arc<Registry>>>,
    work: Sender<Work>,
    /// Taken by the cluster thread when it starts.
    queue: Mutex<Option<Receiver<Work>>>,
    /// Other nodes' endpoint addresses as the ipcache holds them.
    pub(super) remote: Mutex<BTreeMap<IpAddr, IpcacheValue>>,
    /// The overlay device's index (0 = none).
    pub(super) tunnel_ifindex: u32,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

/// Errors of joining the cluster at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    #[error("cannot use --tunnel {mode}: {reason}")]
    Overlay { mode: &'static str, reason: String },
    #[error(transparent)]
    Registry(#[from] crate::cluster::ClusterError),
}

impl Cluster {
    /// A cluster with no registry yet (control-plane tests).
    pub(super) fn detached() -> Cluster {
        let (work, queue) = mpsc::channel();
        Cluster {
            registry: Mutex::new(None),
            work,
            queue: Mutex::new(Some(queue)),
            remote: Mutex::new(BTreeMap::new()),
            tunnel_ifindex: 0,
        }
    }

    /// Sets up the overlay (or removes it for direct routing) and joins the registry. The
    /// other nodes' events wait in the queue until [`Agent::start_cluster`].
    pub(super) fn join(
        agent_config: &crate::config::AgentConfig,
        node: &crate::node::Node,
        kv: Arc<dyn crate::kvstore::Kvstore>,
        with_datapath: bool,
    ) -> Result<Cluster, ClusterStartError> {
        let mut cluster = Cluster::detached();
        // The embedded store serves one node: no other node to reach, no overlay device.
        if with_datapath && agent_config.kvstore != "embedded" {
            cluster.tunnel_ifindex = setup_overlay(agent_config.tunnel)?;
        }
        let me = NodeRecord {
            name: node.name.clone(),
            ipv4: node.ipv4,
            ipv6: node.ipv6,
            ipv4_range: node.ipv4_range,
            ipv6_range: node.ipv6_range,
            tunnel_endpoint: match agent_config.tunnel {
                TunnelMode::Disabled => None,
                _ => node.ipv4,
            },
        };
        let events = cluster.work.clone();
        let registry = Registry::join(
            kv,
            me,
            crate::cluster::RegistryOptions {
                ttl: agent_config.kvstore_lease_ttl,
                lease_file: Some(agent_config.state_dir.join(LEASE_FILE)),
            },
            Box::new(move |event| {
                let _ = events.send(Work::Event(event));
            }),
        )?;
        *lock(&cluster.registry) = Some(Arc::new(registry));
        Ok(cluster)
    }

    /// Queues the publication of a local endpoint address (identity 0 withdraws it).
    pub(super) fn publish(&self, ip: IpAddr, identity: u32) {
        let _ = self.work.send(Work::Publish(ip, identity));
    }

    pub(super) fn registry(&self) -> Option<Arc<Registry>> {
        lock(&self.registry).clone()
    }
}

/// The overlay device of the mode, attached and known to the datapath; 0 for direct routing.
fn setup_overlay(mode: TunnelMode) -> Result<u32, ClusterStartError> {
    let kind = match mode {
        TunnelMode::Vxlan => tunnel::Overlay::Vxlan,
        TunnelMode::Geneve => tunnel::Overlay::Geneve,
        TunnelMode::Disabled => {
            tunnel::remove_overlay_devices().map_err(|e| ClusterStartError::Overlay {
                mode: mode.as_str(),
                reason: e.to_string(),
            })?;
            return Ok(0);
        }
    };
    let (index, _) =
        tunnel::ensure_overlay_device(kind).map_err(|e| ClusterStartError::Overlay {
            mode: mode.as_str(),
            reason: e.to_string(),
        })?;
    Ok(index)
}

impl Agent {
    /// The MTU endpoints get when the runtime asks for none: the underlay's (`--device`, else
    /// 1500) less the encapsulation when the overlay is in use.
    pub(super) fn default_mtu(&self) -> u32 {
        let underlay = self
            .config
            .device
            .as_deref()
            .and_then(|d| tunnel::device_mtu(d).ok().flatten())
            .unwrap_or(super::attach::DEFAULT_MTU);
        if self.cluster.tunnel_ifindex == 0 {
            underlay
        } else {
            underlay.saturating_sub(tunnel::OVERLAY_OVERHEAD)
        }
    }

    /// Attaches `from_overlay` to the overlay device and tells the datapath about it.
    pub(super) fn attach_overlay(&self, warnings: &mut Vec<String>) {
        let Some(dp) = &self.datapath else {
            return;
        };
        let index = self.cluster.tunnel_ifindex;
        if index != 0 {
            let device = match self.config.tunnel {
                TunnelMode::Geneve => tunnel::GENEVE_DEVICE,
                _ => tunnel::VXLAN_DEVICE,
            };
            if let Err(e) = dp.attach_overlay(device, index) {
                warnings.push(format!("overlay not attached: {e}"));
            }
        }
        if let Err(e) = dp.maps().set_tunnel_ifindex(index) {
            warnings.push(format!("overlay not configured in the datapath: {e}"));
        }
    }

    /// Starts the cluster thread: applies the other nodes' events, publishes this node's
    /// endpoints, follows the cluster identities. Ends with the agent.
    pub fn start_cluster(self: &Arc<Self>) {
        let Some(queue) = lock(&self.cluster.queue).take() else {
            return;
        };
        // Every local endpoint with an identity, published once at start.
        for (ip, id) in self.local_endpoint_identities() {
            self.cluster.publish(ip, id);
        }
        self.spawn_identity_watch();
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || cluster_loop(weak, queue));
    }

    /// Watches the kvstore's cluster identities and queues a resync on every change.
    fn spawn_identity_watch(self: &Arc<Self>) {
        let watch = match self
            .kvstore
            .watch_prefix(&crate::identity::keys::ids_prefix())
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch the cluster identities: {e}");
                return;
            }
        };
        let work = self.cluster.work.clone();
        let prefix = crate::identity::keys::ids_prefix();
        let _ = std::thread::Builder::new()
            .name("identity-watch".into())
            .spawn(move || {
                for event in watch {
                    // The allocator follows the same keys on a watch of its own, which may
                    // lag this one: a created identity is taken from the event itself.
                    // Only cluster-scope ids: another node's record cannot claim a reserved
                    // or a local (CIDR) id.
                    let cluster_scope = crate::identity::MIN_CLUSTER..crate::identity::MIN_LOCAL;
                    let created = match &event {
                        crate::kvstore::WatchEvent::Put { key, value } => key
                            .strip_prefix(&prefix)
                            .and_then(|id| id.parse::<u32>().ok())
                            .filter(|id| cluster_scope.contains(id))
                            .zip(serde_json::from_slice(value).ok())
                            .into_iter()
                            .collect(),
                        crate::kvstore::WatchEvent::Delete { .. } => Vec::new(),
                    };
                    if work.send(Work::Identities(created)).is_err() {
                        return;
                    }
                }
            });
    }

    /// Local endpoint addresses and their identities.
    fn local_endpoint_identities(&self) -> BTreeMap<IpAddr, u32> {
        let inner = lock(&self.inner);
        inner
            .endpoints
            .iter()
            .filter_map(|r| r.identity.as_ref().map(|i| (r, i.id)))
            .flat_map(|(r, id)| r.addresses().map(move |ip| (ip, id)))
            .collect()
    }

    /// Applies one event of another node.
    fn apply_cluster_event(&self, event: ClusterEvent) {
        match event {
            ClusterEvent::EndpointUpsert(e) => {
                let tunnel = match self.config.tunnel {
                    TunnelMode::Disabled => None,
                    _ => e.tunnel_endpoint,
                };
                let value = IpcacheValue::remote(e.identity, tunnel);
                lock(&self.cluster.remote).insert(e.ip, value);
                self.write_remote_endpoint(e.ip, Some(value));
            }
            ClusterEvent::EndpointDelete(ip) => {
                if lock(&self.cluster.remote).remove(&ip).is_some() {
                    self.write_remote_endpoint(ip, None);
                }
            }
            ClusterEvent::NodeUpsert(n) => {
                tracing::info!(node = %n.name, "node joined or changed");
                self.sync_nodes();
            }
            ClusterEvent::NodeDelete(name) => {
                tracing::info!(node = %name, "node left");
                self.sync_nodes();
            }
        }
    }

    /// Writes (or removes) a remote endpoint's ipcache entry, unless the address is a local
    /// endpoint's or the node's own.
    fn write_remote_endpoint(&self, ip: IpAddr, value: Option<IpcacheValue>) {
        let Some(dp) = &self.datapath else {
            return;
        };
        if value.is_none() {
            // What the address is without it: a full rewrite settles that.
            let inner = lock(&self.inner);
            if let Err(e) = self.sync_ipcache(&inner) {
                tracing::warn!("cannot update the ipcache: {e}");
            }
            return;
        }
        let local = {
            let inner = lock(&self.inner);
            let found = inner
                .endpoints
                .iter()
                .any(|r| r.addresses().any(|a| a == ip));
            found
        };
        if local || dp.host_addresses().contains(&ip) {
            tracing::warn!(%ip, "another node publishes an address of this node: ignored");
            return;
        }
        if let Err(e) = dp.maps().set_ipcache_value(Prefix::host(ip), value) {
            tracing::warn!(%ip, "cannot write the ipcache entry of a remote endpoint: {e}");
        }
    }

    /// Makes the tunnel map (or the routes), and the masquerade exceptions, follow the
    /// registered nodes.
    fn sync_nodes(&self) {
        let Some(registry) = self.cluster.registry() else {
            return;
        };
        let nodes = registry.nodes();
        let me = &self.node.name;
        let others: Vec<&NodeRecord> = nodes.iter().filter(|n| &n.name != me).collect();
        let ranges = |n: &NodeRecord| -> Vec<Cidr> {
            n.ipv4_range.into_iter().chain(n.ipv6_range).collect()
        };
        if self.datapath.is_some() {
            match self.config.tunnel {
                TunnelMode::Disabled => self.sync_routes(&others),
                _ => {
                    let desired: BTreeMap<Prefix, Ipv4Addr> = others
                        .iter()
                        .filter_map(|n| n.tunnel_endpoint.map(|t| (n, t)))
                        .flat_map(|(n, t)| {
                            ranges(n)
                                .into_iter()
                                .map(move |r| (Prefix::from_cidr(&r), t))
                        })
                        .collect();
                    if let Some(dp) = &self.datapath {
                        if let Err(e) = dp.maps().sync_tunnels(&desired) {
                            tracing::warn!("cannot update the tunnel map: {e}");
                        }
                    }
                }
            }
        }
        if let (Some(device), true, Some(range)) = (
            self.config.device.as_deref(),
            self.config.masquerade,
            self.node.ipv4_range,
        ) {
            let cluster: Vec<Cidr> = nodes.iter().flat_map(ranges).collect();
            if let Err(e) = tunnel::set_masquerade(&range, device, &cluster) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Direct routing: a route to each other node's ranges via its address.
    fn sync_routes(&self, others: &[&NodeRecord]) {
        let mut desired: BTreeMap<Cidr, IpAddr> = BTreeMap::new();
        for n in others {
            if let (Some(r), Some(a)) = (n.ipv4_range, n.ipv4) {
                desired.insert(r, IpAddr::V4(a));
            }
            if let (Some(r), Some(a)) = (n.ipv6_range, n.ipv6) {
                desired.insert(r, IpAddr::V6(a));
            }
        }
        let mut routed = lock(&self.cluster_routes);
        for (range, via) in &desired {
            if routed.get(range) == Some(via) {
                continue;
            }
            match tunnel::set_node_route(range, *via) {
                Ok(()) => {
                    routed.insert(*range, *via);
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let stale: Vec<Cidr> = routed
            .keys()
            .filter(|r| !desired.contains_key(r))
            .copied()
            .collect();
        for range in stale {
            if let Err(e) = tunnel::remove_node_route(&range) {
                tracing::warn!("{e}");
            }
            routed.remove(&range);
        }
    }

    /// Makes the policy resolution know exactly the identities the kvstore has (plus this
    /// node's local ones), recomputing the policies that change.
    fn sync_cluster_identities(&self, created: Vec<(u32, crate::labels::LabelSet)>) {
        let mut known: BTreeMap<u32, crate::labels::LabelSet> = self
            .identities
            .list()
            .into_iter()
            .map(|i| (i.id, i.labels))
            .collect();
        for (id, labels) in created {
            known.entry(id).or_insert(labels);
        }
        let mut inner = lock(&self.inner);
        let engine_ids: BTreeSet<u32> = inner.policy.identities().keys().copied().collect();
        let mut changed = BTreeSet::new();
        let added: Vec<(u32, crate::labels::LabelSet)> = known
            .iter()
            .filter(|(id, _)| !engine_ids.contains(id))
            .map(|(id, l)| (*id, l.clone()))
            .collect();
        if !added.is_empty() {
            tracing::debug!(count = added.len(), "identities of other nodes");
            changed.extend(inner.policy.add_identities(added).changed);
        }
        let cidr_ids: BTreeSet<u32> = inner.cidr_identities.values().copied().collect();
        for id in engine_ids {
            let cluster_scoped =
                (crate::identity::MIN_CLUSTER..crate::identity::MIN_LOCAL).contains(&id);
            if cluster_scoped
                && !known.contains_key(&id)
                && !cidr_ids.contains(&id)
                && inner.policy.policy(id).is_none()
            {
                changed.extend(inner.policy.remove_identity(id).changed);
            }
        }
        if !changed.is_empty() {
            self.sync_policy_maps(&inner, Some(&changed));
        }
    }

    /// `cilium node list`.
    pub fn node_list(&self) -> Vec<NodeEntry> {
        let Some(registry) = self.cluster.registry() else {
            return Vec::new();
        };
        registry
            .nodes()
            .into_iter()
            .map(|n| NodeEntry {
                local: n.name == self.node.name,
                name: n.name,
                ipv4: n.ipv4,
                ipv6: n.ipv6,
                ipv4_range: n.ipv4_range.map(|r| r.to_string()),
                ipv6_range: n.ipv6_range.map(|r| r.to_string()),
                tunnel_endpoint: n.tunnel_endpoint,
            })
            .collect()
    }

    /// The `Cluster` line of `cilium status`.
    pub(super) fn cluster_status(&self) -> Status {
        let Some(registry) = self.cluster.registry() else {
            return Status::new(StatusState::Disabled, "");
        };
        let status = registry.status();
        let mode = match self.config.tunnel {
            TunnelMode::Disabled => "direct routing".to_string(),
            m => format!("{} overlay", m.as_str()),
        };
        if status.healthy {
            Status::new(
                StatusState::Ok,
                format!("{} nodes, {mode}", registry.nodes().len()),
            )
        } else {
            Status::new(StatusState::Failure, status.message)
        }
    }

    /// Clean shutdown: a node without endpoints (drained) leaves the cluster at once. With
    /// endpoints the records stay until the lease runs out, so a restart (an upgrade) does
    /// not make the other nodes drop the routes to them in between.
    pub fn leave_cluster(&self) {
        let Some(registry) = lock(&self.cluster.registry).take() else {
            return;
        };
        if self.endpoint_count() > 0 {
            tracing::info!(
                "keeping this node's cluster records for the lease's lifetime (it has endpoints)"
            );
            return;
        }
        // The cluster thread may hold it for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut registry = registry;
        loop {
            match Arc::try_unwrap(registry) {
                Ok(r) => {
                    match r.leave() {
                        Ok(()) => tracing::info!("left the cluster"),
                        Err(e) => tracing::warn!("cannot deregister from the cluster: {e}"),
                    }
                    return;
                }
                Err(shared) if Instant::now() < deadline => {
                    registry = shared;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => {
                    tracing::warn!("cannot deregister from the cluster: the registry is busy");
                    return;
                }
            }
        }
    }
}

/// The cluster thread: applies queued work; every [`RESYNC_INTERVAL`] retries failed
/// publications and re-reads the identities.
fn cluster_loop(agent: Weak<Agent>, queue: Receiver<Work>) {
    // What the kvstore holds of this node's endpoints, and what it should.
    let mut published: BTreeMap<IpAddr, u32> = BTreeMap::new();
    let mut wanted: BTreeMap<IpAddr, u32> = BTreeMap::new();
    let mut next_resync = Instant::now() + RESYNC_INTERVAL;
    if let Some(a) = agent.upgrade() {
        // After a resumed lease the previous run's records are still there: what the agent
        // no longer has is withdrawn on the first round.
        if let Some(registry) = a.cluster.registry() {
            published = registry.published_endpoints();
        }
        a.sync_nodes();
        a.sync_cluster_identities(Vec::new());
    }
    loop {
        let timeout = next_resync.saturating_duration_since(Instant::now());
        let work = match queue.recv_timeout(timeout) {
            Ok(w) => Some(w),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(a) = agent.upgrade() else {
            return;
        };
        let mut identities = false;
        let mut created = Vec::new();
        match work {
            Some(Work::Event(e)) => a.apply_cluster_event(e),
            Some(Work::Publish(ip, 0)) => {
                wanted.remove(&ip);
            }
            Some(Work::Publish(ip, id)) => {
                wanted.insert(ip, id);
            }
            Some(Work::Identities(c)) => {
                identities = true;
                created.extend(c);
            }
            None => {
                next_resync = Instant::now() + RESYNC_INTERVAL;
                identities = true;
                // The registry re-publishes after a lost lease: start over from what it has.
            }
        }
        // Coalesce a burst of queued identity changes into one resync.
        while let Ok(w) = queue.try_recv() {
            match w {
                Work::Event(e) => a.apply_cluster_event(e),
                Work::Publish(ip, 0) => {
                    wanted.remove(&ip);
                }
                Work::Publish(ip, id) => {
                    wanted.insert(ip, id);
                }
                Work::Identities(c) => {
                    identities = true;
                    created.extend(c);
                }
            }
        }
        if identities {
            a.sync_cluster_identities(created);
        }
        if let Some(registry) = a.cluster.registry() {
            publish_changes(&registry, &wanted, &mut published);
        }
    }
}

/// Publishes what `wanted` has and `published` does not, withdraws the rest; what fails
/// stays different and is retried on the next round.
fn publish_changes(
    registry: &Registry,
    wanted: &BTreeMap<IpAddr, u32>,
    published: &mut BTreeMap<IpAddr, u32>,
) {
    for (ip, id) in wanted {
        if published.get(ip) == Some(id) {
            continue;
        }
        match registry.publish_endpoint(*ip, *id) {
            Ok(()) => {
                published.insert(*ip, *id);
            }
            Err(e) => tracing::warn!(%ip, "cannot publish the endpoint address: {e}"),
        }
    }
    let stale: Vec<IpAddr> = published
        .keys()
        .filter(|ip| !wanted.contains_key(ip))
        .copied()
        .collect();
    for ip in stale {
        match registry.withdraw_endpoint(ip) {
            Ok(()) => {
                published.remove(&ip);
            }
            Err(e) => tracing::warn!(%ip, "cannot withdraw the endpoint address: {e}"),
        }
    }
}
