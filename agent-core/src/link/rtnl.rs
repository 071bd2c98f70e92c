//! Typed rtnetlink operations on one namespace: links (veth pairs), addresses, routes and
//! neighbour entries. Every error names the operation and the object.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use super::message::*;
use super::socket::{NetlinkFailure, Socket};
use super::LinkError;
use crate::netns::Netns;

const IFF_UP: u32 = 0x1;
const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const NUD_PERMANENT: u16 = 0x80;
const NTF_PROXY: u8 = 0x08;
/// Offset of `ndm_flags` in `struct ndmsg`.
const NDM_FLAGS: usize = 10;

/// What the agent needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
}

/// A route as the agent adds and checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub prefsrc: Option<IpAddr>,
    /// Link scope (a directly attached destination) instead of universe.
    pub link_scope: bool,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: String,
    pub permanent: bool,
}

/// An rtnetlink socket bound to one namespace, named for error messages.
#[derive(Debug)]
pub struct Rtnl {
    pub(super) socket: Socket,
    /// "node" or the container netns path.
    place: String,
}

fn family_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(mac: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (bytes.len() == 6).then_some(bytes)
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = AF_UNSPEC;
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

impl Rtnl {
    /// A socket in the calling thread's namespace (the node's, for the agent's threads).
    pub fn node() -> Result<Rtnl, LinkError> {
        let socket = Socket::open().map_err(|source| LinkError::Socket {
            place: "node".into(),
            source,
        })?;
        Ok(Rtnl {
            socket,
            place: "node".into(),
        })
    }

    /// A socket inside `netns`, opened on a dedicated thread that entered it.
    pub fn inside(netns: &Netns) -> Result<Rtnl, LinkError> {
        let place = netns.path().display().to_string();
        let socket = netns
            .run(Socket::open)?
            .map_err(|source| LinkError::Socket {
                place: place.clone(),
                source,
            })?;
        Ok(Rtnl { socket, place })
    }

    pub(super) fn fail(
        &self,
        op: &'static str,
        object: impl std::fmt::Display,
        e: NetlinkFailure,
    ) -> LinkError {
        LinkError::Netlink {
            op,
            object: format!("{object} in {}", self.place),
            source: e,
        }
    }

    /// The link named `name`, if it exists.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        let mut req = Request::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0));
        req.attr_str(IFLA_IFNAME, name);
        match self.socket.get(&req) {
            Ok(Some(msg)) => Ok(parse_link(&msg)),
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail("look up link", name, e)),
        }
    }

    /// Creates a veth pair `host` (here) ↔ `peer`, the peer created directly inside
    /// `peer_netns` (or here when `None`), both with `mtu`. Fails if either name exists.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: Option<&Netns>,
        mtu: u32,
    ) -> Result<(), LinkError> {
        let mut req = Request::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        req.attr_str(IFLA_IFNAME, host)
            .attr_u32(IFLA_MTU, mtu)
            .begin_nested(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .begin_nested(IFLA_INFO_DATA)
            .begin_nested(VETH_INFO_PEER)
            .raw(&ifinfomsg(0, 0, 0))
            .attr_str(IFLA_IFNAME, peer)
            .attr_u32(IFLA_MTU, mtu);
        if let Some(ns) = peer_netns {
            req.attr_u32(IFLA_NET_NS_FD, ns.file().as_raw_fd() as u32);
        }
        req.end_nested().end_nested().end_nested();
        self.socket
            .execute(&req)
            .map_err(|e| self.fail("create veth pair", format!("{host}/{peer}"), e))
    }

    /// Brings the link up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        let req = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, IFF_UP, IFF_UP));
        self.socket
            .execute(&req)
            .map_err(|e| self.fail("bring up link", name, e))
    }

    /// Deletes the link named `name`. `Ok(false)` if there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, LinkError> {
        let mut req = Request::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        req.attr_str(IFLA_IFNAME, name);
        match self.socket.execute(&req) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(self.fail("delete link", name, e)),
        }
    }

    /// Deletes the link with interface index `index`. `Ok(false)` if there was none.
    pub fn delete_link_index(&mut self, index: u32) -> Result<bool, LinkError> {
        let req = Request::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        match self.socket.execute(&req) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(self.fail("delete link", format!("#{index}"), e)),
        }
    }

    /// Adds `ip/prefix` to the link; IPv6 addresses skip duplicate address detection.
    /// `Ok(false)` when the address was already there.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Result<bool, LinkError> {
        let mut fixed = [0u8; 8];
        fixed[0] = family_of(&ip);
        fixed[1] = prefix;
        fixed[3] = RT_SCOPE_UNIVERSE;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        if ip.is_ipv6() {
            fixed[2] = IFA_F_NODAD as u8;
        }
        let mut req = Request::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
        req.attr(IFA_LOCAL, &ip_bytes(&ip))
            .attr(IFA_ADDRESS, &ip_bytes(&ip));
        if ip.is_ipv6() {
            req.attr_u32(IFA_FLAGS, IFA_F_NODAD);
        }
        match self.socket.execute(&req) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::EEXIST)) => Ok(false),
            Err(e) => Err(self.fail("add address", format!("{ip}/{prefix}"), e)),
        }
    }

    /// The addresses on link `index`, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, LinkError> {
        let mut fixed = [0u8; 8];
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let req = Request::new(RTM_GETADDR, NLM_F_DUMP, &fixed);
        let messages = self
            .socket
            .dump(&req)
            .map_err(|e| self.fail("list addresses of link", index, e))?;
        Ok(messages
            .iter()
            .filter(|m| m.payload.len() >= 8 && u32_at(&m.payload, 4) == index)
            .filter_map(|m| {
                let attrs = &m.payload[8..];
                let ip = find_attr(attrs, IFA_LOCAL)
                    .or_else(|| find_attr(attrs, IFA_ADDRESS))
                    .and_then(ip_from)?;
                Some((ip, m.payload[1]))
            })
            .collect())
    }

    /// Adds a route in the main table. `Ok(false)` when it was already there.
    pub fn add_route(&mut self, route: &Route) -> Result<bool, LinkError> {
        let fixed = rtmsg(route);
        let mut req = Request::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
        let default = route.prefix == 0;
        if !default {
            req.attr(RTA_DST, &ip_bytes(&route.dst));
        }
        req.attr_u32(RTA_OIF, route.oif);
        if let Some(gw) = &route.gateway {
            req.attr(RTA_GATEWAY, &ip_bytes(gw));
        }
        if let Some(src) = &route.prefsrc {
            req.attr(RTA_PREFSRC, &ip_bytes(src));
        }
        match self.socket.execute(&req) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::EEXIST)) => Ok(false),
            Err(e) => Err(self.fail("add route", describe_route(route), e)),
        }
    }

    /// Routes of the main table in the family of `sample` that leave through link `oif`.
    pub fn routes(&mut self, sample: &IpAddr, oif: u32) -> Result<Vec<Route>, LinkError> {
        let mut fixed = [0u8; 12];
        fixed[0] = family_of(sample);
        fixed[4] = RT_TABLE_MAIN;
        let req = Request::new(RTM_GETROUTE, NLM_F_DUMP, &fixed);
        let messages = self
            .socket
            .dump(&req)
            .map_err(|e| self.fail("list routes via link", oif, e))?;
        let unspecified = match sample {
            IpAddr::V4(_) => IpAddr::from([0u8; 4]),
            IpAddr::V6(_) => IpAddr::from([0u8; 16]),
        };
        Ok(messages
            .iter()
            .filter(|m| m.payload.len() >= 12)
            .filter_map(|m| {
                let p = &m.payload;
                let attrs = &p[12..];
                let table = find_attr(attrs, RTA_TABLE)
                    .map(|t| u32_at(t, 0))
                    .unwrap_or(p[4] as u32);
                let out = find_attr(attrs, RTA_OIF).map(|o| u32_at(o, 0))?;
                if table != RT_TABLE_MAIN as u32 || out != oif || p[7] != RTN_UNICAST {
                    return None;
                }
                Some(Route {
                    dst: find_attr(attrs, RTA_DST)
                        .and_then(ip_from)
                        .unwrap_or(unspecified),
                    prefix: p[1],
                    gateway: find_attr(attrs, RTA_GATEWAY).and_then(ip_from),
                    oif: out,
                    prefsrc: find_attr(attrs, RTA_PREFSRC).and_then(ip_from),
                    link_scope: p[6] == RT_SCOPE_LINK,
                })
            })
            .collect())
    }

    /// Adds (or replaces) a permanent neighbour entry.
    pub fn add_neighbour(&mut self, n: &Neighbour) -> Result<(), LinkError> {
        let mac = parse_mac(&n.mac).ok_or_else(|| LinkError::BadMac(n.mac.clone()))?;
        let mut req = Request::new(
            RTM_NEWNEIGH,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &ndmsg(family_of(&n.ip), n.index, NUD_PERMANENT),
        );
        req.attr(NDA_DST, &ip_bytes(&n.ip)).attr(NDA_LLADDR, &mac);
        self.socket
            .execute(&req)
            .map_err(|e| self.fail("add neighbour", format!("{} lladdr {}", n.ip, n.mac), e))
    }

    /// A proxy entry: the node answers neighbour solicitations for `ip` on link `index`
    /// (with `proxy_ndp` on for the link).
    pub fn add_proxy_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<(), LinkError> {
        let mut fixed = ndmsg(family_of(&ip), index, NUD_PERMANENT);
        fixed[NDM_FLAGS] = NTF_PROXY;
        let mut req = Request::new(
            RTM_NEWNEIGH,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &fixed,
        );
        req.attr(NDA_DST, &ip_bytes(&ip));
        self.socket
            .execute(&req)
            .map_err(|e| self.fail("add proxy neighbour", format!("{ip} on #{index}"), e))
    }

    /// Sets the MAC address of link `index`.
    pub fn set_mac(&mut self, index: u32, name: &str, mac: &str) -> Result<(), LinkError> {
        let bytes = parse_mac(mac).ok_or_else(|| LinkError::BadMac(mac.to_string()))?;
        let mut req = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        req.attr(IFLA_ADDRESS, &bytes);
        self.socket
            .execute(&req)
            .map_err(|e| self.fail("set the MAC address of", format!("{name} to {mac}"), e))
    }

    /// Neighbour entries on link `index` in the family of `sample`.
    pub fn neighbours(&mut self, sample: &IpAddr, index: u32) -> Result<Vec<Neighbour>, LinkError> {
        let req = Request::new(RTM_GETNEIGH, NLM_F_DUMP, &ndmsg(family_of(sample), 0, 0));
        let messages = self
            .socket
            .dump(&req)
            .map_err(|e| self.fail("list neighbours of link", index, e))?;
        Ok(messages
            .iter()
            .filter(|m| m.payload.len() >= 12 && u32_at(&m.payload, 4) == index)
            .filter_map(|m| {
                let attrs = &m.payload[12..];
                Some(Neighbour {
                    index,
                    ip: find_attr(attrs, NDA_DST).and_then(ip_from)?,
                    mac: find_attr(attrs, NDA_LLADDR)
                        .map(format_mac)
                        .unwrap_or_default(),
                    permanent: u16_at(&m.payload, 8) & NUD_PERMANENT != 0,
                })
            })
            .collect())
    }
}

