//! The CNI result: built from the endpoint the agent created, chained after a `prevResult`,
//! read from any spec version's shape and written in the caller's version.
//!
//! One model ([`CniResult`], the 1.x shape) with conversions at the edges: 0.3.x/0.4.0 add
//! `"version"` to each ip; 0.1.0/0.2.0 keep only the first address of each family as
//! `ip4`/`ip6`, with the routes of that family, and no interfaces.

use std::net::IpAddr;

use cilium_api::models::Endpoint;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::cidr::Cidr;
use crate::config::kind;
use crate::version::CniVersion;

/// A `prevResult` that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// A section has the wrong shape.
    #[error("invalid network config: 'prevResult.{section}': {source}")]
    Section {
        /// The key inside `prevResult`.
        section: &'static str,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A section that must be an object is something else.
    #[error("invalid network config: 'prevResult.{section}' must be an object, found {found}")]
    NotAnObject {
        /// The key inside `prevResult`.
        section: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// An ip names an interface that is not in the list.
    #[error(
        "invalid network config: 'prevResult.ips[{ip}].interface' is {index}, but there are \
         {count} interfaces"
    )]
    InterfaceIndex {
        /// Position of the ip.
        ip: usize,
        /// The index it gives.
        index: usize,
        /// How many interfaces there are.
        count: usize,
    },
}

/// An interface of the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The network namespace path for container interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Keys this plugin does not set (`mtu`, `socketPath`, `pciID`), kept from `prevResult`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: Cidr,
    /// The default gateway of this subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: Cidr,
    /// Next hop; the interface's gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Keys this plugin does not set (`mtu`, `advmss`, `priority`, `table`, `scope`), kept
    /// from `prevResult` and written for 0.3.0 and later.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A result, independent of the spec version it is read from or written in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    /// Interfaces, referenced by index from `ips`.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

/// The legacy (0.1.0/0.2.0) `ip4`/`ip6` object.
#[derive(Debug, Deserialize)]
struct LegacyIp {
    ip: Cidr,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<LegacyRoute>,
}

#[derive(Debug, Deserialize)]
struct LegacyRoute {
    dst: Cidr,
    #[serde(default)]
    gw: Option<IpAddr>,
}

/// Reads `result[key]`; absent or null is the default. Lists are checked by serde; `dns`,
/// `ip4` and `ip6` are checked here, as serde would also read a struct from a list.
fn section<T: DeserializeOwned + Default>(
    result: &Map<String, Value>,
    key: &'static str,
) -> Result<T, ResultError> {
    match result.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(value) if matches!(key, "dns" | "ip4" | "ip6") && !value.is_object() => {
            Err(ResultError::NotAnObject {
                section: key,
                found: kind(value),
            })
        }
        Some(value) => {
            serde_json::from_value(value.clone()).map_err(|source| ResultError::Section {
                section: key,
                source,
            })
        }
    }
}

