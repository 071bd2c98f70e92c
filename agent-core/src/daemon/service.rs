//! Services in the agent: the `/service` API over the [`ServiceTable`], its persistence in
//! the state directory (`services.json`) and its restore at start.
//!
//! Order of operations for a change, as for policy: the table with the change is written to
//! the state directory first, then applied in memory, so an acknowledged change survives a
//! restart and a change that could not be saved is not applied. The datapath's
//! load-balancing maps follow the table (`datapath::lb`): after each change here, and in
//! full at start (`reconcile_datapath`).

use cilium_api::models::{Service, ServiceSpec, ServiceStatus};
use serde::{Deserialize, Serialize};

use super::{lock, Agent, AgentError, Inner, StartError};
use crate::service::{ServiceError, ServiceRecord, ServiceTable};
use crate::state::StateError;

/// The service table as saved in the state directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedServices {
    services: Vec<ServiceSpec>,
}

/// The API form; `status` says what the datapath serves, absent when it does not serve it
/// (no datapath, or programming it failed).
fn to_api(dp: Option<&crate::datapath::Datapath>, record: &ServiceRecord) -> Service {
    let spec = record.to_spec();
    let realized = dp.is_some_and(|dp| dp.lb().is_programmed(record));
    Service {
        status: realized.then(|| ServiceStatus {
            realized: spec.clone(),
        }),
        spec,
    }
}

fn save(inner: &Inner, table: &ServiceTable) -> Result<(), StateError> {
    inner.state.write_json(
        &inner.state.services_path(),
        &SavedServices {
            services: table.specs(),
        },
    )
}

impl Agent {
    /// `GET /service`: every service, by id.
    pub fn service_list(&self) -> Vec<Service> {
        let dp = self.datapath.as_deref();
        lock(&self.inner)
            .services
            .iter()
            .map(|r| to_api(dp, r))
            .collect()
    }

    /// Programs the load-balancing maps with one service (or removes it, with `None`).
    fn program_service(&self, id: u16, record: Option<&ServiceRecord>) {
        let Some(dp) = &self.datapath else {
            return;
        };
        match record {
            Some(record) => {
                if let Err(e) = dp.lb().set_service(record) {
                    tracing::warn!(service = id, "cannot program the service: {e}");
                }
            }
            None => dp.lb().remove_service(id),
        }
    }

    /// `GET /service/{id}`.
    pub fn service_get(&self, id: u16) -> Result<Service, AgentError> {
        let inner = lock(&self.inner);
        let record = inner.services.get(id).ok_or(ServiceError::NotFound(id))?;
        Ok(to_api(self.datapath.as_deref(), record))
    }

    /// `PUT /service/{id}`: creates the service or replaces its frontend, backends and flags.
    /// Returns whether it was created, and the service as accepted.
    pub fn service_upsert(
        &self,
        id: u16,
        spec: ServiceSpec,
    ) -> Result<(bool, Service), AgentError> {
        if spec.id != 0 && spec.id != id {
            return Err(ServiceError::IdMismatch {
                path: id,
                body: spec.id,
            }
            .into());
        }
        let record = ServiceRecord::from_spec(id, &spec)?;
        let mut inner = lock(&self.inner);
        inner.services.check(&record)?;
        let previous = inner.services.get(id).cloned();
        if previous.as_ref() == Some(&record) {
            tracing::debug!(service = id, "service unchanged");
            return Ok((false, to_api(self.datapath.as_deref(), &record)));
        }
        let mut table = inner.services.clone();
        table.insert(record.clone());
        save(&inner, &table)?;
        inner.services = table;
        // Under the table's lock, so that concurrent changes reach the maps in order.
        self.program_service(id, Some(&record));
        let reply = to_api(self.datapath.as_deref(), &record);
        tracing::info!(
            service = id,
            frontend = %record.frontend,
            backends = record.backends.len(),
            "service {}",
            if previous.is_some() { "updated" } else { "created" }
        );
        Ok((previous.is_none(), reply))
    }

    /// `DELETE /service/{id}`: returns the deleted service.
    pub fn service_delete(&self, id: u16) -> Result<Service, AgentError> {
        let mut inner = lock(&self.inner);
        let mut table = inner.services.clone();
        let record = table.remove(id).ok_or(ServiceError::NotFound(id))?;
        save(&inner, &table)?;
        inner.services = table;
        self.program_service(id, None);
        tracing::info!(service = id, frontend = %record.frontend, "service deleted");
        Ok(Service {
            spec: record.to_spec(),
            status: None,
        })
    }

