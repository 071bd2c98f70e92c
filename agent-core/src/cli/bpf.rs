//! `cilium bpf endpoint|ipcache|ct|policy|lb list`: the contents of the datapath's maps as the
//! agent reads them (`GET /map/...`), and their text layouts (2017 forms, seed and internals
//! §4 and §6). Every command takes `-o json` and then prints the API's JSON.

use std::cmp::Ordering;
use std::fmt::Write;
use std::net::IpAddr;
use std::process::ExitCode;

use cilium_api::models::{
    BpfCtEntry, BpfEndpointEntry, BpfIpcacheEntry, BpfLbEntry, BpfPolicyDump, BpfTunnelEntry,
    NodeEntry,
};
use cilium_api::Client;
use clap::Subcommand;

use super::format::table;
use super::{endpoint_id, show, CliError, Output};

#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// The endpoint map: local endpoint addresses and where they are delivered
    #[command(subcommand)]
    Endpoint(MapList),
    /// The ipcache: which security identity each address prefix has
    #[command(subcommand)]
    Ipcache(MapList),
    /// The connection tracking table
    #[command(subcommand)]
    Ct(CtCommand),
    /// The policy entries of an endpoint, with their packet counters
    #[command(subcommand)]
    Policy(PolicyMapCommand),
    /// The load-balancing maps: service frontends and the backends they spread over
    #[command(subcommand)]
    Lb(MapList),
    /// The tunnel map: other nodes' address ranges and the node the overlay sends them to
    #[command(subcommand)]
    Tunnel(MapList),
}

#[derive(Debug, Subcommand)]
pub enum MapList {
    /// List the entries of the map
    List,
}

