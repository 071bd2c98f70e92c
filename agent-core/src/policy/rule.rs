//! The policy language of seed §5.1: parsing and validation of rules from JSON. Every
//! problem is reported with the index of the rule and the path of the field
//! (`rule 1: ingress[0].toPorts[0].ports[0].port: ...`); a policy with any problem is refused
//! as a whole.

use std::collections::BTreeSet;

use cilium_api::models::HttpRuleModel;
use regex::Regex;
use serde_json::{Map, Value};

use super::selector::{split_key, EndpointSelector, Operator, Requirement};
use super::PolicyError;
use crate::cidr::Cidr;
use crate::labels::{Label, LabelSet, LabelSource};

/// Most ports one `toPorts` entry may list (seed §5.1.4).
pub const MAX_PORTS: usize = 40;

/// Direction of traffic relative to the selected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// Capitalized, as the trace prints it.
    pub fn title(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }

    /// JSON names of the peer fields in this direction.
    fn fields(self) -> PeerFields {
        match self {
            Direction::Ingress => PeerFields {
                endpoints: "fromEndpoints",
                requires: "fromRequires",
                cidr: "fromCIDR",
                cidr_set: "fromCIDRSet",
            },
            Direction::Egress => PeerFields {
                endpoints: "toEndpoints",
                requires: "toRequires",
                cidr: "toCIDR",
                cidr_set: "toCIDRSet",
            },
        }
    }
}

struct PeerFields {
    endpoints: &'static str,
    requires: &'static str,
    cidr: &'static str,
    cidr_set: &'static str,
}

/// L4 protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
}

impl Protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;

    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "" | "any" => Some(Protocol::Any),
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The IP protocol numbers this protocol stands for.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Any => &[Protocol::TCP, Protocol::UDP],
            Protocol::Tcp => &[Protocol::TCP],
            Protocol::Udp => &[Protocol::UDP],
        }
    }
}

/// A destination port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProtocol {
    pub port: u16,
    pub protocol: Protocol,
}

/// One HTTP rule, its regular expressions compiled anchored to the whole value.
#[derive(Debug, Clone)]
pub struct HttpRule {
    pub model: HttpRuleModel,
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    /// (lower-case name, exact value if any)
    headers: Vec<(String, Option<String>)>,
}

impl HttpRule {
    /// Compiles a rule as the API carries it (the same checks as in a policy; header
    /// strings are `Name` or `Name: value`). The error names the field:
    /// `path: invalid regular expression '/a(': ...`, `headers[0]: 'a b' is not a header ...`.
    pub fn from_model(model: &HttpRuleModel) -> Result<HttpRule, String> {
        compile_http_rule(model).map_err(|e| e.to_string())
    }

    /// Whether a request matches this rule.
    pub fn matches(&self, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> bool {
        let re = |r: &Option<Regex>, v: &str| r.as_ref().is_none_or(|r| r.is_match(v));
        re(&self.method, method)
            && re(&self.path, path)
            && re(&self.host, host)
            && self.headers.iter().all(|(name, value)| {
                headers.iter().any(|(n, v)| {
                    n.eq_ignore_ascii_case(name) && value.as_ref().is_none_or(|want| v == want)
                })
            })
    }
}

/// Allowed ports, optionally restricted further to HTTP requests.
#[derive(Debug, Clone)]
pub struct PortRule {
    pub ports: Vec<PortProtocol>,
    /// `rules.http`: requests on these ports go through the proxy, which lets only matching
    /// ones through.
    pub http: Option<Vec<HttpRule>>,
}

/// A CIDR with the prefixes inside it that are not allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CidrSet {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
}

