//! The policy engine: the rule repository with its revision, the identities known to this
//! node, and the resolved policy of every identity local endpoints hold, kept up to date
//! incrementally.
//!
//! Every selector of every rule is interned once and keeps the set of identities it selects
//! (found through a label index when it is created, then updated as identities come and
//! go). Each resolved policy records the selectors it was built from; a new identity
//! therefore only recomputes the policies that use a selector whose selection changed, and a
//! rule change only those of the identities its `endpointSelector` selects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::resolve::{
    cidr_selects, DirectionTable, Enforcement, PolicyKey, ResolvedPolicy, Verdict,
};
use super::rule::{CidrSet, Direction, PeerRule, Rule};
use super::selector::{EndpointSelector, Operator};
use super::PolicyError;
use crate::cidr::Cidr;
use crate::labels::{Label, LabelSet};

/// A selector as the engine interns it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Sel {
    Endpoint(EndpointSelector),
    Cidr(CidrSet),
}

impl Sel {
    fn matches(&self, labels: &LabelSet) -> bool {
        match self {
            Sel::Endpoint(s) => s.matches(labels),
            Sel::Cidr(set) => cidr_selects(set, labels),
        }
    }
}

type SelId = usize;

/// The identities a selector selects.
#[derive(Debug, Clone)]
enum Selection {
    /// The empty selector: every identity, also ones this node does not know yet.
    All,
    Ids(BTreeSet<u32>),
}

#[derive(Debug)]
struct SelSlot {
    sel: Sel,
    /// Occurrences in the rules.
    refs: usize,
    selection: Selection,
}

/// The selectors of one peer rule.
#[derive(Debug, Clone, Default)]
struct PeerSels {
    peers: Vec<SelId>,
    requires: Vec<SelId>,
}

#[derive(Debug, Clone)]
struct RuleSels {
    subject: SelId,
    ingress: Vec<PeerSels>,
    egress: Vec<PeerSels>,
}

impl RuleSels {
    fn all(&self) -> impl Iterator<Item = SelId> + '_ {
        std::iter::once(self.subject).chain(
            self.ingress
                .iter()
                .chain(&self.egress)
                .flat_map(|p| p.peers.iter().chain(&p.requires).copied()),
        )
    }

    fn peers(&self, d: Direction) -> &[PeerSels] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

#[derive(Debug)]
struct RuleEntry {
    rule: Arc<Rule>,
    sels: RuleSels,
}

/// The resolved policy of one identity held by local endpoints.
#[derive(Debug)]
struct Subject {
    refs: usize,
    policy: Arc<ResolvedPolicy>,
    deps: BTreeSet<SelId>,
}

/// What a change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The repository revision after the change.
    pub revision: u64,
    /// Identities whose policy was recomputed.
    pub recomputed: BTreeSet<u32>,
    /// Those of them whose policy came out different.
    pub changed: BTreeSet<u32>,
}

/// The policy repository and the resolution of every local identity.
#[derive(Debug, Default)]
pub struct PolicyEngine {
    rules: Vec<RuleEntry>,
    revision: u64,
    mode: Enforcement,
    identities: BTreeMap<u32, LabelSet>,
    /// (key, value) of every label (any source) → identities carrying it.
    by_value: HashMap<(String, String), BTreeSet<u32>>,
    slots: Vec<Option<SelSlot>>,
    interned: HashMap<Sel, SelId>,
    /// CIDR selector slots by their prefix (`except` aside), so a new CIDR identity is
    /// matched against the selectors of the prefixes containing it only.
    cidr_slots: HashMap<Cidr, BTreeSet<SelId>>,
    /// Endpoint selector slots that keep a list of identities (not the empty selector).
    endpoint_slots: BTreeSet<SelId>,
    /// Identities by the prefixes of their `cidr:` labels, ordered by (family, first
    /// address, length), so a new CIDR selector finds the identities inside it by range.
    cidr_ids: BTreeMap<(bool, u128, u8), BTreeSet<u32>>,
    free: Vec<SelId>,
    subjects: BTreeMap<u32, Subject>,
    dependents: HashMap<SelId, BTreeSet<u32>>,
}