fn rtmsg(route: &Route) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0] = family_of(&route.dst);
    m[1] = route.prefix;
    m[4] = RT_TABLE_MAIN;
    m[5] = RTPROT_STATIC;
    m[6] = if route.link_scope {
        RT_SCOPE_LINK
    } else {
        RT_SCOPE_UNIVERSE
    };
    m[7] = RTN_UNICAST;
    m
}

fn ndmsg(family: u8, index: u32, state: u16) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0] = family;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..10].copy_from_slice(&state.to_ne_bytes());
    m
}

fn parse_link(msg: &Message) -> Option<LinkInfo> {
    let p = &msg.payload;
    if p.len() < 16 {
        return None;
    }
    let attrs = &p[16..];
    Some(LinkInfo {
        index: u32_at(p, 4),
        name: find_attr(attrs, IFLA_IFNAME).map(attr_string)?,
        mac: find_attr(attrs, IFLA_ADDRESS)
            .map(format_mac)
            .unwrap_or_default(),
        mtu: find_attr(attrs, IFLA_MTU)
            .map(|v| u32_at(v, 0))
            .unwrap_or(0),
        up: u32_at(p, 8) & IFF_UP != 0,
    })
}

/// `10.0.0.5/32 dev 7` or `default via 10.0.0.1 dev 7`, for messages.
pub fn describe_route(r: &Route) -> String {
    let dst = if r.prefix == 0 {
        "default".to_string()
    } else {
        format!("{}/{}", r.dst, r.prefix)
    };
    match &r.gateway {
        Some(gw) => format!("{dst} via {gw} dev #{}", r.oif),
        None => format!("{dst} dev #{}", r.oif),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = format_mac(&[0x0a, 0, 0xff, 1, 2, 0x3c]);
        assert_eq!(mac, "0a:00:ff:01:02:3c");
        assert_eq!(parse_mac(&mac).unwrap(), vec![0x0a, 0, 0xff, 1, 2, 0x3c]);
        assert!(parse_mac("0a:00").is_none());
        assert!(parse_mac("zz:00:00:00:00:00").is_none());
    }

    #[test]
    fn route_messages() {
        let r = Route {
            dst: "10.1.0.1".parse().unwrap(),
            prefix: 32,
            gateway: None,
            oif: 3,
            prefsrc: None,
            link_scope: true,
        };
        let m = rtmsg(&r);
        assert_eq!(m[0], libc::AF_INET as u8);
        assert_eq!(m[1], 32);
        assert_eq!(m[6], RT_SCOPE_LINK);
        assert_eq!(describe_route(&r), "10.1.0.1/32 dev #3");
        let d = Route {
            dst: "::".parse().unwrap(),
            prefix: 0,
            gateway: Some("f00d::1".parse().unwrap()),
            oif: 3,
            prefsrc: None,
            link_scope: false,
        };
        assert_eq!(rtmsg(&d)[0], libc::AF_INET6 as u8);
        assert_eq!(describe_route(&d), "default via f00d::1 dev #3");
    }
}
