//! API models, serialized exactly as they travel on the wire (kebab-case field names as in the
//! 2017 API). Request bodies reject unknown fields; responses accept them so that an older
//! client keeps working against a newer agent.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Body of every error reply: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}

/// Health of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusState {
    Ok,
    Warning,
    Failure,
    Disabled,
}

impl fmt::Display for StatusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            StatusState::Ok => "Ok",
            StatusState::Warning => "Warning",
            StatusState::Failure => "Failure",
            StatusState::Disabled => "Disabled",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: StatusState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub msg: String,
}

impl Status {
    pub fn new(state: StatusState, msg: impl Into<String>) -> Self {
        Status {
            state,
            msg: msg.into(),
        }
    }
}

/// Addresses currently handed out, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamStatus {
    #[serde(default)]
    pub ipv4: Vec<String>,
    #[serde(default)]
    pub ipv6: Vec<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusResponse {
    pub cilium: Status,
    pub kvstore: Status,
    pub container_runtime: Status,
    pub kubernetes: Status,
    #[serde(default)]
    pub ipam: IpamStatus,
    /// Version of the agent binary.
    #[serde(default)]
    pub version: String,
    /// The eBPF datapath: programs loaded, and its packet counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathStatus>,
    /// The node registry: nodes known and how they are reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Status>,
    /// The L7 proxy: ports redirected and requests by verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Status>,
}

/// A node of the cluster (`GET /node`, `cilium node list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeEntry {
    pub name: String,
    /// This agent's node.
    #[serde(default)]
    pub local: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<std::net::Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_range: Option<String>,
    /// Where the overlay sends this node's traffic; none in direct routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<std::net::Ipv4Addr>,
}

/// One entry of `cilium_tunnel` (`cilium bpf tunnel list`): a remote node's range and its
/// tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfTunnelEntry {
    /// CIDR notation.
    pub prefix: String,
    pub endpoint: std::net::Ipv4Addr,
}

/// State and counters of the eBPF datapath.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DatapathStatus {
    pub status: Status,
    /// Where the maps are pinned (`<bpf-root>/tc/globals`).
    #[serde(default)]
    pub pin_path: String,
    /// Forwarded (reason 0) and dropped packets by reason and direction, summed over CPUs.
    #[serde(default)]
    pub counters: Vec<DatapathCounter>,
    /// Monitor events the ring buffer or a slow reader lost since the agent started.
    #[serde(default)]
    pub events_lost: u64,
}

/// One counter of `cilium_metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DatapathCounter {
    /// 0 = forwarded, otherwise the drop reason code.
    pub reason: u8,
    /// "Forwarded" or the drop reason text, e.g. "Policy denied (L3)".
    pub description: String,
    /// "ingress" (towards endpoints) or "egress" (from endpoints).
    pub direction: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One record of `GET /monitor` (a stream of JSON objects, one per line, content type
/// `application/x-ndjson`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MonitorEvent {
    /// "drop", "trace", "debug", "l7" (a request through the L7 proxy), or "lost" (events
    /// missed by this reader); "unknown" for an
    /// event type the agent does not know.
    #[serde(rename = "type")]
    pub kind: String,
    /// Drop reason code, trace point or debug code.
    #[serde(default)]
    pub code: u8,
    /// Drop reason text, trace point name ("from-endpoint", "to-endpoint", "to-stack") or
    /// the debug message.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub cpu: u32,
    /// Endpoint whose program reported the event (0 = unknown).
    #[serde(default)]
    pub source: u16,
    /// Local destination endpoint (0 = none).
    #[serde(default)]
    pub dst_endpoint: u16,
    #[serde(default)]
    pub src_identity: u32,
    #[serde(default)]
    pub dst_identity: u32,
    #[serde(default)]
    pub ifindex: u32,
    #[serde(default)]
    pub hash: u32,
    /// Length of the packet on the wire.
    #[serde(default)]
    pub length: u32,
    /// One-line summary of the decoded packet, e.g.
    /// `10.11.13.37:40312 -> 10.11.101.61:80 tcp SYN` or `... EchoRequest`.
    #[serde(default)]
    pub summary: String,
    /// Decoded headers, one per line, for `-v`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
    /// The captured bytes (up to 128) as lowercase hex, for `--hex`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// For "lost": how many events were missed.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub lost: u64,
    /// For "l7": the L7 proxy's access log record of one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<serde_json::Value>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// One entry of `cilium_lxc` (`cilium bpf endpoint list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfEndpointEntry {
    pub ip: IpAddr,
    pub endpoint_id: u16,
    pub identity: u32,
    pub ifindex: u32,
    pub mac: String,
    pub node_mac: String,
    /// "policy-ingress", "policy-egress", "debug".
    #[serde(default)]
    pub flags: Vec<String>,
}

