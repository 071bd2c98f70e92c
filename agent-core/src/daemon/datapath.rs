//! The agent's side of the datapath: map contents from endpoints, identities and policy, and
//! the read-outs behind `cilium bpf ... list`, `cilium monitor` and the status counters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cilium_api::models::{
    BpfCtEntry, BpfEndpointEntry, BpfIpcacheEntry, BpfLbBackend, BpfLbEntry, BpfPolicyDump,
    BpfPolicyEntry, DatapathCounter, DatapathStatus, MonitorEvent, Status, StatusState,
};
use cilium_api::EndpointId;

use super::{lock, Agent, AgentError, Inner};
use crate::datapath::abi::{self, PolicyKey};
use crate::datapath::{
    ipcache_desired, Datapath, DatapathError, EndpointEntry, PolicyVerdict, Prefix,
};
use crate::endpoint::EndpointRecord;
use crate::policy::{Enforcement, ResolvedPolicy, Verdict};

/// How often expired conntrack entries are collected and the node's addresses re-read.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// The datapath entries of one direction of a resolved policy, with the L4 markers.
fn direction_entries(
    endpoint: u16,
    direction: u8,
    table: &crate::policy::DirectionTable,
    proxy_port: &dyn Fn(u16) -> u16,
    out: &mut BTreeMap<PolicyKey, PolicyVerdict>,
) {
    let key = |identity: u32, port: u16, proto: u8| PolicyKey {
        identity,
        endpoint_id: endpoint,
        dport: port.to_be(),
        proto,
        direction,
        pad: 0,
    };
    let mut l4_identities = Vec::new();
    for (k, verdict) in &table.entries {
        let identity = k.identity.unwrap_or(0);
        if k.port == 0 && k.proto != 0 {
            // Never matched by the lookup (a port is needed for an L4 key).
            continue;
        }
        let v = match verdict {
            Verdict::Allow => PolicyVerdict {
                action: abi::ACTION_ALLOW,
                proxy_port: 0,
            },
            // TCP goes through the L7 proxy on its port (0: none, the datapath drops);
            // other protocols are allowed at L4.
            Verdict::Redirect(_) => PolicyVerdict {
                action: abi::ACTION_REDIRECT,
                proxy_port: if k.port != 0 && (k.proto == 6 || k.proto == 0) {
                    proxy_port(k.port)
                } else {
                    0
                },
            },
        };
        out.insert(key(identity, k.port, k.proto), v);
        if k.port != 0 {
            l4_identities.push(identity);
        }
    }
    for identity in l4_identities {
        out.entry(key(identity, 0, 0)).or_insert(PolicyVerdict {
            action: abi::ACTION_L4_ONLY,
            proxy_port: 0,
        });
    }
}

