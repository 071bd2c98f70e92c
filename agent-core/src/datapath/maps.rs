//! Typed access to the pinned maps, with an in-memory mirror of what the agent wrote so that
//! every change is a diff: entries are added or changed before stale ones are removed, and
//! unchanged entries (and their counters) are never touched.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::{Key, LpmTrie};
use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};

use super::abi::{
    self, EndpointInfo, EndpointKey, IpcacheAddr, IpcacheValue, PolicyKey, PolicyValue,
};
use super::{batch, DatapathError};
use crate::cidr::Cidr;

pub(super) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        map,
        reason: e.to_string(),
    }
}

/// The key of an endpoint address in `cilium_lxc`.
pub fn endpoint_key(ip: IpAddr) -> EndpointKey {
    let (family, bytes) = ip_bytes(ip);
    EndpointKey {
        ip: bytes,
        family,
        pad: [0; 3],
    }
}

fn ip_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (abi::FAMILY_IPV4, bytes)
        }
        IpAddr::V6(v6) => (abi::FAMILY_IPV6, v6.octets()),
    }
}

/// The address of a key (`family` + bytes).
pub fn key_ip(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        abi::FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        abi::FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// An ipcache prefix as the mirror keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpcacheAddr,
    /// Address bits (0-32 or 0-128), without the 32 bits of family + pad.
    pub len: u8,
}

impl Prefix {
    pub fn from_cidr(c: &Cidr) -> Prefix {
        let (family, ip) = ip_bytes(c.network());
        Prefix {
            addr: IpcacheAddr {
                family,
                pad: [0; 3],
                ip,
            },
            len: c.prefix_len(),
        }
    }

    pub fn host(ip: IpAddr) -> Prefix {
        let (family, bytes) = ip_bytes(ip);
        Prefix {
            addr: IpcacheAddr {
                family,
                pad: [0; 3],
                ip: bytes,
            },
            len: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The prefix of a map key (its length counts family + pad first).
    pub fn from_key(k: &Key<IpcacheAddr>) -> Prefix {
        Prefix {
            addr: k.data(),
            len: k.prefix_len().saturating_sub(32).min(128) as u8,
        }
    }

    fn key(&self) -> Key<IpcacheAddr> {
        Key::new(32 + u32::from(self.len), self.addr)
    }

    pub fn to_string_cidr(&self) -> String {
        match key_ip(self.addr.family, &self.addr.ip) {
            Some(ip) => format!("{ip}/{}", self.len),
            None => format!("family {}/{}", self.addr.family, self.len),
        }
    }
}

/// The verdict part of a policy entry (the counters live only in the map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub action: u8,
    /// Host order.
    pub proxy_port: u16,
}

/// What the agent wants in the maps for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub id: u16,
    pub ifindex: u32,
    pub identity: u32,
    pub flags: u16,
    pub mac: [u8; 6],
    pub node_mac: [u8; 6],
    pub addresses: Vec<IpAddr>,
    /// Keys with `endpoint_id` = `id`.
    pub policy: BTreeMap<PolicyKey, PolicyVerdict>,
}

/// The maps and the mirror of their agent-owned contents.
pub struct Maps {
    lxc: BpfHashMap<MapData, EndpointKey, EndpointInfo>,
    ipcache: LpmTrie<MapData, IpcacheAddr, IpcacheValue>,
    policy: BpfHashMap<MapData, PolicyKey, PolicyValue>,
    /// The policy map's descriptor, for batch writes.
    policy_fd: OwnedFd,
    pub(super) ct4: BpfHashMap<MapData, abi::Ct4Key, abi::CtEntry>,
    pub(super) ct6: BpfHashMap<MapData, abi::Ct6Key, abi::CtEntry>,
    metrics: PerCpuArray<MapData, abi::MetricsValue>,
    config: Array<MapData, abi::ConfigValue>,
    /// What `config` holds.
    config_value: abi::ConfigValue,
    tunnel: LpmTrie<MapData, IpcacheAddr, u32>,
    lxc_mirror: HashMap<EndpointKey, EndpointInfo>,
    ipcache_mirror: BTreeMap<Prefix, IpcacheValue>,
    /// Remote node ranges → tunnel endpoint (network order).
    tunnel_mirror: BTreeMap<Prefix, u32>,
    policy_mirror: BTreeMap<u16, BTreeMap<PolicyKey, PolicyVerdict>>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps")
            .field("endpoints", &self.lxc_mirror.len())
            .field("ipcache", &self.ipcache_mirror.len())
            .field("policies", &self.policy_mirror.len())
            .finish_non_exhaustive()
    }
}

