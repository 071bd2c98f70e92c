//! The load-balancing maps (`cilium_lb_svc`, `cilium_lb_slots`, `cilium_lb_backends`,
//! `cilium_lb_revnat`; layout in `bpf-programs/include/abi.h`) programmed from the service
//! table, with a mirror of what they hold.
//!
//! Two things keep established connections on their backend across changes and restarts:
//! a backend keeps its id for as long as it stays in its service (ids are per service and
//! backend, read back from the pinned map at start), and a service's slot table is rewritten
//! only when it changes, under the other generation, before the frontend entry switches to
//! it. Connections remember their backend id (a `CT_SERVICE` conntrack entry), so only the
//! connections of a backend that left the service move.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use aya::maps::{HashMap as BpfHashMap, MapData};

use super::abi::{self, LbBackend, LbSlotKey, LbSvcKey, LbSvcValue};
use super::maps::{key_ip, map_err};
use super::DatapathError;
use crate::policy::Protocol;
use crate::service::ServiceRecord;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// How the backends of a service share its slots: backend indexes (into `weights`), each
/// repeated in proportion to its weight, interleaved (smooth weighted round robin: any run
/// of consecutive slots is close to the weights). Weight 0 gets no slot. At most
/// [`abi::LB_MAX_SLOTS`] slots, or one per weighted backend when there are more backends.
/// New connections take the slots in turn.
pub fn slot_table(weights: &[u16]) -> Vec<usize> {
    let weighted: Vec<(usize, u64)> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, w)| (i, u64::from(*w)))
        .collect();
    if weighted.is_empty() {
        return Vec::new();
    }
    let g = weighted.iter().fold(0, |g, (_, w)| gcd(g, *w));
    let shares: Vec<(usize, u64)> = weighted.iter().map(|(i, w)| (*i, w / g)).collect();
    let total: u64 = shares.iter().map(|(_, w)| w).sum();
    let max = abi::LB_MAX_SLOTS as u64;
    let counts: Vec<(usize, u64)> = if total <= max {
        shares
    } else if shares.len() as u64 >= max {
        shares.iter().map(|(i, _)| (*i, 1)).collect()
    } else {
        // Largest remainder: every weighted backend keeps a slot, the rest in proportion.
        let mut counts: Vec<(usize, u64, u64)> = shares
            .iter()
            .map(|(i, w)| {
                let exact = w * max;
                ((*i), (exact / total).max(1), exact % total)
            })
            .collect();
        let mut used: u64 = counts.iter().map(|c| c.1).sum();
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by(|a, b| counts[*b].2.cmp(&counts[*a].2).then(a.cmp(b)));
        for k in order.iter().cycle().take(counts.len() * 2) {
            if used >= max {
                break;
            }
            counts[*k].1 += 1;
            used += 1;
        }
        // The minimum of one slot may have pushed the sum over: take from the largest.
        while used > max {
            let largest = (0..counts.len())
                .max_by_key(|k| counts[*k].1)
                .expect("non-empty");
            counts[largest].1 -= 1;
            used -= 1;
        }
        counts.into_iter().map(|(i, n, _)| (i, n)).collect()
    };
    interleave(&counts)
}

/// Smooth weighted round robin over `(backend, slots)`: each turn every backend gains its
/// slots, the one with the most credit is picked and pays the total.
fn interleave(counts: &[(usize, u64)]) -> Vec<usize> {
    let total: i64 = counts.iter().map(|(_, n)| *n as i64).sum();
    if counts.iter().all(|(_, n)| *n == 1) {
        return counts.iter().map(|(i, _)| *i).collect();
    }
    let mut credit = vec![0i64; counts.len()];
    let mut table = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, (_, n)) in credit.iter_mut().zip(counts) {
            *c += *n as i64;
        }
        let best = (0..counts.len())
            .max_by(|a, b| credit[*a].cmp(&credit[*b]).then(b.cmp(a)))
            .expect("non-empty");
        credit[best] -= total;
        table.push(counts[best].0);
    }
    table
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn addr_value(ip: IpAddr, port: u16, svc_id: u16) -> LbBackend {
    let mut bytes = [0u8; 16];
    let family = match ip {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            abi::FAMILY_IPV4
        }
        IpAddr::V6(v6) => {
            bytes = v6.octets();
            abi::FAMILY_IPV6
        }
    };
    LbBackend {
        ip: bytes,
        port: port.to_be(),
        family,
        pad: 0,
        svc_id,
        pad2: 0,
    }
}