/// One entry of `cilium_ipcache` (`cilium bpf ipcache list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfIpcacheEntry {
    /// CIDR notation.
    pub prefix: String,
    pub identity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<IpAddr>,
}

/// One entry of `cilium_policy` for an endpoint (`cilium bpf policy list <endpoint>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfPolicyEntry {
    /// "ingress" or "egress".
    pub direction: String,
    /// Remote identity; 0 = any.
    pub identity: u32,
    /// Labels of the identity (empty for "any" and unknown identities).
    #[serde(default)]
    pub labels: Vec<String>,
    /// 0 = any.
    pub port: u16,
    /// "TCP", "UDP" or "ANY".
    pub protocol: String,
    /// "allow", "redirect" or "l4-only" (a marker: the identity has port-restricted entries).
    pub action: String,
    #[serde(default)]
    pub proxy_port: u16,
    pub bytes: u64,
    pub packets: u64,
}

/// `cilium bpf policy list <endpoint>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfPolicyDump {
    pub endpoint_id: u16,
    /// Whether each direction is enforced (flags of the endpoint entry).
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub entries: Vec<BpfPolicyEntry>,
}

/// One entry of `cilium_ct4`/`cilium_ct6` (`cilium bpf ct list global`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfCtEntry {
    /// "TCP", "UDP", "ICMP", "ICMPv6" or the protocol number.
    pub protocol: String,
    /// "in" (created by the receiving endpoint) or "out" (by the sending endpoint).
    pub direction: String,
    pub source: String,
    pub destination: String,
    /// Seconds until the entry expires (0 = expired, waiting for garbage collection).
    pub expires_in: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub src_identity: u32,
    /// "seen-reply", "tx-closing", "rx-closing".
    #[serde(default)]
    pub flags: Vec<String>,
    /// The service whose frontend replies get back as source ("service" entries: the
    /// service the connection went to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev_nat: Option<u16>,
    /// "service" entries: the backend id the connection goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<u32>,
}

/// One frontend of the datapath's load-balancing maps (`cilium bpf lb list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfLbEntry {
    /// `ip:port` (`[ip]:port` for IPv6).
    pub frontend: String,
    /// "TCP" or "UDP".
    pub protocol: String,
    pub service_id: u16,
    /// Slots of the service's table: new connections pick one at random.
    pub slots: usize,
    #[serde(default)]
    pub backends: Vec<BpfLbBackend>,
}

/// A backend of a [`BpfLbEntry`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BpfLbBackend {
    pub address: String,
    pub backend_id: u32,
    /// Its slots (0: it keeps its connections but takes no new ones).
    pub slots: usize,
}

/// The addressing of one family on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeAddressingElement {
    pub enabled: bool,
    /// The router (gateway) address: the first address of the allocation range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The range endpoint addresses are allocated from, in CIDR notation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_range: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddressing {
    pub ipv4: NodeAddressingElement,
    pub ipv6: NodeAddressingElement,
}

/// Option name → value. Used for the agent's and an endpoint's mutable options.
pub type ConfigurationMap = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfiguration {
    /// Options that `PATCH /config` may change.
    pub mutable: ConfigurationMap,
    /// Options fixed at start (flags, environment, config file).
    pub immutable: ConfigurationMap,
}

