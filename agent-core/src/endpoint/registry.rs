//! The endpoints of this node, by endpoint id, with lookup by every id prefix and allocation
//! of new endpoint ids (1–65535, next-free after the last one handed out).

use std::collections::BTreeMap;

use cilium_api::EndpointId;

use super::{EndpointError, EndpointRecord};

#[derive(Debug, Default)]
pub struct Registry {
    endpoints: BTreeMap<u16, EndpointRecord>,
    /// The last id handed out; the next search starts after it.
    last_id: u16,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut EndpointRecord> {
        self.endpoints.values_mut()
    }

    pub fn contains(&self, id: u16) -> bool {
        self.endpoints.contains_key(&id)
    }

    pub fn get(&self, id: u16) -> Option<&EndpointRecord> {
        self.endpoints.get(&id)
    }

    pub fn get_mut(&mut self, id: u16) -> Option<&mut EndpointRecord> {
        self.endpoints.get_mut(&id)
    }

    /// The endpoint id that `id` names.
    pub fn lookup(&self, id: &EndpointId) -> Result<u16, EndpointError> {
        let field: fn(&EndpointRecord) -> &str = match id {
            EndpointId::CiliumLocal(n) => {
                return if self.endpoints.contains_key(n) {
                    Ok(*n)
                } else {
                    Err(EndpointError::NotFound(id.to_string()))
                }
            }
            EndpointId::ContainerId(_) => |r| &r.container_id,
            EndpointId::DockerEndpoint(_) => |r| &r.docker_endpoint_id,
            EndpointId::ContainerName(_) => |r| &r.container_name,
            EndpointId::PodName(_) => |r| &r.pod_name,
        };
        let wanted = match id {
            EndpointId::ContainerId(v)
            | EndpointId::DockerEndpoint(v)
            | EndpointId::ContainerName(v)
            | EndpointId::PodName(v) => v.as_str(),
            EndpointId::CiliumLocal(_) => "",
        };
        let matches: Vec<u16> = self
            .endpoints
            .values()
            .filter(|r| field(r) == wanted)
            .map(|r| r.id)
            .collect();
        match matches.as_slice() {
            [] => Err(EndpointError::NotFound(id.to_string())),
            [one] => Ok(*one),
            many => Err(EndpointError::Ambiguous {
                id: id.to_string(),
                matches: many
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The endpoint that `id` names.
    pub fn find(&self, id: &EndpointId) -> Result<&EndpointRecord, EndpointError> {
        let n = self.lookup(id)?;
        self.endpoints
            .get(&n)
            .ok_or_else(|| EndpointError::NotFound(id.to_string()))
    }

    /// The next free endpoint id after the last one handed out, wrapping once.
    pub fn allocate_id(&mut self) -> Result<u16, EndpointError> {
        let start = self.last_id;
        let mut candidate = start;
        loop {
            candidate = if candidate == u16::MAX {
                1
            } else {
                candidate + 1
            };
            if !self.endpoints.contains_key(&candidate) {
                self.last_id = candidate;
                return Ok(candidate);
            }
            if candidate == start || (start == 0 && candidate == u16::MAX) {
                return Err(EndpointError::NoFreeId);
            }
        }
    }

    /// Refuses a record whose container id or Docker endpoint id another endpoint already has.
    /// Docker endpoints may share a container id: a container joins one endpoint per network
    /// (`container-id:` is then ambiguous; `docker-endpoint:` names each).
    pub fn check_unique(&self, record: &EndpointRecord) -> Result<(), EndpointError> {
        let docker = |r: &EndpointRecord| !r.docker_endpoint_id.is_empty();
        for other in self.endpoints.values().filter(|o| o.id != record.id) {
            if !record.container_id.is_empty()
                && other.container_id == record.container_id
                && !(docker(record) && docker(other))
            {
                return Err(EndpointError::Conflict(format!(
                    "endpoint {} already exists for container-id {}",
                    other.id, record.container_id
                )));
            }
            if !record.docker_endpoint_id.is_empty()
                && other.docker_endpoint_id == record.docker_endpoint_id
            {
                return Err(EndpointError::Conflict(format!(
                    "endpoint {} already exists for docker-endpoint {}",
                    other.id, record.docker_endpoint_id
                )));
            }
        }
        Ok(())
    }

    pub fn insert(&mut self, record: EndpointRecord) {
        self.last_id = self.last_id.max(record.id);
        self.endpoints.insert(record.id, record);
    }

    pub fn remove(&mut self, id: u16) -> Option<EndpointRecord> {
        self.endpoints.remove(&id)
    }
}
