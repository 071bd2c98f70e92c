//! Putting an endpoint on the network and taking it off: the veth pair (peer created inside
//! the container netns), the container's addresses, routes and router neighbour entry, and
//! the node's route to each endpoint address. A failed attach removes what it made.

use std::net::IpAddr;

use super::rtnl::{describe_route, LinkInfo, Neighbour, Route, Rtnl};
use super::{sysctl, LinkError, HOST_DEVICE};
use crate::netns::Netns;

/// What to build for one endpoint.
#[derive(Debug)]
pub struct Attachment<'a> {
    pub netns: &'a Netns,
    /// Host side, `lxc…`.
    pub host_name: &'a str,
    /// Container side (`CNI_IFNAME`).
    pub container_name: &'a str,
    pub mtu: u32,
    /// The endpoint's addresses (one per family at most).
    pub addresses: Vec<IpAddr>,
    /// The router address of each family in use (on `cilium_host`).
    pub routers: Vec<IpAddr>,
}

/// What was built: both ends of the veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host: LinkInfo,
    pub container: LinkInfo,
}

fn prefix_of(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn router_for<'r>(routers: &'r [IpAddr], ip: &IpAddr) -> Option<&'r IpAddr> {
    routers.iter().find(|r| r.is_ipv4() == ip.is_ipv4())
}

/// The routes inside the container for one family: the router on-link, default via it.
fn container_routes(router: IpAddr, oif: u32) -> [Route; 2] {
    let unspecified = if router.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u8; 16])
    };
    [
        Route {
            dst: router,
            prefix: prefix_of(&router),
            gateway: None,
            oif,
            prefsrc: None,
            link_scope: true,
        },
        Route {
            dst: unspecified,
            prefix: 0,
            gateway: Some(router),
            oif,
            prefsrc: None,
            link_scope: false,
        },
    ]
}

/// The node's route to an endpoint address through its host-side link.
fn node_route(ip: IpAddr, router: Option<&IpAddr>, oif: u32) -> Route {
    Route {
        dst: ip,
        prefix: prefix_of(&ip),
        gateway: None,
        oif,
        prefsrc: router.copied(),
        link_scope: true,
    }
}