/// `GET /config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DaemonConfigurationResponse {
    pub node_name: String,
    pub addressing: NodeAddressing,
    pub configuration: DaemonConfiguration,
}

/// A pair of addresses, one per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<IpAddr>,
}

impl AddressPair {
    /// Neither family has an address.
    pub fn is_empty(&self) -> bool {
        self.ipv4.is_none() && self.ipv6.is_none()
    }
}

/// Reply of `POST /ipam`: the addresses allocated and the node addressing (router IPs) the
/// caller needs to configure the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpamResponse {
    pub endpoint: AddressPair,
    pub host_addressing: NodeAddressing,
}

/// One allocation: reply of `POST /ipam/{ip}` (reserved) and `DELETE /ipam/{ip}` (released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamAllocation {
    pub ip: IpAddr,
    pub owner: String,
}

/// Address family selector of `POST /ipam?family=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ipv4" | "4" => Ok(Family::Ipv4),
            "ipv6" | "6" => Ok(Family::Ipv6),
            other => Err(format!(
                "unknown address family '{other}' (expected ipv4 or ipv6)"
            )),
        }
    }
}

/// Life cycle of an endpoint (seed §3.3, API reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    Creating,
    WaitingForIdentity,
    NotReady,
    Regenerating,
    Ready,
    Disconnected,
}

impl EndpointState {
    pub const ALL: [EndpointState; 6] = [
        EndpointState::Creating,
        EndpointState::WaitingForIdentity,
        EndpointState::NotReady,
        EndpointState::Regenerating,
        EndpointState::Ready,
        EndpointState::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Creating => "creating",
            EndpointState::WaitingForIdentity => "waiting-for-identity",
            EndpointState::NotReady => "not-ready",
            EndpointState::Regenerating => "regenerating",
            EndpointState::Ready => "ready",
            EndpointState::Disconnected => "disconnected",
        }
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Outcome recorded with a status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusCode {
    #[serde(rename = "OK")]
    Ok,
    Failure,
}

/// One entry of an endpoint's status log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatusChange {
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub code: StatusCode,
    pub message: String,
    pub state: EndpointState,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A security identity: the numeric id of a sorted set of identity-relevant labels
/// (`GET /identity`, `GET /identity/{id}`, and inside an endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Number of endpoints of this node that hold the identity (absent inside an endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<u32>,
}

/// The policy repository: its revision and rules (`GET/PUT/DELETE /policy`). `policy` is the
/// JSON text of the rules concerned (all rules for GET, the imported ones for PUT, the
/// deleted ones for DELETE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub revision: u64,
    pub policy: String,
}

/// One destination port of a trace: port and protocol (`tcp`, `udp` or `any`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortProtocol {
    pub port: u16,
    #[serde(default = "any_protocol")]
    pub protocol: String,
}

fn any_protocol() -> String {
    "any".to_string()
}

/// Body of `GET /policy/resolve`: who talks to whom. Each side is given by labels or by an
/// endpoint (whose identity labels are used).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TraceSelector {
    #[serde(default)]
    pub from: Vec<String>,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoint: Option<String>,
    /// Destination ports; none traces traffic without ports (e.g. ICMP).
    #[serde(default)]
    pub dports: Vec<PortProtocol>,
    /// Also list the rules that did not match.
    #[serde(default)]
    pub verbose: bool,
}

/// Final decision of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allowed,
    Denied,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
        })
    }
}

/// Reply of `GET /policy/resolve`: the verdict and the trace that explains it (seed §5.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceResult {
    pub verdict: Decision,
    pub log: String,
}

/// What happens to traffic an entry of a policy table matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyAction {
    Allow,
    /// Allowed, through the L7 proxy, which checks each request against `http`.
    Redirect,
}

/// One HTTP rule: anchored regular expressions on method, path and host; headers that must
/// be present (`Name` or `Name: value`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HttpRuleModel {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

/// One entry of an endpoint's resolved policy: traffic with the remote identity (`None` =
/// any), destination port (0 = any) and protocol (`any`, `tcp`, `udp`) is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// The labels of that identity, for display.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub port: u16,
    pub protocol: String,
    pub action: PolicyAction,
    /// The requests the proxy lets through, for `redirect`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRuleModel>,
}