/// One entry of `ingress` or `egress`: which peers, on which ports.
#[derive(Debug, Clone, Default)]
pub struct PeerRule {
    /// `fromEndpoints` / `toEndpoints`.
    pub endpoints: Vec<EndpointSelector>,
    /// `fromRequires` / `toRequires`: every peer of the selected endpoint must match these.
    pub requires: Vec<EndpointSelector>,
    /// `fromCIDR` / `toCIDR`.
    pub cidrs: Vec<Cidr>,
    /// `fromCIDRSet` / `toCIDRSet`.
    pub cidr_sets: Vec<CidrSet>,
    /// `toPorts`; empty means every port and protocol.
    pub ports: Vec<PortRule>,
}

impl PeerRule {
    /// Names no peer: allowed peers are then any (with ports) or none (without).
    pub fn has_no_peers(&self) -> bool {
        self.endpoints.is_empty() && self.cidrs.is_empty() && self.cidr_sets.is_empty()
    }

    /// Every CIDR as a set with exceptions (plain CIDRs have none).
    pub fn all_cidrs(&self) -> impl Iterator<Item = CidrSet> + '_ {
        self.cidrs
            .iter()
            .map(|c| CidrSet {
                cidr: *c,
                except: Vec::new(),
            })
            .chain(self.cidr_sets.iter().cloned())
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub subject: EndpointSelector,
    pub ingress: Vec<PeerRule>,
    pub egress: Vec<PeerRule>,
    pub labels: LabelSet,
    pub description: String,
}

impl Rule {
    pub fn peers(&self, direction: Direction) -> &[PeerRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Every prefix this rule names (CIDRs and their exceptions).
    pub fn prefixes(&self) -> BTreeSet<Cidr> {
        let mut out = BTreeSet::new();
        for peer in self.ingress.iter().chain(&self.egress) {
            for set in peer.all_cidrs() {
                out.insert(set.cidr);
                out.extend(set.except);
            }
        }
        out
    }

    /// The rule in its normalized JSON form (keys qualified with their source).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("endpointSelector".into(), self.subject.to_json());
        for (direction, peers) in [
            (Direction::Ingress, &self.ingress),
            (Direction::Egress, &self.egress),
        ] {
            if !peers.is_empty() {
                out.insert(
                    direction.as_str().into(),
                    Value::Array(peers.iter().map(|p| peer_json(p, direction)).collect()),
                );
            }
        }
        if !self.labels.is_empty() {
            let labels = self
                .labels
                .iter()
                .map(|l| {
                    serde_json::json!({"key": l.key, "value": l.value, "source": l.source.as_str()})
                })
                .collect();
            out.insert("labels".into(), Value::Array(labels));
        }
        if !self.description.is_empty() {
            out.insert(
                "description".into(),
                Value::String(self.description.clone()),
            );
        }
        Value::Object(out)
    }
}

fn peer_json(p: &PeerRule, direction: Direction) -> Value {
    let f = direction.fields();
    let mut out = Map::new();
    let selectors = |list: &[EndpointSelector]| {
        Value::Array(list.iter().map(EndpointSelector::to_json).collect())
    };
    if !p.endpoints.is_empty() {
        out.insert(f.endpoints.into(), selectors(&p.endpoints));
    }
    if !p.requires.is_empty() {
        out.insert(f.requires.into(), selectors(&p.requires));
    }
    if !p.cidrs.is_empty() {
        out.insert(
            f.cidr.into(),
            Value::Array(
                p.cidrs
                    .iter()
                    .map(|c| Value::String(c.to_string()))
                    .collect(),
            ),
        );
    }
    if !p.cidr_sets.is_empty() {
        let sets = p
            .cidr_sets
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("cidr".into(), Value::String(s.cidr.to_string()));
                if !s.except.is_empty() {
                    m.insert(
                        "except".into(),
                        Value::Array(
                            s.except
                                .iter()
                                .map(|c| Value::String(c.to_string()))
                                .collect(),
                        ),
                    );
                }
                Value::Object(m)
            })
            .collect();
        out.insert(f.cidr_set.into(), Value::Array(sets));
    }
    if !p.ports.is_empty() {
        let ports = p
            .ports
            .iter()
            .map(|pr| {
                let mut m = Map::new();
                let list = pr
                    .ports
                    .iter()
                    .map(|pp| {
                        serde_json::json!({
                            "port": pp.port.to_string(),
                            "protocol": pp.protocol.as_str().to_ascii_uppercase(),
                        })
                    })
                    .collect();
                m.insert("ports".into(), Value::Array(list));
                if let Some(http) = &pr.http {
                    let rules: Vec<Value> = http
                        .iter()
                        .map(|h| serde_json::to_value(&h.model).unwrap_or(Value::Null))
                        .collect();
                    m.insert("rules".into(), serde_json::json!({ "http": rules }));
                }
                Value::Object(m)
            })
            .collect();
        out.insert("toPorts".into(), Value::Array(ports));
    }
    Value::Object(out)
}

