//! Services (load balancing), the control plane: a frontend (a virtual IP address, port and
//! protocol) and the weighted backends that connections to it are spread over. This module
//! owns the validated form of a service and the table of services with its rules: ids
//! 1-65535, one service per frontend, backends of the frontend's family. The agent
//! (`daemon::service`) persists the table and serves `/service`; the datapath programs its
//! load-balancing maps from [`ServiceTable::iter`].
//!
//! Errors carry the status codes of the API reference: an invalid frontend is 460, an
//! invalid backend 461 (seed §8, `PUT /service/{id}`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use cilium_api::models::{BackendAddress, FrontendAddress, ServiceFlags, ServiceSpec};

use crate::policy::Protocol;

/// Errors of service requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The id of the path is not a service id (400).
    #[error("invalid service id '{0}': expected a number between 1 and 65535")]
    BadId(String),
    /// The body names another service than the path (400).
    #[error("the path names service {path} but the body says id {body}")]
    IdMismatch { path: u16, body: u16 },
    /// 460.
    #[error("invalid frontend: {0}")]
    InvalidFrontend(String),
    /// 461. `index` counts from 1, as `cilium service list` numbers backends.
    #[error("invalid backend {index}: {reason}")]
    InvalidBackend { index: usize, reason: String },
    /// 404.
    #[error("service {0} not found")]
    NotFound(u16),
}

/// Backends of one service, at most (each needs a slot index of the datapath's table).
pub const MAX_BACKENDS: usize = 16384;

/// Parses the id of a `/service/{id}` path.
pub fn parse_id(raw: &str) -> Result<u16, ServiceError> {
    match raw.parse::<u16>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ServiceError::BadId(raw.to_string())),
    }
}

/// An L3 address, an L4 port and a protocol: the frontend of a service, or a backend with
/// the frontend's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L3n4Addr {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl L3n4Addr {
    /// Whether a packet could match both: same address and port, and a protocol in common
    /// (`any` shares one with every protocol).
    pub fn overlaps(&self, other: &L3n4Addr) -> bool {
        self.ip == other.ip
            && self.port == other.port
            && (self.protocol == other.protocol
                || self.protocol == Protocol::Any
                || other.protocol == Protocol::Any)
    }
}

/// `ip:port`, `[ip]:port` for IPv6, with `/tcp` or `/udp` when the protocol is not `any`
/// (the form `cilium service update --frontend` takes).
impl fmt::Display for L3n4Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port)?,
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port)?,
        }
        match self.protocol {
            Protocol::Any => Ok(()),
            p => write!(f, "/{}", p.as_str()),
        }
    }
}

/// One backend: where connections are sent, and its share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u16,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub id: u16,
    pub frontend: L3n4Addr,
    pub backends: Vec<Backend>,
    pub flags: Option<ServiceFlags>,
}

impl ServiceRecord {
    /// Validates `spec` as service `id` (the id in `spec` is not looked at). Everything but
    /// the uniqueness of the frontend among services, which [`ServiceTable::check`] adds.
    pub fn from_spec(id: u16, spec: &ServiceSpec) -> Result<ServiceRecord, ServiceError> {
        if id == 0 {
            return Err(ServiceError::BadId(id.to_string()));
        }
        let frontend = parse_frontend(&spec.frontend_address)?;
        if spec.backend_addresses.len() > MAX_BACKENDS {
            return Err(ServiceError::InvalidBackend {
                index: MAX_BACKENDS + 1,
                reason: format!("a service has at most {MAX_BACKENDS} backends"),
            });
        }
        let mut backends: Vec<Backend> = Vec::with_capacity(spec.backend_addresses.len());
        let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for (i, given) in spec.backend_addresses.iter().enumerate() {
            let backend =
                parse_backend(&frontend, given).map_err(|reason| ServiceError::InvalidBackend {
                    index: i + 1,
                    reason,
                })?;
            if let Some(n) = seen.insert((backend.ip, backend.port), i) {
                return Err(ServiceError::InvalidBackend {
                    index: i + 1,
                    reason: format!(
                        "{} is backend {} already",
                        socket_text(backend.ip, backend.port),
                        n + 1
                    ),
                });
            }
            backends.push(backend);
        }
        Ok(ServiceRecord {
            id,
            frontend,
            backends,
            flags: spec.flags.clone(),
        })
    }

