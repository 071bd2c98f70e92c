//! Restoring state at start: IPAM allocations and endpoints are read back, then reconciled so
//! that every endpoint owns its addresses in IPAM and no allocation is left to an endpoint
//! that no longer exists (a crash between writing the two files leaves exactly that). What a
//! crash cut short is finished: an attach that never completed and a teardown still in
//! progress leave records whose links are removed here.

use std::collections::BTreeSet;

use cilium_api::models::{EndpointState, Family, StatusCode};

use super::StartError;
use crate::endpoint::{owner_endpoint, owner_tag, EndpointRecord, Registry};
use crate::ipam::{Ipam, IpamState, ROUTER_OWNER, STATE_VERSION};
use crate::link::rtnl::Rtnl;
use crate::state::{StateDir, StateError};

/// Restores (or, with `restore == false`, discards) the saved state. Returns warnings about
/// what could not be restored; corrupt files are moved aside, never fatal.
pub(super) fn restore(
    state: &StateDir,
    ipam: &Ipam,
    endpoints: &mut Registry,
    restore: bool,
) -> Result<Vec<String>, StartError> {
    if !restore {
        state.discard_all()?;
        tracing::info!(dir = %state.root().display(), "starting with empty state (--restore=false)");
        return Ok(Vec::new());
    }
    let mut warnings = Vec::new();

    match state.read_json::<IpamState>(&state.ipam_path()) {
        Ok(Some(saved)) if saved.version == STATE_VERSION => ipam.restore(&saved)?,
        Ok(Some(saved)) => keep_warning(
            &mut warnings,
            state.move_aside(
                &state.ipam_path(),
                format!("unsupported state version {}", saved.version),
            ),
        )?,
        Ok(None) => {}
        Err(e) => keep_warning(&mut warnings, e)?,
    }

    let mut records = Vec::new();
    for (id, path) in state.endpoint_files()? {
        let mut record: EndpointRecord = match state.read_json(&path) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                keep_warning(&mut warnings, e)?;
                continue;
            }
        };
        record
            .options
            .fill_defaults(crate::endpoint::ENDPOINT_OPTIONS);
        if record.id != id {
            let reason = format!("it holds endpoint {} but is named {id}.json", record.id);
            keep_warning(&mut warnings, state.move_aside(&path, reason))?;
            continue;
        }
        records.push((path, record));
    }
    let (interrupted, live): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|(_, record)| cut_short(record));
    let present: BTreeSet<u16> = live.iter().map(|(_, r)| r.id).collect();
    let mut rewrite = Vec::new();
    for (_, mut record) in live {
        let id = record.id;
        let tag = owner_tag(id);
        let mut changed = false;
        for ip in record.addresses().collect::<Vec<_>>() {
            let problem = match ipam.owner(&ip) {
                Some(owner) if owner == tag => None,
                // Docker endpoints use addresses their IPAM driver holds.
                Some(owner)
                    if owner == cilium_api::DOCKER_IPAM_OWNER && record.plumbing.is_docker() =>
                {
                    None
                }
                Some(owner) if owner == ROUTER_OWNER => {
                    Some("it is the router address".to_string())
                }
                Some(owner) => match owner_endpoint(&owner) {
                    Some(other) if present.contains(&other) => {
                        Some(format!("endpoint {other} holds it too"))
                    }
                    _ => ipam.set_owner(&ip, &tag).err().map(|e| e.to_string()),
                },
                None => ipam.reserve(ip, &tag).err().map(|e| e.to_string()),
            };
            if let Some(why) = problem {
                let message = format!("endpoint {id}: dropped address {ip}: {why}");
                tracing::warn!("{message}");
                record.log(StatusCode::Failure, &message);
                warnings.push(message);
                match Family::of(&ip) {
                    Family::Ipv4 => record.addressing.ipv4 = None,
                    Family::Ipv6 => record.addressing.ipv6 = None,
                }
                changed = true;
            }
        }
        if changed {
            rewrite.push(record.clone());
        }
        endpoints.insert(record);
    }

    // What a crash cut short: attaches that never completed (their record still says
    // `creating`) and teardowns of deleted endpoints. Their links go now; their addresses
    // are released below with those of every other endpoint that no longer exists.
    for (path, record) in interrupted {
        remove_leftover_links(&record, endpoints, "attach", &mut warnings);
        state.remove(&path)?;
    }
    for path in state.teardown_files()? {
        match state.read_json::<EndpointRecord>(&path) {
            Ok(Some(record)) => {
                remove_leftover_links(&record, endpoints, "teardown", &mut warnings);
                state.remove(&path)?;
            }
            Ok(None) => {}
            Err(e) => keep_warning(&mut warnings, e)?,
        }
    }

    for (ip, owner) in ipam.allocations() {
        if let Some(endpoint) = owner_endpoint(&owner) {
            if !endpoints.contains(endpoint) {
                // Its endpoint file is gone: the endpoint was deleted or never completed.
                let _ = ipam.release(ip);
                tracing::info!(%ip, endpoint, "released address of an endpoint that no longer exists");
            }
        }
    }

    state.write_json(&state.ipam_path(), &ipam.to_state())?;
    for record in rewrite {
        state.write_json(&state.endpoint_path(record.id), &record)?;
    }
    tracing::info!(
        endpoints = endpoints.len(),
        allocations = ipam.allocations().len(),
        "restored state"
    );
    Ok(warnings)
}