/// Parses a policy: a JSON array of rules (or a single rule object). All or nothing.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, PolicyError> {
    let value: Value = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => {
            return Err(PolicyError::Format(format!(
                "a policy is a JSON array of rules, not {}",
                kind(&other)
            )))
        }
    };
    if items.is_empty() {
        return Err(PolicyError::Format(
            "the policy contains no rules".to_string(),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_rule(item, &mut Ctx::new()).map_err(|(field, reason)| PolicyError::Invalid {
                rule: index,
                field,
                reason,
            })
        })
        .collect()
}

/// Where in a rule the parser is, for error messages.
struct Ctx {
    path: Vec<String>,
}

/// (field path, reason)
type Fail = (String, String);

impl Ctx {
    fn new() -> Ctx {
        Ctx { path: Vec::new() }
    }

    fn here(&self) -> String {
        let mut out = String::new();
        for part in &self.path {
            if !part.starts_with('[') && !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
        if out.is_empty() {
            "rule".to_string()
        } else {
            out
        }
    }

    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, Fail> {
        Err((self.here(), reason.into()))
    }

    /// Runs `f` with `part` appended to the path.
    fn at<T>(
        &mut self,
        part: impl Into<String>,
        f: impl FnOnce(&mut Ctx) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        self.path.push(part.into());
        let out = f(self);
        self.path.pop();
        out
    }

    fn object<'a>(
        &mut self,
        v: &'a Value,
        allowed: &[&str],
    ) -> Result<&'a Map<String, Value>, Fail> {
        let Value::Object(map) = v else {
            return self.fail(format!("expected an object, found {}", kind(v)));
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let reason = format!("unknown field '{key}' (expected {})", allowed.join(", "));
                return self.at(key.clone(), |c| c.fail(reason));
            }
        }
        Ok(map)
    }

    /// A list field (absent or null = empty), parsing each element.
    fn list<T>(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
        mut each: impl FnMut(&mut Ctx, &Value) -> Result<T, Fail>,
    ) -> Result<Vec<T>, Fail> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => self.at(field, |c| {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| c.at(format!("[{i}]"), |c| each(c, item)))
                    .collect()
            }),
            Some(other) => self.at(field, |c| {
                c.fail(format!("expected a list, found {}", kind(other)))
            }),
        }
    }

    fn string(&mut self, map: &Map<String, Value>, field: &str) -> Result<Option<String>, Fail> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => self.at(field, |c| {
                c.fail(format!("expected a string, found {}", kind(other)))
            }),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_rule(v: &Value, c: &mut Ctx) -> Result<Rule, Fail> {
    let map = c.object(
        v,
        &[
            "endpointSelector",
            "ingress",
            "egress",
            "labels",
            "description",
        ],
    )?;
    let subject = match map.get("endpointSelector") {
        None | Some(Value::Null) => {
            return c.at("endpointSelector", |c| {
                c.fail("missing: every rule must select the endpoints it applies to")
            })
        }
        Some(sel) => c.at("endpointSelector", |c| parse_selector(sel, c))?,
    };
    if subject.is_empty() {
        return c.at("endpointSelector", |c| {
            c.fail("must not be empty: name the labels of the endpoints the rule applies to")
        });
    }
    let ingress = c.list(map, "ingress", |c, v| parse_peer(v, c, Direction::Ingress))?;
    let egress = c.list(map, "egress", |c, v| parse_peer(v, c, Direction::Egress))?;
    let labels = c.list(map, "labels", parse_rule_label)?;
    let description = c.string(map, "description")?.unwrap_or_default();
    Ok(Rule {
        subject,
        ingress,
        egress,
        labels: LabelSet::new(labels),
        description,
    })
}

