//! IP prefixes (`10.2.0.0/16`, `f00d::c000:202:0:0/96`) with the arithmetic IPAM needs.
//! Both families are handled as 128-bit integers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use cilium_api::models::Family;

/// A network prefix whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not a prefix: expected ADDRESS/LENGTH, e.g. 10.2.0.0/16")]
    Syntax(String),
    #[error("'{input}': prefix length {prefix} is larger than {max}")]
    Length { input: String, prefix: u8, max: u8 },
    #[error("'{input}' has host bits set: the network address is {network}")]
    HostBits { input: String, network: String },
}

impl Cidr {
    /// Builds a prefix, zeroing the host bits.
    pub fn new_truncated(addr: IpAddr, prefix: u8) -> Cidr {
        let bits = bits_of(&addr);
        let prefix = prefix.min(bits);
        let network = from_u128(to_u128(&addr) & mask(bits, prefix), Family::of(&addr));
        Cidr { network, prefix }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn family(&self) -> Family {
        Family::of(&self.network)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Address bits of the family: 32 or 128.
    pub fn bits(&self) -> u8 {
        bits_of(&self.network)
    }

    /// The first address as an integer.
    pub fn first(&self) -> u128 {
        to_u128(&self.network)
    }

    /// The last address as an integer.
    pub fn last(&self) -> u128 {
        self.first() | (!mask(self.bits(), self.prefix) & max_of(self.bits()))
    }

    /// Whether the two prefixes share an address (one contains the other); prefixes of
    /// different families never do.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.family() == other.family()
            && self.first() <= other.last()
            && other.first() <= self.last()
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family()
            && to_u128(ip) & mask(self.bits(), self.prefix) == self.first()
    }

    /// The address `offset` positions after the network address.
    pub fn nth(&self, offset: u128) -> Option<IpAddr> {
        let value = self.first().checked_add(offset)?;
        (value <= self.last()).then(|| from_u128(value, self.family()))
    }

    /// The first sub-prefix of length `prefix` (itself when it is already that long or longer).
    pub fn first_subnet(&self, prefix: u8) -> Cidr {
        if prefix <= self.prefix {
            *self
        } else {
            Cidr {
                network: self.network,
                prefix: prefix.min(self.bits()),
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = len.parse().map_err(|_| syntax())?;
        let max = bits_of(&addr);
        if prefix > max {
            return Err(CidrError::Length {
                input: s.to_string(),
                prefix,
                max,
            });
        }
        let cidr = Cidr::new_truncated(addr, prefix);
        if cidr.network != addr {
            return Err(CidrError::HostBits {
                input: s.to_string(),
                network: cidr.to_string(),
            });
        }
        Ok(cidr)
    }
}

fn bits_of(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn max_of(bits: u8) -> u128 {
    if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn mask(bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (max_of(bits) >> (bits - prefix)) << (bits - prefix)
    }
}

/// An address as an integer (IPv4 in the low 32 bits).
pub fn to_u128(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

/// The inverse of [`to_u128`].
pub fn from_u128(value: u128, family: Family) -> IpAddr {
    match family {
        // Callers only pass values of IPv4 prefixes here, which fit 32 bits.
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::from((value & 0xffff_ffff) as u32)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let c: Cidr = "10.2.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.2.0.0/16");
        assert_eq!(c.nth(1).unwrap().to_string(), "10.2.0.1");
        assert_eq!(
            from_u128(c.last(), Family::Ipv4).to_string(),
            "10.2.255.255"
        );
        let v6: Cidr = "f00d::c000:202:0:0/96".parse().unwrap();
        assert_eq!(v6.first_subnet(112).to_string(), "f00d::c000:202:0:0/112");
        assert_eq!(
            from_u128(v6.first_subnet(112).last(), Family::Ipv6).to_string(),
            "f00d::c000:202:0:ffff"
        );
    }

    #[test]
    fn contains() {
        let c: Cidr = "10.2.0.0/16".parse().unwrap();
        assert!(c.contains(&"10.2.200.1".parse().unwrap()));
        assert!(!c.contains(&"10.3.0.1".parse().unwrap()));
        assert!(!c.contains(&"f00d::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn overlaps() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(c("10.1.0.0/16").overlaps(&c("10.1.128.0/17")));
        assert!(c("10.1.128.0/17").overlaps(&c("10.1.0.0/16")));
        assert!(c("10.1.0.0/16").overlaps(&c("10.1.0.0/16")));
        assert!(c("0.0.0.0/0").overlaps(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/16").overlaps(&c("10.2.0.0/16")));
        assert!(!c("10.1.0.0/24").overlaps(&c("10.1.1.0/24")));
        assert!(c("f00d::/96").overlaps(&c("f00d::1:0/112")));
        assert!(!c("0.0.0.0/0").overlaps(&c("::/0")));
    }

    #[test]
    fn bad_prefixes_name_the_problem() {
        assert!(matches!(
            "10.2.0.0".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.2.0.0/".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.2.0.0/+4".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.2.0.300/16".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.2.0.0/33".parse::<Cidr>(),
            Err(CidrError::Length { .. })
        ));
        let err = "10.2.0.1/16".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "'10.2.0.1/16' has host bits set: the network address is 10.2.0.0/16"
        );
    }
}
