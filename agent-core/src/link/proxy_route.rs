//! The policy routing that puts the L7 proxy in the path (`bpf-programs/include/proxy.h`):
//! packets the datapath marked for the proxy (`MARK_MAGIC_TO_PROXY`) are delivered locally,
//! through a table whose default route is `local`, to the socket the datapath assigned them.
//! The rule and the routes are left in place when the agent stops: the datapath keeps running,
//! and the next agent finds them.

use std::process::Command;

use super::{sysctl, LinkError};
use crate::datapath::abi::{MARK_MAGIC_MASK, MARK_MAGIC_TO_PROXY};

/// The routing table of marked packets.
pub const PROXY_TABLE: u32 = 2005;
/// The rule's priority: before the main table (32766), after the local table (0).
pub const PROXY_RULE_PRIORITY: u32 = 9;

fn ip(args: &[&str]) -> Result<String, LinkError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LinkError::Route(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LinkError::Route(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Installs the rule and the local default routes (IPv4, and IPv6 where the node has it);
/// idempotent. Turns the all-interfaces reverse-path filter off: packets handed back for the
/// proxy arrive on the destination's device with the client's address, which a strict
/// filter would drop (the per-device filters of endpoint devices are off already).
pub fn ensure_proxy_routing() -> Result<(), LinkError> {
    let fwmark = format!("{MARK_MAGIC_TO_PROXY:#x}/{MARK_MAGIC_MASK:#x}");
    let table = PROXY_TABLE.to_string();
    let priority = PROXY_RULE_PRIORITY.to_string();
    for (family, default) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        let rules = match ip(&[family, "rule", "show", "priority", &priority]) {
            Ok(rules) => rules,
            // No IPv6 in this kernel or namespace.
            Err(_) if family == "-6" => continue,
            Err(e) => return Err(e),
        };
        if !rules.contains(&format!("lookup {table}")) {
            ip(&[
                family, "rule", "add", "priority", &priority, "fwmark", &fwmark, "lookup", &table,
            ])?;
        }
        ip(&[
            family, "route", "replace", "local", default, "dev", "lo", "table", &table,
        ])?;
    }
    if std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        .is_ok_and(|v| v.trim() != "0")
    {
        tracing::info!("turning net.ipv4.conf.all.rp_filter off for the L7 proxy");
        sysctl::set("ipv4/conf/all/rp_filter", "0")?;
    }
    Ok(())
}
