//! Restoring state at start: IPAM allocations and endpoints are read back, then reconciled so
//! that every endpoint owns its addresses in IPAM and no allocation is left to an endpoint
//! that no longer exists (a crash between writing the two files leaves exactly that).

use std::collections::BTreeSet;

use cilium_api::models::{Family, StatusCode};

use super::StartError;
use crate::endpoint::{owner_endpoint, owner_tag, EndpointRecord, Registry};
use crate::ipam::{Ipam, IpamState, ROUTER_OWNER, STATE_VERSION};
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

    let files = state.endpoint_files()?;
    let present: BTreeSet<u16> = files.iter().map(|(id, _)| *id).collect();
    let mut rewrite = Vec::new();
    for (id, path) in files {
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