#[derive(Debug, Subcommand)]
pub enum CtCommand {
    /// List the connection tracking entries
    List {
        /// The table: only `global` (one table for all endpoints)
        #[arg(default_value = "global", value_parser = ["global"])]
        table: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyMapCommand {
    /// List the policy entries of an endpoint
    List {
        /// Endpoint id: N, cilium-local:N, container-id:ID, docker-endpoint:ID,
        /// container-name:NAME, pod-name:NS:NAME
        endpoint: String,
    },
}

/// Runs a `cilium bpf` command.
pub async fn run(client: &Client, output: Output, cmd: BpfCommand) -> Result<ExitCode, CliError> {
    match cmd {
        BpfCommand::Endpoint(MapList::List) => {
            let entries = client.bpf_endpoint_list().await?;
            show(output, &entries, |e| endpoint_map(e));
        }
        BpfCommand::Ipcache(MapList::List) => {
            let entries = client.bpf_ipcache_list().await?;
            show(output, &entries, |e| ipcache(e));
        }
        BpfCommand::Ct(CtCommand::List { .. }) => {
            let entries = client.bpf_ct_list().await?;
            show(output, &entries, |e| ct_list(e));
        }
        BpfCommand::Tunnel(MapList::List) => {
            let entries = client.bpf_tunnel_list().await?;
            show(output, &entries, |e| tunnel_list(e));
        }
        BpfCommand::Lb(MapList::List) => {
            let entries = client.bpf_lb_list().await?;
            show(output, &entries, |e| lb_list(e));
        }
        BpfCommand::Policy(PolicyMapCommand::List { endpoint }) => {
            let dump = client.bpf_policy_get(&endpoint_id(&endpoint)?).await?;
            show(output, &dump, policy_map);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn flags(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(",")
    }
}

/// `cilium bpf tunnel list`: `PREFIX  ENDPOINT`, by prefix.
pub fn tunnel_list(entries: &[BpfTunnelEntry]) -> String {
    let mut sorted: Vec<&BpfTunnelEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| prefix_key(&e.prefix));
    let rows: Vec<Vec<Vec<String>>> = sorted
        .iter()
        .map(|e| vec![vec![e.prefix.clone()], vec![e.endpoint.to_string()]])
        .collect();
    table("", &["PREFIX", "ENDPOINT"], &rows)
}

/// `cilium node list`: one row per node, this one marked `*`.
pub fn node_list(nodes: &[NodeEntry]) -> String {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let rows: Vec<Vec<Vec<String>>> = nodes
        .iter()
        .map(|n| {
            vec![
                vec![format!(
                    "{}{}",
                    n.name,
                    if n.local { " (local)" } else { "" }
                )],
                vec![dash(n.ipv4.map(|a| a.to_string()))],
                vec![dash(n.ipv4_range.clone())],
                vec![dash(n.ipv6_range.clone())],
                vec![dash(n.tunnel_endpoint.map(|a| a.to_string()))],
            ]
        })
        .collect();
    table(
        "",
        &[
            "NAME",
            "IPV4 ADDRESS",
            "IPV4 RANGE",
            "IPV6 RANGE",
            "TUNNEL ENDPOINT",
        ],
        &rows,
    )
}

/// `cilium bpf endpoint list`: one row per endpoint address, IPv4 before IPv6.
pub fn endpoint_map(entries: &[BpfEndpointEntry]) -> String {
    let mut sorted: Vec<&BpfEndpointEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.ip, e.endpoint_id));
    let rows: Vec<Vec<Vec<String>>> = sorted
        .iter()
        .map(|e| {
            vec![
                vec![e.ip.to_string()],
                vec![format!(
                    "id={} ifindex={} identity={} mac={} nodemac={} flags={}",
                    e.endpoint_id,
                    e.ifindex,
                    e.identity,
                    e.mac,
                    e.node_mac,
                    flags(&e.flags)
                )],
            ]
        })
        .collect();
    table("", &["IP ADDRESS", "LOCAL ENDPOINT INFO"], &rows)
}

/// The address and length of a `a.b.c.d/n` prefix, for sorting.
fn prefix_key(prefix: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = prefix.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}

/// `cilium bpf ipcache list`: PREFIX and IDENTITY, IPv4 before IPv6, by address then
/// length; a TUNNEL ENDPOINT column only when some prefix belongs to another node.
pub fn ipcache(entries: &[BpfIpcacheEntry]) -> String {
    let mut sorted: Vec<&BpfIpcacheEntry> = entries.iter().collect();
    sorted.sort_by(
        |a, b| match (prefix_key(&a.prefix), prefix_key(&b.prefix)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => a.prefix.cmp(&b.prefix),
        },
    );
    let tunnels = sorted.iter().any(|e| e.tunnel_endpoint.is_some());
    let rows: Vec<Vec<Vec<String>>> = sorted
        .iter()
        .map(|e| {
            let mut row = vec![vec![e.prefix.clone()], vec![e.identity.to_string()]];
            if tunnels {
                row.push(vec![e
                    .tunnel_endpoint
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "-".to_string())]);
            }
            row
        })
        .collect();
    if tunnels {
        table("", &["PREFIX", "IDENTITY", "TUNNEL ENDPOINT"], &rows)
    } else {
        table("", &["PREFIX", "IDENTITY"], &rows)
    }
}

/// `cilium bpf lb list`: SERVICE ADDRESS (`frontend/PROTO`) and BACKEND ADDRESS, one line
/// per backend with its share of the slots and its backend id, as the maps hold them.
pub fn lb_list(entries: &[BpfLbEntry]) -> String {
    let rows: Vec<Vec<Vec<String>>> = entries
        .iter()
        .map(|e| {
            let backends = if e.backends.is_empty() {
                vec!["(no backend)".to_string()]
            } else {
                e.backends
                    .iter()
                    .map(|b| {
                        format!(
                            "{} ({} of {} slots, backend {})",
                            b.address, b.slots, e.slots, b.backend_id
                        )
                    })
                    .collect()
            };
            vec![
                vec![format!("{}/{}", e.frontend, e.protocol)],
                vec![e.service_id.to_string()],
                backends,
            ]
        })
        .collect();
    table("", &["SERVICE ADDRESS", "ID", "BACKEND ADDRESS"], &rows)
}