    /// At start: the saved table. A file that does not parse is moved aside; services that
    /// no longer validate are dropped, with the file as it was moved aside and the valid
    /// ones written back. Each case is a warning of `cilium status`.
    pub(super) fn restore_services(&self, warnings: &mut Vec<String>) -> Result<(), StartError> {
        let mut inner = lock(&self.inner);
        let path = inner.state.services_path();
        let saved = match inner.state.read_json::<SavedServices>(&path) {
            Ok(Some(saved)) => saved,
            Ok(None) => return Ok(()),
            Err(e @ StateError::Corrupt { .. }) => {
                tracing::warn!("{e}");
                warnings.push(e.to_string());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let mut table = ServiceTable::default();
        let mut dropped = Vec::new();
        for spec in &saved.services {
            if table.get(spec.id).is_some() {
                dropped.push(format!("service {}: saved twice", spec.id));
                continue;
            }
            let accepted = ServiceRecord::from_spec(spec.id, spec)
                .and_then(|record| table.check(&record).map(|()| record));
            match accepted {
                Ok(record) => {
                    table.insert(record);
                }
                Err(e) => dropped.push(format!("service {}: {e}", spec.id)),
            }
        }
        if !dropped.is_empty() {
            let reason = format!("dropped invalid services ({})", dropped.join("; "));
            let moved = inner.state.move_aside(&path, reason);
            tracing::warn!("{moved}");
            warnings.push(moved.to_string());
            save(&inner, &table)?;
        }
        tracing::info!(services = table.len(), "restored services");
        inner.services = table;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use cilium_api::models::{BackendAddress, FrontendAddress, ServiceFlags};

    use super::*;
    use crate::config::AgentConfig;

    fn start(dir: &Path) -> Agent {
        let mut c = AgentConfig::with_dirs(dir.join("sock"), dir.join("state"));
        c.ipv4_range = Some("10.78.0.0/16".parse().unwrap());
        c.ipv6_range = Some("f00d::4e:0:0/96".parse().unwrap());
        c.node_address = Some("192.0.2.78".parse().unwrap());
        c.node_name = Some("service-node".into());
        Agent::start(c, Box::new(|_| {})).unwrap()
    }

    fn spec(frontend: &str, port: i64, backends: &[&str]) -> ServiceSpec {
        ServiceSpec {
            id: 0,
            frontend_address: FrontendAddress {
                ip: frontend.into(),
                port,
                protocol: "tcp".into(),
            },
            backend_addresses: backends
                .iter()
                .map(|ip| BackendAddress {
                    ip: (*ip).into(),
                    port: 8080,
                    weight: 1,
                })
                .collect(),
            flags: None,
        }
    }

    fn services_file(dir: &Path) -> std::path::PathBuf {
        dir.join("state/services.json")
    }

    #[test]
    fn create_update_delete_and_restart() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let agent = start(tmp.path());
            let (created, svc) = agent
                .service_upsert(1, spec("10.96.0.1", 80, &["10.78.0.5"]))
                .unwrap();
            assert!(created);
            assert_eq!(svc.spec.id, 1);
            let mut changed = spec("10.96.0.1", 80, &["10.78.0.5", "10.78.0.6"]);
            changed.flags = Some(ServiceFlags {
                direct_server_return: true,
                ..ServiceFlags::default()
            });
            let (created, svc) = agent.service_upsert(1, changed.clone()).unwrap();
            assert!(!created);
            assert_eq!(svc.spec.backend_addresses.len(), 2);
            // The same again: an update that changes nothing.
            assert!(!agent.service_upsert(1, changed).unwrap().0);
            agent
                .service_upsert(2, spec("f00d::1", 443, &["f00d::4e:0:5"]))
                .unwrap();
            agent.service_upsert(3, spec("10.96.0.3", 53, &[])).unwrap();
            agent.service_delete(3).unwrap();
            assert!(matches!(
                agent.service_delete(3),
                Err(AgentError::Service(ServiceError::NotFound(3)))
            ));
        }
        let agent = start(tmp.path());
        assert!(agent.warnings().is_empty(), "{:?}", agent.warnings());
        let list = agent.service_list();
        let ids: Vec<u16> = list.iter().map(|s| s.spec.id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(list[0].spec.backend_addresses.len(), 2);
        assert_eq!(
            list[0].spec.flags.as_ref().map(|f| f.direct_server_return),
            Some(true)
        );
        assert_eq!(list[1].spec.frontend_address.ip, "f00d::1");
        // The frontend of service 1 is still taken after the restart.
        let err = agent
            .service_upsert(4, spec("10.96.0.1", 80, &[]))
            .unwrap_err();
        assert!(err.to_string().contains("of service 1"), "{err}");
    }

    #[test]
    fn a_change_that_cannot_be_saved_is_not_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = start(tmp.path());
        agent
            .service_upsert(1, spec("10.96.0.1", 80, &["10.78.0.5"]))
            .unwrap();
        // A directory where the file goes: the rename into place fails.
        fs::remove_file(services_file(tmp.path())).unwrap();
        fs::create_dir(services_file(tmp.path())).unwrap();
        let err = agent
            .service_upsert(2, spec("10.96.0.2", 80, &[]))
            .unwrap_err();
        assert!(matches!(err, AgentError::State(_)), "{err}");
        assert!(matches!(
            agent.service_get(2),
            Err(AgentError::Service(ServiceError::NotFound(2)))
        ));
        let err = agent.service_delete(1).unwrap_err();
        assert!(matches!(err, AgentError::State(_)), "{err}");
        assert_eq!(agent.service_get(1).unwrap().spec.id, 1);
    }

    #[test]
    fn corrupt_and_invalid_saved_services() {
        let tmp = tempfile::tempdir().unwrap();
        drop(start(tmp.path()));
        fs::write(services_file(tmp.path()), b"{ not json").unwrap();
        let agent = start(tmp.path());
        assert!(agent.service_list().is_empty());
        assert_eq!(agent.warnings().len(), 1, "{:?}", agent.warnings());
        assert!(
            agent.warnings()[0].contains("services.json is corrupt"),
            "{:?}",
            agent.warnings()
        );
        drop(agent);
        let aside = |dir: &Path| -> Vec<std::path::PathBuf> {
            fs::read_dir(dir.join("state"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("services.json.corrupt-"))
                })
                .collect()
        };
        for file in aside(tmp.path()) {
            fs::remove_file(file).unwrap();
        }

        // One good service, one that no longer validates, one whose frontend is taken and
        // one saved twice: the good one stays, the file as it was is kept aside.
        let good = ServiceSpec {
            id: 1,
            ..spec("10.96.0.1", 80, &["10.78.0.5"])
        };
        let bad = ServiceSpec {
            id: 2,
            ..spec("10.96.0.2", 80, &["f00d::5"])
        };
        let clash = ServiceSpec {
            id: 3,
            ..spec("10.96.0.1", 80, &[])
        };
        let text = serde_json::json!({"services": [good, bad, clash, good]}).to_string();
        fs::write(services_file(tmp.path()), &text).unwrap();
        let agent = start(tmp.path());
        let ids: Vec<u16> = agent.service_list().iter().map(|s| s.spec.id).collect();
        assert_eq!(ids, [1]);
        assert_eq!(agent.warnings().len(), 1, "{:?}", agent.warnings());
        let warning = &agent.warnings()[0];
        for part in [
            "service 2: invalid backend 1",
            "service 3: invalid frontend",
            "saved twice",
        ] {
            assert!(warning.contains(part), "{part}: {warning}");
        }
        let kept = aside(tmp.path());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(fs::read_to_string(&kept[0]).unwrap(), text);
        drop(agent);
        // The valid ones were written back: the next start is clean.
        let agent = start(tmp.path());
        assert!(agent.warnings().is_empty(), "{:?}", agent.warnings());
        assert_eq!(agent.service_list().len(), 1);
    }

