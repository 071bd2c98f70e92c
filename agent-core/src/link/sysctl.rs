//! Kernel settings under `/proc/sys/net`. Paths resolve in the network namespace of the
//! calling thread.

use std::path::PathBuf;

use super::LinkError;

/// Writes `value` to `/proc/sys/net/<key>` unless it already holds it.
pub fn set(key: &str, value: &str) -> Result<(), LinkError> {
    let path = PathBuf::from("/proc/sys/net").join(key);
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| LinkError::Sysctl { path, source })
}

/// Like [`set`], for IPv6 settings: a kernel or namespace without IPv6 has no such file,
/// and then there is nothing to set.
pub fn set_ipv6(key: &str, value: &str) -> Result<(), LinkError> {
    match set(&format!("ipv6/{key}"), value) {
        Err(LinkError::Sysctl { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

/// IPv4 and IPv6 forwarding on, as a router between endpoints needs.
pub fn enable_forwarding() -> Result<(), LinkError> {
    set("ipv4/ip_forward", "1")?;
    set_ipv6("conf/all/forwarding", "1")
}

/// Settings of a host-side endpoint link: no reverse-path filter (the endpoint's source
/// addresses are checked by the datapath, not by routing), and no IPv6 duplicate address
/// detection so its link-local address (used for neighbour discovery) works at once.
pub fn prepare_link(name: &str) -> Result<(), LinkError> {
    set(&format!("ipv4/conf/{name}/rp_filter"), "0")?;
    set_ipv6(&format!("conf/{name}/accept_dad"), "0")
}