/// The policy of one direction of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionPolicy {
    /// Whether traffic in this direction is limited to `entries` (otherwise all is allowed).
    pub enforcing: bool,
    #[serde(default)]
    pub entries: Vec<PolicyEntry>,
}

/// The resolved policy of an endpoint (`GET /endpoint/{id}`; left out of lists).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    /// The repository revision this policy was computed at.
    pub revision: u64,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

/// An endpoint as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    pub id: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docker_endpoint_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docker_network_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// The identity-relevant view of the labels: `source:key[=value]`, sorted.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface_name: String,
    #[serde(default)]
    pub interface_index: u32,
    pub state: EndpointState,
    #[serde(default)]
    pub status: Vec<EndpointStatusChange>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_mac: String,
    #[serde(default)]
    pub addressing: AddressPair,
    /// The router addresses the container routes through (on `cilium_host`); set for
    /// endpoints the agent plumbed itself.
    #[serde(default, skip_serializing_if = "AddressPair::is_empty")]
    pub gateway: AddressPair,
    /// The container's network namespace, as the runtime named it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns_path: String,
    /// The interface inside the container (`CNI_IFNAME`); `interface-name` is the host side.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_interface_name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    /// The CNI network (`name` of the network configuration) that attached this endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Whether policy is enforced in at least one direction.
    #[serde(default)]
    pub policy_enabled: bool,
    /// The policy repository revision the endpoint's policy is up to date with.
    #[serde(default)]
    pub policy_revision: u64,
    /// The resolved policy; only in `GET /endpoint/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EndpointPolicy>,
    /// The endpoint's mutable options (`/endpoint/{id}/config`).
    #[serde(default)]
    pub options: ConfigurationMap,
}

/// Body of `PUT /endpoint/{id}` (create) and `PATCH /endpoint/{id}` (modify). Absent fields
/// are left alone by PATCH.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EndpointChangeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_endpoint_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_network_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressing: Option<AddressPair>,
    /// Labels from the orchestration system, `source:key[=value]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EndpointState>,
    /// Network namespace of the container. When set on create, the agent plumbs the endpoint:
    /// a veth pair with its peer inside this netns, addresses (allocated when `addressing` is
    /// absent), routes and the router neighbour entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_path: Option<String>,
    /// Name of the interface inside the container; default `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_interface_name: Option<String>,
    /// MTU of both ends of the veth pair; default 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The CNI network that attaches this endpoint (used by CNI GC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_network: Option<String>,
    /// Docker: create the veth pair in the node's namespace and leave the peer under this
    /// name (the runtime moves it into the container). `addressing` is then required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth_peer_name: Option<String>,
}

/// Reply of `GET /endpoint/{id}/healthz`: whether what the agent made for the endpoint is
/// still in place (links, addresses, routes, neighbour entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointHealth {
    pub connected: bool,
    /// What is missing or wrong, one line each; empty when connected.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// The label configuration of an endpoint (`GET /endpoint/{id}/labels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LabelConfiguration {
    /// Labels that came from the orchestration system (runtime, Kubernetes, Mesos).
    #[serde(default)]
    pub orchestration_system: Vec<String>,
    /// Labels added by the user through `PUT /endpoint/{id}/labels`.
    #[serde(default)]
    pub custom: Vec<String>,
    /// Orchestration labels the user disabled.
    #[serde(default)]
    pub disabled: Vec<String>,
}

/// Body of `PUT /endpoint/{id}/labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsModifier {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub delete: Vec<String>,
}

/// Reply of a `DELETE /endpoint/{id}` that removed the endpoint but hit errors (206).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDelete {
    pub error: String,
    pub errors: u32,
}

/// Default weight of a backend that does not name one.
pub const DEFAULT_BACKEND_WEIGHT: i64 = 1;