/// The `cilium_lb_svc` keys of a frontend: one per protocol (`any` is TCP and UDP).
fn frontend_keys(record: &ServiceRecord) -> Vec<LbSvcKey> {
    let f = &record.frontend;
    let v = addr_value(f.ip, f.port, record.id);
    let protos: &[u8] = match f.protocol {
        Protocol::Tcp => &[IPPROTO_TCP],
        Protocol::Udp => &[IPPROTO_UDP],
        Protocol::Any => &[IPPROTO_TCP, IPPROTO_UDP],
    };
    protos
        .iter()
        .map(|p| LbSvcKey {
            ip: v.ip,
            dport: v.port,
            proto: *p,
            family: v.family,
        })
        .collect()
}

fn slot_key(svc_id: u16, gen: u8, index: usize) -> LbSlotKey {
    LbSlotKey {
        svc_id,
        slot: if gen == 0 { 0 } else { abi::LB_SLOT_GEN } | index as u16,
    }
}

/// What the maps hold for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Programmed {
    frontends: BTreeSet<LbSvcKey>,
    frontend: Option<LbBackend>,
    gen: u8,
    /// Backend id per slot of the current generation.
    table: Vec<u32>,
    /// (address, port) -> backend id.
    backends: BTreeMap<(IpAddr, u16), u32>,
}

/// One frontend of `cilium bpf lb list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbFrontend {
    pub svc_id: u16,
    pub ip: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// The slots of each backend: (address, port, backend id, slots).
    pub backends: Vec<(IpAddr, u16, u32, usize)>,
    pub slots: usize,
}

/// The load-balancing maps and their mirror.
pub struct LbMaps {
    svc: BpfHashMap<MapData, LbSvcKey, LbSvcValue>,
    slots: BpfHashMap<MapData, LbSlotKey, u32>,
    backends: BpfHashMap<MapData, u32, LbBackend>,
    revnat: BpfHashMap<MapData, u16, LbBackend>,
    programmed: BTreeMap<u16, Programmed>,
    /// Entries found at start that belong to no programmed table (removed by `sync`).
    stray_slots: Vec<LbSlotKey>,
    stray_backends: Vec<u32>,
    next_id: u32,
}

impl std::fmt::Debug for LbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbMaps")
            .field("services", &self.programmed.len())
            .finish_non_exhaustive()
    }
}

impl LbMaps {
    /// Takes the maps out of the loaded object and reads back what a previous run programmed.
    pub fn open(ebpf: &mut aya::Ebpf) -> Result<LbMaps, DatapathError> {
        use super::loader::take_map;
        let svc: BpfHashMap<MapData, LbSvcKey, LbSvcValue> =
            BpfHashMap::try_from(take_map(ebpf, "cilium_lb_svc")?)
                .map_err(map_err("cilium_lb_svc"))?;
        let slots: BpfHashMap<MapData, LbSlotKey, u32> =
            BpfHashMap::try_from(take_map(ebpf, "cilium_lb_slots")?)
                .map_err(map_err("cilium_lb_slots"))?;
        let backends: BpfHashMap<MapData, u32, LbBackend> =
            BpfHashMap::try_from(take_map(ebpf, "cilium_lb_backends")?)
                .map_err(map_err("cilium_lb_backends"))?;
        let revnat: BpfHashMap<MapData, u16, LbBackend> =
            BpfHashMap::try_from(take_map(ebpf, "cilium_lb_revnat")?)
                .map_err(map_err("cilium_lb_revnat"))?;

        let mut programmed: BTreeMap<u16, Programmed> = BTreeMap::new();
        let mut sizes: HashMap<u16, (u8, u16)> = HashMap::new();
        for item in svc.iter() {
            let (k, v) = item.map_err(map_err("cilium_lb_svc"))?;
            let p = programmed.entry(v.svc_id).or_default();
            p.frontends.insert(k);
            p.gen = v.gen;
            sizes.insert(v.svc_id, (v.gen, v.slots));
        }
        let mut stray_slots = Vec::new();
        let mut tables: HashMap<u16, BTreeMap<u16, u32>> = HashMap::new();
        for item in slots.iter() {
            let (k, id) = item.map_err(map_err("cilium_lb_slots"))?;
            let current = sizes.get(&k.svc_id).is_some_and(|(gen, n)| {
                (k.slot & abi::LB_SLOT_GEN != 0) == (*gen != 0) && (k.slot & !abi::LB_SLOT_GEN) < *n
            });
            if current {
                tables
                    .entry(k.svc_id)
                    .or_default()
                    .insert(k.slot & !abi::LB_SLOT_GEN, id);
            } else {
                stray_slots.push(k);
            }
        }
        for (svc_id, (_, n)) in &sizes {
            let table = tables.remove(svc_id).unwrap_or_default();
            let p = programmed.entry(*svc_id).or_default();
            // A table with a hole (an interrupted write) is rewritten by the next sync.
            if table.len() == usize::from(*n) {
                p.table = table.into_values().collect();
            } else {
                p.table = vec![0; usize::from(*n)];
            }
        }
        let mut stray_backends = Vec::new();
        let mut max_id = 0;
        for item in backends.iter() {
            let (id, v) = item.map_err(map_err("cilium_lb_backends"))?;
            max_id = max_id.max(id);
            match (programmed.get_mut(&v.svc_id), key_ip(v.family, &v.ip)) {
                (Some(p), Some(ip)) => {
                    p.backends.insert((ip, u16::from_be(v.port)), id);
                }
                _ => stray_backends.push(id),
            }
        }
        for item in revnat.iter() {
            let (id, v) = item.map_err(map_err("cilium_lb_revnat"))?;
            programmed.entry(id).or_default().frontend = Some(v);
        }
        Ok(LbMaps {
            svc,
            slots,
            backends,
            revnat,
            programmed,
            stray_slots,
            stray_backends,
            next_id: max_id.wrapping_add(1).max(1),
        })
    }

