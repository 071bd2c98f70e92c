//! Text output of the `cilium` CLI, following the seed's layouts (`cilium status`,
//! `cilium endpoint list`). Pure functions over API models, so they are unit-tested.

use std::fmt::Write;

use cilium_api::models::{
    ConfigurationMap, DaemonConfigurationResponse, Endpoint, LabelConfiguration,
    NodeAddressingElement, Status, StatusResponse,
};

fn status_line(out: &mut String, name: &str, status: &Status) {
    let line = format!(
        "{:<19}{:<10}{}",
        format!("{name}:"),
        status.state,
        status.msg
    );
    let _ = writeln!(out, "{}", line.trim_end());
}

/// `cilium status`.
pub fn status(s: &StatusResponse) -> String {
    let mut out = String::new();
    status_line(&mut out, "KVStore", &s.kvstore);
    status_line(&mut out, "ContainerRuntime", &s.container_runtime);
    status_line(&mut out, "Kubernetes", &s.kubernetes);
    status_line(&mut out, "Cilium", &s.cilium);
    for (family, list) in [("IPv4", &s.ipam.ipv4), ("IPv6", &s.ipam.ipv6)] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "Allocated {family} addresses:");
        for ip in list {
            let _ = writeln!(out, " {ip}");
        }
    }
    out
}

