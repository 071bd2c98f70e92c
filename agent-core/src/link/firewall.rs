//! Accept rules for endpoint traffic in the `FORWARD` chain. Hosts running Docker's bridge
//! driver set the chain's policy to `DROP`; without these rules traffic between endpoints,
//! which the node routes, would be dropped there. Rules are inserted once (checked with
//! `-C` first) for IPv4 and IPv6, through the `iptables`/`ip6tables` commands.

use std::process::Command;

use super::LinkError;

const COMMENT: &str = "cilium: endpoint traffic";

/// The rules: everything into or out of an `lxc` device is accepted.
fn rules() -> [[&'static str; 9]; 2] {
    let rule = |dir| {
        [
            "FORWARD",
            dir,
            "lxc+",
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            "ACCEPT",
        ]
    };
    [rule("-i"), rule("-o")]
}

fn run(tool: &str, action: &str, rule: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(tool).args(["-w", action]).args(rule).output()
}

/// Makes sure the accept rules are in place. A host without the iptables tools has no
/// netfilter rules of that kind to get past: that is logged and not an error.
pub fn allow_endpoint_forwarding(ipv6: bool) -> Result<(), LinkError> {
    let tools: &[&str] = if ipv6 {
        &["iptables", "ip6tables"]
    } else {
        &["iptables"]
    };
    for tool in tools {
        for rule in rules() {
            match run(tool, "-C", &rule) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!("{tool} not found: no FORWARD accept rules installed");
                    break;
                }
                Err(e) => return Err(LinkError::Firewall(format!("{tool}: {e}"))),
                Ok(out) if out.status.success() => continue,
                Ok(_) => {}
            }
            let out =
                run(tool, "-I", &rule).map_err(|e| LinkError::Firewall(format!("{tool}: {e}")))?;
            if !out.status.success() {
                return Err(LinkError::Firewall(format!(
                    "{tool} -I {}: {}",
                    rule.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
    }
    Ok(())
}
