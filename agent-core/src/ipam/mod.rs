//! IP address management: one pool per enabled family, shared by every plugin (CNI, Docker)
//! through the agent. Each pool sits behind its own lock so the type is safe to share
//! between threads.

mod pool;

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use cilium_api::models::{AddressPair, Family, IpamStatus, NodeAddressing, NodeAddressingElement};
use serde::{Deserialize, Serialize};

pub use pool::{Pool, PoolState, ROUTER_OWNER};

use crate::cidr::Cidr;

/// Version of the persisted IPAM state format.
pub const STATE_VERSION: u32 = 1;

/// Errors of address management.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("{0} allocation is disabled on this agent")]
    FamilyDisabled(Family),
    #[error("no free {family} address left in {range}")]
    Exhausted { family: Family, range: Cidr },
    #[error("address {ip} is outside the allocation range {range}")]
    OutOfRange { ip: IpAddr, range: Cidr },
    #[error("address {ip} cannot be allocated: {reason}")]
    NotAllocatable { ip: IpAddr, reason: &'static str },
    #[error("address {ip} is already allocated (owner: {owner})")]
    AlreadyAllocated { ip: IpAddr, owner: String },
    #[error("address {ip} is not allocated")]
    NotAllocated { ip: IpAddr },
    #[error("allocation range {range} is too small: it needs room for the router and an endpoint")]
    RangeTooSmall { range: Cidr },
    #[error(
        "the saved {family} allocations came from {saved_range} and do not fit the configured \
         range {range} (e.g. {examples}); start with the range they came from, or with \
         --restore=false to discard them"
    )]
    StateMismatch {
        family: Family,
        saved_range: String,
        range: Cidr,
        examples: String,
    },
    #[error(
        "the saved state holds {count} {family} allocations from {saved_range} but {family} is \
         disabled now; enable it again, or start with --restore=false to discard them"
    )]
    SavedFamilyDisabled {
        family: Family,
        count: usize,
        saved_range: String,
    },
}

/// What is persisted of IPAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamState {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<PoolState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PoolState>,
}

/// The node's address pools.
#[derive(Debug)]
pub struct Ipam {
    ipv4: Option<Mutex<Pool>>,
    ipv6: Option<Mutex<Pool>>,
}

impl Ipam {
    /// Pools over the given ranges; `None` disables that family.
    pub fn new(ipv4: Option<Cidr>, ipv6: Option<Cidr>) -> Result<Ipam, IpamError> {
        Ok(Ipam {
            ipv4: ipv4.map(Pool::new).transpose()?.map(Mutex::new),
            ipv6: ipv6.map(Pool::new).transpose()?.map(Mutex::new),
        })
    }