/// `cilium endpoint list`: one row per endpoint, sorted by id, extra labels on continuation
/// lines under the LABELS column.
pub fn endpoint_table(endpoints: &[Endpoint]) -> String {
    let mut sorted: Vec<&Endpoint> = endpoints.iter().collect();
    sorted.sort_by_key(|e| e.id);
    let headers = [
        "ENDPOINT",
        "POLICY",
        "IDENTITY",
        "LABELS (source:key[=value])",
        "IPv6",
        "IPv4",
        "STATUS",
    ];
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let rows: Vec<([String; 7], Vec<String>)> = sorted
        .iter()
        .map(|e| {
            let mut labels = e.labels.clone();
            let first = if labels.is_empty() {
                "no labels".to_string()
            } else {
                labels.remove(0)
            };
            let cells = [
                e.id.to_string(),
                if e.policy_enabled {
                    "Enabled"
                } else {
                    "Disabled"
                }
                .to_string(),
                dash(
                    e.identity
                        .as_ref()
                        .map(|i| i.id.to_string())
                        .unwrap_or_default(),
                ),
                first,
                dash(
                    e.addressing
                        .ipv6
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                ),
                dash(
                    e.addressing
                        .ipv4
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                ),
                e.state.to_string(),
            ];
            (cells, labels)
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    widths[1] = widths[1].max("ENFORCEMENT".len());
    for (cells, more) in &rows {
        for (w, c) in widths.iter_mut().zip(cells.iter()) {
            *w = (*w).max(c.len());
        }
        for l in more {
            widths[3] = widths[3].max(l.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{:<w$}   ", c, w = widths[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&headers);
    out.push_str(&line(&["", "ENFORCEMENT"]));
    for (cells, more) in &rows {
        let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
        out.push_str(&line(&refs));
        for l in more {
            out.push_str(&line(&["", "", "", l]));
        }
    }
    out
}

/// `cilium endpoint get`: every field worth reading, one per line, then the status log.
pub fn endpoint_detail(e: &Endpoint) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            let _ = writeln!(out, "{:<22}{value}", format!("{name}:"));
        }
    };
    field("Endpoint", e.id.to_string());
    field("State", e.state.to_string());
    field("Container ID", e.container_id.clone());
    field("Container name", e.container_name.clone());
    field("Pod", e.pod_name.clone());
    field("Docker endpoint", e.docker_endpoint_id.clone());
    field(
        "Labels",
        if e.labels.is_empty() {
            "no labels".to_string()
        } else {
            e.labels.join(" ")
        },
    );
    let address = |ip: Option<std::net::IpAddr>, gw: Option<std::net::IpAddr>| match (ip, gw) {
        (Some(ip), Some(gw)) => format!("{ip} (gateway {gw})"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => String::new(),
    };
    field("IPv4", address(e.addressing.ipv4, e.gateway.ipv4));
    field("IPv6", address(e.addressing.ipv6, e.gateway.ipv6));
    if !e.interface_name.is_empty() {
        field(
            "Host interface",
            format!(
                "{} (index {}, mac {})",
                e.interface_name, e.interface_index, e.host_mac
            ),
        );
    }
    if !e.container_interface_name.is_empty() {
        field(
            "Container interface",
            format!(
                "{} in {} (mac {}, mtu {})",
                e.container_interface_name, e.netns_path, e.mac, e.mtu
            ),
        );
    }
    field("CNI network", e.cni_network.clone());
    field(
        "Identity",
        e.identity
            .as_ref()
            .map(|i| i.id.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    field(
        "Policy enforcement",
        if e.policy_enabled {
            "Enabled"
        } else {
            "Disabled"
        }
        .to_string(),
    );
    if !e.status.is_empty() {
        out.push_str("Status log:\n");
        for s in &e.status {
            let code = match s.code {
                cilium_api::models::StatusCode::Ok => "OK",
                cilium_api::models::StatusCode::Failure => "Failure",
            };
            let _ = writeln!(
                out,
                "  {}  {code:<7}  {:<20}  {}",
                s.timestamp, s.state, s.message
            );
        }
    }
    out
}

/// Option maps: `Name   Value` lines.
pub fn options(map: &ConfigurationMap) -> String {
    let width = map.keys().map(String::len).max().unwrap_or(0).max(18);
    map.iter()
        .map(|(k, v)| format!("{k:<width$}   {v}\n"))
        .collect()
}

fn addressing_line(family: &str, a: &NodeAddressingElement) -> String {
    if !a.enabled {
        return format!("  {family:<18}   disabled\n");
    }
    let ip = a.ip.map(|ip| ip.to_string()).unwrap_or_default();
    let range = a.alloc_range.clone().unwrap_or_default();
    format!("  {family:<18}   router {ip}, allocation range {range}\n")
}

/// `cilium config`.
pub fn configuration(c: &DaemonConfigurationResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Node: {}", c.node_name);
    out.push_str("Addressing:\n");
    out.push_str(&addressing_line("IPv4", &c.addressing.ipv4));
    out.push_str(&addressing_line("IPv6", &c.addressing.ipv6));
    out.push_str("Mutable options:\n");
    for l in options(&c.configuration.mutable).lines() {
        let _ = writeln!(out, "  {l}");
    }
    out.push_str("Immutable options:\n");
    for l in options(&c.configuration.immutable).lines() {
        let _ = writeln!(out, "  {}", l.trim_end());
    }
    out
}

/// `cilium endpoint labels`.
pub fn labels(l: &LabelConfiguration) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    format!(
        "Orchestration labels:   {}\nCustom labels:          {}\nDisabled labels:        {}\n",
        list(&l.orchestration_system),
        list(&l.custom),
        list(&l.disabled)
    )
}

#[cfg(test)]
mod tests {
    use cilium_api::models::{AddressPair, EndpointState, Identity, IpamStatus, StatusState};

    use super::*;

    fn endpoint(id: u16, labels: &[&str]) -> Endpoint {
        Endpoint {
            id,
            container_id: String::new(),
            container_name: String::new(),
            docker_endpoint_id: String::new(),
            docker_network_id: String::new(),
            pod_name: String::new(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            interface_name: String::new(),
            interface_index: 0,
            state: EndpointState::Ready,
            status: vec![],
            mac: String::new(),
            host_mac: String::new(),
            addressing: AddressPair {
                ipv4: Some("10.15.191.0".parse().unwrap()),
                ipv6: Some("f00d::a00:20f:0:d25".parse().unwrap()),
            },
            gateway: AddressPair::default(),
            netns_path: String::new(),
            container_interface_name: String::new(),
            mtu: 0,
            cni_network: String::new(),
            identity: Some(Identity {
                id: 256,
                labels: vec![],
            }),
            policy_enabled: false,
            policy_revision: 0,
            options: Default::default(),
        }
    }

    #[test]
    fn endpoint_table_matches_the_seed_layout() {
        let eps = [
            endpoint(
                42910,
                &["k8s:id=app1", "k8s:io.kubernetes.pod.namespace=default"],
            ),
            endpoint(3365, &["k8s:id=app1"]),
        ];
        let out = endpoint_table(&eps);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("ENDPOINT   POLICY        IDENTITY   LABELS (source:key[=value])"),
            "{out}"
        );
        assert!(lines[0].ends_with("IPv4          STATUS"), "{out}");
        assert_eq!(lines[1].trim(), "ENFORCEMENT");
        assert!(lines[2].starts_with("3365 "), "sorted by id: {out}");
        assert!(
            lines[2].contains("Disabled")
                && lines[2].contains("256")
                && lines[2].ends_with("ready")
        );
        assert!(lines[3].starts_with("42910"));
        assert_eq!(lines[4].trim(), "k8s:io.kubernetes.pod.namespace=default");
        let label_col = lines[0].find("LABELS").unwrap();
        assert_eq!(
            lines[4].find("k8s:").unwrap(),
            label_col,
            "continuation under LABELS"
        );
    }

    #[test]
    fn endpoint_without_identity_or_labels() {
        let mut e = endpoint(7, &[]);
        e.identity = None;
        e.addressing.ipv6 = None;
        e.state = EndpointState::WaitingForIdentity;
        let out = endpoint_table(&[e]);
        let row = out.lines().nth(2).unwrap();
        let cells: Vec<&str> = row
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            vec![
                "7",
                "Disabled",
                "-",
                "no labels",
                "-",
                "10.15.191.0",
                "waiting-for-identity"
            ]
        );
    }

    #[test]
    fn status_lines() {
        let s = StatusResponse {
            cilium: Status::new(StatusState::Ok, "2 endpoints"),
            kvstore: Status::new(StatusState::Disabled, ""),
            container_runtime: Status::new(StatusState::Disabled, ""),
            kubernetes: Status::new(StatusState::Disabled, ""),
            ipam: IpamStatus {
                ipv4: vec!["10.2.0.1".into()],
                ipv6: vec![],
            },
            version: "0.1.0".into(),
        };
        assert_eq!(
            status(&s),
            "KVStore:           Disabled\nContainerRuntime:  Disabled\nKubernetes:        Disabled\n\
             Cilium:            Ok        2 endpoints\nAllocated IPv4 addresses:\n 10.2.0.1\n"
        );
    }
}
