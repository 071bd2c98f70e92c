//! One family's address pool: the node allocation range, the router address, the allocations
//! with their owners, and a cursor so that a released address is not handed out again at
//! once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cilium_api::models::Family;
use serde::{Deserialize, Serialize};

use super::IpamError;
use crate::cidr::{from_u128, to_u128, Cidr};

/// Owner recorded for the router address.
pub const ROUTER_OWNER: &str = "router";

/// A pool of addresses of one family.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The node allocation range as configured (e.g. a /96 for IPv6).
    range: Cidr,
    /// The part of `range` addresses are handed out from (the first /112 for IPv6).
    alloc: Cidr,
    /// Lowest and highest address that may be allocated (network, IPv4 broadcast excluded).
    first: u128,
    last: u128,
    router: u128,
    allocated: BTreeMap<u128, String>,
    cursor: u128,
}

/// What is persisted of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PoolState {
    pub alloc_range: String,
    pub cursor: IpAddr,
    /// Address → owner.
    pub allocations: BTreeMap<IpAddr, String>,
}

impl Pool {
    /// A pool over `range`; IPv6 ranges wider than /112 allocate from their first /112.
    /// Fails when the range leaves no room for the router and at least one endpoint.
    pub fn new(range: Cidr) -> Result<Pool, IpamError> {
        let alloc = match range.family() {
            Family::Ipv4 => range,
            Family::Ipv6 => range.first_subnet(112),
        };
        let first = alloc.first() + 1;
        let last = match alloc.family() {
            Family::Ipv4 => alloc.last().saturating_sub(1),
            Family::Ipv6 => alloc.last(),
        };
        // The router takes `first`; at least one more address must remain.
        if last <= first {
            return Err(IpamError::RangeTooSmall { range });
        }
        let mut allocated = BTreeMap::new();
        allocated.insert(first, ROUTER_OWNER.to_string());
        Ok(Pool {
            range,
            alloc,
            first,
            last,
            router: first,
            allocated,
            cursor: first + 1,
        })
    }

    pub fn family(&self) -> Family {
        self.range.family()
    }

    pub fn range(&self) -> Cidr {
        self.range
    }

    pub fn alloc_range(&self) -> Cidr {
        self.alloc
    }

    pub fn router(&self) -> IpAddr {
        self.ip(self.router)
    }

    /// Number of addresses handed out (router excluded).
    pub fn used(&self) -> usize {
        self.allocated.len() - 1
    }

    fn ip(&self, value: u128) -> IpAddr {
        from_u128(value, self.family())
    }

    /// Hands out the next free address at or after the cursor, wrapping around once.
    pub fn allocate(&mut self, owner: &str) -> Result<IpAddr, IpamError> {
        let found = self
            .next_free_from(self.cursor)
            .or_else(|| self.next_free_from(self.first));
        let Some(value) = found else {
            return Err(IpamError::Exhausted {
                family: self.family(),
                range: self.alloc,
            });
        };
        self.allocated.insert(value, owner.to_string());
        self.cursor = if value >= self.last {
            self.first
        } else {
            value + 1
        };
        Ok(self.ip(value))
    }

    fn next_free_from(&self, start: u128) -> Option<u128> {
        let mut candidate = start.max(self.first);
        for &taken in self.allocated.range(candidate..=self.last).map(|(k, _)| k) {
            if taken != candidate {
                break;
            }
            candidate += 1;
        }
        (candidate <= self.last).then_some(candidate)
    }

    /// Checks that `ip` is an address endpoints may hold, and returns it as an integer.
    fn check_allocatable(&self, ip: &IpAddr) -> Result<u128, IpamError> {
        if !self.alloc.contains(ip) {
            return Err(IpamError::OutOfRange {
                ip: *ip,
                range: self.alloc,
            });
        }
        let value = to_u128(ip);
        if value < self.first || value > self.last {
            return Err(IpamError::NotAllocatable {
                ip: *ip,
                reason: "it is the network or broadcast address of the range",
            });
        }
        if value == self.router {
            return Err(IpamError::NotAllocatable {
                ip: *ip,
                reason: "it is the router address",
            });
        }
        Ok(value)
    }

    /// Reserves a given address.
    pub fn reserve(&mut self, ip: IpAddr, owner: &str) -> Result<(), IpamError> {
        if self.alloc.contains(&ip) && to_u128(&ip) == self.router {
            return Err(IpamError::AlreadyAllocated {
                ip,
                owner: ROUTER_OWNER.to_string(),
            });
        }
        let value = self.check_allocatable(&ip)?;
        if let Some(current) = self.allocated.get(&value) {
            return Err(IpamError::AlreadyAllocated {
                ip,
                owner: current.clone(),
            });
        }
        self.allocated.insert(value, owner.to_string());
        Ok(())
    }

    /// Releases an address; returns its owner.
    pub fn release(&mut self, ip: IpAddr) -> Result<String, IpamError> {
        let value = self.check_allocatable(&ip)?;
        self.allocated
            .remove(&value)
            .ok_or(IpamError::NotAllocated { ip })
    }

    /// The owner of an address, if allocated.
    pub fn owner(&self, ip: &IpAddr) -> Option<&str> {
        if !self.alloc.contains(ip) {
            return None;
        }
        self.allocated.get(&to_u128(ip)).map(String::as_str)
    }

    /// Changes the owner of an allocated address.
    pub fn set_owner(&mut self, ip: &IpAddr, owner: &str) -> Result<(), IpamError> {
        let value = self.check_allocatable(ip)?;
        match self.allocated.get_mut(&value) {
            Some(current) => {
                *current = owner.to_string();
                Ok(())
            }
            None => Err(IpamError::NotAllocated { ip: *ip }),
        }
    }

    /// Every allocated address with its owner, router included, in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &str)> + '_ {
        self.allocated
            .iter()
            .map(|(v, o)| (self.ip(*v), o.as_str()))
    }

    pub fn to_state(&self) -> PoolState {
        PoolState {
            alloc_range: self.alloc.to_string(),
            cursor: self.ip(self.cursor),
            allocations: self
                .allocations()
                .filter(|(_, owner)| *owner != ROUTER_OWNER)
                .map(|(ip, owner)| (ip, owner.to_string()))
                .collect(),
        }
    }

    /// Loads persisted allocations. Every one must fit this pool, else nothing is loaded and
    /// the error lists what does not fit (the range was changed under existing endpoints).
    pub fn restore(&mut self, state: &PoolState) -> Result<(), IpamError> {
        let mut restored = self.allocated.clone();
        let mut misfits = Vec::new();
        for (ip, owner) in &state.allocations {
            match self.check_allocatable(ip) {
                Ok(value) => {
                    restored.insert(value, owner.clone());
                }
                Err(_) => misfits.push(ip.to_string()),
            }
        }
        if !misfits.is_empty() {
            misfits.truncate(5);
            return Err(IpamError::StateMismatch {
                family: self.family(),
                saved_range: state.alloc_range.clone(),
                range: self.alloc,
                examples: misfits.join(", "),
            });
        }
        self.allocated = restored;
        if self.alloc.contains(&state.cursor) {
            let cursor = to_u128(&state.cursor);
            if (self.first..=self.last).contains(&cursor) {
                self.cursor = cursor;
            }
        }
        Ok(())
    }
}