    /// A backend id no backend of any service has: ids count up from the highest one found
    /// at start, and one the map still holds (after the count wrapped) is skipped.
    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if self.backends.get(&id, 0).is_err() {
                return id;
            }
        }
    }

    /// Programs one service (creating it or changing it in place).
    pub fn set_service(&mut self, record: &ServiceRecord) -> Result<(), DatapathError> {
        let id = record.id;
        let old = self.programmed.get(&id).cloned().unwrap_or_default();

        // Backend ids: kept for backends that stay, new ones written first.
        let mut backends: BTreeMap<(IpAddr, u16), u32> = BTreeMap::new();
        let mut ids = Vec::with_capacity(record.backends.len());
        for b in &record.backends {
            let key = (b.ip, b.port);
            let backend_id = match old.backends.get(&key) {
                Some(existing) => *existing,
                None => {
                    let new_id = self.allocate_id();
                    self.backends
                        .insert(new_id, addr_value(b.ip, b.port, id), 0)
                        .map_err(map_err("cilium_lb_backends"))?;
                    // Recorded at once, so a failure later leaves no unknown entry.
                    self.programmed
                        .entry(id)
                        .or_default()
                        .backends
                        .insert(key, new_id);
                    new_id
                }
            };
            backends.insert(key, backend_id);
            ids.push(backend_id);
        }
        let weights: Vec<u16> = record.backends.iter().map(|b| b.weight).collect();
        let table: Vec<u32> = slot_table(&weights).into_iter().map(|i| ids[i]).collect();
        let frontend = addr_value(record.frontend.ip, record.frontend.port, id);
        let frontends: BTreeSet<LbSvcKey> = frontend_keys(record).into_iter().collect();

        // The reverse translation before any connection can use the service.
        if old.frontend != Some(frontend) {
            self.revnat
                .insert(id, frontend, 0)
                .map_err(map_err("cilium_lb_revnat"))?;
        }
        // A changed table goes under the other generation; the frontend entries switch.
        let fresh = self
            .programmed
            .get(&id)
            .is_none_or(|p| p.frontends.is_empty());
        let table_changed = old.table != table;
        let gen = if table_changed && !fresh {
            1 - old.gen
        } else {
            old.gen
        };
        if table_changed || fresh {
            for (i, backend_id) in table.iter().enumerate() {
                self.slots
                    .insert(slot_key(id, gen, i), *backend_id, 0)
                    .map_err(map_err("cilium_lb_slots"))?;
            }
        }
        let value = LbSvcValue {
            svc_id: id,
            slots: table.len() as u16,
            gen,
            pad: [0; 3],
            next: 0,
        };
        if table_changed || frontends != old.frontends {
            for key in &frontends {
                self.svc
                    .insert(key, value, 0)
                    .map_err(map_err("cilium_lb_svc"))?;
            }
        }
        // Then what is no longer used: old frontends, the old table, departed backends.
        for key in old.frontends.difference(&frontends) {
            let _ = self.svc.remove(key);
        }
        if gen != old.gen {
            for i in 0..old.table.len() {
                let _ = self.slots.remove(&slot_key(id, old.gen, i));
            }
        } else {
            for i in table.len()..old.table.len() {
                let _ = self.slots.remove(&slot_key(id, gen, i));
            }
        }
        let programmed = self.programmed.entry(id).or_default();
        for (key, backend_id) in &old.backends {
            if !backends.contains_key(key) {
                let _ = self.backends.remove(backend_id);
            }
        }
        *programmed = Programmed {
            frontends,
            frontend: Some(frontend),
            gen,
            table,
            backends,
        };
        Ok(())
    }

    /// Removes a service from the maps.
    pub fn remove_service(&mut self, id: u16) {
        let Some(p) = self.programmed.remove(&id) else {
            return;
        };
        for key in &p.frontends {
            let _ = self.svc.remove(key);
        }
        for i in 0..p.table.len() {
            let _ = self.slots.remove(&slot_key(id, p.gen, i));
        }
        for backend_id in p.backends.values() {
            let _ = self.backends.remove(backend_id);
        }
        let _ = self.revnat.remove(&id);
    }

    /// Makes the maps hold exactly `services` (at start): services whose entries are already
    /// right are not touched, so their connections keep their backends.
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a ServiceRecord>,
    ) -> Result<(), DatapathError> {
        let mut wanted = BTreeSet::new();
        let mut result = Ok(());
        for record in services {
            wanted.insert(record.id);
            if let Err(e) = self.set_service(record) {
                tracing::warn!(service = record.id, "cannot program the service: {e}");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        let gone: Vec<u16> = self
            .programmed
            .keys()
            .filter(|id| !wanted.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.remove_service(id);
        }
        for key in std::mem::take(&mut self.stray_slots) {
            let _ = self.slots.remove(&key);
        }
        for id in std::mem::take(&mut self.stray_backends) {
            let _ = self.backends.remove(&id);
        }
        result
    }

    /// Whether the maps hold `record` exactly as [`LbMaps::set_service`] would write it.
    pub fn is_programmed(&self, record: &ServiceRecord) -> bool {
        let Some(p) = self.programmed.get(&record.id) else {
            return false;
        };
        let frontends: BTreeSet<LbSvcKey> = frontend_keys(record).into_iter().collect();
        p.frontends == frontends
            && p.backends.len() == record.backends.len()
            && record
                .backends
                .iter()
                .all(|b| p.backends.contains_key(&(b.ip, b.port)))
    }

    /// Every frontend with its backends and their slots, by service id, as the maps hold them.
    pub fn list(&self) -> Vec<LbFrontend> {
        let mut out = Vec::new();
        for (svc_id, p) in &self.programmed {
            let mut backends: Vec<(IpAddr, u16, u32, usize)> = p
                .backends
                .iter()
                .map(|((ip, port), backend_id)| {
                    let n = p.table.iter().filter(|t| *t == backend_id).count();
                    (*ip, *port, *backend_id, n)
                })
                .collect();
            backends.sort_by_key(|b| b.2);
            for key in &p.frontends {
                let Some(ip) = key_ip(key.family, &key.ip) else {
                    continue;
                };
                out.push(LbFrontend {
                    svc_id: *svc_id,
                    ip,
                    port: u16::from_be(key.dport),
                    proto: key.proto,
                    backends: backends.clone(),
                    slots: p.table.len(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u16]) -> Vec<usize> {
        let table = slot_table(weights);
        (0..weights.len())
            .map(|i| table.iter().filter(|t| **t == i).count())
            .collect()
    }

    #[test]
    fn slots_follow_the_weights() {
        assert_eq!(shares(&[1, 1, 1]), [1, 1, 1]);
        assert_eq!(shares(&[1, 2, 3]), [1, 2, 3]);
        // Reduced by their common divisor.
        assert_eq!(shares(&[100, 200, 300]), [1, 2, 3]);
        // Weight 0 takes no new connections.
        assert_eq!(shares(&[0, 5, 0]), [0, 1, 0]);
        assert!(slot_table(&[0, 0]).is_empty());
        assert!(slot_table(&[]).is_empty());
    }

    #[test]
    fn slots_are_interleaved() {
        // 1:2:3 -> every run of 6 slots has the exact shares, and no backend takes more
        // than its share in any shorter run either.
        let table = slot_table(&[1, 2, 3]);
        assert_eq!(table.len(), 6);
        assert_eq!(table, [2, 1, 0, 2, 1, 2]);
        let t = slot_table(&[1, 1, 4]);
        assert!(!t.windows(3).any(|w| w == [2, 2, 2]), "{t:?}");
    }

    #[test]
    fn large_weights_are_scaled_to_the_slot_limit() {
        let s = shares(&[65535, 1]);
        assert_eq!(s.iter().sum::<usize>(), abi::LB_MAX_SLOTS);
        assert_eq!(s[1], 1, "every weighted backend keeps a slot");
        let s = shares(&[7000, 3000, 1]);
        assert_eq!(s.iter().sum::<usize>(), abi::LB_MAX_SLOTS);
        // 7000:3000 within a slot of the exact share.
        assert!((s[0] as i64 - 716).abs() <= 1, "{s:?}");
        assert!((s[1] as i64 - 307).abs() <= 1, "{s:?}");
        // More weighted backends than slots: one each.
        let many = vec![1u16; abi::LB_MAX_SLOTS + 10];
        assert_eq!(slot_table(&many).len(), abi::LB_MAX_SLOTS + 10);
        let mut uneven = vec![3u16; abi::LB_MAX_SLOTS + 10];
        uneven[0] = 1;
        assert_eq!(slot_table(&uneven).len(), abi::LB_MAX_SLOTS + 10);
    }
}
