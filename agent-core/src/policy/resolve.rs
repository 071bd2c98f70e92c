//! Resolution: what the rules mean for one endpoint identity. [`evaluate`] is the meaning of
//! the language, rule by rule, for one flow; [`DirectionTable`] is the flat table the datapath
//! uses: `(remote identity | any, port | any, protocol | any) → allow | redirect`, looked up
//! most specific first. The engine (`engine.rs`) builds tables so that a lookup always
//! gives what `evaluate` gives; a property test holds them together.
//!
//! Semantics (seed §3.7.2, §5.1; modern policy/language):
//! - A rule applies to the endpoints its `endpointSelector` selects. Rules are a whitelist;
//!   their union is allowed.
//! - Enforcement is per direction: with `default`, on once any rule that selects the
//!   endpoint has an entry in that direction; `always` enforces everywhere, `never` nowhere.
//!   Without enforcement everything is allowed.
//! - An `ingress`/`egress` entry allows its peers (`fromEndpoints`, `fromCIDR`,
//!   `fromCIDRSet`, and the `to…` forms) on its ports (`toPorts`; none = all ports and
//!   protocols, ICMP included). An entry naming no peer but some ports allows every peer on
//!   those ports; an entry naming neither allows nothing (it only turns enforcement on).
//! - `fromRequires`/`toRequires` of every rule selecting the endpoint restrict all its peers
//!   in that direction: a peer must match every requirement, whatever else allows it.
//! - An empty selector `{}` selects every identity, reserved ones included.
//! - CIDR rules select the identities the agent allocates for prefixes named in policy
//!   (labels `cidr:<prefix>` and `reserved:world`): a prefix is selected when it lies inside
//!   the rule's CIDR and not inside one of its exceptions; a `/0` also selects `reserved:world`.
//!   Addresses of endpoints and of the host have their own identities and are not selected by
//!   CIDR rules.
//! - Ports with HTTP rules redirect to the proxy with those rules; a flow that some other
//!   rule allows without HTTP rules is allowed outright; several HTTP rule sets merge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use cilium_api::models::{
    DirectionPolicy, EndpointPolicy, HttpRuleModel, PolicyAction, PolicyEntry,
};

use super::rule::{contains, CidrSet, Direction, PeerRule, Protocol, Rule};
use crate::cidr::Cidr;
use crate::labels::{Label, LabelSet, LabelSource};

/// The enforcement mode (`--enable-policy`, `PolicyEnforcement` in `PATCH /config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enforcement {
    #[default]
    Default,
    Always,
    Never,
}

impl Enforcement {
    pub fn parse(s: &str) -> Option<Enforcement> {
        match s.trim().to_ascii_lowercase().as_str() {
            "default" => Some(Enforcement::Default),
            "always" => Some(Enforcement::Always),
            "never" => Some(Enforcement::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Default => "default",
            Enforcement::Always => "always",
            Enforcement::Never => "never",
        }
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What an allowed flow gets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Allow,
    /// Through the L7 proxy, which lets these HTTP requests through.
    Redirect(Arc<BTreeSet<HttpRuleModel>>),
}

impl Verdict {
    /// The verdict of a flow both verdicts allow (the union of what they allow).
    pub fn union(&self, other: &Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Redirect(a), Verdict::Redirect(b)) => {
                if a == b {
                    self.clone()
                } else {
                    Verdict::Redirect(Arc::new(a.union(b).cloned().collect()))
                }
            }
            _ => Verdict::Allow,
        }
    }

    fn merge_into(slot: &mut Option<Verdict>, v: &Verdict) {
        *slot = Some(match slot.take() {
            Some(old) => old.union(v),
            None => v.clone(),
        });
    }
}

/// Key of a table entry. `port == 0` goes with `proto == 0`: every port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// `None` = any identity.
    pub identity: Option<u32>,
    pub port: u16,
    /// IP protocol number (6, 17), 0 = any.
    pub proto: u8,
}

impl PolicyKey {
    pub const fn new(identity: Option<u32>, port: u16, proto: u8) -> PolicyKey {
        PolicyKey {
            identity,
            port,
            proto,
        }
    }

