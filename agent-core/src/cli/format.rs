//! Text output of the `cilium` CLI, following the seed's layouts (`cilium status`,
//! `cilium endpoint list`, `cilium policy get|import|delete`). Pure functions over API models,
//! so they are unit-tested.

use std::fmt::Write;

use cilium_api::models::{
    ConfigurationMap, DaemonConfigurationResponse, DatapathCounter, DatapathStatus,
    DirectionPolicy, Endpoint, HttpRuleModel, Identity, LabelConfiguration, NodeAddressingElement,
    Policy, PolicyAction, PolicyEntry, Status, StatusResponse,
};

/// Lays out a table whose cells may span several lines: columns are separated by three
/// spaces, every line of a row is indented by `indent`, trailing blanks are trimmed.
pub(crate) fn table(indent: &str, headers: &[&str], rows: &[Vec<Vec<String>>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = cell.iter().map(String::len).fold(*w, usize::max);
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut s = String::from(indent);
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{:<w$}   ", c, w = widths[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers);
    for row in rows {
        let height = row.iter().map(Vec::len).max().unwrap_or(0).max(1);
        for n in 0..height {
            let cells: Vec<&str> = row
                .iter()
                .map(|cell| cell.get(n).map(String::as_str).unwrap_or(""))
                .collect();
            out.push_str(&line(&cells));
        }
    }
    out
}

fn enabled(on: bool) -> &'static str {
    if on {
        "Enabled"
    } else {
        "Disabled"
    }
}

fn status_line(out: &mut String, name: &str, status: &Status) {
    let line = format!(
        "{:<19}{:<10}{}",
        format!("{name}:"),
        status.state,
        status.msg
    );
    let _ = writeln!(out, "{}", line.trim_end());
}

/// `cilium status`. With a datapath, a `Datapath:` line and its counters follow the
/// `Cilium:` line; without one the output is as before.
pub fn status(s: &StatusResponse) -> String {
    let mut out = String::new();
    status_line(&mut out, "KVStore", &s.kvstore);
    status_line(&mut out, "ContainerRuntime", &s.container_runtime);
    status_line(&mut out, "Kubernetes", &s.kubernetes);
    status_line(&mut out, "Cilium", &s.cilium);
    if let Some(cluster) = &s.cluster {
        status_line(&mut out, "Cluster", cluster);
    }
    if let Some(proxy) = &s.proxy {
        status_line(&mut out, "Proxy", proxy);
    }
    if let Some(datapath) = &s.datapath {
        datapath_status(&mut out, datapath);
    }
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

/// What `cilium status --all` shows: the status and what the agent holds.
#[derive(Debug)]
pub struct FullStatus {
    pub status: StatusResponse,
    pub endpoints: Vec<Endpoint>,
    pub identities: usize,
    pub policy_revision: u64,
    pub config: DaemonConfigurationResponse,
}

impl FullStatus {
    /// Endpoint counts by state, sorted by state name.
    pub fn endpoint_states(&self) -> std::collections::BTreeMap<String, usize> {
        let mut states = std::collections::BTreeMap::new();
        for e in &self.endpoints {
            *states.entry(e.state.to_string()).or_insert(0) += 1;
        }
        states
    }

    /// `-o json`: the status with the extra sections.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.status).unwrap_or_default();
        v["endpoints"] = serde_json::json!({
            "total": self.endpoints.len(),
            "by-state": self.endpoint_states(),
        });
        v["identities"] = self.identities.into();
        v["policy-revision"] = self.policy_revision.into();
        v["nodes"] = serde_json::json!([self.config.node_name]);
        v
    }
}

/// `cilium status --all`: the status, then endpoints by state, identities, the policy
/// revision and the nodes.
pub fn full_status(f: &FullStatus) -> String {
    let mut out = status(&f.status);
    let states: Vec<String> = f
        .endpoint_states()
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    let by_state = if states.is_empty() {
        String::new()
    } else {
        format!(" ({})", states.join(", "))
    };
    let _ = writeln!(out, "{:<19}{}{by_state}", "Endpoints:", f.endpoints.len());
    let _ = writeln!(out, "{:<19}{}", "Identities:", f.identities);
    let _ = writeln!(out, "{:<19}revision {}", "Policy:", f.policy_revision);
    let _ = writeln!(out, "{:<19}1 ({}, this node)", "Nodes:", f.config.node_name);
    out
}

