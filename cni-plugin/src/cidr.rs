//! An address with a prefix length (`10.0.0.5/32`, `f00d::1/128`, `0.0.0.0/0`), as CNI
//! results write addresses and route destinations. Host bits are kept: `10.1.2.3/16` is the
//! address 10.1.2.3 in a /16.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address, host bits included.
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

/// A string that is not `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR '{0}': expected ADDRESS/PREFIX")]
pub struct CidrError(pub String);

impl Cidr {
    /// The single-address prefix of `addr`: `/32` or `/128`.
    pub fn host(addr: IpAddr) -> Self {
        Cidr {
            addr,
            prefix_len: max_prefix(&addr),
        }
    }

    /// The default route destination of `addr`'s family: `0.0.0.0/0` or `::/0`.
    pub fn default_route(addr: &IpAddr) -> Self {
        let any = match addr {
            IpAddr::V4(_) => IpAddr::from([0u8; 4]),
            IpAddr::V6(_) => IpAddr::from([0u8; 16]),
        };
        Cidr {
            addr: any,
            prefix_len: 0,
        }
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix_len: u8 = prefix.parse().map_err(|_| err())?;
        if prefix_len > max_prefix(&addr) {
            return Err(err());
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for s in [
            "10.0.0.5/32",
            "10.1.2.3/16",
            "0.0.0.0/0",
            "f00d::1/128",
            "::/0",
        ] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refused() {
        for bad in [
            "10.0.0.5",
            "10.0.0.5/33",
            "f00d::1/129",
            "x/1",
            "10.0.0.5/",
            "/8",
        ] {
            assert_eq!(
                bad.parse::<Cidr>(),
                Err(CidrError(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_and_default_route() {
        let v4: IpAddr = "10.0.0.5".parse().unwrap();
        let v6: IpAddr = "f00d::5".parse().unwrap();
        assert_eq!(Cidr::host(v4).to_string(), "10.0.0.5/32");
        assert_eq!(Cidr::host(v6).to_string(), "f00d::5/128");
        assert_eq!(Cidr::default_route(&v4).to_string(), "0.0.0.0/0");
        assert_eq!(Cidr::default_route(&v6).to_string(), "::/0");
    }

    #[test]
    fn serde_as_string() {
        let cidr: Cidr = serde_json::from_str("\"10.0.0.5/32\"").unwrap();
        assert_eq!(serde_json::to_string(&cidr).unwrap(), "\"10.0.0.5/32\"");
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.5\"").is_err());
    }
}