impl CniResult {
    /// What the agent made for the container: the host-side and the container-side
    /// interface, a `/32` and a `/128` on the container side with the router as gateway, and
    /// a default route per family through the router. `ifname` names the container side when
    /// the agent did not; `netns` is `CNI_NETNS` as the runtime gave it.
    pub fn from_endpoint(endpoint: &Endpoint, ifname: &str, netns: &str) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let container_ifname =
            non_empty(&endpoint.container_interface_name).unwrap_or_else(|| ifname.to_string());
        let interfaces = vec![
            Interface {
                name: endpoint.interface_name.clone(),
                mac: non_empty(&endpoint.host_mac),
                ..Interface::default()
            },
            Interface {
                name: container_ifname,
                mac: non_empty(&endpoint.mac),
                sandbox: Some(netns.to_string()),
                ..Interface::default()
            },
        ];
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        let families = [
            (endpoint.addressing.ipv4, endpoint.gateway.ipv4),
            (endpoint.addressing.ipv6, endpoint.gateway.ipv6),
        ];
        for (address, gateway) in families {
            let Some(address) = address else { continue };
            ips.push(IpConfig {
                address: Cidr::host(address),
                gateway,
                interface: Some(1),
            });
            if let Some(gateway) = gateway {
                routes.push(Route {
                    dst: Cidr::default_route(&address),
                    gw: Some(gateway),
                    extra: Map::new(),
                });
            }
        }
        CniResult {
            interfaces,
            ips,
            routes,
            dns: Dns::default(),
        }
    }

    /// Reads a result in any version's shape: `ip4`/`ip6` (0.1.0, 0.2.0) or
    /// `interfaces`/`ips`/`routes` (0.3.0 and later; `version` on ips is ignored).
    pub fn parse(result: &Map<String, Value>) -> Result<Self, ResultError> {
        let legacy = !result.contains_key("ips")
            && !result.contains_key("interfaces")
            && (result.contains_key("ip4") || result.contains_key("ip6"));
        let dns: Dns = section(result, "dns")?;
        if legacy {
            let mut parsed = CniResult {
                dns,
                ..CniResult::default()
            };
            for key in ["ip4", "ip6"] {
                let Some(ip) = section::<Option<LegacyIp>>(result, key)? else {
                    continue;
                };
                parsed.ips.push(IpConfig {
                    address: ip.ip,
                    gateway: ip.gateway,
                    interface: None,
                });
                parsed.routes.extend(ip.routes.into_iter().map(|r| Route {
                    dst: r.dst,
                    gw: r.gw,
                    extra: Map::new(),
                }));
            }
            return Ok(parsed);
        }
        let parsed = CniResult {
            interfaces: section(result, "interfaces")?,
            ips: section(result, "ips")?,
            routes: section(result, "routes")?,
            dns,
        };
        let count = parsed.interfaces.len();
        for (ip, config) in parsed.ips.iter().enumerate() {
            if let Some(index) = config.interface.filter(|&i| i >= count) {
                return Err(ResultError::InterfaceIndex { ip, index, count });
            }
        }
        Ok(parsed)
    }

    /// `self` (a `prevResult`) followed by `next`: interfaces, ips and routes appended, the
    /// interface indices of `next`'s ips shifted past `self`'s interfaces, DNS merged.
    pub fn chain(mut self, next: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(next.interfaces);
        self.ips.extend(next.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(next.routes);
        let dns = &mut self.dns;
        for server in next.dns.nameservers {
            if !dns.nameservers.contains(&server) {
                dns.nameservers.push(server);
            }
        }
        dns.domain = dns.domain.take().or(next.dns.domain);
        for domain in next.dns.search {
            if !dns.search.contains(&domain) {
                dns.search.push(domain);
            }
        }
        for option in next.dns.options {
            if !dns.options.contains(&option) {
                dns.options.push(option);
            }
        }
        self
    }

    /// The result as `version` writes it.
    pub fn to_json(&self, version: CniVersion) -> Value {
        if version.has_legacy_result() {
            return self.to_legacy_json(version);
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            out.insert("interfaces".into(), json!(self.interfaces));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut value = json!(ip);
                    if let (true, Some(object)) = (version.has_ip_version(), value.as_object_mut())
                    {
                        let family = if ip.address.addr.is_ipv4() { "4" } else { "6" };
                        object.insert("version".into(), json!(family));
                    }
                    value
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), json!(self.routes));
        }
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }

    /// 0.1.0/0.2.0: the first address of each family with its gateway and the routes of its
    /// family (destination and next hop only).
    fn to_legacy_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        for (key, is_v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self
                .ips
                .iter()
                .find(|ip| ip.address.addr.is_ipv4() == is_v4)
            else {
                continue;
            };
            let mut entry = Map::new();
            entry.insert("ip".into(), json!(ip.address));
            if let Some(gateway) = ip.gateway {
                entry.insert("gateway".into(), json!(gateway));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.addr.is_ipv4() == is_v4)
                .map(|r| match r.gw {
                    Some(gw) => json!({"dst": r.dst, "gw": gw}),
                    None => json!({"dst": r.dst}),
                })
                .collect();
            if !routes.is_empty() {
                entry.insert("routes".into(), Value::Array(routes));
            }
            out.insert(key.into(), Value::Object(entry));
        }
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use cilium_api::models::AddressPair;

    use super::*;
    use crate::testing::endpoint;

    fn dual_stack() -> CniResult {
        CniResult::from_endpoint(
            &endpoint(Some("10.11.0.5"), Some("f00d::a0b:0:0:5")),
            "eth0",
            "/var/run/netns/c1",
        )
    }

    #[test]
    fn v1_result_from_endpoint() {
        for version in [CniVersion::V1_0_0, CniVersion::V1_1_0] {
            assert_eq!(
                dual_stack().to_json(version),
                json!({
                    "cniVersion": version.as_str(),
                    "interfaces": [
                        {"name": "lxc1234", "mac": "aa:aa:aa:aa:aa:aa"},
                        {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/var/run/netns/c1"}
                    ],
                    "ips": [
                        {"address": "10.11.0.5/32", "gateway": "10.11.0.1", "interface": 1},
                        {"address": "f00d::a0b:0:0:5/128", "gateway": "f00d::a0b:0:0:1", "interface": 1}
                    ],
                    "routes": [
                        {"dst": "0.0.0.0/0", "gw": "10.11.0.1"},
                        {"dst": "::/0", "gw": "f00d::a0b:0:0:1"}
                    ],
                    "dns": {}
                })
            );
        }
    }

    #[test]
    fn v03_and_v04_add_ip_versions() {
        for version in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let out = dual_stack().to_json(version);
            assert_eq!(out["cniVersion"], version.as_str());
            assert_eq!(out["ips"][0]["version"], "4");
            assert_eq!(out["ips"][1]["version"], "6");
            assert_eq!(out["ips"][0]["address"], "10.11.0.5/32");
            assert_eq!(out["interfaces"][1]["sandbox"], "/var/run/netns/c1");
            assert_eq!(out["routes"].as_array().unwrap().len(), 2);
        }
        let v1 = dual_stack().to_json(CniVersion::V1_0_0);
        assert!(v1["ips"][0].get("version").is_none());
    }

    #[test]
    fn legacy_shape() {
        for version in [CniVersion::V0_1_0, CniVersion::V0_2_0] {
            assert_eq!(
                dual_stack().to_json(version),
                json!({
                    "cniVersion": version.as_str(),
                    "ip4": {
                        "ip": "10.11.0.5/32",
                        "gateway": "10.11.0.1",
                        "routes": [{"dst": "0.0.0.0/0", "gw": "10.11.0.1"}]
                    },
                    "ip6": {
                        "ip": "f00d::a0b:0:0:5/128",
                        "gateway": "f00d::a0b:0:0:1",
                        "routes": [{"dst": "::/0", "gw": "f00d::a0b:0:0:1"}]
                    },
                    "dns": {}
                })
            );
        }
    }

    #[test]
    fn single_family_endpoints() {
        let v6_only = CniResult::from_endpoint(&endpoint(None, Some("f00d::5")), "eth0", "/n");
        assert_eq!(v6_only.ips.len(), 1);
        assert_eq!(v6_only.routes.len(), 1);
        assert_eq!(v6_only.routes[0].dst.to_string(), "::/0");
        let legacy = v6_only.to_json(CniVersion::V0_2_0);
        assert!(legacy.get("ip4").is_none());
        assert_eq!(legacy["ip6"]["ip"], "f00d::5/128");

        let v4_only = CniResult::from_endpoint(&endpoint(Some("10.0.0.9"), None), "eth0", "/n");
        let out = v4_only.to_json(CniVersion::V1_0_0);
        assert_eq!(out["ips"].as_array().unwrap().len(), 1);
        assert_eq!(
            out["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.11.0.1"}])
        );
    }

    #[test]
    fn no_gateway_means_no_route() {
        let mut ep = endpoint(Some("10.0.0.9"), None);
        ep.gateway = AddressPair::default();
        ep.host_mac.clear();
        ep.container_interface_name.clear();
        let result = CniResult::from_endpoint(&ep, "net1", "/n");
        assert!(result.routes.is_empty());
        assert_eq!(result.ips[0].gateway, None);
        assert_eq!(result.interfaces[0].mac, None);
        assert_eq!(result.interfaces[1].name, "net1");
        let out = result.to_json(CniVersion::V1_0_0);
        assert!(out.get("routes").is_none());
        assert!(out["ips"][0].get("gateway").is_none());
    }

    #[test]
    fn every_version_round_trips_through_parse() {
        for version in CniVersion::ALL {
            let written = dual_stack().to_json(version);
            let parsed = CniResult::parse(written.as_object().unwrap()).unwrap();
            if version.has_legacy_result() {
                assert!(parsed.interfaces.is_empty());
                assert_eq!(parsed.ips.len(), 2);
                assert_eq!(parsed.ips[0].interface, None);
                assert_eq!(parsed.routes, dual_stack().routes);
            } else {
                assert_eq!(parsed, dual_stack(), "{version}");
            }
        }
    }

    #[test]
    fn prev_result_keeps_unknown_keys() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mtu": 9000, "socketPath": "/s", "pciID": "0000:00:01.0"}],
            "ips": [{"address": "192.168.1.5/24", "gateway": "192.168.1.1", "interface": 0}],
            "routes": [{"dst": "192.168.0.0/16", "mtu": 1400, "table": 100, "scope": 0}],
            "dns": {"nameservers": ["1.1.1.1"], "domain": "example", "search": ["a"], "options": ["ndots:5"]}
        });
        let parsed = CniResult::parse(prev.as_object().unwrap()).unwrap();
        assert_eq!(parsed.to_json(CniVersion::V1_1_0), prev);
    }

    #[test]
    fn chaining_after_a_prev_result() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "dummy0"}, {"name": "eth9", "sandbox": "/n"}],
            "ips": [{"version": "4", "address": "192.168.1.5/24", "interface": 1}],
            "routes": [{"dst": "192.168.0.0/16"}],
            "dns": {"nameservers": ["1.1.1.1"]}
        });
        let prev = CniResult::parse(prev.as_object().unwrap()).unwrap();
        let out = prev.chain(dual_stack()).to_json(CniVersion::V0_4_0);
        let names: Vec<&str> = out["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["dummy0", "eth9", "lxc1234", "eth0"]);
        let ips = out["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[0]["interface"], 1);
        assert_eq!(ips[1]["interface"], 3);
        assert_eq!(ips[2]["interface"], 3);
        assert_eq!(out["routes"][0]["dst"], "192.168.0.0/16");
        assert_eq!(out["routes"].as_array().unwrap().len(), 3);
        assert_eq!(out["dns"], json!({"nameservers": ["1.1.1.1"]}));
    }

    #[test]
    fn chaining_after_a_legacy_prev_result() {
        let prev = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "192.168.1.5/24", "gateway": "192.168.1.1",
                    "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": {"nameservers": ["8.8.8.8"]}
        });
        let prev = CniResult::parse(prev.as_object().unwrap()).unwrap();
        assert_eq!(prev.ips.len(), 1);
        assert_eq!(prev.routes.len(), 1);
        let chained = prev.chain(dual_stack());
        assert_eq!(chained.ips[1].interface, Some(1));
        let legacy = chained.to_json(CniVersion::V0_2_0);
        // 0.2.0 keeps only the first address of each family: the previous plugin's IPv4.
        assert_eq!(legacy["ip4"]["ip"], "192.168.1.5/24");
        assert_eq!(legacy["ip6"]["ip"], "f00d::a0b:0:0:5/128");
        assert_eq!(legacy["ip4"]["routes"].as_array().unwrap().len(), 2);
        assert_eq!(legacy["dns"]["nameservers"], json!(["8.8.8.8"]));
    }

    #[test]
    fn dns_merge() {
        let mut a = CniResult::default();
        a.dns.nameservers = vec!["1.1.1.1".into()];
        let b = CniResult {
            dns: Dns {
                nameservers: vec!["1.1.1.1".into(), "8.8.8.8".into()],
                domain: Some("d".into()),
                search: vec!["s".into()],
                options: vec!["o".into()],
            },
            ..CniResult::default()
        };
        let merged = a.chain(b).dns;
        assert_eq!(merged.nameservers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(merged.domain.as_deref(), Some("d"));
        assert_eq!(merged.search, ["s"]);
        assert_eq!(merged.options, ["o"]);
    }

    #[test]
    fn malformed_prev_results() {
        let cases = [
            (json!({"ips": {}}), "prevResult.ips"),
            (json!({"ips": [{"address": "10.0.0.1"}]}), "prevResult.ips"),
            (
                json!({"interfaces": [{"mac": "x"}]}),
                "prevResult.interfaces",
            ),
            (json!({"ip4": {"gateway": "10.0.0.1"}}), "prevResult.ip4"),
            (json!({"routes": [{"dst": "nope"}]}), "prevResult.routes"),
            (
                json!({"dns": []}),
                "'prevResult.dns' must be an object, found an array",
            ),
            (json!({"ip6": [1]}), "'prevResult.ip6' must be an object"),
            (
                json!({"interfaces": [{"name": "a"}], "ips": [{"address": "10.0.0.1/32", "interface": 1}]}),
                "'prevResult.ips[0].interface' is 1, but there are 1 interfaces",
            ),
        ];
        for (prev, want) in cases {
            let err = CniResult::parse(prev.as_object().unwrap()).unwrap_err();
            assert!(err.to_string().contains(want), "{prev}: {err}");
        }
        assert_eq!(CniResult::parse(&Map::new()).unwrap(), CniResult::default());
    }
}