impl Maps {
    /// Takes the maps out of the loaded object and reads what they already hold (pins of a
    /// previous run) into the mirror.
    pub fn open(ebpf: &mut aya::Ebpf) -> Result<Maps, DatapathError> {
        use super::loader::take_map;
        let lxc: BpfHashMap<MapData, EndpointKey, EndpointInfo> =
            BpfHashMap::try_from(take_map(ebpf, "cilium_lxc")?).map_err(map_err("cilium_lxc"))?;
        let ipcache: LpmTrie<MapData, IpcacheAddr, IpcacheValue> =
            LpmTrie::try_from(take_map(ebpf, "cilium_ipcache")?)
                .map_err(map_err("cilium_ipcache"))?;
        let policy_map = take_map(ebpf, "cilium_policy")?;
        let policy_fd = match &policy_map {
            aya::maps::Map::HashMap(data) => data.fd().as_fd().try_clone_to_owned(),
            _ => Err(std::io::Error::other("not a hash map")),
        }
        .map_err(|e| DatapathError::Map {
            map: "cilium_policy",
            reason: e.to_string(),
        })?;
        let policy: BpfHashMap<MapData, PolicyKey, PolicyValue> =
            BpfHashMap::try_from(policy_map).map_err(map_err("cilium_policy"))?;
        let ct4 =
            BpfHashMap::try_from(take_map(ebpf, "cilium_ct4")?).map_err(map_err("cilium_ct4"))?;
        let ct6 =
            BpfHashMap::try_from(take_map(ebpf, "cilium_ct6")?).map_err(map_err("cilium_ct6"))?;
        let metrics = PerCpuArray::try_from(take_map(ebpf, "cilium_metrics")?)
            .map_err(map_err("cilium_metrics"))?;
        let config: Array<MapData, abi::ConfigValue> =
            Array::try_from(take_map(ebpf, "cilium_config")?).map_err(map_err("cilium_config"))?;
        let config_value = config.get(&0, 0).unwrap_or_default();
        let tunnel: LpmTrie<MapData, IpcacheAddr, u32> =
            LpmTrie::try_from(take_map(ebpf, "cilium_tunnel")?)
                .map_err(map_err("cilium_tunnel"))?;
        let mut tunnel_mirror = BTreeMap::new();
        for item in tunnel.iter() {
            let (k, v) = item.map_err(map_err("cilium_tunnel"))?;
            tunnel_mirror.insert(Prefix::from_key(&k), v);
        }

        let mut lxc_mirror = HashMap::new();
        for item in lxc.iter() {
            let (k, v) = item.map_err(map_err("cilium_lxc"))?;
            lxc_mirror.insert(k, v);
        }
        let mut ipcache_mirror = BTreeMap::new();
        for item in ipcache.iter() {
            let (k, v) = item.map_err(map_err("cilium_ipcache"))?;
            ipcache_mirror.insert(Prefix::from_key(&k), v);
        }
        let mut policy_mirror: BTreeMap<u16, BTreeMap<PolicyKey, PolicyVerdict>> = BTreeMap::new();
        for item in policy.iter() {
            let (k, first) = item.map_err(map_err("cilium_policy"))?;
            policy_mirror.entry(k.endpoint_id).or_default().insert(
                k,
                PolicyVerdict {
                    action: first.action,
                    proxy_port: u16::from_be(first.proxy_port),
                },
            );
        }
        Ok(Maps {
            lxc,
            ipcache,
            policy,
            policy_fd,
            ct4,
            ct6,
            metrics,
            config,
            config_value,
            tunnel,
            lxc_mirror,
            ipcache_mirror,
            tunnel_mirror,
            policy_mirror,
        })
    }