/// A rule label: `"source:key=value"` or `{"key": ..., "value": ..., "source": ...}`.
fn parse_rule_label(c: &mut Ctx, v: &Value) -> Result<Label, Fail> {
    let label = match v {
        Value::String(s) => s.parse::<Label>().map_err(|e| (c.here(), e.to_string()))?,
        Value::Object(_) => {
            let map = c.object(v, &["key", "value", "source"])?;
            let key = c.string(map, "key")?.unwrap_or_default();
            if key.is_empty() {
                return c.at("key", |c| c.fail("missing"));
            }
            let value = c.string(map, "value")?.unwrap_or_default();
            let source = c.string(map, "source")?.unwrap_or_default();
            let text = format!(
                "{}:{key}{}",
                if source.is_empty() { "unspec" } else { &source },
                if value.is_empty() {
                    String::new()
                } else {
                    format!("={value}")
                }
            );
            text.parse::<Label>()
                .map_err(|e| (c.here(), e.to_string()))?
        }
        other => {
            return c.fail(format!(
                "expected a label string or object, found {}",
                kind(other)
            ))
        }
    };
    if label.source == LabelSource::Any {
        return c.fail("a rule label needs a concrete source, not 'any'");
    }
    Ok(label)
}

/// A Kubernetes label selector.
fn parse_selector(v: &Value, c: &mut Ctx) -> Result<EndpointSelector, Fail> {
    let map = c.object(v, &["matchLabels", "matchExpressions"])?;
    let mut requirements = Vec::new();
    match map.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => c.at("matchLabels", |c| {
            for (key, value) in labels {
                c.at(key.clone(), |c| {
                    let (source, key) = split_key(key).or_else(|e| c.fail(e))?;
                    let Value::String(value) = value else {
                        return c.fail(format!("expected a string value, found {}", kind(value)));
                    };
                    requirements.push(Requirement {
                        source,
                        key,
                        op: Operator::In,
                        values: vec![value.clone()],
                        from_match_labels: true,
                    });
                    Ok(())
                })?;
            }
            Ok(())
        })?,
        Some(other) => {
            return c.at("matchLabels", |c| {
                c.fail(format!(
                    "expected an object of key: value, found {}",
                    kind(other)
                ))
            })
        }
    }
    let expressions = c.list(map, "matchExpressions", |c, v| {
        let e = c.object(v, &["key", "operator", "values"])?;
        let raw_key = c.string(e, "key")?.unwrap_or_default();
        let (source, key) = c.at("key", |c| split_key(&raw_key).or_else(|e| c.fail(e)))?;
        let raw_op = c.string(e, "operator")?.unwrap_or_default();
        let op = Operator::parse(&raw_op).map_or_else(
            || {
                c.at("operator", |c| {
                    c.fail(format!(
                        "unknown operator '{raw_op}' (expected In, NotIn, Exists or DoesNotExist)"
                    ))
                })
            },
            Ok,
        )?;
        let mut values = c.list(e, "values", |c, v| match v {
            Value::String(s) => Ok(s.clone()),
            other => c.fail(format!("expected a string, found {}", kind(other))),
        })?;
        values.sort();
        values.dedup();
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return c.at("values", |c| {
                    c.fail(format!("operator {} needs at least one value", op.as_str()))
                })
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return c.at("values", |c| {
                    c.fail(format!("operator {} takes no values", op.as_str()))
                })
            }
            _ => {}
        }
        Ok(Requirement {
            source,
            key,
            op,
            values,
            from_match_labels: false,
        })
    })?;
    requirements.extend(expressions);
    Ok(EndpointSelector::new(requirements))
}