    /// The pool of a family, locked.
    pub fn pool(&self, family: Family) -> Result<MutexGuard<'_, Pool>, IpamError> {
        let pool = match family {
            Family::Ipv4 => &self.ipv4,
            Family::Ipv6 => &self.ipv6,
        };
        let pool = pool.as_ref().ok_or(IpamError::FamilyDisabled(family))?;
        // A panic while holding the lock cannot leave a pool half-changed: every mutation is
        // a single map operation. Keep serving.
        Ok(pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn enabled(&self, family: Family) -> bool {
        match family {
            Family::Ipv4 => self.ipv4.is_some(),
            Family::Ipv6 => self.ipv6.is_some(),
        }
    }

    /// Families with a pool, IPv4 first.
    pub fn families(&self) -> Vec<Family> {
        [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .filter(|f| self.enabled(*f))
            .collect()
    }

    /// Allocates one address of `family`, or one of every enabled family when `None`. Either
    /// all requested addresses are allocated or none.
    pub fn allocate(&self, family: Option<Family>, owner: &str) -> Result<AddressPair, IpamError> {
        let families = match family {
            Some(f) => {
                if !self.enabled(f) {
                    return Err(IpamError::FamilyDisabled(f));
                }
                vec![f]
            }
            None => self.families(),
        };
        let mut pair = AddressPair::default();
        for f in families {
            match self.pool(f).and_then(|mut p| p.allocate(owner)) {
                Ok(ip) => set_family(&mut pair, f, ip),
                Err(e) => {
                    self.release_pair(&pair);
                    return Err(e);
                }
            }
        }
        Ok(pair)
    }

    /// Reserves a given address.
    pub fn reserve(&self, ip: IpAddr, owner: &str) -> Result<(), IpamError> {
        self.pool(Family::of(&ip))?.reserve(ip, owner)
    }

    /// Releases an address; returns its owner.
    pub fn release(&self, ip: IpAddr) -> Result<String, IpamError> {
        self.pool(Family::of(&ip))?.release(ip)
    }

    /// Releases both addresses of a pair, ignoring those not allocated.
    pub fn release_pair(&self, pair: &AddressPair) {
        for ip in [pair.ipv4, pair.ipv6].into_iter().flatten() {
            // Releasing an address that is already free is the wanted end state.
            let _ = self.release(ip);
        }
    }

    /// The owner of an address, if allocated.
    pub fn owner(&self, ip: &IpAddr) -> Option<String> {
        self.pool(Family::of(ip))
            .ok()?
            .owner(ip)
            .map(str::to_string)
    }

    pub fn set_owner(&self, ip: &IpAddr, owner: &str) -> Result<(), IpamError> {
        self.pool(Family::of(ip))?.set_owner(ip, owner)
    }

    /// Every allocation (router excluded) with its owner.
    pub fn allocations(&self) -> Vec<(IpAddr, String)> {
        let mut out = Vec::new();
        for f in self.families() {
            if let Ok(pool) = self.pool(f) {
                out.extend(
                    pool.allocations()
                        .filter(|(_, o)| *o != ROUTER_OWNER)
                        .map(|(ip, o)| (ip, o.to_string())),
                );
            }
        }
        out
    }

    /// Allocated addresses per family, router included, for `GET /healthz`.
    pub fn status(&self) -> IpamStatus {
        let list = |f| {
            self.pool(f)
                .map(|p| p.allocations().map(|(ip, _)| ip.to_string()).collect())
                .unwrap_or_default()
        };
        IpamStatus {
            ipv4: list(Family::Ipv4),
            ipv6: list(Family::Ipv6),
        }
    }

    /// The node addressing as the API reports it.
    pub fn node_addressing(&self) -> NodeAddressing {
        let element = |f| match self.pool(f) {
            Ok(p) => NodeAddressingElement {
                enabled: true,
                ip: Some(p.router()),
                alloc_range: Some(p.alloc_range().to_string()),
            },
            Err(_) => NodeAddressingElement::default(),
        };
        NodeAddressing {
            ipv4: element(Family::Ipv4),
            ipv6: element(Family::Ipv6),
        }
    }

    pub fn to_state(&self) -> IpamState {
        let state = |f| self.pool(f).ok().map(|p| p.to_state());
        IpamState {
            version: STATE_VERSION,
            ipv4: state(Family::Ipv4),
            ipv6: state(Family::Ipv6),
        }
    }

    /// Loads persisted allocations. Checks every family before changing any.
    pub fn restore(&self, state: &IpamState) -> Result<(), IpamError> {
        let mut staged = Vec::new();
        for (family, saved) in [(Family::Ipv4, &state.ipv4), (Family::Ipv6, &state.ipv6)] {
            let Some(saved) = saved else { continue };
            let Ok(pool) = self.pool(family) else {
                if saved.allocations.is_empty() {
                    continue;
                }
                return Err(IpamError::SavedFamilyDisabled {
                    family,
                    count: saved.allocations.len(),
                    saved_range: saved.alloc_range.clone(),
                });
            };
            let mut copy = pool.clone();
            copy.restore(saved)?;
            staged.push((family, copy));
        }
        for (family, copy) in staged {
            *self.pool(family)? = copy;
        }
        Ok(())
    }
}

/// Puts an address in the slot of its family.
pub fn set_family(pair: &mut AddressPair, family: Family, ip: IpAddr) {
    match family {
        Family::Ipv4 => pair.ipv4 = Some(ip),
        Family::Ipv6 => pair.ipv6 = Some(ip),
    }
}

#[cfg(test)]
mod tests;
