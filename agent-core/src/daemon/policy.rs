//! Identities and policy in the agent: resolving an endpoint's identity from its labels,
//! keeping its resolved policy current, the policy repository API (import, get, delete,
//! trace) with its persistence, the identity API, and the live enforcement mode.
//!
//! Order of operations for a policy change: the new repository is written to the state
//! directory first, then applied in memory, so an acknowledged change survives a crash and
//! a change that could not be saved is not applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cilium_api::models::{self, EndpointState, Policy, TraceResult, TraceSelector};
use cilium_api::EndpointId;
use serde::{Deserialize, Serialize};

use super::{lock, Agent, AgentError, Inner, StartError};
use crate::cidr::Cidr;
use crate::endpoint::EndpointRecord;
use crate::identity::IdentityError;
use crate::labels::{Label, LabelSet, LabelSource};
use crate::policy::trace::{trace, TraceRequest};
use crate::policy::{
    parse_rules, rules_json, Change, Enforcement, PolicyError, PortProtocol, Protocol,
};
use crate::state::StateError;

/// The policy repository as saved in the state directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedPolicy {
    pub revision: u64,
    pub rules: serde_json::Value,
}

/// The option of `PATCH /config` that sets the enforcement mode.
pub const POLICY_ENFORCEMENT: &str = "PolicyEnforcement";

impl Agent {
    // ---- endpoints ----

    /// Gives an endpoint the identity of its labels and the policy of that identity, and
    /// moves it to `ready`. Endpoints still being created are left alone.
    pub(super) fn resolve_identity(
        &self,
        inner: &mut Inner,
        record: &mut EndpointRecord,
    ) -> Result<(), AgentError> {
        if matches!(
            record.state,
            EndpointState::Creating | EndpointState::Disconnected
        ) {
            return Ok(());
        }
        let parsed: Vec<Label> = record
            .effective_labels()
            .iter()
            .filter_map(|l| l.parse().ok())
            .collect();
        let labels = self.config.label_filter.identity_labels(&parsed);
        let current = record.identity.as_ref().map(|i| i.id);
        let same = current.is_some_and(|id| {
            inner.policy.identity_labels(id) == Some(&labels) && inner.policy.policy(id).is_some()
        });
        if !same {
            let (identity, _) = self.identities.acquire(&labels).map_err(|e| {
                record.log(
                    models::StatusCode::Failure,
                    &format!("cannot resolve the identity: {e}"),
                );
                AgentError::Identity(e)
            })?;
            // A new identity may be a peer of other endpoints' policies: theirs change too.
            let change = inner
                .policy
                .add_identity(identity.id, identity.labels.clone());
            if !change.changed.is_empty() {
                self.sync_policy_maps(inner, Some(&change.changed));
            }
            inner.policy.acquire(identity.id);
            if let Some(old) = current {
                self.drop_identity(inner, old);
            }
            record.identity = Some(identity.to_api(None));
        }
        let id = record.identity.as_ref().map_or(0, |i| i.id);
        let policy = inner.policy.policy(id).unwrap_or_default();
        record.policy_enabled = policy.enforcing() && record.options.get("Policy");
        record.policy_revision = inner.policy.revision();
        let message = format!(
            "identity {id} resolved, policy revision {}",
            record.policy_revision
        );
        if record.state == EndpointState::Ready || record.state == EndpointState::NotReady {
            if same {
                return Ok(());
            }
            record.set_state(EndpointState::Regenerating, "labels changed")?;
        }
        record.set_state(EndpointState::Ready, &message)?;
        Ok(())
    }