/// An endpoint whose links the agent was making when it stopped: step (1) of an attach
/// wrote it in state `creating`, step (3) never replaced it. (An endpoint created through the
/// API without links may rest in state `creating`; it has no plumbing.) A `disconnected`
/// record is an endpoint on its way out.
fn cut_short(record: &EndpointRecord) -> bool {
    (record.state == EndpointState::Creating && !record.plumbing.is_empty())
        || record.state == EndpointState::Disconnected
}

/// Removes the host-side link of an endpoint that is gone (and with it the container side,
/// its routes and its tc filters): the link of its name, when its index is the one recorded
/// (an attach cut short recorded none), and no restored endpoint uses that name.
fn remove_leftover_links(
    record: &EndpointRecord,
    live: &Registry,
    what: &str,
    warnings: &mut Vec<String>,
) {
    let name = record.interface_name.as_str();
    if name.is_empty() || live.iter().any(|r| r.interface_name == name) {
        return;
    }
    let removed = Rtnl::node().and_then(|mut node| match node.link(name)? {
        Some(link) if record.interface_index == 0 || link.index == record.interface_index => {
            node.delete_link_index(link.index)
        }
        _ => Ok(false),
    });
    match removed {
        Ok(true) => tracing::info!(
            endpoint = record.id,
            link = name,
            "removed the links of an interrupted {what}"
        ),
        Ok(false) => {}
        Err(e) => {
            let message = format!(
                "endpoint {}: cannot remove link {name} left by an interrupted {what}: {e}",
                record.id
            );
            tracing::warn!("{message}");
            warnings.push(message);
        }
    }
}