fn parse_peer(v: &Value, c: &mut Ctx, direction: Direction) -> Result<PeerRule, Fail> {
    let f = direction.fields();
    let map = c.object(v, &[f.endpoints, f.requires, f.cidr, f.cidr_set, "toPorts"])?;
    let endpoints = c.list(map, f.endpoints, |c, v| parse_selector(v, c))?;
    let requires = c.list(map, f.requires, |c, v| parse_selector(v, c))?;
    let cidrs = c.list(map, f.cidr, |c, v| match v {
        Value::String(s) => parse_cidr(s).or_else(|e| c.fail(e)),
        other => c.fail(format!("expected a CIDR string, found {}", kind(other))),
    })?;
    let cidr_sets = c.list(map, f.cidr_set, |c, v| {
        let m = c.object(v, &["cidr", "except"])?;
        let raw = c.string(m, "cidr")?;
        let Some(raw) = raw else {
            return c.at("cidr", |c| c.fail("missing"));
        };
        let cidr = c.at("cidr", |c| parse_cidr(&raw).or_else(|e| c.fail(e)))?;
        let except = c.list(m, "except", |c, v| {
            let Value::String(s) = v else {
                return c.fail(format!("expected a CIDR string, found {}", kind(v)));
            };
            let inner = parse_cidr(s).or_else(|e| c.fail(e))?;
            if !contains(&cidr, &inner) {
                return c.fail(format!("{inner} is not inside {cidr}"));
            }
            Ok(inner)
        })?;
        Ok(CidrSet { cidr, except })
    })?;
    let ports = c.list(map, "toPorts", parse_port_rule)?;
    Ok(PeerRule {
        endpoints,
        requires,
        cidrs,
        cidr_sets,
        ports,
    })
}

/// Whether `outer` contains `inner` (same family, at least as long a prefix).
pub fn contains(outer: &Cidr, inner: &Cidr) -> bool {
    outer.family() == inner.family()
        && outer.bits() <= inner.bits()
        && outer.contains(&inner.network())
}

/// A CIDR, or a single address (a host prefix).
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    if !s.contains('/') {
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Cidr::new_truncated(ip, bits));
        }
    }
    s.parse::<Cidr>().map_err(|e| e.to_string())
}

fn parse_port_rule(c: &mut Ctx, v: &Value) -> Result<PortRule, Fail> {
    let map = c.object(v, &["ports", "rules"])?;
    let ports = c.list(map, "ports", |c, v| {
        let m = c.object(v, &["port", "protocol"])?;
        let port = c.at("port", |c| match m.get("port") {
            None | Some(Value::Null) => c.fail("missing"),
            Some(Value::String(s)) => parse_port(s).or_else(|e| c.fail(e)),
            Some(Value::Number(n)) => parse_port(&n.to_string()).or_else(|e| c.fail(e)),
            Some(other) => c.fail(format!("expected a port number, found {}", kind(other))),
        })?;
        let raw = c.string(m, "protocol")?.unwrap_or_default();
        let protocol = Protocol::parse(&raw).map_or_else(
            || {
                c.at("protocol", |c| {
                    c.fail(format!(
                        "unknown protocol '{raw}' (expected TCP, UDP or ANY)"
                    ))
                })
            },
            Ok,
        )?;
        Ok(PortProtocol { port, protocol })
    })?;
    if ports.is_empty() {
        return c.at("ports", |c| c.fail("at least one port is required"));
    }
    if ports.len() > MAX_PORTS {
        return c.at("ports", |c| {
            c.fail(format!(
                "{} ports given; at most {MAX_PORTS} are allowed",
                ports.len()
            ))
        });
    }
    let http = match map.get("rules") {
        None | Some(Value::Null) => None,
        Some(rules) => Some(c.at("rules", |c| {
            let m = c.object(rules, &["http", "HTTP"])?;
            if m.contains_key("http") && m.contains_key("HTTP") {
                return c.fail("give 'http' once (both 'http' and 'HTTP' are present)");
            }
            let field = if m.contains_key("HTTP") {
                "HTTP"
            } else {
                "http"
            };
            c.list(m, field, parse_http_rule)
        })?),
    };
    if http.is_some() {
        if let Some(pp) = ports.iter().find(|p| p.protocol != Protocol::Tcp) {
            return c.at("rules", |c| {
                c.fail(format!(
                    "HTTP rules need protocol TCP, but port {} has protocol {}",
                    pp.port,
                    pp.protocol.as_str().to_ascii_uppercase()
                ))
            });
        }
    }
    Ok(PortRule { ports, http })
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("'{s}' is not a port number (1-65535)")),
    }
}