    #[test]
    fn restore_false_discards_services() {
        let tmp = tempfile::tempdir().unwrap();
        start(tmp.path())
            .service_upsert(1, spec("10.96.0.1", 80, &[]))
            .unwrap();
        let mut c = AgentConfig::with_dirs(tmp.path().join("sock"), tmp.path().join("state"));
        c.ipv4_range = Some("10.78.0.0/16".parse().unwrap());
        c.ipv6_range = Some("f00d::4e:0:0/96".parse().unwrap());
        c.node_address = Some("192.0.2.78".parse().unwrap());
        c.restore = false;
        let agent = Agent::start(c, Box::new(|_| {})).unwrap();
        assert!(agent.service_list().is_empty());
        assert!(!services_file(tmp.path()).exists());
    }

    #[test]
    fn path_and_body_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = start(tmp.path());
        let body = ServiceSpec {
            id: 9,
            ..spec("10.96.0.1", 80, &[])
        };
        let err = agent.service_upsert(1, body.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::Service(ServiceError::IdMismatch { path: 1, body: 9 })
            ),
            "{err}"
        );
        assert!(agent.service_upsert(9, body).unwrap().0);
        assert!(matches!(
            agent.service_upsert(0, spec("10.96.0.2", 80, &[])),
            Err(AgentError::Service(ServiceError::BadId(_)))
        ));
    }
}