    /// Writes an endpoint: its policy entries first, then its address entries (which carry
    /// the enforcement flags), then removes entries it no longer has. A flow therefore never
    /// sees enforcement switched on before the entries that allow it exist.
    pub fn sync_endpoint(&mut self, e: &EndpointEntry) -> Result<(), DatapathError> {
        let old = self.policy_mirror.remove(&e.id).unwrap_or_default();
        let mut result = self.write_policy(&old, &e.policy);
        let info = EndpointInfo {
            ifindex: e.ifindex,
            identity: e.identity,
            endpoint_id: e.id,
            flags: e.flags,
            mac: e.mac,
            node_mac: e.node_mac,
        };
        let keys: Vec<EndpointKey> = e.addresses.iter().map(|ip| endpoint_key(*ip)).collect();
        if result.is_ok() {
            for key in &keys {
                if self.lxc_mirror.get(key) == Some(&info) {
                    continue;
                }
                if let Err(err) = self.lxc.insert(key, info, 0) {
                    result = Err(map_err("cilium_lxc")(err));
                    break;
                }
                self.lxc_mirror.insert(*key, info);
            }
        }
        // Addresses the endpoint no longer has.
        let stale: Vec<EndpointKey> = self
            .lxc_mirror
            .iter()
            .filter(|(k, v)| v.endpoint_id == e.id && !keys.contains(k))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            let _ = self.lxc.remove(&key);
            self.lxc_mirror.remove(&key);
        }
        result
    }

    /// Writes `new` over `old` (the mirror of one endpoint): changed and added entries first
    /// (one batch), then removals; records what was written.
    fn write_policy(
        &mut self,
        old: &BTreeMap<PolicyKey, PolicyVerdict>,
        new: &BTreeMap<PolicyKey, PolicyVerdict>,
    ) -> Result<(), DatapathError> {
        let Some(endpoint) = new.keys().chain(old.keys()).next().map(|k| k.endpoint_id) else {
            return Ok(());
        };
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for (key, verdict) in new {
            if old.get(key) == Some(verdict) {
                continue;
            }
            // Keep the counters of an entry whose verdict changes (a new one has none).
            let current = if old.contains_key(key) {
                self.policy.get(key, 0).unwrap_or_default()
            } else {
                PolicyValue::default()
            };
            keys.push(*key);
            values.push(PolicyValue {
                proxy_port: verdict.proxy_port.to_be(),
                action: verdict.action,
                pad: [0; 5],
                packets: current.packets,
                bytes: current.bytes,
            });
        }
        if let Err((done, e)) = batch::update(self.policy_fd.as_fd(), &keys, &values) {
            // Track what the map holds now: the old entries and the ones written.
            let mut written = old.clone();
            for key in &keys[..done.min(keys.len())] {
                written.insert(*key, new[key]);
            }
            self.policy_mirror.insert(endpoint, written);
            return Err(DatapathError::Map {
                map: "cilium_policy",
                reason: e.to_string(),
            });
        }
        let stale: Vec<PolicyKey> = old
            .keys()
            .filter(|k| !new.contains_key(k))
            .copied()
            .collect();
        batch::delete(self.policy_fd.as_fd(), &stale);
        if !new.is_empty() {
            self.policy_mirror.insert(endpoint, new.clone());
        }
        Ok(())
    }

    /// Removes every entry of an endpoint.
    pub fn remove_endpoint(&mut self, id: u16) {
        let stale: Vec<EndpointKey> = self
            .lxc_mirror
            .iter()
            .filter(|(_, v)| v.endpoint_id == id)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            let _ = self.lxc.remove(&key);
            self.lxc_mirror.remove(&key);
        }
        if let Some(entries) = self.policy_mirror.remove(&id) {
            let keys: Vec<PolicyKey> = entries.into_keys().collect();
            batch::delete(self.policy_fd.as_fd(), &keys);
        }
    }

    /// Ids of the endpoints the maps hold entries for.
    pub fn endpoint_ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self
            .lxc_mirror
            .values()
            .map(|v| v.endpoint_id)
            .chain(self.policy_mirror.keys().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Sets (or removes, with `None`) the entry of one prefix, without a tunnel endpoint.
    pub fn set_ipcache(
        &mut self,
        prefix: Prefix,
        identity: Option<u32>,
    ) -> Result<(), DatapathError> {
        self.set_ipcache_value(prefix, identity.map(IpcacheValue::local))
    }

    /// Sets (or removes, with `None`) the entry of one prefix.
    pub fn set_ipcache_value(
        &mut self,
        prefix: Prefix,
        value: Option<IpcacheValue>,
    ) -> Result<(), DatapathError> {
        match value {
            Some(v) if self.ipcache_mirror.get(&prefix) == Some(&v) => {}
            Some(v) => {
                self.ipcache
                    .insert(&prefix.key(), v, 0)
                    .map_err(map_err("cilium_ipcache"))?;
                self.ipcache_mirror.insert(prefix, v);
            }
            None => {
                if self.ipcache_mirror.remove(&prefix).is_some() {
                    let _ = self.ipcache.remove(&prefix.key());
                }
            }
        }
        Ok(())
    }

    /// Makes the ipcache hold exactly `desired`: writes first, removals last.
    pub fn sync_ipcache(
        &mut self,
        desired: &BTreeMap<Prefix, IpcacheValue>,
    ) -> Result<(), DatapathError> {
        for (prefix, value) in desired {
            if self.ipcache_mirror.get(prefix) == Some(value) {
                continue;
            }
            self.ipcache
                .insert(&prefix.key(), *value, 0)
                .map_err(map_err("cilium_ipcache"))?;
            self.ipcache_mirror.insert(*prefix, *value);
        }
        let stale: Vec<Prefix> = self
            .ipcache_mirror
            .keys()
            .filter(|p| !desired.contains_key(p))
            .copied()
            .collect();
        for prefix in stale {
            let _ = self.ipcache.remove(&prefix.key());
            self.ipcache_mirror.remove(&prefix);
        }
        Ok(())
    }

    /// Makes the tunnel map hold exactly `desired` (remote range → tunnel endpoint).
    pub fn sync_tunnels(
        &mut self,
        desired: &BTreeMap<Prefix, std::net::Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        for (prefix, node) in desired {
            let value = u32::from_ne_bytes(node.octets());
            if self.tunnel_mirror.get(prefix) == Some(&value) {
                continue;
            }
            self.tunnel
                .insert(&prefix.key(), value, 0)
                .map_err(map_err("cilium_tunnel"))?;
            self.tunnel_mirror.insert(*prefix, value);
        }
        let stale: Vec<Prefix> = self
            .tunnel_mirror
            .keys()
            .filter(|p| !desired.contains_key(p))
            .copied()
            .collect();
        for prefix in stale {
            let _ = self.tunnel.remove(&prefix.key());
            self.tunnel_mirror.remove(&prefix);
        }
        Ok(())
    }

    /// The tunnel map: remote range → tunnel endpoint.
    pub fn tunnels(&self) -> Vec<(Prefix, std::net::Ipv4Addr)> {
        self.tunnel_mirror
            .iter()
            .map(|(p, v)| (*p, std::net::Ipv4Addr::from(v.to_ne_bytes())))
            .collect()
    }

    /// Sets the datapath flags (`CFG_F_*`), keeping the overlay device.
    pub fn set_config(&mut self, flags: u32) -> Result<(), DatapathError> {
        self.write_config(abi::ConfigValue {
            flags,
            ..self.config_value
        })
    }

    /// Sets the overlay device (0 = none), keeping the flags.
    pub fn set_tunnel_ifindex(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.write_config(abi::ConfigValue {
            tunnel_ifindex: ifindex,
            ..self.config_value
        })
    }

    fn write_config(&mut self, value: abi::ConfigValue) -> Result<(), DatapathError> {
        self.config
            .set(0, value, 0)
            .map_err(map_err("cilium_config"))?;
        self.config_value = value;
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<(EndpointKey, EndpointInfo)> {
        let mut v: Vec<_> = self.lxc_mirror.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|(k, v)| (v.endpoint_id, k.family, k.ip));
        v
    }

    pub fn ipcache(&self) -> &BTreeMap<Prefix, IpcacheValue> {
        &self.ipcache_mirror
    }

    /// The entries of one endpoint with their counters summed over CPUs.
    pub fn policy_of(&self, id: u16) -> Vec<(PolicyKey, PolicyVerdict, u64, u64)> {
        let Some(entries) = self.policy_mirror.get(&id) else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|(k, v)| {
                let (packets, bytes) = self
                    .policy
                    .get(k, 0)
                    .map(|v| (v.packets, v.bytes))
                    .unwrap_or((0, 0));
                (*k, *v, packets, bytes)
            })
            .collect()
    }

    /// Non-zero counters of `cilium_metrics`: (reason, direction, packets, bytes).
    pub fn metrics(&self) -> Vec<(u8, u8, u64, u64)> {
        let mut out = Vec::new();
        for index in 0..abi::METRICS_MAP_SIZE {
            let Ok(values) = self.metrics.get(&index, 0) else {
                continue;
            };
            let (p, b) = values
                .iter()
                .fold((0u64, 0u64), |(p, b), x| (p + x.packets, b + x.bytes));
            if p > 0 {
                out.push(((index / 4) as u8, (index % 4) as u8, p, b));
            }
        }
        out
    }
}
