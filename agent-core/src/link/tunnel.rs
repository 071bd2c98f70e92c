//! The node-to-node plumbing of the cluster (DESIGN §6-7): the overlay device in
//! collect-metadata mode (`cilium_vxlan` or `cilium_geneve`, the tunnel key is set per packet
//! by the datapath), the routes of direct routing (`--tunnel disabled`), and the masquerade
//! rules of traffic leaving the cluster through `--device`.

use std::net::IpAddr;
use std::process::Command;

use super::message::*;
use super::rtnl::Rtnl;
use super::{sysctl, LinkError};
use crate::cidr::Cidr;

/// VXLAN overlay device and its UDP port (the 2017 system's).
pub const VXLAN_DEVICE: &str = "cilium_vxlan";
pub const VXLAN_PORT: u16 = 8472;
/// Geneve overlay device and its UDP port (IANA).
pub const GENEVE_DEVICE: &str = "cilium_geneve";
pub const GENEVE_PORT: u16 = 6081;
/// Bytes the encapsulation adds (outer IPv4 20 + UDP 8 + VXLAN/Geneve 8 + inner Ethernet 14).
pub const OVERLAY_OVERHEAD: u32 = 50;

const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;
const IFLA_VXLAN_COLLECT_METADATA: u16 = 25;
const IFLA_GENEVE_PORT: u16 = 5;
const IFLA_GENEVE_COLLECT_METADATA: u16 = 6;

/// The kinds of overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    Vxlan,
    Geneve,
}

impl Overlay {
    pub fn device(self) -> &'static str {
        match self {
            Overlay::Vxlan => VXLAN_DEVICE,
            Overlay::Geneve => GENEVE_DEVICE,
        }
    }

    fn other(self) -> Overlay {
        match self {
            Overlay::Vxlan => Overlay::Geneve,
            Overlay::Geneve => Overlay::Vxlan,
        }
    }
}

fn ifinfomsg() -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m
}

/// Creates (if missing) and brings up the overlay device in collect-metadata mode; removes
/// the device of the other kind left by an earlier configuration. Returns its index and MTU.
/// A kernel without the driver gives an error saying so.
pub fn ensure_overlay_device(kind: Overlay) -> Result<(u32, u32), LinkError> {
    let mut node = Rtnl::node()?;
    if node.delete_link(kind.other().device())? {
        tracing::info!(
            "removed {}: the overlay is now {}",
            kind.other().device(),
            kind.device()
        );
    }
    let name = kind.device();
    if node.link(name)?.is_none() {
        let mut req = Request::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(),
        );
        req.attr_str(IFLA_IFNAME, name)
            .begin_nested(IFLA_LINKINFO)
            .attr_str(
                IFLA_INFO_KIND,
                match kind {
                    Overlay::Vxlan => "vxlan",
                    Overlay::Geneve => "geneve",
                },
            )
            .begin_nested(IFLA_INFO_DATA);
        match kind {
            Overlay::Vxlan => {
                req.attr(IFLA_VXLAN_COLLECT_METADATA, &[1])
                    .attr(IFLA_VXLAN_LEARNING, &[0])
                    .attr(IFLA_VXLAN_PORT, &VXLAN_PORT.to_be_bytes());
            }
            Overlay::Geneve => {
                req.attr(IFLA_GENEVE_COLLECT_METADATA, &[])
                    .attr(IFLA_GENEVE_PORT, &GENEVE_PORT.to_be_bytes());
            }
        }
        req.end_nested().end_nested();
        match node.socket.execute(&req) {
            Ok(()) => tracing::info!("created {name}"),
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            // "Unknown device type": the kernel has no such driver.
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                return Err(LinkError::Unsupported(format!(
                    "this kernel has no {} driver (creating {name}: {e})",
                    match kind {
                        Overlay::Vxlan => "VXLAN",
                        Overlay::Geneve => "Geneve",
                    }
                )))
            }
            Err(e) => return Err(node.fail("create overlay device", name, e)),
        }
    }
    sysctl::prepare_link(name)?;
    let link = node.link(name)?.ok_or_else(|| LinkError::Vanished {
        name: name.to_string(),
    })?;
    if !link.up {
        node.set_up(link.index, name)?;
    }
    Ok((link.index, link.mtu))
}

/// Removes both overlay devices (direct routing, or no cluster).
pub fn remove_overlay_devices() -> Result<(), LinkError> {
    let mut node = Rtnl::node()?;
    for kind in [Overlay::Vxlan, Overlay::Geneve] {
        if node.delete_link(kind.device())? {
            tracing::info!("removed {}", kind.device());
        }
    }
    Ok(())
}

/// The MTU of a device, if it exists.
pub fn device_mtu(name: &str) -> Result<Option<u32>, LinkError> {
    Ok(Rtnl::node()?.link(name)?.map(|l| l.mtu))
}