    /// The keys a lookup falls back to after this one, most specific first.
    fn covering(&self) -> Vec<PolicyKey> {
        let mut out = Vec::with_capacity(3);
        if self.port != 0 {
            if let Some(id) = self.identity {
                out.push(PolicyKey::new(Some(id), 0, 0));
            }
            if self.identity.is_some() {
                out.push(PolicyKey::new(None, self.port, self.proto));
            }
        }
        if self.identity.is_some() || self.port != 0 {
            out.push(PolicyKey::new(None, 0, 0));
        }
        out
    }
}

/// The policy of one direction of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionTable {
    pub enforcing: bool,
    pub entries: BTreeMap<PolicyKey, Verdict>,
}

impl DirectionTable {
    /// The verdict for a flow with the remote `identity`, destination `port` and IP protocol
    /// `proto`; `None` = denied. Order: (identity, port, proto), (identity, any), (any, port,
    /// proto), (any, any) — the order the datapath uses.
    pub fn lookup(&self, identity: u32, port: u16, proto: u8) -> Option<Verdict> {
        if !self.enforcing {
            return Some(Verdict::Allow);
        }
        let l4 = port != 0 && (proto == Protocol::TCP || proto == Protocol::UDP);
        let keys = [
            l4.then_some(PolicyKey::new(Some(identity), port, proto)),
            Some(PolicyKey::new(Some(identity), 0, 0)),
            l4.then_some(PolicyKey::new(None, port, proto)),
            Some(PolicyKey::new(None, 0, 0)),
        ];
        keys.into_iter()
            .flatten()
            .find_map(|k| self.entries.get(&k).cloned())
    }

    /// Turns entries as collected from the rules into a table whose first-match lookup gives
    /// the union of every entry a flow matches: each entry absorbs the entries covering it,
    /// and entries that add nothing to an allowing covering entry are dropped.
    pub(super) fn from_collected(enforcing: bool, collected: BTreeMap<PolicyKey, Verdict>) -> Self {
        let mut entries = BTreeMap::new();
        for (key, verdict) in &collected {
            let covering: Vec<&Verdict> = key
                .covering()
                .iter()
                .filter_map(|k| collected.get(k))
                .collect();
            if covering.iter().any(|v| **v == Verdict::Allow) {
                // Every later key of the lookup order allows this flow outright too.
                continue;
            }
            let merged = covering.iter().fold(verdict.clone(), |acc, v| acc.union(v));
            entries.insert(*key, merged);
        }
        DirectionTable { enforcing, entries }
    }

    /// The API form, with each identity's labels.
    pub fn to_api(&self, labels_of: &dyn Fn(u32) -> Vec<String>) -> DirectionPolicy {
        DirectionPolicy {
            enforcing: self.enforcing,
            entries: self
                .entries
                .iter()
                .map(|(k, v)| PolicyEntry {
                    identity: k.identity,
                    labels: k.identity.map(labels_of).unwrap_or_default(),
                    port: k.port,
                    protocol: match k.proto {
                        Protocol::TCP => "tcp",
                        Protocol::UDP => "udp",
                        _ => "any",
                    }
                    .to_string(),
                    action: match v {
                        Verdict::Allow => PolicyAction::Allow,
                        Verdict::Redirect(_) => PolicyAction::Redirect,
                    },
                    http: match v {
                        Verdict::Allow => Vec::new(),
                        Verdict::Redirect(rules) => rules.iter().cloned().collect(),
                    },
                })
                .collect(),
        }
    }
}

/// The resolved policy of an endpoint identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedPolicy {
    pub ingress: DirectionTable,
    pub egress: DirectionTable,
}