/// The `Datapath:` line (state, pin path, message) and a compact summary of the counters:
/// forwarded packets per direction, then every drop reason and direction that counted
/// packets, by reason code; then the monitor events lost, if any.
fn datapath_status(out: &mut String, d: &DatapathStatus) {
    let msg = match (d.pin_path.is_empty(), d.status.msg.is_empty()) {
        (false, false) => format!("{} ({})", d.pin_path, d.status.msg),
        (false, true) => d.pin_path.clone(),
        (true, _) => d.status.msg.clone(),
    };
    status_line(out, "Datapath", &Status::new(d.status.state, msg));
    let direction_rank = |dir: &str| match dir {
        "ingress" => 0,
        "egress" => 1,
        _ => 2,
    };
    let forwarded = |dir: &str| DatapathCounter {
        reason: 0,
        description: "Forwarded".to_string(),
        direction: dir.to_string(),
        packets: d
            .counters
            .iter()
            .filter(|c| c.reason == 0 && c.direction == dir)
            .map(|c| c.packets)
            .sum(),
        bytes: 0,
    };
    let mut drops: Vec<&DatapathCounter> = d
        .counters
        .iter()
        .filter(|c| c.reason != 0 && c.packets > 0)
        .collect();
    drops.sort_by_key(|c| (c.reason, direction_rank(&c.direction)));
    let mut lines: Vec<DatapathCounter> = vec![forwarded("ingress"), forwarded("egress")];
    lines.extend(drops.into_iter().cloned());
    let name = |c: &DatapathCounter| {
        if c.description.is_empty() {
            format!("Reason {}", c.reason)
        } else {
            c.description.clone()
        }
    };
    let width = lines.iter().map(|c| name(c).len()).max().unwrap_or(0);
    for c in &lines {
        let _ = writeln!(
            out,
            "  {:<width$}   {:<7}  {} packets",
            name(c),
            c.direction,
            c.packets
        );
    }
    if d.events_lost > 0 {
        let _ = writeln!(out, "  Monitor events lost: {}", d.events_lost);
    }
}

/// `cilium endpoint list`: one row per endpoint, sorted by id, extra labels on continuation
/// lines under the LABELS column. The seed's columns, then CONTAINER (the container or pod
/// name) last, so scripts that pick the seed's columns by position keep working.
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
        "CONTAINER",
    ];
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let rows: Vec<([String; 8], Vec<String>)> = sorted
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
                enabled(e.policy_enabled).to_string(),
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
                dash(if e.container_name.is_empty() {
                    e.pod_name.clone()
                } else {
                    e.container_name.clone()
                }),
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
    if let Some(identity) = &e.identity {
        field("Identity labels", identity.labels.join(" "));
    }
    field(
        "Policy enforcement",
        match &e.policy {
            Some(p) => format!(
                "ingress {}, egress {}",
                enabled(p.ingress.enforcing),
                enabled(p.egress.enforcing)
            ),
            None => enabled(e.policy_enabled).to_string(),
        },
    );
    field("Policy revision", e.policy_revision.to_string());
    if let Some(p) = &e.policy {
        direction_policy(&mut out, "Ingress", &p.ingress);
        direction_policy(&mut out, "Egress", &p.egress);
    }
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

/// The lines under ACTION that spell out one HTTP rule of a redirect entry.
fn http_rule_lines(rule: &HttpRuleModel) -> Vec<String> {
    let mut lines = Vec::new();
    let request = match (rule.method.is_empty(), rule.path.is_empty()) {
        (false, false) => format!("{} {}", rule.method, rule.path),
        (false, true) => rule.method.clone(),
        (true, false) => rule.path.clone(),
        (true, true) => String::new(),
    };
    if !request.is_empty() {
        lines.push(request);
    }
    if !rule.host.is_empty() {
        lines.push(format!("host: {}", rule.host));
    }
    for header in &rule.headers {
        lines.push(format!("header: {header}"));
    }
    if lines.is_empty() {
        lines.push("any request".to_string());
    }
    lines
}