/// Enforcement flags and entries of an endpoint's policy.
pub(super) fn policy_entries(
    endpoint: u16,
    policy: Option<&ResolvedPolicy>,
    mode: Enforcement,
    proxy_port: &dyn Fn(u16) -> u16,
) -> (u16, BTreeMap<PolicyKey, PolicyVerdict>) {
    let mut entries = BTreeMap::new();
    let mut flags = 0;
    match policy {
        Some(p) => {
            if p.ingress.enforcing {
                flags |= abi::EP_F_POLICY_INGRESS;
                direction_entries(
                    endpoint,
                    abi::DIR_INGRESS,
                    &p.ingress,
                    proxy_port,
                    &mut entries,
                );
            }
            if p.egress.enforcing {
                flags |= abi::EP_F_POLICY_EGRESS;
                direction_entries(
                    endpoint,
                    abi::DIR_EGRESS,
                    &p.egress,
                    proxy_port,
                    &mut entries,
                );
            }
        }
        // No identity yet: nothing is known to be allowed.
        None if mode == Enforcement::Always => {
            flags = abi::EP_F_POLICY_INGRESS | abi::EP_F_POLICY_EGRESS;
        }
        None => {}
    }
    (flags, entries)
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').take(6).enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    mac
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether the datapath serves this endpoint: the agent made its device.
pub(super) fn has_device(record: &EndpointRecord) -> bool {
    !record.plumbing.is_empty() && record.interface_index != 0 && !record.interface_name.is_empty()
}

/// The addresses of the node's own interfaces (the `host` identity).
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Agent {
    fn datapath(&self) -> Result<&Arc<Datapath>, AgentError> {
        self.datapath.as_ref().ok_or_else(|| {
            DatapathError::Disabled("the agent runs without a datapath".into()).into()
        })
    }

    /// What the maps should hold for an endpoint.
    fn endpoint_entry(&self, inner: &Inner, record: &EndpointRecord) -> EndpointEntry {
        let identity = record.identity.as_ref().map_or(0, |i| i.id);
        let policy = (identity != 0)
            .then(|| inner.policy.policy(identity))
            .flatten();
        let (mut flags, policy) = if record.options.get("Policy") {
            policy_entries(
                record.id,
                policy.as_deref(),
                inner.policy.mode(),
                &|dport| self.proxy_port(dport),
            )
        } else {
            // Enforcement turned off for this endpoint: no policy flags, no entries.
            (0, Default::default())
        };
        if record.options.get("Debug") {
            flags |= abi::EP_F_DEBUG;
        }
        EndpointEntry {
            id: record.id,
            ifindex: record.interface_index,
            identity,
            flags,
            mac: parse_mac(&record.mac),
            node_mac: parse_mac(&record.host_mac),
            addresses: record.addresses().collect(),
            policy,
        }
    }

    /// Writes an endpoint's entries (policy, then addresses and flags).
    pub(super) fn sync_endpoint_datapath(
        &self,
        inner: &Inner,
        record: &EndpointRecord,
    ) -> Result<(), AgentError> {
        let Some(dp) = &self.datapath else {
            return Ok(());
        };
        if !has_device(record) {
            return Ok(());
        }
        let entry = self.endpoint_entry(inner, record);
        dp.maps().sync_endpoint(&entry)?;
        Ok(())
    }

    /// Makes a new endpoint enforced: entries, then the programs on its device.
    pub(super) fn enforce_endpoint(
        &self,
        inner: &Inner,
        record: &EndpointRecord,
    ) -> Result<(), AgentError> {
        let Some(dp) = &self.datapath else {
            return Ok(());
        };
        // Programs first: until the entries exist they drop everything to and from the
        // device (fail closed), while entries without programs would let other endpoints
        // deliver to it unchecked.
        dp.attach(&record.interface_name, record.interface_index)?;
        let written = self
            .sync_endpoint_datapath(inner, record)
            .and_then(|()| self.sync_endpoint_ipcache(inner, record, true));
        if let Err(e) = written {
            dp.maps().remove_endpoint(record.id);
            dp.detach(&record.interface_name, record.interface_index);
            return Err(e);
        }
        Ok(())
    }

    /// Removes an endpoint from the maps and its programs from its device.
    pub(super) fn unenforce_endpoint(&self, inner: &Inner, record: &EndpointRecord) {
        let Some(dp) = &self.datapath else {
            return;
        };
        dp.maps().remove_endpoint(record.id);
        if has_device(record) {
            dp.detach(&record.interface_name, record.interface_index);
        }
        if let Err(e) = self.sync_endpoint_ipcache(inner, record, false) {
            tracing::warn!(endpoint = record.id, "cannot update the ipcache: {e}");
        }
    }

    /// Re-reads the node's addresses (after `cilium_host` got the router addresses) and
    /// writes the new ones as `host`. Addresses that went away leave with the next full
    /// sync.
    pub(super) fn refresh_host_addresses(&self) {
        let Some(dp) = &self.datapath else {
            return;
        };
        let old = dp.host_addresses();
        let new = host_addresses();
        let mut maps = dp.maps();
        for ip in new.iter().filter(|ip| !old.contains(ip)) {
            if let Err(e) = maps.set_ipcache(Prefix::host(*ip), Some(abi::IDENTITY_HOST)) {
                tracing::warn!("cannot add the node address {ip} to the ipcache: {e}");
            }
        }
        drop(maps);
        dp.set_host_addresses(new);
    }

    /// The ipcache entries of one endpoint's addresses: its identity while `present`, else
    /// what the address is without it (the node's, a CIDR identity's, or nothing). The
    /// per-endpoint path of CNI ADD and DEL; [`Agent::sync_ipcache`] rewrites everything.
    pub(super) fn sync_endpoint_ipcache(
        &self,
        inner: &Inner,
        record: &EndpointRecord,
        present: bool,
    ) -> Result<(), AgentError> {
        let identity = record.identity.as_ref().map_or(0, |i| i.id);
        for ip in record.addresses() {
            self.cluster.publish(ip, if present { identity } else { 0 });
        }
        let Some(dp) = &self.datapath else {
            return Ok(());
        };
        let host = dp.host_addresses();
        let mut maps = dp.maps();
        for ip in record.addresses() {
            let value = if present && identity != 0 {
                Some(identity)
            } else if host.contains(&ip) {
                Some(abi::IDENTITY_HOST)
            } else {
                let full = if ip.is_ipv4() { 32 } else { 128 };
                inner
                    .cidr_identities
                    .get(&crate::cidr::Cidr::new_truncated(ip, full))
                    .copied()
            };
            maps.set_ipcache(Prefix::host(ip), value)?;
        }
        Ok(())
    }

    /// Makes the ipcache hold the node's addresses, the local endpoints and the CIDR
    /// identities.
    pub(super) fn sync_ipcache(&self, inner: &Inner) -> Result<(), AgentError> {
        let Some(dp) = &self.datapath else {
            return Ok(());
        };
        let endpoints: Vec<(IpAddr, u32)> = inner
            .endpoints
            .iter()
            .filter_map(|r| r.identity.as_ref().map(|i| (r, i.id)))
            .flat_map(|(r, id)| r.addresses().map(move |ip| (ip, id)))
            .collect();
        let remote = lock(&self.cluster.remote).clone();
        let desired = ipcache_desired(
            &inner.cidr_identities,
            &dp.host_addresses(),
            &endpoints,
            &remote,
        );
        dp.maps().sync_ipcache(&desired)?;
        Ok(())
    }

    /// After a policy or identity change: every endpoint whose identity's policy is in
    /// `changed` (all endpoints when `None`), and the ipcache.
    pub(super) fn sync_datapath(
        &self,
        inner: &Inner,
        changed: Option<&std::collections::BTreeSet<u32>>,
    ) {
        if self.datapath.is_none() {
            return;
        }
        self.sync_policy_maps(inner, changed);
        if let Err(e) = self.sync_ipcache(inner) {
            tracing::warn!("cannot update the ipcache: {e}");
        }
    }

    /// The policy maps of the endpoints whose identity is in `changed` (all when `None`).
    pub(super) fn sync_policy_maps(
        &self,
        inner: &Inner,
        changed: Option<&std::collections::BTreeSet<u32>>,
    ) {
        if self.datapath.is_none() {
            return;
        }
        for record in inner.endpoints.iter() {
            let identity = record.identity.as_ref().map_or(0, |i| i.id);
            if changed.is_some_and(|c| !c.contains(&identity)) {
                continue;
            }
            if let Err(e) = self.sync_endpoint_datapath(inner, record) {
                tracing::warn!(endpoint = record.id, "cannot update the datapath: {e}");
            }
        }
        self.prune_proxy_ports(inner);
    }

    /// At start: the maps left by the previous run are brought in line with the restored
    /// state in place (no flush: conntrack and counters survive), and the filters of every
    /// restored endpoint get this build's programs (an atomic replace).
    pub(super) fn reconcile_datapath(&self, warnings: &mut Vec<String>) {
        let Some(dp) = &self.datapath else {
            return;
        };
        dp.set_host_addresses(host_addresses());
        let inner = lock(&self.inner);
        let known: std::collections::BTreeSet<u16> = inner
            .endpoints
            .iter()
            .filter(|r| has_device(r))
            .map(|r| r.id)
            .collect();
        let stale: Vec<u16> = dp
            .maps()
            .endpoint_ids()
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect();
        for id in &stale {
            dp.maps().remove_endpoint(*id);
        }
        let mut attached = 0;
        for record in inner.endpoints.iter().filter(|r| has_device(r)) {
            let result = self.sync_endpoint_datapath(&inner, record).and_then(|()| {
                dp.attach(&record.interface_name, record.interface_index)
                    .map_err(AgentError::from)
            });
            match result {
                Ok(()) => attached += 1,
                Err(e) => warnings.push(format!(
                    "endpoint {}: datapath not restored: {e}",
                    record.id
                )),
            }
        }
        if let Err(e) = self.sync_ipcache(&inner) {
            warnings.push(format!("ipcache not restored: {e}"));
        }
        if let Err(e) = dp.lb().sync(inner.services.iter()) {
            warnings.push(format!("services not all restored in the datapath: {e}"));
        }
        if let Some(e) = dp.socket_lb_error() {
            warnings.push(format!(
                "services are not translated for the node's own processes: {e}"
            ));
        }
        drop(inner);
        self.set_datapath_debug(self.config.debug);
        tracing::info!(
            endpoints = attached,
            stale_endpoints = stale.len(),
            "datapath reconciled"
        );
    }

    /// The agent's `Debug` option turns on trace events for every endpoint.
    pub(super) fn set_datapath_debug(&self, on: bool) {
        if let Some(dp) = &self.datapath {
            let flags = if on { abi::CFG_F_DEBUG } else { 0 };
            if let Err(e) = dp.maps().set_config(flags) {
                tracing::warn!("cannot set the datapath debug flag: {e}");
            }
        }
    }

    /// Starts the background upkeep: conntrack garbage collection and the node's
    /// addresses in the ipcache. Holds the agent weakly: it ends with the agent.
    pub fn start_datapath_maintenance(self: &Arc<Self>) {
        if self.datapath.is_none() {
            return;
        }
        let weak: Weak<Agent> = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("datapath-gc".into())
            .spawn(move || loop {
                std::thread::sleep(MAINTENANCE_INTERVAL);
                let Some(agent) = weak.upgrade() else {
                    return;
                };
                if let Some(dp) = &agent.datapath {
                    let removed = dp.gc_conntrack();
                    if removed > 0 {
                        tracing::debug!(removed, "expired conntrack entries collected");
                    }
                }
                if let Some(dp) = &agent.datapath {
                    dp.set_host_addresses(host_addresses());
                }
                let inner = lock(&agent.inner);
                if let Err(e) = agent.sync_ipcache(&inner) {
                    tracing::warn!("cannot refresh the ipcache: {e}");
                }
            });
    }

    /// The `datapath` part of `GET /healthz`.
    pub(super) fn datapath_status(&self) -> Option<DatapathStatus> {
        let dp = self.datapath.as_ref()?;
        let metrics = dp.maps().metrics();
        // Events the ring buffer had no room for, counted by the programs.
        let ring_full: u64 = metrics
            .iter()
            .filter(|(reason, dir, _, _)| *reason == 0 && *dir == abi::METRICS_EVENTS_LOST_DIR)
            .map(|m| m.2)
            .sum();
        let counters = metrics
            .into_iter()
            .filter(|(_, dir, _, _)| *dir != abi::METRICS_EVENTS_LOST_DIR)
            .map(|(reason, dir, packets, bytes)| DatapathCounter {
                reason,
                description: if reason == 0 {
                    "Forwarded".to_string()
                } else {
                    abi::drop_reason(reason)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("Unknown reason {reason}"))
                },
                direction: direction_name(dir).to_string(),
                packets,
                bytes,
            })
            .collect();
        Some(DatapathStatus {
            status: Status::new(StatusState::Ok, "programs loaded"),
            pin_path: dp.pin_path().display().to_string(),
            counters,
            events_lost: dp.events_lost() + ring_full,
        })
    }

    /// `cilium bpf endpoint list`.
    pub fn bpf_endpoints(&self) -> Result<Vec<BpfEndpointEntry>, AgentError> {
        let dp = self.datapath()?;
        let entries = dp.maps().endpoints();
        Ok(entries
            .into_iter()
            .filter_map(|(k, v)| {
                let ip = crate::datapath::maps::key_ip(k.family, &k.ip)?;
                let mut flags = Vec::new();
                if v.flags & abi::EP_F_POLICY_INGRESS != 0 {
                    flags.push("policy-ingress".to_string());
                }
                if v.flags & abi::EP_F_POLICY_EGRESS != 0 {
                    flags.push("policy-egress".to_string());
                }
                if v.flags & abi::EP_F_DEBUG != 0 {
                    flags.push("debug".to_string());
                }
                Some(BpfEndpointEntry {
                    ip,
                    endpoint_id: v.endpoint_id,
                    identity: v.identity,
                    ifindex: v.ifindex,
                    mac: format_mac(&v.mac),
                    node_mac: format_mac(&v.node_mac),
                    flags,
                })
            })
            .collect())
    }

    /// `cilium bpf ipcache list`.
    pub fn bpf_ipcache(&self) -> Result<Vec<BpfIpcacheEntry>, AgentError> {
        let dp = self.datapath()?;
        let maps = dp.maps();
        Ok(maps
            .ipcache()
            .iter()
            .map(|(prefix, value)| BpfIpcacheEntry {
                prefix: prefix.to_string_cidr(),
                identity: value.identity,
                tunnel_endpoint: value.tunnel().map(IpAddr::V4),
            })
            .collect())
    }

    /// `cilium bpf tunnel list`.
    pub fn bpf_tunnel(&self) -> Result<Vec<cilium_api::models::BpfTunnelEntry>, AgentError> {
        let dp = self.datapath()?;
        let maps = dp.maps();
        Ok(maps
            .tunnels()
            .into_iter()
            .map(|(prefix, endpoint)| cilium_api::models::BpfTunnelEntry {
                prefix: prefix.to_string_cidr(),
                endpoint,
            })
            .collect())
    }

    /// `cilium bpf ct list global`.
    pub fn bpf_ct(&self) -> Result<Vec<BpfCtEntry>, AgentError> {
        let dp = self.datapath()?;
        let now = crate::datapath::monotonic_ns();
        let mut out: Vec<BpfCtEntry> = dp
            .conntrack()
            .into_iter()
            .map(|r| {
                let endpoint = |ip: IpAddr, port: u16| match (ip, port) {
                    (IpAddr::V6(v6), p) if p != 0 => format!("[{v6}]:{p}"),
                    (ip, 0) => ip.to_string(),
                    (ip, p) => format!("{ip}:{p}"),
                };
                let mut flags = Vec::new();
                for (bit, name) in [
                    (abi::CT_F_SEEN_REPLY, "seen-reply"),
                    (abi::CT_F_TX_CLOSING, "tx-closing"),
                    (abi::CT_F_RX_CLOSING, "rx-closing"),
                ] {
                    if r.entry.flags & bit != 0 {
                        flags.push(name.to_string());
                    }
                }
                let icmp = matches!(r.proto, 1 | 58);
                BpfCtEntry {
                    protocol: protocol_name(r.proto),
                    direction: match r.dir {
                        abi::CT_INGRESS => "in",
                        abi::CT_SERVICE => "service",
                        _ => "out",
                    }
                    .to_string(),
                    source: endpoint(r.saddr, if icmp { 0 } else { r.sport }),
                    destination: endpoint(r.daddr, if icmp { 0 } else { r.dport }),
                    expires_in: r.entry.expires.saturating_sub(now) / 1_000_000_000,
                    tx_packets: r.entry.tx_packets,
                    tx_bytes: r.entry.tx_bytes,
                    rx_packets: r.entry.rx_packets,
                    rx_bytes: r.entry.rx_bytes,
                    src_identity: r.entry.src_identity,
                    flags,
                    rev_nat: (r.entry.rev_nat != 0).then_some(r.entry.rev_nat),
                    backend_id: (r.dir == abi::CT_SERVICE).then_some(r.entry.backend_id),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.protocol, &a.source, &a.destination, &a.direction).cmp(&(
                &b.protocol,
                &b.source,
                &b.destination,
                &b.direction,
            ))
        });
        Ok(out)
    }

    /// `cilium bpf lb list`: every frontend the datapath serves, by service id.
    pub fn bpf_lb(&self) -> Result<Vec<BpfLbEntry>, AgentError> {
        let dp = self.datapath()?;
        let socket = |ip: IpAddr, port: u16| match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            ip => format!("{ip}:{port}"),
        };
        let out = dp
            .lb()
            .list()
            .into_iter()
            .map(|f| BpfLbEntry {
                frontend: socket(f.ip, f.port),
                protocol: protocol_name(f.proto),
                service_id: f.svc_id,
                slots: f.slots,
                backends: f
                    .backends
                    .iter()
                    .map(|(ip, port, id, slots)| BpfLbBackend {
                        address: socket(*ip, *port),
                        backend_id: *id,
                        slots: *slots,
                    })
                    .collect(),
            })
            .collect();
        Ok(out)
    }

    /// `cilium bpf policy list <endpoint>`.
    pub fn bpf_policy(&self, id: &EndpointId) -> Result<BpfPolicyDump, AgentError> {
        let dp = self.datapath()?;
        let inner = lock(&self.inner);
        let record = inner.endpoints.find(id)?;
        let n = record.id;
        let flags = dp
            .maps()
            .endpoints()
            .into_iter()
            .find(|(_, v)| v.endpoint_id == n)
            .map_or(0, |(_, v)| v.flags);
        let entries = dp
            .maps()
            .policy_of(n)
            .into_iter()
            .map(|(k, v, packets, bytes)| BpfPolicyEntry {
                direction: direction_name(k.direction).to_string(),
                identity: k.identity,
                labels: if k.identity == 0 {
                    Vec::new()
                } else {
                    inner
                        .policy
                        .identity_labels(k.identity)
                        .map(|l| l.to_strings())
                        .unwrap_or_default()
                },
                port: u16::from_be(k.dport),
                protocol: match k.proto {
                    0 => "ANY".to_string(),
                    p => protocol_name(p),
                },
                action: match v.action {
                    abi::ACTION_ALLOW => "allow",
                    abi::ACTION_REDIRECT => "redirect",
                    abi::ACTION_L4_ONLY => "l4-only",
                    _ => "unknown",
                }
                .to_string(),
                proxy_port: v.proxy_port,
                bytes,
                packets,
            })
            .collect();
        Ok(BpfPolicyDump {
            endpoint_id: n,
            ingress_enforced: flags & abi::EP_F_POLICY_INGRESS != 0,
            egress_enforced: flags & abi::EP_F_POLICY_EGRESS != 0,
            entries,
        })
    }

    /// A subscription to the decoded datapath events (`GET /monitor`). A receiver that falls
    /// behind gets `RecvError::Lagged(n)`: report it as a "lost" record.
    pub fn monitor_subscribe(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<Arc<MonitorEvent>>, AgentError> {
        Ok(self.datapath()?.subscribe())
    }

    /// Counts events a monitor reader missed (shown by `cilium status`).
    pub fn monitor_lost(&self, n: u64) {
        if let Some(dp) = &self.datapath {
            dp.note_lost(n);
        }
    }
}

fn direction_name(dir: u8) -> &'static str {
    match dir {
        abi::DIR_INGRESS => "ingress",
        abi::DIR_EGRESS => "egress",
        _ => "unknown",
    }
}

fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        1 => "ICMP".to_string(),
        58 => "ICMPv6".to_string(),
        p => p.to_string(),
    }
}