impl ResolvedPolicy {
    pub fn direction(&self, d: Direction) -> &DirectionTable {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn enforcing(&self) -> bool {
        self.ingress.enforcing || self.egress.enforcing
    }

    pub fn to_api(&self, revision: u64, labels_of: &dyn Fn(u32) -> Vec<String>) -> EndpointPolicy {
        EndpointPolicy {
            revision,
            ingress: self.ingress.to_api(labels_of),
            egress: self.egress.to_api(labels_of),
        }
    }
}

// ---- the meaning of the rules, one flow at a time ----

/// Whether `rule` applies to an endpoint with `labels`.
pub fn selects(rule: &Rule, labels: &LabelSet) -> bool {
    rule.subject.matches(labels)
}

/// Whether a direction is enforced for an endpoint with `subject` labels that `rules` (all of
/// them) select. An endpoint whose labels are not known yet (`reserved:init`) is enforced on
/// unless the mode is `never`.
pub fn enforced<'a>(
    mode: Enforcement,
    subject: &LabelSet,
    selecting: impl IntoIterator<Item = &'a Rule>,
    d: Direction,
) -> bool {
    match mode {
        Enforcement::Always => true,
        Enforcement::Never => false,
        Enforcement::Default => {
            is_init(subject) || selecting.into_iter().any(|r| !r.peers(d).is_empty())
        }
    }
}

/// Whether `labels` are those of the `reserved:init` identity.
pub fn is_init(labels: &LabelSet) -> bool {
    matches!(
        labels.as_slice(),
        [l] if l.source == LabelSource::Reserved && l.key == "init" && l.value.is_empty()
    )
}

/// Whether an identity with `labels` is selected by a CIDR set.
pub fn cidr_selects(set: &CidrSet, labels: &LabelSet) -> bool {
    let mut has_prefix = false;
    for label in labels.iter().filter(|l| l.source == LabelSource::Cidr) {
        has_prefix = true;
        if let Ok(prefix) = label.key.parse::<Cidr>() {
            if contains(&set.cidr, &prefix) && !set.except.iter().any(|e| contains(e, &prefix)) {
                return true;
            }
        }
    }
    !has_prefix && set.cidr.bits() == 0 && labels.has(&world_label())
}

pub fn world_label() -> Label {
    Label::new(LabelSource::Reserved, "world", "")
}

/// Whether a peer rule's peers include an identity with `labels` (requirements aside).
pub fn peer_selected(pr: &PeerRule, labels: &LabelSet) -> bool {
    if pr.has_no_peers() {
        return !pr.ports.is_empty();
    }
    pr.endpoints.iter().any(|s| s.matches(labels))
        || pr.all_cidrs().any(|set| cidr_selects(&set, labels))
}

/// The verdict of a peer rule's ports for a destination port and IP protocol.
pub fn port_verdict(pr: &PeerRule, port: u16, proto: u8) -> Option<Verdict> {
    if pr.ports.is_empty() {
        return Some(Verdict::Allow);
    }
    let mut out = None;
    for rule in &pr.ports {
        let hit = rule
            .ports
            .iter()
            .any(|pp| pp.port == port && pp.protocol.numbers().contains(&proto));
        if hit {
            let v = match &rule.http {
                None => Verdict::Allow,
                Some(http) => {
                    Verdict::Redirect(Arc::new(http.iter().map(|h| h.model.clone()).collect()))
                }
            };
            Verdict::merge_into(&mut out, &v);
        }
    }
    out
}

/// The verdict for one flow in direction `d` of the endpoint with `subject` labels, with a
/// peer with `peer` labels, straight from the rules. `None` = denied.
pub fn evaluate(
    rules: &[Arc<Rule>],
    mode: Enforcement,
    subject: &LabelSet,
    d: Direction,
    peer: &LabelSet,
    port: u16,
    proto: u8,
) -> Option<Verdict> {
    let selecting: Vec<&Rule> = rules
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| selects(r, subject))
        .collect();
    if !enforced(mode, subject, selecting.iter().copied(), d) {
        return Some(Verdict::Allow);
    }
    let requirements_met = selecting
        .iter()
        .flat_map(|r| r.peers(d))
        .flat_map(|pr| &pr.requires)
        .all(|req| req.matches(peer));
    if !requirements_met {
        return None;
    }
    let mut out = None;
    for pr in selecting.iter().flat_map(|r| r.peers(d)) {
        if peer_selected(pr, peer) {
            if let Some(v) = port_verdict(pr, port, proto) {
                Verdict::merge_into(&mut out, &v);
            }
        }
    }
    out
}