/// `80/tcp`, `80/any`, `any/udp`, or `any` when neither port nor protocol is limited.
pub fn port_protocol(port: u16, protocol: &str) -> String {
    let protocol = if protocol.is_empty() { "any" } else { protocol };
    match (port, protocol) {
        (0, "any") => "any".to_string(),
        (0, proto) => format!("any/{proto}"),
        (port, proto) => format!("{port}/{proto}"),
    }
}

fn entry_row(entry: &PolicyEntry) -> Vec<Vec<String>> {
    let (identity, labels) = match entry.identity {
        Some(id) => (
            id.to_string(),
            entry
                .labels
                .first()
                .cloned()
                .unwrap_or_else(|| "-".to_string()),
        ),
        None => ("any".to_string(), "any".to_string()),
    };
    let mut action = vec![match entry.action {
        PolicyAction::Allow => "allow".to_string(),
        PolicyAction::Redirect => "redirect".to_string(),
    }];
    if entry.action == PolicyAction::Redirect {
        for rule in &entry.http {
            action.extend(http_rule_lines(rule).into_iter().map(|l| format!("  {l}")));
        }
    }
    vec![
        vec![identity],
        vec![labels],
        vec![port_protocol(entry.port, &entry.protocol)],
        action,
    ]
}

/// One direction of an endpoint's resolved policy, for `cilium endpoint get`.
fn direction_policy(out: &mut String, name: &str, policy: &DirectionPolicy) {
    if !policy.enforcing {
        let _ = writeln!(out, "{name} policy: not enforced, all traffic allowed");
        return;
    }
    if policy.entries.is_empty() {
        let _ = writeln!(out, "{name} policy: enforced, no traffic allowed");
        return;
    }
    let _ = writeln!(out, "{name} policy:");
    let rows: Vec<Vec<Vec<String>>> = policy.entries.iter().map(entry_row).collect();
    out.push_str(&table(
        "  ",
        &["IDENTITY", "LABELS", "PORT", "ACTION"],
        &rows,
    ));
}

/// `cilium identity list`: ID, LABELS (one per line, continuation lines under LABELS) and
/// REFERENCES (local endpoints holding the identity), sorted by id.
pub fn identity_table(identities: &[Identity]) -> String {
    let mut sorted: Vec<&Identity> = identities.iter().collect();
    sorted.sort_by_key(|i| i.id);
    let rows: Vec<Vec<Vec<String>>> = sorted
        .iter()
        .map(|i| {
            let labels = if i.labels.is_empty() {
                vec!["-".to_string()]
            } else {
                i.labels.clone()
            };
            vec![
                vec![i.id.to_string()],
                labels,
                vec![i
                    .references
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".to_string())],
            ]
        })
        .collect();
    table("", &["ID", "LABELS", "REFERENCES"], &rows)
}

/// `cilium identity get`: the same layout for one identity.
pub fn identity_detail(identity: &Identity) -> String {
    identity_table(std::slice::from_ref(identity))
}

/// `Revision: N` (`cilium policy import|delete`).
pub fn policy_revision(p: &Policy) -> String {
    format!("Revision: {}\n", p.revision)
}

/// `cilium policy get`: the rules as indented JSON, then `Revision: N`.
pub fn policy_get(p: &Policy) -> String {
    let rules = pretty_json(&p.policy).unwrap_or_else(|| p.policy.trim().to_string());
    let mut out = rules;
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&policy_revision(p));
    out
}

/// Re-indents JSON text with two spaces per level, keeping the order of object keys (the
/// agent writes rules in the order of the policy language). `None` when `text` is not JSON.
pub fn pretty_json(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}') | Some(']')) {
                    // An empty object or array stays on one line.
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    Some(out)
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
pub(crate) mod tests {
    use cilium_api::models::{
        AddressPair, DaemonConfiguration, EndpointPolicy, EndpointState, IpamStatus,
        NodeAddressing, StatusState,
    };

    use super::*;