fn ip_command(args: &[String]) -> Result<(), LinkError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LinkError::Route(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Route(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn family_flag(range: &Cidr) -> &'static str {
    if range.network().is_ipv4() {
        "-4"
    } else {
        "-6"
    }
}

/// Direct routing: `range` is reached via the node address `via` (added or replaced).
pub fn set_node_route(range: &Cidr, via: IpAddr) -> Result<(), LinkError> {
    ip_command(&[
        family_flag(range).into(),
        "route".into(),
        "replace".into(),
        range.to_string(),
        "via".into(),
        via.to_string(),
        "proto".into(),
        "static".into(),
    ])
}

/// Removes the route of a remote range; a missing route is not an error.
pub fn remove_node_route(range: &Cidr) -> Result<(), LinkError> {
    match ip_command(&[
        family_flag(range).into(),
        "route".into(),
        "del".into(),
        range.to_string(),
    ]) {
        Err(LinkError::Route(msg)) if msg.contains("No such process") => Ok(()),
        other => other,
    }
}

/// The nat chain of the masquerade rules.
pub const MASQ_CHAIN: &str = "CILIUM_MASQ";
const MASQ_COMMENT: &str = "cilium: masquerade traffic leaving the cluster";

fn iptables(args: &[&str]) -> Result<std::process::Output, LinkError> {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| LinkError::Masquerade(format!("iptables {}: {e}", args.join(" "))))
}

fn iptables_ok(args: &[&str]) -> Result<(), LinkError> {
    let out = iptables(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Masquerade(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Masquerades IPv4 traffic from `range` (this node's endpoints) that leaves through
/// `device`, except to the cluster's ranges (`cluster`, every node's, this one's included):
/// `POSTROUTING -s range -o device -j CILIUM_MASQ`, and in that chain one `RETURN` per
/// cluster range, then `MASQUERADE`. The chain is rewritten as a whole, so calling it again
/// with other ranges is how it follows the nodes.
pub fn set_masquerade(range: &Cidr, device: &str, cluster: &[Cidr]) -> Result<(), LinkError> {
    if iptables(&["-t", "nat", "-N", MASQ_CHAIN])?.status.success() {
        tracing::info!("created the nat chain {MASQ_CHAIN}");
    }
    let range = range.to_string();
    let jump = [
        "POSTROUTING",
        "-s",
        range.as_str(),
        "-o",
        device,
        "-m",
        "comment",
        "--comment",
        MASQ_COMMENT,
        "-j",
        MASQ_CHAIN,
    ];
    let mut check = vec!["-t", "nat", "-C"];
    check.extend_from_slice(&jump);
    if !iptables(&check)?.status.success() {
        let mut add = vec!["-t", "nat", "-A"];
        add.extend_from_slice(&jump);
        iptables_ok(&add)?;
    }
    // One iptables-restore transaction: the chain is never seen half-written.
    let mut rules = String::from("*nat\n");
    rules.push_str(&format!(":{MASQ_CHAIN} - [0:0]\n"));
    for c in cluster.iter().filter(|c| c.network().is_ipv4()) {
        rules.push_str(&format!("-A {MASQ_CHAIN} -d {c} -j RETURN\n"));
    }
    rules.push_str(&format!("-A {MASQ_CHAIN} -j MASQUERADE\nCOMMIT\n"));
    restore_nat(&rules)
}

fn restore_nat(rules: &str) -> Result<(), LinkError> {
    use std::io::Write;
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| LinkError::Masquerade(format!("iptables-restore: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| LinkError::Masquerade(format!("iptables-restore: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LinkError::Masquerade(format!("iptables-restore: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Masquerade(format!(
            "iptables-restore of {MASQ_CHAIN}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Removes the masquerade rules of `range` (no `--masquerade`, or no `--device`).
pub fn remove_masquerade() -> Result<(), LinkError> {
    let out = iptables(&["-t", "nat", "-S", "POSTROUTING"])?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rule) = line.strip_prefix("-A ") {
            if rule.ends_with(&format!("-j {MASQ_CHAIN}")) {
                let args: Vec<&str> = shell_words(rule);
                let mut del = vec!["-t", "nat", "-D"];
                del.extend(args);
                iptables_ok(&del)?;
            }
        }
    }
    let _ = iptables(&["-t", "nat", "-F", MASQ_CHAIN]);
    let _ = iptables(&["-t", "nat", "-X", MASQ_CHAIN]);
    Ok(())
}

/// Splits an `iptables -S` rule into arguments (quoted comments are one argument).
fn shell_words(rule: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = rule.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shell_words;

    #[test]
    fn iptables_rules_split_into_arguments() {
        assert_eq!(
            shell_words(
                "POSTROUTING -s 10.1.0.0/16 -o eth0 -m comment --comment \"cilium: x y\" -j CILIUM_MASQ"
            ),
            vec![
                "POSTROUTING",
                "-s",
                "10.1.0.0/16",
                "-o",
                "eth0",
                "-m",
                "comment",
                "--comment",
                "cilium: x y",
                "-j",
                "CILIUM_MASQ"
            ]
        );
    }
}