    /// The API form: canonical addresses, protocol in lower case, every weight given.
    pub fn to_spec(&self) -> ServiceSpec {
        ServiceSpec {
            id: self.id,
            frontend_address: FrontendAddress {
                ip: self.frontend.ip.to_string(),
                port: i64::from(self.frontend.port),
                protocol: self.frontend.protocol.as_str().to_string(),
            },
            backend_addresses: self
                .backends
                .iter()
                .map(|b| BackendAddress {
                    ip: b.ip.to_string(),
                    port: i64::from(b.port),
                    weight: i64::from(b.weight),
                })
                .collect(),
            flags: self.flags.clone(),
        }
    }
}

/// `ip:port`, or `[ip]:port` for IPv6.
fn socket_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

/// An address a service can use: a unicast address of either family.
fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not an IP address"))?;
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!("{ip} is not a unicast address"));
    }
    Ok(ip)
}

fn parse_port(port: i64) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {port} is out of range (1-65535)")),
    }
}

fn parse_frontend(given: &FrontendAddress) -> Result<L3n4Addr, ServiceError> {
    let invalid = ServiceError::InvalidFrontend;
    let ip = parse_ip(&given.ip).map_err(invalid)?;
    let port = parse_port(given.port).map_err(invalid)?;
    let protocol = Protocol::parse(given.protocol.trim()).ok_or_else(|| {
        invalid(format!(
            "unknown protocol '{}' (expected tcp, udp or any)",
            given.protocol
        ))
    })?;
    Ok(L3n4Addr { ip, port, protocol })
}

fn parse_backend(frontend: &L3n4Addr, given: &BackendAddress) -> Result<Backend, String> {
    let ip = parse_ip(&given.ip)?;
    let port = parse_port(given.port)?;
    let text = socket_text(ip, port);
    if ip.is_ipv4() != frontend.ip.is_ipv4() {
        let family = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(format!(
            "{text} is an {} address and the frontend an {} one",
            family(&ip),
            family(&frontend.ip)
        ));
    }
    if ip == frontend.ip && port == frontend.port {
        return Err(format!("{text} is the frontend itself"));
    }
    let weight = u16::try_from(given.weight).map_err(|_| {
        format!(
            "weight {} of {text} is out of range (0-65535)",
            given.weight
        )
    })?;
    Ok(Backend { ip, port, weight })
}

/// The services of this node, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    services: BTreeMap<u16, ServiceRecord>,
    /// Frontend address and port -> the services using it (for the overlap check).
    by_frontend: HashMap<(IpAddr, u16), Vec<u16>>,
}

impl ServiceTable {
    pub fn get(&self, id: u16) -> Option<&ServiceRecord> {
        self.services.get(&id)
    }

    /// Every service, by id.
    pub fn iter(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.services.values()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Refuses `record` when another service has an overlapping frontend (460).
    pub fn check(&self, record: &ServiceRecord) -> Result<(), ServiceError> {
        let f = &record.frontend;
        let same_address = self.by_frontend.get(&(f.ip, f.port)).into_iter().flatten();
        match same_address
            .filter_map(|id| self.services.get(id))
            .find(|s| s.id != record.id && s.frontend.overlaps(f))
        {
            Some(other) => Err(ServiceError::InvalidFrontend(format!(
                "{} overlaps the frontend {} of service {}",
                record.frontend, other.frontend, other.id
            ))),
            None => Ok(()),
        }
    }

    /// Adds or replaces the service of `record.id` (checked with [`ServiceTable::check`]);
    /// returns the one it replaced.
    pub fn insert(&mut self, record: ServiceRecord) -> Option<ServiceRecord> {
        let f = record.frontend;
        let id = record.id;
        let old = self.remove(id);
        self.services.insert(id, record);
        self.by_frontend.entry((f.ip, f.port)).or_default().push(id);
        old
    }

    pub fn remove(&mut self, id: u16) -> Option<ServiceRecord> {
        let old = self.services.remove(&id)?;
        let key = (old.frontend.ip, old.frontend.port);
        if let Some(ids) = self.by_frontend.get_mut(&key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_frontend.remove(&key);
            }
        }
        Some(old)
    }

    /// The API form of every service, by id.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.iter().map(ServiceRecord::to_spec).collect()
    }
}

#[cfg(test)]
mod tests;