    /// A ready endpoint with addresses and identity 256, for formatting tests.
    pub(crate) fn endpoint(id: u16, labels: &[&str]) -> Endpoint {
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
                references: None,
            }),
            policy_enabled: false,
            policy_revision: 0,
            policy: None,
            options: Default::default(),
        }
    }

    #[test]
    fn full_status_counts_endpoints_by_state() {
        let mut waiting = endpoint(2, &[]);
        waiting.state = EndpointState::WaitingForIdentity;
        let full = FullStatus {
            status: StatusResponse {
                cilium: Status::new(StatusState::Ok, "2 endpoints"),
                kvstore: Status::new(StatusState::Ok, "embedded"),
                container_runtime: Status::new(StatusState::Disabled, ""),
                kubernetes: Status::new(StatusState::Disabled, ""),
                ipam: Default::default(),
                version: "0.1.0".into(),
                datapath: None,
                cluster: None,
                proxy: None,
            },
            endpoints: vec![endpoint(1, &["container:id=a"]), waiting],
            identities: 4,
            policy_revision: 3,
            config: DaemonConfigurationResponse {
                node_name: "n1".into(),
                addressing: Default::default(),
                configuration: Default::default(),
            },
        };
        let out = full_status(&full);
        assert!(
            out.contains("Endpoints:         2 (ready 1, waiting-for-identity 1)"),
            "{out}"
        );
        assert!(out.contains("Identities:        4"), "{out}");
        assert!(out.contains("Policy:            revision 3"), "{out}");
        assert!(
            out.contains("Nodes:             1 (n1, this node)"),
            "{out}"
        );
        let json = full.to_json();
        assert_eq!(json["endpoints"]["by-state"]["ready"], 1);
        assert_eq!(json["policy-revision"], 3);
        assert_eq!(json["kvstore"]["state"], "Ok");
    }

    #[test]
    fn endpoint_table_matches_the_seed_layout() {
        let eps = [
            endpoint(
                42910,
                &["k8s:id=app1", "k8s:io.kubernetes.pod.namespace=default"],
            ),
            Endpoint {
                container_name: "name-3365".into(),
                ..endpoint(3365, &["k8s:id=app1"])
            },
        ];
        let out = endpoint_table(&eps);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("ENDPOINT   POLICY        IDENTITY   LABELS (source:key[=value])"),
            "{out}"
        );
        assert!(
            lines[0].ends_with("IPv4          STATUS   CONTAINER"),
            "{out}"
        );
        assert_eq!(lines[1].trim(), "ENFORCEMENT");
        assert!(lines[2].starts_with("3365 "), "sorted by id: {out}");
        assert!(
            lines[2].contains("Disabled")
                && lines[2].contains("256")
                && lines[2].ends_with("ready    name-3365")
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
                "waiting-for-identity",
                "-"
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
            datapath: None,
            cluster: None,
            proxy: None,
        };
        assert_eq!(
            status(&s),
            "KVStore:           Disabled\nContainerRuntime:  Disabled\nKubernetes:        Disabled\n\
             Cilium:            Ok        2 endpoints\nAllocated IPv4 addresses:\n 10.2.0.1\n"
        );
    }

    #[test]
    fn status_with_a_datapath() {
        let counter =
            |reason: u8, description: &str, direction: &str, packets: u64| DatapathCounter {
                reason,
                description: description.into(),
                direction: direction.into(),
                packets,
                bytes: packets * 100,
            };
        let s = StatusResponse {
            cilium: Status::new(StatusState::Ok, "2 endpoints"),
            kvstore: Status::new(StatusState::Ok, "embedded"),
            container_runtime: Status::new(StatusState::Disabled, ""),
            kubernetes: Status::new(StatusState::Disabled, ""),
            ipam: IpamStatus::default(),
            version: "0.1.0".into(),
            datapath: Some(DatapathStatus {
                status: Status::new(StatusState::Ok, ""),
                pin_path: "/sys/fs/bpf/tc/globals".into(),
                counters: vec![
                    counter(159, "Policy denied (L4)", "egress", 1),
                    counter(0, "Forwarded", "egress", 118),
                    counter(133, "Policy denied (L3)", "egress", 0),
                    counter(133, "Policy denied (L3)", "ingress", 3),
                    counter(0, "Forwarded", "ingress", 120),
                    counter(131, "Invalid destination mac", "egress", 2),
                ],
                events_lost: 0,
            }),
            cluster: None,
            proxy: None,
        };
        assert_eq!(
            status(&s),
            "KVStore:           Ok        embedded\n\
             ContainerRuntime:  Disabled\n\
             Kubernetes:        Disabled\n\
             Cilium:            Ok        2 endpoints\n\
             Datapath:          Ok        /sys/fs/bpf/tc/globals\n\
             \x20 Forwarded                 ingress  120 packets\n\
             \x20 Forwarded                 egress   118 packets\n\
             \x20 Invalid destination mac   egress   2 packets\n\
             \x20 Policy denied (L3)        ingress  3 packets\n\
             \x20 Policy denied (L4)        egress   1 packets\n"
        );

        // A datapath that failed, with nothing counted yet.
        let mut failed = s.clone();
        failed.datapath = Some(DatapathStatus {
            status: Status::new(StatusState::Failure, "cannot load the eBPF programs"),
            pin_path: String::new(),
            counters: vec![],
            events_lost: 7,
        });
        let out = status(&failed);
        assert!(
            out.contains(
                "Datapath:          Failure   cannot load the eBPF programs\n\
                 \x20 Forwarded   ingress  0 packets\n\
                 \x20 Forwarded   egress   0 packets\n\
                 \x20 Monitor events lost: 7\n"
            ),
            "{out}"
        );
    }

    fn identity(id: u32, labels: &[&str], references: Option<u32>) -> Identity {
        Identity {
            id,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            references,
        }
    }

    #[test]
    fn endpoint_table_shows_enabled_enforcement() {
        let mut e = endpoint(29898, &["mesos:id=web-server"]);
        e.policy_enabled = true;
        let out = endpoint_table(&[e]);
        let row = out.lines().nth(2).unwrap();
        assert!(row.starts_with("29898      Enabled       256"), "{out}");
    }

    #[test]
    fn identity_table_with_multi_label_rows() {
        let ids = [
            identity(257, &["container:id=app2", "container:id.foo"], Some(2)),
            identity(1, &["reserved:host"], Some(0)),
            identity(256, &[], None),
        ];
        let out = identity_table(&ids);
        assert_eq!(
            out,
            "ID    LABELS              REFERENCES\n\
             1     reserved:host       0\n\
             256   -                   -\n\
             257   container:id=app2   2\n\
             \x20     container:id.foo\n"
        );
        let lines: Vec<&str> = out.lines().collect();
        let label_col = lines[0].find("LABELS").unwrap();
        assert_eq!(lines[4].find("container:").unwrap(), label_col);
    }

    #[test]
    fn identity_detail_is_a_one_row_table() {
        let out = identity_detail(&identity(2, &["reserved:world"], None));
        assert_eq!(
            out,
            "ID   LABELS           REFERENCES\n2    reserved:world   -\n"
        );
    }

    #[test]
    fn policy_get_prints_indented_rules_then_the_revision() {
        let p = Policy {
            revision: 26,
            policy: r#"[{"endpointSelector":{"matchLabels":{"any:id":"app1"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"any:id":"app2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}],"labels":[]}]"#.into(),
        };
        let out = policy_get(&p);
        assert!(out.ends_with("]\nRevision: 26\n"), "{out}");
        assert_eq!(
            out,
            r#"[
  {
    "endpointSelector": {
      "matchLabels": {
        "any:id": "app1"
      }
    },
    "ingress": [
      {
        "fromEndpoints": [
          {
            "matchLabels": {
              "any:id": "app2"
            }
          }
        ],
        "toPorts": [
          {
            "ports": [
              {
                "port": "80",
                "protocol": "TCP"
              }
            ]
          }
        ]
      }
    ],
    "labels": []
  }
]
Revision: 26
"#
        );
        let empty = Policy {
            revision: 2,
            policy: "[]".into(),
        };
        assert_eq!(policy_get(&empty), "[]\nRevision: 2\n");
        assert_eq!(policy_revision(&empty), "Revision: 2\n");
    }

    #[test]
    fn pretty_json_keeps_strings_and_key_order() {
        let text = r#" { "z" : "a,b:{c}[d]", "a":"q\"uo,te\\", "e":{ }, "n":[1, 2.5,null,true] } "#;
        assert_eq!(
            pretty_json(text).unwrap(),
            "{\n  \"z\": \"a,b:{c}[d]\",\n  \"a\": \"q\\\"uo,te\\\\\",\n  \"e\": {},\n  \
             \"n\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}"
        );
        assert_eq!(pretty_json("[{,"), None);
        // Not JSON: printed as the agent sent it.
        let p = Policy {
            revision: 1,
            policy: "garbage".into(),
        };
        assert_eq!(policy_get(&p), "garbage\nRevision: 1\n");
    }

    #[test]
    fn port_protocol_forms() {
        assert_eq!(port_protocol(0, "any"), "any");
        assert_eq!(port_protocol(0, ""), "any");
        assert_eq!(port_protocol(80, "tcp"), "80/tcp");
        assert_eq!(port_protocol(80, "any"), "80/any");
        assert_eq!(port_protocol(0, "udp"), "any/udp");
    }

    #[test]
    fn endpoint_detail_with_a_redirect_entry() {
        let mut e = endpoint(29898, &["container:id=app1"]);
        e.identity = Some(identity(256, &["container:id=app1"], None));
        e.policy_enabled = true;
        e.policy_revision = 3;
        e.policy = Some(EndpointPolicy {
            revision: 3,
            ingress: DirectionPolicy {
                enforcing: true,
                entries: vec![
                    PolicyEntry {
                        identity: Some(257),
                        labels: vec!["container:id=app2".into(), "container:x".into()],
                        port: 80,
                        protocol: "tcp".into(),
                        action: PolicyAction::Redirect,
                        http: vec![
                            HttpRuleModel {
                                method: "GET".into(),
                                path: "/public".into(),
                                host: String::new(),
                                headers: vec![],
                            },
                            HttpRuleModel {
                                method: "PUT".into(),
                                path: "/path2$".into(),
                                host: "foo.com".into(),
                                headers: vec!["X-My-Header: true".into()],
                            },
                        ],
                    },
                    PolicyEntry {
                        identity: Some(1),
                        labels: vec![],
                        port: 0,
                        protocol: "any".into(),
                        action: PolicyAction::Allow,
                        http: vec![],
                    },
                    PolicyEntry {
                        identity: None,
                        labels: vec![],
                        port: 53,
                        protocol: "udp".into(),
                        action: PolicyAction::Allow,
                        http: vec![],
                    },
                ],
            },
            egress: DirectionPolicy::default(),
        });
        let out = endpoint_detail(&e);
        assert!(out.contains("Identity:             256\n"), "{out}");
        assert!(
            out.contains("Identity labels:      container:id=app1\n"),
            "{out}"
        );
        assert!(
            out.contains("Policy enforcement:   ingress Enabled, egress Disabled\n"),
            "{out}"
        );
        assert!(out.contains("Policy revision:      3\n"), "{out}");
        let expected = "Ingress policy:\n\
            \x20 IDENTITY   LABELS              PORT     ACTION\n\
            \x20 257        container:id=app2   80/tcp   redirect\n\
            \x20                                           GET /public\n\
            \x20                                           PUT /path2$\n\
            \x20                                           host: foo.com\n\
            \x20                                           header: X-My-Header: true\n\
            \x20 1          -                   any      allow\n\
            \x20 any        any                 53/udp   allow\n\
            Egress policy: not enforced, all traffic allowed\n";
        assert!(out.contains(expected), "{out}");

        e.policy = None;
        let out = endpoint_detail(&e);
        assert!(out.contains("Policy enforcement:   Enabled\n"), "{out}");
        assert!(!out.contains("Ingress policy"), "{out}");
    }

    #[test]
    fn enforced_direction_without_entries() {
        let mut e = endpoint(1, &[]);
        e.policy = Some(EndpointPolicy {
            revision: 1,
            ingress: DirectionPolicy {
                enforcing: true,
                entries: vec![],
            },
            egress: DirectionPolicy::default(),
        });
        let out = endpoint_detail(&e);
        assert!(
            out.contains("Ingress policy: enforced, no traffic allowed\n"),
            "{out}"
        );
    }

    #[test]
    fn configuration_shows_non_boolean_options() {
        let mut mutable = ConfigurationMap::new();
        mutable.insert("Debug".into(), "false".into());
        mutable.insert("PolicyEnforcement".into(), "default".into());
        let c = DaemonConfigurationResponse {
            node_name: "node1".into(),
            addressing: NodeAddressing::default(),
            configuration: DaemonConfiguration {
                mutable,
                immutable: ConfigurationMap::new(),
            },
        };
        let out = configuration(&c);
        assert!(out.contains("\n  PolicyEnforcement    default\n"), "{out}");
        assert!(out.contains("\n  Debug                false\n"), "{out}");
    }
}
