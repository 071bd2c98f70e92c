//! The cluster node registry (DESIGN §7): each agent publishes a record of its node and the
//! addresses of its endpoints in the kvstore, all under one lease of its own, and follows the
//! records of the other nodes ([`Registry`]).
//!
//! Key layout:
//!
//! - `cilium/state/nodes/v1/<node name>` → a [`NodeRecord`], e.g.
//!   `{"name":"a","ipv4":"192.168.1.1","ipv4Range":"10.1.0.0/16","tunnelEndpoint":"192.168.1.1"}`;
//! - `cilium/state/ip/v1/<ip>` → an [`EndpointRecord`], e.g.
//!   `{"ip":"10.1.0.5","identity":256,"node":"a","tunnelEndpoint":"192.168.1.1"}`.
//!
//! Values are JSON with camelCase fields; absent optional fields are left out and unknown
//! ones are ignored (newer agents may add some). Node names are validated
//! ([`validate_node_name`]) and percent-encoded like the identity keys (`%`, space and bytes
//! outside printable ASCII); addresses are written in their canonical text form. Both kinds
//! of keys are attached to the node's lease, so they go away when the agent leaves, or one
//! TTL after it stopped renewing the lease (crash, lost connection).

mod registry;
#[cfg(test)]
mod tests;

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::kvstore::KvstoreError;
use crate::node::Node;

pub use registry::{EventSink, Registry, RegistryOptions, RegistryStatus, MIN_TTL};

/// Where node records live in the kvstore.
pub const NODES_PREFIX: &str = "cilium/state/nodes/v1/";
/// Where endpoint address records live in the kvstore.
pub const IP_PREFIX: &str = "cilium/state/ip/v1/";
/// The longest node name (a DNS name).
pub const MAX_NAME_LEN: usize = 253;

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The prefix this node allocates IPv4 endpoint addresses from.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "cidr_text")]
    pub ipv4_range: Option<Cidr>,
    /// The prefix this node allocates IPv6 endpoint addresses from.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "cidr_text")]
    pub ipv6_range: Option<Cidr>,
    /// Where other nodes send encapsulated traffic for this node's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<Ipv4Addr>,
}

impl From<&Node> for NodeRecord {
    /// The record of the local node; its tunnel endpoint is its IPv4 address.
    fn from(node: &Node) -> Self {
        NodeRecord {
            name: node.name.clone(),
            ipv4: node.ipv4,
            ipv6: node.ipv6,
            ipv4_range: node.ipv4_range,
            ipv6_range: node.ipv6_range,
            tunnel_endpoint: node.ipv4,
        }
    }
}

/// An endpoint address of some node and its security identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    pub ip: IpAddr,
    pub identity: u32,
    /// The name of the node the endpoint runs on.
    pub node: String,
    /// That node's tunnel endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<Ipv4Addr>,
}

/// A change of another node's records, as seen by [`Registry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node joined or changed its record.
    NodeUpsert(NodeRecord),
    /// The node of this name left (or its lease expired).
    NodeDelete(String),
    /// An endpoint address appeared or changed identity.
    EndpointUpsert(EndpointRecord),
    /// The endpoint address is gone.
    EndpointDelete(IpAddr),
}

/// Errors of the cluster registry; each names the operation and the node, endpoint or key.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid node name '{name}': {reason}")]
    InvalidNodeName { name: String, reason: &'static str },
    /// Joining would give two nodes overlapping allocation ranges.
    #[error(
        "node {node} cannot join the cluster: its {family} range {range} overlaps the range \
         {other_range} of node {other}"
    )]
    RangeOverlap {
        node: String,
        family: &'static str,
        range: Cidr,
        other: String,
        other_range: Cidr,
    },
    #[error("cluster registry: lease TTL {ttl:?} is shorter than the minimum of 1s")]
    Ttl { ttl: Duration },
    /// The local node record is not valid.
    #[error("invalid record of node {node}: {reason}")]
    InvalidRecord { node: String, reason: String },
    /// Another node publishes the address.
    #[error("cannot publish endpoint {ip}: node {node} publishes it")]
    EndpointTaken { ip: IpAddr, node: String },
    #[error("cluster registry: cannot {op} {object}: {source}")]
    Kvstore {
        op: &'static str,
        object: String,
        #[source]
        source: Box<KvstoreError>,
    },
    /// A stored record cannot be interpreted.
    #[error("cluster registry: corrupt record at '{key}': {reason}")]
    Corrupt { key: String, reason: String },
    /// Other writers kept changing the key.
    #[error("cluster registry: cannot {op} '{key}': it changed concurrently {attempts} times")]
    Contended {
        op: &'static str,
        key: String,
        attempts: u32,
    },
    #[error("cluster registry: cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterError {
    /// Whether the kvstore said the lease is gone.
    fn is_lease_lost(&self) -> bool {
        matches!(self, ClusterError::Kvstore { source, .. }
            if matches!(**source, KvstoreError::LeaseNotFound { .. }))
    }
}