fn parse_http_rule(c: &mut Ctx, v: &Value) -> Result<HttpRule, Fail> {
    let m = c.object(v, &["method", "path", "host", "headers"])?;
    let method = c.string(m, "method")?.unwrap_or_default();
    let path = c.string(m, "path")?.unwrap_or_default();
    let host = c.string(m, "host")?.unwrap_or_default();
    let headers = c.list(m, "headers", |c, v| match v {
        Value::String(raw) => Ok(raw.clone()),
        other => c.fail(format!("expected a header string, found {}", kind(other))),
    })?;
    let model = HttpRuleModel {
        method,
        path,
        host,
        headers,
    };
    compile_http_rule(&model).or_else(|e| match e.index {
        Some(i) => c.at(e.field, |c| c.at(format!("[{i}]"), |c| c.fail(e.reason))),
        None => c.at(e.field, |c| c.fail(e.reason)),
    })
}

/// Why an HTTP rule does not compile: the field (`path`, `headers[1]`) and the reason.
#[derive(Debug)]
struct HttpRuleFail {
    field: &'static str,
    index: Option<usize>,
    reason: String,
}

impl std::fmt::Display for HttpRuleFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

/// Compiles an HTTP rule: `method`, `path` and `host` are regular expressions anchored to
/// the whole value (empty = any), each header is `Name` (present) or `Name: value` (present
/// with exactly that value). The model kept in the rule has its header strings trimmed.
fn compile_http_rule(model: &HttpRuleModel) -> Result<HttpRule, HttpRuleFail> {
    let regex = |field: &'static str, raw: &str| -> Result<Option<Regex>, HttpRuleFail> {
        if raw.is_empty() {
            return Ok(None);
        }
        Regex::new(&format!("^(?:{raw})$"))
            .map(Some)
            .map_err(|e| HttpRuleFail {
                field,
                index: None,
                reason: format!("invalid regular expression '{raw}': {e}"),
            })
    };
    let method = regex("method", &model.method)?;
    let path = regex("path", &model.path)?;
    let host = regex("host", &model.host)?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let mut trimmed = Vec::with_capacity(model.headers.len());
    let mut headers = Vec::with_capacity(model.headers.len());
    for (index, raw) in model.headers.iter().enumerate() {
        let (name, value) = match raw.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (raw.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(token) {
            return Err(HttpRuleFail {
                field: "headers",
                index: Some(index),
                reason: format!("'{raw}' is not a header: expected 'Name' or 'Name: value'"),
            });
        }
        trimmed.push(raw.trim().to_string());
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(HttpRule {
        model: HttpRuleModel {
            method: model.method.clone(),
            path: model.path.clone(),
            host: model.host.clone(),
            headers: trimmed,
        },
        method,
        path,
        host,
        headers,
    })
}