impl PolicyEngine {
    pub fn new(mode: Enforcement) -> PolicyEngine {
        PolicyEngine {
            mode,
            ..PolicyEngine::default()
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn mode(&self) -> Enforcement {
        self.mode
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The rules, in repository order.
    pub fn rules(&self) -> Vec<Arc<Rule>> {
        self.rules.iter().map(|e| e.rule.clone()).collect()
    }

    /// Rules carrying every label of `labels` (`any:` matches every source); all for none.
    pub fn rules_matching(&self, labels: &[Label]) -> Vec<Arc<Rule>> {
        self.rules
            .iter()
            .filter(|e| labels.iter().all(|l| e.rule.labels.has(l)))
            .map(|e| e.rule.clone())
            .collect()
    }

    /// Every prefix the rules name: each needs a CIDR identity.
    pub fn prefixes(&self) -> BTreeSet<Cidr> {
        self.rules.iter().flat_map(|e| e.rule.prefixes()).collect()
    }

    pub fn identity_labels(&self, id: u32) -> Option<&LabelSet> {
        self.identities.get(&id)
    }

    /// The identities known to the engine.
    pub fn identities(&self) -> &BTreeMap<u32, LabelSet> {
        &self.identities
    }

    /// Puts back the repository saved before a restart (no revision bump).
    pub fn restore(&mut self, revision: u64, rules: Vec<Rule>) -> Change {
        let all = self.clear_rules();
        self.revision = revision;
        let mut affected = all;
        affected.extend(self.add_rules(rules));
        self.recompute(affected)
    }

    /// Adds rules (already validated as a whole) and bumps the revision.
    pub fn import(&mut self, rules: Vec<Rule>) -> Change {
        let affected = self.add_rules(rules);
        self.revision += 1;
        self.recompute(affected)
    }

    /// Deletes the rules carrying every label of `labels`; all rules for none. Returns the
    /// deleted rules. Deleting everything from an empty repository changes nothing.
    pub fn delete(&mut self, labels: &[Label]) -> Result<(Vec<Arc<Rule>>, Change), PolicyError> {
        let (gone, kept): (Vec<RuleEntry>, Vec<RuleEntry>) = std::mem::take(&mut self.rules)
            .into_iter()
            .partition(|e| labels.iter().all(|l| e.rule.labels.has(l)));
        self.rules = kept;
        if gone.is_empty() {
            if labels.is_empty() {
                return Ok((Vec::new(), self.unchanged()));
            }
            let names: Vec<String> = labels.iter().map(ToString::to_string).collect();
            return Err(PolicyError::NotFound(names.join(", ")));
        }
        let mut affected = BTreeSet::new();
        for entry in &gone {
            affected.extend(self.subjects_selected(entry.sels.subject));
        }
        for entry in &gone {
            for id in entry.sels.all() {
                self.unref(id);
            }
        }
        self.revision += 1;
        let change = self.recompute(affected);
        Ok((gone.into_iter().map(|e| e.rule).collect(), change))
    }

    /// Changes the enforcement mode; every local identity is recomputed.
    pub fn set_mode(&mut self, mode: Enforcement) -> Change {
        if mode == self.mode {
            return self.unchanged();
        }
        self.mode = mode;
        let all = self.subjects.keys().copied().collect();
        self.recompute(all)
    }

    /// Makes an identity known (an endpoint's, another node's, a CIDR's, a reserved one).
    pub fn add_identity(&mut self, id: u32, labels: LabelSet) -> Change {
        self.add_identities(vec![(id, labels)])
    }

    /// Makes many identities known, recomputing every affected policy once (a policy with
    /// thousands of CIDR prefixes brings thousands of identities at once).
    pub fn add_identities(&mut self, items: Vec<(u32, LabelSet)>) -> Change {
        let mut affected = BTreeSet::new();
        let mut any = false;
        for (id, labels) in items {
            if let Some(a) = self.index_identity(id, labels) {
                affected.extend(a);
                any = true;
            }
        }
        if !any {
            return self.unchanged();
        }
        self.recompute(affected)
    }

    /// Records an identity in the label index and the selections; `None` when it was known
    /// with these labels already. Returns the subjects whose policy depends on it.
    fn index_identity(&mut self, id: u32, labels: LabelSet) -> Option<BTreeSet<u32>> {
        let mut affected = match self.identities.get(&id) {
            Some(old) if *old == labels => return None,
            Some(_) => self.forget_identity(id),
            None => BTreeSet::new(),
        };
        for l in labels.iter() {
            self.by_value
                .entry((l.key.clone(), l.value.clone()))
                .or_default()
                .insert(id);
        }
        let prefixes = cidr_prefixes(&labels);
        for p in &prefixes {
            self.cidr_ids.entry(cidr_key(p)).or_default().insert(id);
        }
        for sel_id in self.candidate_slots(&prefixes) {
            let Some(Some(slot)) = self.slots.get_mut(sel_id) else {
                continue;
            };
            if let Selection::Ids(ids) = &mut slot.selection {
                if slot.sel.matches(&labels) {
                    ids.insert(id);
                    if let Some(d) = self.dependents.get(&sel_id) {
                        affected.extend(d.iter().copied());
                    }
                }
            }
        }
        self.identities.insert(id, labels);
        if self.subjects.contains_key(&id) {
            affected.insert(id);
        }
        Some(affected)
    }

    /// The selector slots that may select an identity with the `cidr:` prefixes `prefixes`:
    /// every endpoint selector, and the CIDR selectors of the prefixes containing one of them.
    fn candidate_slots(&self, prefixes: &[Cidr]) -> BTreeSet<SelId> {
        let mut candidates = self.endpoint_slots.clone();
        for p in prefixes {
            for len in 0..=p.prefix_len() {
                let outer = Cidr::new_truncated(p.network(), len);
                if let Some(slots) = self.cidr_slots.get(&outer) {
                    candidates.extend(slots.iter().copied());
                }
            }
        }
        candidates
    }

    /// Forgets an identity (released everywhere).
    pub fn remove_identity(&mut self, id: u32) -> Change {
        self.remove_identities(&[id])
    }

    /// Forgets many identities, recomputing every affected policy once.
    pub fn remove_identities(&mut self, ids: &[u32]) -> Change {
        let mut affected = BTreeSet::new();
        for id in ids {
            affected.extend(self.forget_identity(*id));
        }
        self.recompute(affected)
    }

    /// Takes a reference on the resolved policy of identity `id` (an endpoint now holds it).
    pub fn acquire(&mut self, id: u32) -> Arc<ResolvedPolicy> {
        if let Some(subject) = self.subjects.get_mut(&id) {
            subject.refs += 1;
            return subject.policy.clone();
        }
        self.subjects.insert(
            id,
            Subject {
                refs: 1,
                policy: Arc::new(ResolvedPolicy::default()),
                deps: BTreeSet::new(),
            },
        );
        self.recompute(BTreeSet::from([id]));
        self.policy(id).unwrap_or_default()
    }

    /// Drops a reference taken with [`acquire`](Self::acquire).
    pub fn release(&mut self, id: u32) {
        let Some(subject) = self.subjects.get_mut(&id) else {
            return;
        };
        subject.refs = subject.refs.saturating_sub(1);
        if subject.refs == 0 {
            if let Some(subject) = self.subjects.remove(&id) {
                self.set_deps(id, &subject.deps, &BTreeSet::new());
            }
        }
    }

    /// The resolved policy of a local identity.
    pub fn policy(&self, id: u32) -> Option<Arc<ResolvedPolicy>> {
        self.subjects.get(&id).map(|s| s.policy.clone())
    }

    // ---- internals ----

    fn unchanged(&self) -> Change {
        Change {
            revision: self.revision,
            ..Change::default()
        }
    }

    /// Removes every rule; returns the identities that had policy from them.
    fn clear_rules(&mut self) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        for entry in std::mem::take(&mut self.rules) {
            affected.extend(self.subjects_selected(entry.sels.subject));
            for id in entry.sels.all() {
                self.unref(id);
            }
        }
        affected
    }

    /// Adds rules; returns the local identities they select.
    fn add_rules(&mut self, rules: Vec<Rule>) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        for rule in rules {
            let sels = RuleSels {
                subject: self.intern(Sel::Endpoint(rule.subject.clone())),
                ingress: rule.ingress.iter().map(|p| self.intern_peer(p)).collect(),
                egress: rule.egress.iter().map(|p| self.intern_peer(p)).collect(),
            };
            affected.extend(self.subjects_selected(sels.subject));
            self.rules.push(RuleEntry {
                rule: Arc::new(rule),
                sels,
            });
        }
        affected
    }

    fn intern_peer(&mut self, p: &PeerRule) -> PeerSels {
        let mut peers: Vec<SelId> = p
            .endpoints
            .iter()
            .map(|s| self.intern(Sel::Endpoint(s.clone())))
            .collect();
        for set in p.all_cidrs() {
            peers.push(self.intern(Sel::Cidr(set)));
        }
        let requires = p
            .requires
            .iter()
            .map(|s| self.intern(Sel::Endpoint(s.clone())))
            .collect();
        PeerSels { peers, requires }
    }

    fn intern(&mut self, sel: Sel) -> SelId {
        if let Some(&id) = self.interned.get(&sel) {
            if let Some(slot) = self.slots[id].as_mut() {
                slot.refs += 1;
            }
            return id;
        }
        let selection = self.select(&sel);
        let slot = SelSlot {
            sel: sel.clone(),
            refs: 1,
            selection,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        match &sel {
            Sel::Cidr(set) => {
                self.cidr_slots.entry(set.cidr).or_default().insert(id);
            }
            Sel::Endpoint(s) if !s.is_empty() => {
                self.endpoint_slots.insert(id);
            }
            Sel::Endpoint(_) => {}
        }
        self.interned.insert(sel, id);
        id
    }

    fn unref(&mut self, id: SelId) {
        let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        slot.refs -= 1;
        if slot.refs == 0 {
            if let Some(slot) = self.slots[id].take() {
                if let Sel::Cidr(set) = &slot.sel {
                    if let Some(slots) = self.cidr_slots.get_mut(&set.cidr) {
                        slots.remove(&id);
                        if slots.is_empty() {
                            self.cidr_slots.remove(&set.cidr);
                        }
                    }
                }
                self.endpoint_slots.remove(&id);
                self.interned.remove(&slot.sel);
            }
            self.free.push(id);
        }
    }

    /// Computes what a new selector selects, through the label index when it can.
    fn select(&self, sel: &Sel) -> Selection {
        let candidates: Option<BTreeSet<u32>> = match sel {
            Sel::Endpoint(s) if s.is_empty() => return Selection::All,
            Sel::Endpoint(s) => s
                .requirements()
                .iter()
                .filter(|r| r.op == Operator::In)
                .map(|r| {
                    r.values
                        .iter()
                        .filter_map(|v| self.by_value.get(&(r.key.clone(), v.clone())))
                        .flatten()
                        .copied()
                        .collect::<BTreeSet<u32>>()
                })
                .min_by_key(BTreeSet::len),
            Sel::Cidr(set) => {
                let v6 = set.cidr.family() == cilium_api::models::Family::Ipv6;
                Some(
                    self.cidr_ids
                        .range((v6, set.cidr.first(), 0)..=(v6, set.cidr.last(), u8::MAX))
                        .filter(|((_, _, len), _)| *len >= set.cidr.prefix_len())
                        .flat_map(|(_, ids)| ids.iter().copied())
                        .collect(),
                )
            }
        };
        let ids = match candidates {
            Some(c) => c
                .into_iter()
                .filter(|id| self.identities.get(id).is_some_and(|l| sel.matches(l)))
                .collect(),
            None => self
                .identities
                .iter()
                .filter(|(_, l)| sel.matches(l))
                .map(|(id, _)| *id)
                .collect(),
        };
        Selection::Ids(ids)
    }

    fn selection(&self, id: SelId) -> &Selection {
        static ALL: Selection = Selection::All;
        self.slots
            .get(id)
            .and_then(Option::as_ref)
            .map_or(&ALL, |s| &s.selection)
    }

    /// Local identities a (subject) selector selects.
    fn subjects_selected(&self, sel: SelId) -> Vec<u32> {
        match self.selection(sel) {
            Selection::All => self.subjects.keys().copied().collect(),
            Selection::Ids(ids) => {
                if ids.len() < self.subjects.len() {
                    ids.iter()
                        .filter(|id| self.subjects.contains_key(id))
                        .copied()
                        .collect()
                } else {
                    self.subjects
                        .keys()
                        .filter(|id| ids.contains(id))
                        .copied()
                        .collect()
                }
            }
        }
    }

    /// Removes an identity from the index and every selection; returns the local identities
    /// whose policy used a selection that changed.
    fn forget_identity(&mut self, id: u32) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        let Some(labels) = self.identities.remove(&id) else {
            return affected;
        };
        for l in labels.iter() {
            let key = (l.key.clone(), l.value.clone());
            if let Some(set) = self.by_value.get_mut(&key) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_value.remove(&key);
                }
            }
        }
        let prefixes = cidr_prefixes(&labels);
        for p in &prefixes {
            let key = cidr_key(p);
            if let Some(set) = self.cidr_ids.get_mut(&key) {
                set.remove(&id);
                if set.is_empty() {
                    self.cidr_ids.remove(&key);
                }
            }
        }
        // Only a candidate slot can have selected it.
        for sel_id in self.candidate_slots(&prefixes) {
            if let Some(Some(SelSlot {
                selection: Selection::Ids(ids),
                ..
            })) = self.slots.get_mut(sel_id)
            {
                if ids.remove(&id) {
                    if let Some(d) = self.dependents.get(&sel_id) {
                        affected.extend(d.iter().copied());
                    }
                }
            }
        }
        if self.subjects.contains_key(&id) {
            affected.insert(id);
        }
        affected
    }

    fn set_deps(&mut self, subject: u32, old: &BTreeSet<SelId>, new: &BTreeSet<SelId>) {
        for sel in old.difference(new) {
            if let Some(d) = self.dependents.get_mut(sel) {
                d.remove(&subject);
                if d.is_empty() {
                    self.dependents.remove(sel);
                }
            }
        }
        for sel in new.difference(old) {
            self.dependents.entry(*sel).or_default().insert(subject);
        }
    }

    /// Recomputes the policy of the given local identities.
    fn recompute(&mut self, subjects: BTreeSet<u32>) -> Change {
        let subjects: BTreeSet<u32> = subjects
            .into_iter()
            .filter(|s| self.subjects.contains_key(s))
            .collect();
        let mut by_subject: BTreeMap<u32, Vec<usize>> =
            subjects.iter().map(|s| (*s, Vec::new())).collect();
        for (index, entry) in self.rules.iter().enumerate() {
            match self.selection(entry.sels.subject) {
                Selection::All => by_subject.values_mut().for_each(|v| v.push(index)),
                Selection::Ids(ids) if ids.len() < subjects.len() => {
                    for id in ids {
                        if let Some(v) = by_subject.get_mut(id) {
                            v.push(index);
                        }
                    }
                }
                Selection::Ids(ids) => {
                    for (id, v) in by_subject.iter_mut() {
                        if ids.contains(id) {
                            v.push(index);
                        }
                    }
                }
            }
        }
        let mut change = Change {
            revision: self.revision,
            ..Change::default()
        };
        for (id, rules) in by_subject {
            let mut deps = BTreeSet::new();
            let policy = ResolvedPolicy {
                ingress: self.table(id, &rules, Direction::Ingress, &mut deps),
                egress: self.table(id, &rules, Direction::Egress, &mut deps),
            };
            let old_deps = self
                .subjects
                .get(&id)
                .map(|s| s.deps.clone())
                .unwrap_or_default();
            self.set_deps(id, &old_deps, &deps);
            if let Some(subject) = self.subjects.get_mut(&id) {
                if *subject.policy != policy {
                    change.changed.insert(id);
                    subject.policy = Arc::new(policy);
                }
                subject.deps = deps;
            }
            change.recomputed.insert(id);
        }
        change
    }

    /// The table of one direction of local identity `id` from the rules (indexes) selecting
    /// it; `reserved:init` is enforced on unless the mode is `never` (see [`enforced`]).
    ///
    /// [`enforced`]: super::resolve::enforced
    fn table(
        &self,
        id: u32,
        rules: &[usize],
        d: Direction,
        deps: &mut BTreeSet<SelId>,
    ) -> DirectionTable {
        let entries: Vec<&RuleEntry> = rules.iter().map(|i| &self.rules[*i]).collect();
        let enforcing = match self.mode {
            Enforcement::Always => true,
            Enforcement::Never => false,
            Enforcement::Default => {
                id == crate::identity::INIT || entries.iter().any(|e| !e.rule.peers(d).is_empty())
            }
        };
        if !enforcing {
            return DirectionTable::default();
        }
        // Every peer must meet every requirement of every selecting rule.
        let mut required: Option<BTreeSet<u32>> = None;
        for sel in entries
            .iter()
            .flat_map(|e| e.sels.peers(d))
            .flat_map(|p| &p.requires)
        {
            deps.insert(*sel);
            if let Selection::Ids(ids) = self.selection(*sel) {
                required = Some(match required {
                    None => ids.clone(),
                    Some(r) => r.intersection(ids).copied().collect(),
                });
            }
        }
        let mut collected: BTreeMap<PolicyKey, Verdict> = BTreeMap::new();
        for entry in &entries {
            for (pr, ps) in entry.rule.peers(d).iter().zip(entry.sels.peers(d)) {
                let mut any = false;
                let mut ids = BTreeSet::new();
                if pr.has_no_peers() {
                    if pr.ports.is_empty() {
                        continue;
                    }
                    any = true;
                } else {
                    for sel in &ps.peers {
                        deps.insert(*sel);
                        match self.selection(*sel) {
                            Selection::All => any = true,
                            Selection::Ids(s) => ids.extend(s.iter().copied()),
                        }
                    }
                }
                let peers: Vec<Option<u32>> = match (&required, any) {
                    (None, true) => vec![None],
                    (None, false) => ids.into_iter().map(Some).collect(),
                    (Some(req), true) => req.iter().copied().map(Some).collect(),
                    (Some(req), false) => ids.intersection(req).copied().map(Some).collect(),
                };
                let ports: Vec<(u16, u8, Verdict)> = if pr.ports.is_empty() {
                    vec![(0, 0, Verdict::Allow)]
                } else {
                    pr.ports
                        .iter()
                        .flat_map(|rule| {
                            let verdict = match &rule.http {
                                None => Verdict::Allow,
                                Some(http) => Verdict::Redirect(Arc::new(
                                    http.iter().map(|h| h.model.clone()).collect(),
                                )),
                            };
                            rule.ports.iter().flat_map(move |pp| {
                                let verdict = verdict.clone();
                                pp.protocol
                                    .numbers()
                                    .iter()
                                    .map(move |proto| (pp.port, *proto, verdict.clone()))
                            })
                        })
                        .collect()
                };
                for peer in peers {
                    for (port, proto, verdict) in &ports {
                        let key = PolicyKey::new(peer, *port, *proto);
                        match collected.get_mut(&key) {
                            Some(v) => *v = v.union(verdict),
                            None => {
                                collected.insert(key, verdict.clone());
                            }
                        }
                    }
                }
            }
        }
        DirectionTable::from_collected(true, collected)
    }
}

/// The prefixes of an identity's `cidr:` labels.
fn cidr_prefixes(labels: &LabelSet) -> Vec<Cidr> {
    labels
        .iter()
        .filter(|l| l.source == crate::labels::LabelSource::Cidr)
        .filter_map(|l| l.key.parse().ok())
        .collect()
}

/// A prefix's place in [`PolicyEngine::cidr_ids`].
fn cidr_key(p: &Cidr) -> (bool, u128, u8) {
    (
        p.family() == cilium_api::models::Family::Ipv6,
        p.first(),
        p.prefix_len(),
    )
}