    /// Lets go of an endpoint's identity (and of its policy).
    pub(super) fn drop_identity(&self, inner: &mut Inner, id: u32) {
        inner.policy.release(id);
        match self.identities.release(id) {
            Ok(true) => {
                let change = inner.policy.remove_identity(id);
                if !change.changed.is_empty() {
                    self.sync_policy_maps(inner, Some(&change.changed));
                }
                tracing::debug!(identity = id, "identity released");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(identity = id, "cannot release the identity: {e}"),
        }
    }

    /// Lets go of the identity of an endpoint that is going away.
    pub(super) fn release_endpoint_identity(&self, inner: &mut Inner, record: &EndpointRecord) {
        if let Some(identity) = &record.identity {
            self.drop_identity(inner, identity.id);
        }
    }

    /// After rules or identities changed: CIDR identities follow the prefixes the rules name,
    /// and every endpoint records the revision and whether policy is enforced on it.
    pub(super) fn apply_change(&self, inner: &mut Inner, change: &Change) {
        let wanted = inner.policy.prefixes();
        let stale: Vec<Cidr> = inner
            .cidr_identities
            .keys()
            .filter(|c| !wanted.contains(c))
            .copied()
            .collect();
        // In batches: every affected policy is recomputed once, not once per prefix.
        let mut released = Vec::new();
        for prefix in stale {
            if let Some(id) = inner.cidr_identities.remove(&prefix) {
                released.push(id);
                if let Err(e) = self.identities.release(id) {
                    tracing::warn!(%prefix, identity = id, "cannot release: {e}");
                }
            }
        }
        let mut changed = change.changed.clone();
        if !released.is_empty() {
            changed.extend(inner.policy.remove_identities(&released).changed);
        }
        let mut added = Vec::new();
        for prefix in wanted {
            if inner.cidr_identities.contains_key(&prefix) {
                continue;
            }
            let labels = cidr_labels(&prefix);
            match self.identities.acquire_local(&labels) {
                Ok((identity, _)) => {
                    added.push((identity.id, identity.labels));
                    inner.cidr_identities.insert(prefix, identity.id);
                }
                Err(e) => tracing::warn!(%prefix, "cannot allocate a CIDR identity: {e}"),
            }
        }
        if !added.is_empty() {
            changed.extend(inner.policy.add_identities(added).changed);
        }
        let revision = inner.policy.revision();
        let enforcing: BTreeMap<u32, bool> = inner
            .endpoints
            .iter()
            .filter_map(|r| r.identity.as_ref().map(|i| i.id))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .map(|id| {
                let on = inner.policy.policy(id).is_some_and(|p| p.enforcing());
                (id, on)
            })
            .collect();
        for record in inner.endpoints.iter_mut() {
            if let Some(id) = record.identity.as_ref().map(|i| i.id) {
                record.policy_enabled =
                    enforcing.get(&id).copied().unwrap_or(false) && record.options.get("Policy");
                record.policy_revision = revision;
            }
        }
        self.sync_datapath(inner, Some(&changed));
        tracing::debug!(
            revision,
            recomputed = change.recomputed.len(),
            changed = change.changed.len(),
            "policy updated"
        );
    }

    /// The resolved policy of an endpoint, for `GET /endpoint/{id}`.
    pub(super) fn endpoint_policy(
        &self,
        inner: &Inner,
        record: &EndpointRecord,
    ) -> Option<models::EndpointPolicy> {
        let id = record.identity.as_ref()?.id;
        let policy = inner.policy.policy(id)?;
        let labels_of = |peer: u32| {
            inner
                .policy
                .identity_labels(peer)
                .map(LabelSet::to_strings)
                .unwrap_or_default()
        };
        Some(policy.to_api(record.policy_revision, &labels_of))
    }

    // ---- the policy repository ----

    fn save_policy(
        inner: &Inner,
        rules: &[serde_json::Value],
        revision: u64,
    ) -> Result<(), StateError> {
        inner.state.write_json(
            &inner.state.policy_path(),
            &SavedPolicy {
                revision,
                rules: serde_json::Value::Array(rules.to_vec()),
            },
        )
    }

    /// `GET /policy`.
    pub fn policy_get(&self, labels: &[Label]) -> Result<Policy, AgentError> {
        let inner = lock(&self.inner);
        let rules = inner.policy.rules_matching(labels);
        if rules.is_empty() && !labels.is_empty() {
            return Err(PolicyError::NotFound(label_list(labels)).into());
        }
        Ok(Policy {
            revision: inner.policy.revision(),
            policy: rules_json(&rules),
        })
    }

    /// `PUT /policy`: imports all rules of `text` or none.
    pub fn policy_import(&self, text: &str) -> Result<Policy, AgentError> {
        let rules = parse_rules(text)?;
        let mut inner = lock(&self.inner);
        let mut saved: Vec<serde_json::Value> =
            inner.policy.rules().iter().map(|r| r.to_json()).collect();
        let imported: Vec<Arc<crate::policy::Rule>> = rules.iter().cloned().map(Arc::new).collect();
        saved.extend(imported.iter().map(|r| r.to_json()));
        Self::save_policy(&inner, &saved, inner.policy.revision() + 1)?;
        let change = inner.policy.import(rules);
        self.apply_change(&mut inner, &change);
        tracing::info!(
            revision = change.revision,
            rules = imported.len(),
            endpoints_recomputed = change.recomputed.len(),
            "policy imported"
        );
        Ok(Policy {
            revision: change.revision,
            policy: rules_json(&imported),
        })
    }

    /// `DELETE /policy`: the rules carrying all of `labels`; every rule for none.
    pub fn policy_delete(&self, labels: &[Label]) -> Result<Policy, AgentError> {
        let mut inner = lock(&self.inner);
        let all = inner.policy.rules();
        let keep: Vec<serde_json::Value> = all
            .iter()
            .filter(|r| !labels.iter().all(|l| r.labels.has(l)))
            .map(|r| r.to_json())
            .collect();
        if keep.len() == all.len() {
            if labels.is_empty() {
                return Ok(Policy {
                    revision: inner.policy.revision(),
                    policy: "[]".into(),
                });
            }
            return Err(PolicyError::NotFound(label_list(labels)).into());
        }
        Self::save_policy(&inner, &keep, inner.policy.revision() + 1)?;
        let (deleted, change) = inner.policy.delete(labels)?;
        self.apply_change(&mut inner, &change);
        tracing::info!(
            revision = change.revision,
            rules = deleted.len(),
            "policy deleted"
        );
        Ok(Policy {
            revision: change.revision,
            policy: rules_json(&deleted),
        })
    }

    /// `GET /policy/resolve`: the trace of a flow.
    pub fn policy_resolve(&self, sel: &TraceSelector) -> Result<TraceResult, AgentError> {
        let inner = lock(&self.inner);
        let side = |labels: &[String], endpoint: &Option<String>, name: &str| match (
            labels.is_empty(),
            endpoint,
        ) {
            (false, Some(_)) => Err(AgentError::Invalid(format!(
                "give the {name} side as labels or as an endpoint, not both"
            ))),
            (true, None) => Err(AgentError::Invalid(format!(
                "the {name} side is missing: give labels or an endpoint"
            ))),
            (_, Some(ep)) => {
                let id: EndpointId =
                    ep.parse()
                        .map_err(|e: cilium_api::endpoint_id::EndpointIdError| {
                            AgentError::Endpoint(e.into())
                        })?;
                let record = inner.endpoints.find(&id)?;
                Ok(match record.identity.as_ref() {
                    Some(i) => LabelSet::parse(&i.labels)?,
                    None => self.filtered(&record.effective_labels())?,
                })
            }
            (false, None) => self.filtered(labels),
        };
        let from = side(&sel.from, &sel.from_endpoint, "source")?;
        let to = side(&sel.to, &sel.to_endpoint, "destination")?;
        let ports = sel
            .dports
            .iter()
            .map(|p| {
                let protocol = Protocol::parse(&p.protocol).ok_or_else(|| {
                    AgentError::Invalid(format!(
                        "unknown protocol '{}' (expected tcp, udp or any)",
                        p.protocol
                    ))
                })?;
                if p.port == 0 {
                    return Err(AgentError::Invalid("port 0 cannot be traced".into()));
                }
                Ok(PortProtocol {
                    port: p.port,
                    protocol,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (verdict, log) = trace(
            &inner.policy.rules(),
            inner.policy.mode(),
            TraceRequest {
                from: &from,
                to: &to,
                ports: &ports,
                verbose: sel.verbose,
            },
        );
        Ok(TraceResult { verdict, log })
    }

    /// Labels given to a trace, as the endpoint would hold them (filtered).
    fn filtered(&self, labels: &[String]) -> Result<LabelSet, AgentError> {
        let parsed = labels
            .iter()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.parse::<Label>())
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(any) = parsed.iter().find(|l| l.source == LabelSource::Any) {
            return Err(AgentError::Invalid(format!(
                "label {any}: an endpoint's labels have a concrete source"
            )));
        }
        Ok(self.config.label_filter.identity_labels(&parsed))
    }

    /// `PATCH /config` of `PolicyEnforcement` (validated with [`parse_enforcement`]).
    pub(super) fn set_enforcement(&self, mode: Enforcement) {
        let mut inner = lock(&self.inner);
        if inner.policy.mode() != mode {
            let change = inner.policy.set_mode(mode);
            self.apply_change(&mut inner, &change);
            tracing::info!(mode = %mode, "policy enforcement changed");
        }
    }

    pub(super) fn enforcement(&self) -> Enforcement {
        lock(&self.inner).policy.mode()
    }

    // ---- identities ----

    /// `GET /identity`, with an optional label filter.
    pub fn identity_list(&self, filter: &[Label]) -> Vec<models::Identity> {
        self.identities
            .list()
            .into_iter()
            .filter(|i| filter.iter().all(|f| i.labels.has(f)))
            .map(|i| {
                let refs = self.identities.references(i.id);
                i.to_api(Some(refs))
            })
            .collect()
    }

    /// `GET /identity/{id}`.
    pub fn identity_get(&self, id: u32) -> Result<models::Identity, AgentError> {
        self.identities
            .get(id)
            .map(|i| i.to_api(Some(self.identities.references(id))))
            .ok_or(AgentError::Identity(IdentityError::UnknownId(id)))
    }

    // ---- restore ----

    /// At start: the saved repository, then the identity of every restored endpoint.
    pub(super) fn restore_policy(&self, warnings: &mut Vec<String>) -> Result<(), StartError> {
        let mut inner = lock(&self.inner);
        let path = inner.state.policy_path();
        match inner.state.read_json::<SavedPolicy>(&path) {
            Ok(Some(saved)) => match parse_rules(&saved.rules.to_string()) {
                Ok(rules) => {
                    let change = inner.policy.restore(saved.revision, rules);
                    tracing::info!(
                        revision = saved.revision,
                        rules = inner.policy.rule_count(),
                        "restored policy"
                    );
                    self.apply_change(&mut inner, &change);
                }
                Err(PolicyError::Format(_))
                    if saved.rules.as_array().is_some_and(Vec::is_empty) =>
                {
                    let change = inner.policy.restore(saved.revision, Vec::new());
                    self.apply_change(&mut inner, &change);
                }
                Err(e) => {
                    let reason = format!("saved policy no longer valid: {e}");
                    warnings.push(inner.state.move_aside(&path, reason).to_string());
                }
            },
            Ok(None) => {}
            Err(e @ StateError::Corrupt { .. }) => warnings.push(e.to_string()),
            Err(e) => return Err(e.into()),
        }

        let in_use: BTreeMap<u32, (LabelSet, u32)> = {
            let mut m: BTreeMap<u32, (LabelSet, u32)> = BTreeMap::new();
            for record in inner.endpoints.iter() {
                if let Some(i) = &record.identity {
                    if let Ok(labels) = LabelSet::parse(&i.labels) {
                        m.entry(i.id).or_insert((labels, 0)).1 += 1;
                    }
                }
            }
            m
        };
        warnings.extend(self.identities.restore(&in_use)?);
        for (id, (labels, count)) in &in_use {
            inner.policy.add_identity(*id, labels.clone());
            for _ in 0..*count {
                inner.policy.acquire(*id);
            }
        }
        // Re-resolve: the label filter may have changed since the endpoint was saved.
        let ids: Vec<u16> = inner.endpoints.iter().map(|r| r.id).collect();
        for n in ids {
            let Some(mut record) = inner.endpoints.get(n).cloned() else {
                continue;
            };
            let before = record.identity.clone();
            if let Err(e) = self.resolve_identity(&mut inner, &mut record) {
                warnings.push(format!("endpoint {n}: {e}"));
            }
            if record.identity != before {
                if let Err(e) = inner
                    .state
                    .write_json(&inner.state.endpoint_path(n), &record)
                {
                    warnings.push(e.to_string());
                }
            }
            inner.endpoints.insert(record);
        }
        let change = Change {
            revision: inner.policy.revision(),
            ..Change::default()
        };
        self.apply_change(&mut inner, &change);
        Ok(())
    }
}

/// The value of the `PolicyEnforcement` option.
pub(super) fn parse_enforcement(value: &str) -> Result<Enforcement, AgentError> {
    Enforcement::parse(value).ok_or_else(|| {
        AgentError::Invalid(format!(
            "invalid value '{value}' for option {POLICY_ENFORCEMENT}: expected default, always \
             or never"
        ))
    })
}

/// Labels of the identity of a CIDR prefix.
fn cidr_labels(prefix: &Cidr) -> LabelSet {
    LabelSet::new(vec![
        Label::new(LabelSource::Cidr, &prefix.to_string(), ""),
        Label::new(LabelSource::Reserved, "world", ""),
    ])
}

fn label_list(labels: &[Label]) -> String {
    labels
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