/// One conntrack entry as the 2017 tool printed it:
/// `TCP OUT 10.1.0.2:40000 -> 10.1.0.3:80 expires=21590 rx_packets=… … src_identity=…`.
pub fn ct_line(e: &BpfCtEntry) -> String {
    format!(
        "{} {} {} -> {} expires={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} \
         flags={} src_identity={}{}",
        e.protocol,
        e.direction.to_ascii_uppercase(),
        e.source,
        e.destination,
        e.expires_in,
        e.rx_packets,
        e.rx_bytes,
        e.tx_packets,
        e.tx_bytes,
        flags(&e.flags),
        e.src_identity,
        match (e.rev_nat, e.backend_id) {
            (Some(svc), Some(backend)) => format!(" service={svc} backend={backend}"),
            (Some(svc), None) => format!(" rev_nat={svc}"),
            _ => String::new(),
        }
    )
}

/// `cilium bpf ct list global`: one line per entry, in the agent's order.
pub fn ct_list(entries: &[BpfCtEntry]) -> String {
    entries.iter().map(|e| ct_line(e) + "\n").collect()
}

fn direction_rank(direction: &str) -> u8 {
    match direction {
        "ingress" => 0,
        "egress" => 1,
        _ => 2,
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `cilium bpf policy list <endpoint>`: whether each direction is enforced, then one row per
/// entry (ingress first, by identity, port and protocol): DIRECTION, IDENTITY|LABELS (the
/// identity's labels one per line, `ANY` for identity 0, the number when it has no labels),
/// PORT/PROTO, ACTION, BYTES, PACKETS.
pub fn policy_map(dump: &BpfPolicyDump) -> String {
    let mut out = String::new();
    for (name, enforced) in [
        ("Ingress", dump.ingress_enforced),
        ("Egress", dump.egress_enforced),
    ] {
        let state = if enforced {
            "enforced"
        } else {
            "not enforced, all traffic allowed"
        };
        let _ = writeln!(out, "{name} policy: {state}");
    }
    let mut entries: Vec<_> = dump.entries.iter().collect();
    entries.sort_by(|a, b| {
        (direction_rank(&a.direction), a.identity == 0, a.identity)
            .cmp(&(direction_rank(&b.direction), b.identity == 0, b.identity))
            .then(a.port.cmp(&b.port))
            .then(a.protocol.cmp(&b.protocol))
    });
    let rows: Vec<Vec<Vec<String>>> = entries
        .iter()
        .map(|e| {
            let identity = if e.identity == 0 {
                vec!["ANY".to_string()]
            } else if e.labels.is_empty() {
                vec![e.identity.to_string()]
            } else {
                e.labels.clone()
            };
            let protocol = if e.protocol.is_empty() {
                "ANY".to_string()
            } else {
                e.protocol.to_ascii_uppercase()
            };
            let port = match (e.port, protocol.as_str()) {
                (0, "ANY") => "ANY".to_string(),
                (0, proto) => format!("ANY/{proto}"),
                (port, proto) => format!("{port}/{proto}"),
            };
            let action = if e.proxy_port != 0 {
                format!("{}:{}", e.action, e.proxy_port)
            } else {
                e.action.clone()
            };
            vec![
                vec![capitalized(&e.direction)],
                identity,
                vec![port],
                vec![action],
                vec![e.bytes.to_string()],
                vec![e.packets.to_string()],
            ]
        })
        .collect();
    out.push_str(&table(
        "",
        &[
            "DIRECTION",
            "IDENTITY|LABELS (source:key[=value])",
            "PORT/PROTO",
            "ACTION",
            "BYTES",
            "PACKETS",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use cilium_api::models::BpfPolicyEntry;
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    fn endpoint_entry(ip: &str, id: u16, flags: &[&str]) -> BpfEndpointEntry {
        BpfEndpointEntry {
            ip: ip.parse().unwrap(),
            endpoint_id: id,
            identity: 256,
            ifindex: 12,
            mac: "0a:58:0a:0f:bf:00".into(),
            node_mac: "ee:12:77:4d:a0:01".into(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn endpoint_map_rows() {
        let out = endpoint_map(&[
            endpoint_entry("f00d::a00:20f:0:d25", 29898, &[]),
            endpoint_entry("10.15.191.0", 29898, &["policy-ingress", "debug"]),
        ]);
        assert_eq!(
            out,
            "IP ADDRESS            LOCAL ENDPOINT INFO\n\
             10.15.191.0           id=29898 ifindex=12 identity=256 mac=0a:58:0a:0f:bf:00 \
             nodemac=ee:12:77:4d:a0:01 flags=policy-ingress,debug\n\
             f00d::a00:20f:0:d25   id=29898 ifindex=12 identity=256 mac=0a:58:0a:0f:bf:00 \
             nodemac=ee:12:77:4d:a0:01 flags=none\n"
        );
        assert_eq!(endpoint_map(&[]), "IP ADDRESS   LOCAL ENDPOINT INFO\n");
    }

    fn prefix(p: &str, identity: u32) -> BpfIpcacheEntry {
        BpfIpcacheEntry {
            prefix: p.into(),
            identity,
            tunnel_endpoint: None,
        }
    }

    #[test]
    fn ipcache_sorted_by_family_address_and_length() {
        let mut entries = vec![
            prefix("f00d::a00:20f:0:d25/128", 256),
            prefix("10.15.191.0/32", 256),
            prefix("10.15.0.0/16", 2),
            prefix("10.15.0.0/15", 5),
            prefix("192.0.2.66/32", 1),
        ];
        assert_eq!(
            ipcache(&entries),
            "PREFIX                    IDENTITY\n\
             10.15.0.0/15              5\n\
             10.15.0.0/16              2\n\
             10.15.191.0/32            256\n\
             192.0.2.66/32             1\n\
             f00d::a00:20f:0:d25/128   256\n"
        );
        entries.truncate(2);
        entries[0].tunnel_endpoint = Some("192.0.2.10".parse().unwrap());
        assert_eq!(
            ipcache(&entries),
            "PREFIX                    IDENTITY   TUNNEL ENDPOINT\n\
             10.15.191.0/32            256        -\n\
             f00d::a00:20f:0:d25/128   256        192.0.2.10\n"
        );
    }

    #[test]
    fn lb_list_lines() {
        use cilium_api::models::BpfLbBackend;
        let entries = vec![
            BpfLbEntry {
                frontend: "10.96.0.10:80".into(),
                protocol: "TCP".into(),
                service_id: 1,
                slots: 3,
                backends: vec![
                    BpfLbBackend {
                        address: "10.23.0.5:8080".into(),
                        backend_id: 4,
                        slots: 1,
                    },
                    BpfLbBackend {
                        address: "10.23.0.6:8080".into(),
                        backend_id: 5,
                        slots: 2,
                    },
                ],
            },
            BpfLbEntry {
                frontend: "[fd00::1]:53".into(),
                protocol: "UDP".into(),
                service_id: 2,
                slots: 0,
                backends: vec![],
            },
        ];
        let text = lb_list(&entries);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert!(lines[0].starts_with("SERVICE ADDRESS"), "{text}");
        assert!(lines[1].starts_with("10.96.0.10:80/TCP"), "{text}");
        assert!(
            lines[1].ends_with("10.23.0.5:8080 (1 of 3 slots, backend 4)"),
            "{text}"
        );
        assert!(
            lines[2]
                .trim_start()
                .starts_with("10.23.0.6:8080 (2 of 3 slots"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("[fd00::1]:53/UDP") && lines[3].ends_with("(no backend)"),
            "{text}"
        );
    }

    #[test]
    fn ct_lines() {
        let e = BpfCtEntry {
            protocol: "TCP".into(),
            direction: "out".into(),
            source: "10.1.0.2:40000".into(),
            destination: "10.1.0.3:80".into(),
            expires_in: 21590,
            tx_packets: 6,
            tx_bytes: 400,
            rx_packets: 4,
            rx_bytes: 300,
            src_identity: 256,
            flags: vec!["seen-reply".into()],
            rev_nat: None,
            backend_id: None,
        };
        assert_eq!(
            ct_line(&e),
            "TCP OUT 10.1.0.2:40000 -> 10.1.0.3:80 expires=21590 rx_packets=4 rx_bytes=300 \
             tx_packets=6 tx_bytes=400 flags=seen-reply src_identity=256"
        );
        let service = BpfCtEntry {
            direction: "service".into(),
            destination: "10.96.0.1:80".into(),
            rev_nat: Some(7),
            backend_id: Some(12),
            ..e.clone()
        };
        assert!(ct_line(&service).starts_with("TCP SERVICE 10.1.0.2:40000 -> 10.96.0.1:80 "));
        assert!(ct_line(&service).ends_with(" src_identity=256 service=7 backend=12"));
        let translated = BpfCtEntry {
            rev_nat: Some(7),
            ..e.clone()
        };
        assert!(ct_line(&translated).ends_with(" src_identity=256 rev_nat=7"));
        let icmp = BpfCtEntry {
            protocol: "ICMPv6".into(),
            direction: "in".into(),
            source: "[f00d::1]:0".into(),
            destination: "[f00d::2]:0".into(),
            ..BpfCtEntry::default()
        };
        assert_eq!(
            ct_list(&[e, icmp]).lines().nth(1).unwrap(),
            "ICMPv6 IN [f00d::1]:0 -> [f00d::2]:0 expires=0 rx_packets=0 rx_bytes=0 \
             tx_packets=0 tx_bytes=0 flags=none src_identity=0"
        );
        assert_eq!(ct_list(&[]), "");
    }

    fn policy_entry(direction: &str, identity: u32, labels: &[&str], port: u16) -> BpfPolicyEntry {
        BpfPolicyEntry {
            direction: direction.into(),
            identity,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            port,
            protocol: if port == 0 { "ANY" } else { "TCP" }.into(),
            action: "allow".into(),
            proxy_port: 0,
            bytes: u64::from(port) * 10,
            packets: u64::from(port),
        }
    }

    #[test]
    fn policy_map_table() {
        let mut redirect = policy_entry("ingress", 257, &["container:id=app2"], 80);
        redirect.action = "redirect".into();
        redirect.proxy_port = 10001;
        let mut udp_any = policy_entry("egress", 0, &[], 0);
        udp_any.protocol = "UDP".into();
        let dump = BpfPolicyDump {
            endpoint_id: 29898,
            ingress_enforced: true,
            egress_enforced: false,
            entries: vec![
                udp_any,
                policy_entry("ingress", 0, &[], 53),
                redirect,
                policy_entry("ingress", 1, &["reserved:host"], 0),
                policy_entry(
                    "ingress",
                    258,
                    &["container:id=app3", "container:id.foo"],
                    0,
                ),
                policy_entry("ingress", 300, &[], 0),
            ],
        };
        assert_eq!(
            policy_map(&dump),
            "Ingress policy: enforced\n\
             Egress policy: not enforced, all traffic allowed\n\
             DIRECTION   IDENTITY|LABELS (source:key[=value])   PORT/PROTO   ACTION           \
             BYTES   PACKETS\n\
             Ingress     reserved:host                          ANY          allow            \
             0       0\n\
             Ingress     container:id=app2                      80/TCP       redirect:10001   \
             800     80\n\
             Ingress     container:id=app3                      ANY          allow            \
             0       0\n\
             \x20           container:id.foo\n\
             Ingress     300                                    ANY          allow            \
             0       0\n\
             Ingress     ANY                                    53/TCP       allow            \
             530     53\n\
             Egress      ANY                                    ANY/UDP      allow            \
             0       0\n"
        );
    }

    #[test]
    fn bpf_commands_parse() {
        let cli = Cli::try_parse_from(["cilium", "bpf", "endpoint", "list", "-o", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(
            cli.command,
            Command::Bpf(BpfCommand::Endpoint(MapList::List))
        ));
        let cli = Cli::try_parse_from(["cilium", "bpf", "ct", "list", "global"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Bpf(BpfCommand::Ct(CtCommand::List { table })) if table == "global"
        ));
        assert!(Cli::try_parse_from(["cilium", "bpf", "ct", "list"]).is_ok());
        assert!(Cli::try_parse_from(["cilium", "bpf", "ct", "list", "29898"]).is_err());
        let cli = Cli::try_parse_from(["cilium", "bpf", "policy", "list", "29898"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Bpf(BpfCommand::Policy(PolicyMapCommand::List { endpoint }))
                if endpoint == "29898"
        ));
        assert!(Cli::try_parse_from(["cilium", "bpf", "policy", "list"]).is_err());
        assert!(Cli::try_parse_from(["cilium", "bpf", "ipcache", "list"]).is_ok());
    }
}