/// A corrupt file becomes a warning; any other state error stops the start.
fn keep_warning(warnings: &mut Vec<String>, e: StateError) -> Result<(), StartError> {
    match e {
        StateError::Corrupt { .. } => {
            tracing::warn!("{e}");
            warnings.push(e.to_string());
            Ok(())
        }
        other => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use cilium_api::models::EndpointChangeRequest;

    use super::*;
    use crate::config::AgentConfig;
    use crate::daemon::Agent;

    fn start(dir: &Path) -> Agent {
        let mut c = AgentConfig::with_dirs(dir.join("sock"), dir.join("state"));
        c.ipv4_range = Some("10.78.0.0/16".parse().unwrap());
        c.ipv6_range = Some("f00d::4e:0:0/96".parse().unwrap());
        c.node_address = Some("192.0.2.78".parse().unwrap());
        c.node_name = Some("test-node".into());
        Agent::start(c, Box::new(|_| {})).unwrap()
    }

    /// An endpoint through the API with freshly allocated addresses; returns its id.
    fn create(agent: &Agent, container: &str) -> u16 {
        let pair = agent.ipam_allocate(None, "cni").unwrap().endpoint;
        let req = EndpointChangeRequest {
            addressing: Some(pair),
            ..Default::default()
        };
        agent
            .endpoint_create(&format!("container-id:{container}").parse().unwrap(), req)
            .unwrap()
            .id
    }

    /// Rewrites fields of a saved endpoint record.
    fn edit(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let mut value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        f(&mut value);
        fs::write(path, value.to_string()).unwrap();
    }

    fn owners(agent: &Agent) -> Vec<String> {
        agent
            .ipam
            .allocations()
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    #[test]
    fn an_attach_cut_short_is_removed_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let endpoints = tmp.path().join("state/endpoints");
        let (half, plain) = {
            let agent = start(tmp.path());
            create(&agent, "kept");
            (create(&agent, "half"), create(&agent, "plain"))
        };
        // Step (1) of an attach wrote `half` in state creating, with its links to be;
        // `plain` was created through the API in state creating, without links.
        edit(&endpoints.join(format!("{half}.json")), |v| {
            v["state"] = "creating".into();
            v["plumbing"] = serde_json::json!({"netns-path": "/var/run/netns/gone", "mtu": 1500});
        });
        edit(&endpoints.join(format!("{plain}.json")), |v| {
            v["state"] = "creating".into();
        });

        let agent = start(tmp.path());
        assert!(agent.warnings().is_empty(), "{:?}", agent.warnings());
        assert_eq!(agent.endpoint_count(), 2);
        assert!(agent
            .endpoint_get(&"container-id:half".parse().unwrap())
            .is_err());
        assert!(!endpoints.join(format!("{half}.json")).exists());
        let mut held = owners(&agent);
        held.sort();
        assert_eq!(
            held,
            ["endpoint:1", "endpoint:1", "endpoint:3", "endpoint:3"],
            "the addresses of the half-made endpoint are released"
        );
    }

    #[test]
    fn a_teardown_cut_short_is_finished_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let gone = {
            let agent = start(tmp.path());
            create(&agent, "kept");
            create(&agent, "gone")
        };
        // DELETE moved the record aside and answered; the agent died before the links were
        // gone and the addresses released.
        fs::rename(
            state.join(format!("endpoints/{gone}.json")),
            state.join(format!("teardown/{gone}-0.json")),
        )
        .unwrap();
        // And one left in state disconnected.
        let kept_file = state.join("endpoints/1.json");
        let copy = state.join("endpoints/9.json");
        fs::copy(&kept_file, &copy).unwrap();
        edit(&copy, |v| {
            v["id"] = 9.into();
            v["container-id"] = "other".into();
            v["addressing"] = serde_json::json!({});
            v["state"] = "disconnected".into();
        });

        let agent = start(tmp.path());
        assert!(agent.warnings().is_empty(), "{:?}", agent.warnings());
        assert_eq!(agent.endpoint_count(), 1);
        assert_eq!(owners(&agent), ["endpoint:1", "endpoint:1"]);
        assert_eq!(fs::read_dir(state.join("teardown")).unwrap().count(), 0);
        assert!(!copy.exists());
        // Nothing is left for the start after.
        drop(agent);
        let agent = start(tmp.path());
        assert_eq!(agent.endpoint_count(), 1);
    }

    #[test]
    fn which_records_a_crash_cut_short() {
        let mut record = EndpointRecord::from_request(
            4,
            &EndpointChangeRequest {
                state: Some(EndpointState::Creating),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!cut_short(&record), "no links: an API endpoint");
        record.plumbing.netns_path = "/var/run/netns/c".into();
        assert!(cut_short(&record));
        record.state = EndpointState::Ready;
        assert!(!cut_short(&record));
        record.state = EndpointState::Disconnected;
        assert!(cut_short(&record));
    }
}