fn default_backend_weight() -> i64 {
    DEFAULT_BACKEND_WEIGHT
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The frontend of a service: the virtual address clients connect to (`L3n4Addr` of the
/// 2017 agent). `ip` and `port` are checked by the agent, which answers 460 when they are
/// not an address, a port 1-65535 or a protocol `tcp`, `udp` or `any`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendAddress {
    pub ip: String,
    pub port: i64,
    /// `tcp`, `udp` or `any` (both); default `any`.
    #[serde(default = "any_protocol")]
    pub protocol: String,
}

/// One backend of a service: where connections to the frontend are sent. The protocol is
/// the frontend's. The agent answers 461 when `ip` is not an address of the frontend's
/// family, `port` is not 1-65535 or `weight` not 0-65535.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAddress {
    pub ip: String,
    pub port: i64,
    /// Relative share of new connections, 0-65535; default 1. Weight 0 drains the backend:
    /// it keeps its connections but gets no new ones.
    #[serde(default = "default_backend_weight")]
    pub weight: i64,
}

/// Optional behaviour of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServiceFlags {
    /// Frontend to backend translation is active.
    #[serde(default, skip_serializing_if = "is_false")]
    pub active_frontend: bool,
    /// Backends answer clients directly: no reverse translation of replies.
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct_server_return: bool,
}

/// Configuration of a service (body of `PUT /service/{id}`): a frontend and the weighted
/// backends behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service id, 1-65535; absent or 0 in a request means the id of the path.
    #[serde(default)]
    pub id: u16,
    pub frontend_address: FrontendAddress,
    #[serde(default)]
    pub backend_addresses: Vec<BackendAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<ServiceFlags>,
}

/// What the datapath serves for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub realized: ServiceSpec,
}

/// A service as the agent reports it (`GET /service[/{id}]`, and the reply of `PUT` and
/// `DELETE`). `spec` is the configuration as accepted (addresses in canonical form, the
/// protocol in lower case, default weights filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub spec: ServiceSpec,
    /// Absent until the datapath serves the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_change_request_rejects_unknown_fields() {
        let err =
            serde_json::from_str::<EndpointChangeRequest>(r#"{"container-id":"a","bogus":1}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn endpoint_state_wire_names() {
        for state in EndpointState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn service_spec_wire_names_and_defaults() {
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"frontend-address":{"ip":"10.0.0.1","port":80},
                "backend-addresses":[{"ip":"10.0.0.2","port":8080}]}"#,
        )
        .unwrap();
        assert_eq!(spec.id, 0);
        assert_eq!(spec.frontend_address.protocol, "any");
        assert_eq!(spec.backend_addresses[0].weight, DEFAULT_BACKEND_WEIGHT);
        assert_eq!(spec.flags, None);
        let spec = ServiceSpec {
            id: 7,
            flags: Some(ServiceFlags {
                direct_server_return: true,
                ..ServiceFlags::default()
            }),
            ..spec
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": 7,
                "frontend-address": {"ip": "10.0.0.1", "port": 80, "protocol": "any"},
                "backend-addresses": [{"ip": "10.0.0.2", "port": 8080, "weight": 1}],
                "flags": {"direct-server-return": true}
            })
        );
        for body in [
            r#"{"frontend-address":{"ip":"10.0.0.1","port":80},"bogus":1}"#,
            r#"{"frontend-address":{"ip":"10.0.0.1","port":80,"proto":"tcp"}}"#,
            r#"{"frontend-address":{"ip":"10.0.0.1","port":80},
                "backend-addresses":[{"ip":"10.0.0.2","port":80,"wieght":2}]}"#,
            r#"{"frontend-address":{"ip":"10.0.0.1","port":80},"flags":{"dsr":true}}"#,
        ] {
            let err = serde_json::from_str::<ServiceSpec>(body).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn family_parse() {
        assert_eq!("ipv4".parse::<Family>().unwrap(), Family::Ipv4);
        assert_eq!("ipv6".parse::<Family>().unwrap(), Family::Ipv6);
        assert!("ipx".parse::<Family>().unwrap_err().contains("ipx"));
    }
}