/// Checks that `name` can name a node (and a key segment): non-empty, at most
/// [`MAX_NAME_LEN`] bytes, without `/`, NUL or `..`.
pub fn validate_node_name(name: &str) -> Result<(), ClusterError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 253 bytes"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name.contains("..") {
        "contains '..'"
    } else {
        return Ok(());
    };
    Err(ClusterError::InvalidNodeName {
        name: name.escape_debug().to_string(),
        reason,
    })
}

/// The key of the record of node `name`.
pub fn node_key(name: &str) -> String {
    let mut key = NODES_PREFIX.to_string();
    for b in name.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'/' | b'%') {
            key.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(key, "%{b:02X}");
        }
    }
    key
}

/// The key of the record of endpoint address `ip`.
pub fn ip_key(ip: IpAddr) -> String {
    format!("{IP_PREFIX}{ip}")
}

impl NodeRecord {
    /// Why the record is not valid, if it is not: its name (see [`validate_node_name`]),
    /// or a range of the wrong family. The registry skips other nodes' records that fail it
    /// and refuses to join as such a node.
    pub fn check(&self) -> Result<(), String> {
        validate_node_name(&self.name).map_err(|e| e.to_string())?;
        let family = |range: &Option<Cidr>, v4: bool| match range {
            Some(r) if r.network().is_ipv4() != v4 => Err(format!("range {r} of the wrong family")),
            _ => Ok(()),
        };
        family(&self.ipv4_range, true)?;
        family(&self.ipv6_range, false)
    }

    /// The first range of `other` that overlaps one of this node's ranges: (family, this
    /// node's range, the other's). A node does not join while one is found.
    pub fn overlap(&self, other: &NodeRecord) -> Option<(&'static str, Cidr, Cidr)> {
        [
            ("IPv4", self.ipv4_range, other.ipv4_range),
            ("IPv6", self.ipv6_range, other.ipv6_range),
        ]
        .into_iter()
        .find_map(|(family, mine, theirs)| match (mine, theirs) {
            (Some(a), Some(b)) if a.overlaps(&b) => Some((family, a, b)),
            _ => None,
        })
    }
}

/// A record as stored in the kvstore.
fn to_json<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records of strings, numbers and addresses serialize")
}

/// The node record stored at `key` (as another node wrote it), as the registry reads it:
/// JSON, valid ([`NodeRecord::check`]) and stored at the key of its name ([`node_key`]);
/// otherwise [`ClusterError::Corrupt`].
pub fn parse_node(key: &str, value: &[u8]) -> Result<NodeRecord, ClusterError> {
    let corrupt = |reason: String| ClusterError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let record: NodeRecord = serde_json::from_slice(value)
        .map_err(|e| corrupt(format!("not a JSON node record: {e}")))?;
    record.check().map_err(corrupt)?;
    if node_key(&record.name) != key {
        return Err(corrupt(format!("holds the record of node {}", record.name)));
    }
    Ok(record)
}

/// The endpoint record stored at `key` (as another node wrote it), as the registry reads
/// it: JSON, with a valid node name, and stored at the key of its address ([`ip_key`]);
/// otherwise [`ClusterError::Corrupt`].
pub fn parse_endpoint(key: &str, value: &[u8]) -> Result<EndpointRecord, ClusterError> {
    let corrupt = |reason: String| ClusterError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let record: EndpointRecord = serde_json::from_slice(value)
        .map_err(|e| corrupt(format!("not a JSON endpoint record: {e}")))?;
    validate_node_name(&record.node).map_err(|e| corrupt(e.to_string()))?;
    if ip_key(record.ip) != key {
        return Err(corrupt(format!(
            "holds the record of address {}",
            record.ip
        )));
    }
    Ok(record)
}

/// Serde for an optional prefix as its text (`10.2.0.0/16`).
mod cidr_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::cidr::Cidr;

    pub fn serialize<S: Serializer>(cidr: &Option<Cidr>, s: S) -> Result<S::Ok, S::Error> {
        match cidr {
            Some(c) => s.collect_str(c),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cidr>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}