/// How long an attach waits for a container interface of its name to go away before it
/// reports the name taken.
const EXISTING_LINK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds the endpoint's plumbing. Fails, without leaving anything behind, if the container
/// already has an interface of that name; a stale host-side link of the same name (from an
/// attach that never finished) is replaced.
pub fn attach(a: &Attachment<'_>) -> Result<Attached, LinkError> {
    let mut node = Rtnl::node()?;
    let mut inside = Rtnl::inside(a.netns)?;
    // A DEL of the previous endpoint in this netns is answered before its veth pair is gone
    // (the teardown runs behind it): a link of that name may be about to disappear.
    let deadline = std::time::Instant::now() + EXISTING_LINK_GRACE;
    while inside.link(a.container_name)?.is_some() {
        if std::time::Instant::now() >= deadline {
            return Err(LinkError::Exists {
                name: a.container_name.to_string(),
                place: a.netns.path().display().to_string(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if node.delete_link(a.host_name)? {
        tracing::info!(link = a.host_name, "removed a stale host-side link");
    }
    node.create_veth(a.host_name, a.container_name, Some(a.netns), a.mtu)?;
    match configure(a, &mut node, &mut inside) {
        Ok(attached) => Ok(attached),
        Err(e) => {
            // Deleting the host side removes the peer and every route through either end.
            if let Err(undo) = node.delete_link(a.host_name) {
                tracing::warn!(link = a.host_name, "rollback failed: {undo}");
            }
            Err(e)
        }
    }
}

fn configure(
    a: &Attachment<'_>,
    node: &mut Rtnl,
    inside: &mut Rtnl,
) -> Result<Attached, LinkError> {
    let vanished = |name: &str| LinkError::Vanished {
        name: name.to_string(),
    };
    sysctl::prepare_link(a.host_name)?;
    let host = node
        .link(a.host_name)?
        .ok_or_else(|| vanished(a.host_name))?;
    node.set_up(host.index, a.host_name)?;

    let container_dad = format!("conf/{}/accept_dad", a.container_name);
    a.netns.run(|| sysctl::set_ipv6(&container_dad, "0"))??;
    let container = inside
        .link(a.container_name)?
        .ok_or_else(|| vanished(a.container_name))?;
    inside.set_up(container.index, a.container_name)?;

    for ip in &a.addresses {
        inside.add_address(container.index, *ip, prefix_of(ip))?;
    }
    for router in &a.routers {
        for route in container_routes(*router, container.index) {
            inside.add_route(&route)?;
        }
        inside.add_neighbour(&Neighbour {
            index: container.index,
            ip: *router,
            mac: host.mac.clone(),
            permanent: true,
        })?;
    }
    for ip in &a.addresses {
        node.add_route(&node_route(*ip, router_for(&a.routers, ip), host.index))?;
    }
    Ok(Attached {
        host: LinkInfo { up: true, ..host },
        container: LinkInfo {
            up: true,
            ..container
        },
    })
}

/// A veth pair made entirely in the node's namespace for a runtime that moves the peer into
/// the container itself and configures it there (Docker's libnetwork).
#[derive(Debug)]
pub struct HostPair<'a> {
    /// Host side, `lxc…`.
    pub host_name: &'a str,
    /// The end the runtime moves.
    pub peer_name: &'a str,
    /// The peer's MAC when the runtime chose one.
    pub peer_mac: Option<&'a str>,
    pub mtu: u32,
    pub addresses: Vec<IpAddr>,
    pub routers: Vec<IpAddr>,
}

/// Builds a [`HostPair`]: the pair, the host side up, the node's routes to the endpoint
/// addresses, and proxy neighbour discovery for the IPv6 router (the router address lives on
/// `cilium_host`, and IPv6 only answers solicitations for addresses of the asking link).
/// IPv4 needs nothing: ARP answers for any local address. A failure removes the pair.
pub fn attach_host_pair(p: &HostPair<'_>) -> Result<Attached, LinkError> {
    let mut node = Rtnl::node()?;
    if node.link(p.peer_name)?.is_some() {
        return Err(LinkError::Exists {
            name: p.peer_name.to_string(),
            place: "node".into(),
        });
    }
    if node.delete_link(p.host_name)? {
        tracing::info!(link = p.host_name, "removed a stale host-side link");
    }
    node.create_veth(p.host_name, p.peer_name, None, p.mtu)?;
    match configure_host_pair(p, &mut node) {
        Ok(attached) => Ok(attached),
        Err(e) => {
            if let Err(undo) = node.delete_link(p.host_name) {
                tracing::warn!(link = p.host_name, "rollback failed: {undo}");
            }
            Err(e)
        }
    }
}

fn configure_host_pair(p: &HostPair<'_>, node: &mut Rtnl) -> Result<Attached, LinkError> {
    let vanished = |name: &str| LinkError::Vanished {
        name: name.to_string(),
    };
    sysctl::prepare_link(p.host_name)?;
    let host = node
        .link(p.host_name)?
        .ok_or_else(|| vanished(p.host_name))?;
    let mut peer = node
        .link(p.peer_name)?
        .ok_or_else(|| vanished(p.peer_name))?;
    if let Some(mac) = p.peer_mac {
        node.set_mac(peer.index, p.peer_name, mac)?;
        peer.mac = mac.to_ascii_lowercase();
    }
    node.set_up(host.index, p.host_name)?;
    for router in p.routers.iter().filter(|r| r.is_ipv6()) {
        sysctl::set_ipv6(&format!("conf/{}/proxy_ndp", p.host_name), "1")?;
        node.add_proxy_neighbour(host.index, *router)?;
    }
    for ip in &p.addresses {
        node.add_route(&node_route(*ip, router_for(&p.routers, ip), host.index))?;
    }
    Ok(Attached {
        host: LinkInfo { up: true, ..host },
        container: peer,
    })
}

/// Removes the endpoint's veth pair (and with it every route through it). Works whether or
/// not the container netns still exists. `Ok(false)` when there was nothing to remove.
pub fn detach(host_name: &str) -> Result<bool, LinkError> {
    Rtnl::node()?.delete_link(host_name)
}

/// Like [`detach`], naming the host side by its interface index.
pub fn detach_index(index: u32) -> Result<bool, LinkError> {
    Rtnl::node()?.delete_link_index(index)
}

/// Checks that everything [`attach`] built is still there and as built. Returns what is
/// missing or wrong, one line each; empty when all is well.
pub fn inspect(a: &Attachment<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = inspect_into(a, &mut problems) {
        problems.push(e.to_string());
    }
    problems
}

fn inspect_into(a: &Attachment<'_>, problems: &mut Vec<String>) -> Result<(), LinkError> {
    let mut node = Rtnl::node()?;
    let host = match node.link(a.host_name)? {
        Some(l) => l,
        None => {
            problems.push(format!("host interface {} is missing", a.host_name));
            return Ok(());
        }
    };
    if !host.up {
        problems.push(format!("host interface {} is down", a.host_name));
    }
    if node.link(HOST_DEVICE)?.is_none() {
        problems.push(format!("{HOST_DEVICE} is missing"));
    }
    for ip in &a.addresses {
        let want = node_route(*ip, None, host.index);
        if !node
            .routes(ip, host.index)?
            .iter()
            .any(|r| r.dst == want.dst && r.prefix == want.prefix)
        {
            problems.push(format!("node route {} is missing", describe_route(&want)));
        }
    }

    let mut inside = Rtnl::inside(a.netns)?;
    let place = a.netns.path().display();
    let container = match inside.link(a.container_name)? {
        Some(l) => l,
        None => {
            problems.push(format!(
                "interface {} is missing in {place}",
                a.container_name
            ));
            return Ok(());
        }
    };
    if !container.up {
        problems.push(format!("interface {} in {place} is down", a.container_name));
    }
    let present = inside.addresses(container.index)?;
    for ip in &a.addresses {
        if !present.contains(&(*ip, prefix_of(ip))) {
            problems.push(format!(
                "address {ip}/{} is missing on {} in {place}",
                prefix_of(ip),
                a.container_name
            ));
        }
    }
    for router in &a.routers {
        let routes = inside.routes(router, container.index)?;
        for want in container_routes(*router, container.index) {
            let found = routes
                .iter()
                .any(|r| r.dst == want.dst && r.prefix == want.prefix && r.gateway == want.gateway);
            if !found {
                problems.push(format!(
                    "route {} is missing in {place}",
                    describe_route(&want)
                ));
            }
        }
        let neighbours = inside.neighbours(router, container.index)?;
        let ok = neighbours
            .iter()
            .any(|n| n.ip == *router && n.permanent && n.mac == host.mac);
        if !ok {
            problems.push(format!(
                "permanent neighbour entry {router} lladdr {} is missing in {place}",
                host.mac
            ));
        }
    }
    Ok(())
}
