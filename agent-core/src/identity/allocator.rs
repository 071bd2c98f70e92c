//! The identity allocator of one node.
//!
//! A node's first reference on a cluster identity goes through the kvstore; further ones
//! only count in memory. Taking the first reference (`IdentityAllocator::reference`):
//! read `labels/<set>` (id, revision r), create `refs/<id>/<node>`, then confirm with a
//! compare-and-swap of the labels key at r (same value). Dropping the last one
//! (`IdentityAllocator::unreference`): delete `refs/<id>/<node>`, read the labels key
//! (revision r'), list `refs/<id>/`, and if empty delete the labels key at r', then
//! `id/<id>`. A reference confirmed before that read is seen by the listing; one confirmed
//! after it changed the revision, so the delete fails; a confirmation after the delete fails
//! and that node retries. A new id is claimed with create-if-absent on `id/<id>` before
//! `labels/<set>` is created, so a labels key always names a claimed id. Not collected yet:
//! an `id/` key left alone when a node stopped between deleting the labels key and it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::keys::{self, id_key, labels_key, refs_key};
use super::{reserved_id, Identity, IdentityError, MAX_CLUSTER, MIN_CLUSTER, MIN_LOCAL, RESERVED};
use crate::kvstore::{Kvstore, KvstoreError, Watch, WatchEvent};
use crate::labels::LabelSet;

/// How often taking a first reference is retried while other nodes change the identity.
const MAX_ATTEMPTS: u32 = 100;

/// Allocates identities and counts this node's references on them. Cheap to share: all
/// methods take `&self`.
pub struct IdentityAllocator {
    kv: Arc<dyn Kvstore>,
    node: String,
    /// The range of cluster ids this allocator hands out.
    min: u32,
    max: u32,
    /// Serializes this node's kvstore work on references; holds the next candidate id.
    ops: Mutex<u32>,
    state: Mutex<State>,
}

/// What this node knows and holds.
struct State {
    /// Cluster identities seen in the kvstore (listed at start, then watched).
    known: BTreeMap<u32, LabelSet>,
    known_ids: HashMap<LabelSet, u32>,
    /// Identities this node holds references on: reserved, cluster and local.
    held: BTreeMap<u32, Held>,
    /// Held reserved and cluster identities by labels.
    held_ids: HashMap<LabelSet, u32>,
    /// Held local identities by labels.
    local_ids: HashMap<LabelSet, u32>,
    next_local: u32,
    /// Changes of the kvstore's `id/` keys, applied before each use of the state.
    watch: Watch,
}

struct Held {
    labels: LabelSet,
    count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Reserved,
    Cluster,
    Local,
    /// Below 256 but not a reserved identity.
    Invalid,
}

fn scope(id: u32) -> Scope {
    if RESERVED.iter().any(|(r, _)| *r == id) {
        Scope::Reserved
    } else if id >= MIN_LOCAL {
        Scope::Local
    } else if id >= MIN_CLUSTER {
        Scope::Cluster
    } else {
        Scope::Invalid
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn labels_json(labels: &LabelSet) -> Vec<u8> {
    serde_json::to_vec(labels).expect("a list of strings always serializes")
}

fn parse_labels(key: &str, value: &[u8]) -> Result<LabelSet, IdentityError> {
    serde_json::from_slice(value).map_err(|e| IdentityError::Corrupt {
        key: key.to_string(),
        reason: format!("not a JSON list of labels: {e}"),
    })
}

/// The cluster id stored at a labels key.
fn parse_id(key: &str, value: &[u8]) -> Result<u32, IdentityError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|id| scope(*id) == Scope::Cluster)
        .ok_or_else(|| IdentityError::Corrupt {
            key: key.to_string(),
            reason: format!(
                "'{}' is not a cluster identity",
                String::from_utf8_lossy(value)
            ),
        })
}

/// Logs the failure of a clean-up step that cannot change the outcome.
fn best_effort<T>(what: &str, result: Result<T, KvstoreError>) {
    if let Err(e) = result {
        tracing::warn!("identity clean-up: {what}: {e}");
    }
}

impl IdentityAllocator {
    /// An allocator for `node_name` over all cluster ids, loading the identities stored in
    /// `kv`.
    pub fn new(kv: Arc<dyn Kvstore>, node_name: &str) -> Result<Self, IdentityError> {
        Self::with_range(kv, node_name, MIN_CLUSTER, MAX_CLUSTER)
    }

    /// Same, handing out only cluster ids `min..=max` (a subrange of 256..=65535; tests).
    pub fn with_range(
        kv: Arc<dyn Kvstore>,
        node_name: &str,
        min: u32,
        max: u32,
    ) -> Result<Self, IdentityError> {
        if node_name.is_empty() {
            return Err(IdentityError::Config("empty node name".into()));
        }
        if !(MIN_CLUSTER <= min && min <= max && max <= MAX_CLUSTER) {
            return Err(IdentityError::Config(format!(
                "id range {min}..={max} is not within {MIN_CLUSTER}..={MAX_CLUSTER}"
            )));
        }
        // Watch before listing so that no change falls in between.
        let prefix = keys::ids_prefix();
        let mut state = State {
            known: BTreeMap::new(),
            known_ids: HashMap::new(),
            held: BTreeMap::new(),
            held_ids: HashMap::new(),
            local_ids: HashMap::new(),
            next_local: MIN_LOCAL,
            watch: kv.watch_prefix(&prefix)?,
        };
        for (key, entry) in kv.list_prefix(&prefix)? {
            state.apply(&key, Some(&entry.value));
        }
        // Continue after the newest id so that recently released ids are not reused first.
        let cursor = state
            .known
            .range(min..=max)
            .next_back()
            .map_or(min, |(id, _)| if *id >= max { min } else { id + 1 });
        Ok(IdentityAllocator {
            kv,
            node: node_name.to_string(),
            min,
            max,
            ops: Mutex::new(cursor),
            state: Mutex::new(state),
        })
    }

    /// The state, up to date with the kvstore's changes seen so far.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        state.drain();
        state
    }

    /// Takes one reference on the identity of `labels` (allocating it if no node has it).
    /// Returns the identity and whether this call allocated it.
    pub fn acquire(&self, labels: &LabelSet) -> Result<(Identity, bool), IdentityError> {
        if let Some(identity) = self.state().add_existing(labels, false) {
            return Ok((identity, false));
        }
        let mut cursor = lock(&self.ops);
        // Another thread may have taken the first reference meanwhile.
        if let Some(identity) = self.state().add_existing(labels, false) {
            return Ok((identity, false));
        }
        let lkey = labels_key(labels);
        let mut created = None;
        let id = self.reference(labels, 1, || {
            let claimed = self.claim(&mut cursor, labels)?;
            match self
                .kv
                .create_if_absent(&lkey, claimed.to_string().as_bytes(), None)
            {
                Ok(None) => created = Some(claimed),
                // Another node allocated these labels first: give the id back, use theirs.
                Ok(Some(_)) => {
                    self.kv.delete(&id_key(claimed))?;
                }
                Err(e) => {
                    best_effort("give back a claimed id", self.kv.delete(&id_key(claimed)));
                    return Err(e.into());
                }
            }
            Ok(())
        })?;
        let identity = self.state().add_refs(id, labels, 1);
        Ok((identity, created == Some(id)))
    }

    /// Takes one reference on the local-scope identity of `labels` (CIDR prefixes): in
    /// memory only, ids from 1<<24.
    pub fn acquire_local(&self, labels: &LabelSet) -> Result<(Identity, bool), IdentityError> {
        let mut state = self.state();
        if let Some(identity) = state.add_existing(labels, true) {
            return Ok((identity, false));
        }
        let mut id = state.next_local;
        // At most `held.len()` ids are taken, so a free one is found within that many steps.
        for _ in 0..=state.held.len() {
            if !state.held.contains_key(&id) {
                state.next_local = id.checked_add(1).unwrap_or(MIN_LOCAL);
                return Ok((state.add_refs(id, labels, 1), true));
            }
            id = id.checked_add(1).unwrap_or(MIN_LOCAL);
        }
        Err(IdentityError::Exhausted {
            min: MIN_LOCAL,
            max: u32::MAX,
        })
    }

    /// Drops one reference. Returns true when that was this node's last reference and the
    /// identity was released: for a cluster id its `refs/<id>/<node>` key is deleted, and the
    /// id and labels keys too when no node references it any more. Reserved identities are
    /// never released (false). On a kvstore error the local reference is gone anyway; keys
    /// left behind are collected by the next [`IdentityAllocator::restore`].
    pub fn release(&self, id: u32) -> Result<bool, IdentityError> {
        // Cluster references change only under `ops`, so that no first reference is being
        // taken while the last one is dropped.
        let _ops = (scope(id) == Scope::Cluster).then(|| lock(&self.ops));
        let labels = {
            let mut state = self.state();
            let held = state
                .held
                .get_mut(&id)
                .ok_or(IdentityError::UnknownId(id))?;
            held.count -= 1;
            if held.count > 0 {
                return Ok(false);
            }
            state.remove_held(id)
        };
        match scope(id) {
            Scope::Cluster => {
                if self.unreference(id, &labels)? {
                    self.state().forget(id);
                }
                Ok(true)
            }
            Scope::Local => Ok(true),
            Scope::Reserved | Scope::Invalid => Ok(false),
        }
    }

    /// The identity `id` (reserved ones included).
    pub fn get(&self, id: u32) -> Option<Identity> {
        if let Some(identity) = Identity::reserved(id) {
            return Some(identity);
        }
        let state = self.state();
        let labels = state
            .held
            .get(&id)
            .map(|h| &h.labels)
            .or_else(|| state.known.get(&id))?;
        Some(Identity {
            id,
            labels: labels.clone(),
        })
    }

    /// The identity of `labels`, if it exists (cluster before local scope).
    pub fn find(&self, labels: &LabelSet) -> Option<Identity> {
        let id = match reserved_id(labels) {
            Some(id) => id,
            None => {
                let state = self.state();
                *state
                    .held_ids
                    .get(labels)
                    .or_else(|| state.known_ids.get(labels))
                    .or_else(|| state.local_ids.get(labels))?
            }
        };
        Some(Identity {
            id,
            labels: labels.clone(),
        })
    }

    /// Every identity: reserved ones, the cluster's, this node's local ones; sorted by id.
    pub fn list(&self) -> Vec<Identity> {
        let mut all: BTreeMap<u32, LabelSet> = RESERVED
            .iter()
            .filter_map(|(id, _)| Identity::reserved(*id))
            .map(|i| (i.id, i.labels))
            .collect();
        let state = self.state();
        all.extend(state.known.iter().map(|(id, l)| (*id, l.clone())));
        all.extend(state.held.iter().map(|(id, h)| (*id, h.labels.clone())));
        all.into_iter()
            .map(|(id, labels)| Identity { id, labels })
            .collect()
    }

    /// This node's reference count on `id`.
    pub fn references(&self, id: u32) -> u32 {
        self.state().held.get(&id).map_or(0, |h| h.count)
    }

    /// At agent start: `in_use` maps each identity id to its labels and the number of
    /// restored endpoints holding it. Sets this node's reference counts to exactly these,
    /// re-creating cluster identities missing from the kvstore, and releases this node's
    /// references on every other cluster id (identities whose endpoints are gone). Returns
    /// warnings for identities that could not be restored (their id or labels now belong to
    /// another identity, or their stored data is corrupt) and for failed releases.
    pub fn restore(
        &self,
        in_use: &BTreeMap<u32, (LabelSet, u32)>,
    ) -> Result<Vec<String>, IdentityError> {
        let _ops = lock(&self.ops);
        let mut warnings = Vec::new();
        let mut restored: BTreeMap<u32, Held> = BTreeMap::new();
        for (&id, (labels, count)) in in_use.iter().filter(|(_, (_, n))| *n > 0) {
            let labels = match scope(id) {
                Scope::Reserved => Identity::reserved(id).map(|i| i.labels),
                Scope::Local => Some(labels.clone()),
                Scope::Cluster => match self.restore_cluster(id, labels, *count) {
                    Ok(None) => Some(labels.clone()),
                    Ok(Some(warning)) => {
                        warnings.push(warning);
                        None
                    }
                    Err(e @ IdentityError::Corrupt { .. }) => {
                        warnings.push(format!("identity {id} not restored: {e}"));
                        None
                    }
                    Err(e) => return Err(e),
                },
                Scope::Invalid => {
                    warnings.push(format!("identity {id} is not a valid identity; ignored"));
                    None
                }
            };
            if let Some(labels) = labels {
                let count = *count;
                restored.insert(id, Held { labels, count });
            }
        }

        // This node's other references: held in memory or left in the kvstore by a
        // previous run.
        let mut stale: BTreeSet<u32> = self
            .kv
            .list_prefix(&keys::all_refs_prefix())?
            .iter()
            .filter_map(|(key, _)| keys::parse_refs_key(key, &self.node))
            .collect();
        let mut state = self.state();
        stale.extend(state.held.keys().filter(|id| scope(**id) == Scope::Cluster));
        stale.retain(|id| !restored.contains_key(id));
        let stale: Vec<(u32, Option<LabelSet>)> = stale
            .into_iter()
            .map(|id| {
                let labels = state.held.get(&id).map(|h| &h.labels);
                (id, labels.or_else(|| state.known.get(&id)).cloned())
            })
            .collect();
        state.set_held(restored);
        drop(state);
        for (id, labels) in stale {
            match self.release_stale(id, labels) {
                Ok(true) => self.state().forget(id),
                Ok(false) => {}
                Err(e) => warnings.push(format!("cannot release unused identity {id}: {e}")),
            }
        }
        for warning in &warnings {
            tracing::warn!("identity restore: {warning}");
        }
        Ok(warnings)
    }

    /// Takes this node's reference on cluster identity `id` of `labels` at restore, making
    /// sure its keys exist. `Some(warning)` when it now belongs to other labels.
    fn restore_cluster(
        &self,
        id: u32,
        labels: &LabelSet,
        count: u32,
    ) -> Result<Option<String>, IdentityError> {
        let ikey = id_key(id);
        let (stored, recreated) = match self.kv.get(&ikey)? {
            Some(entry) => (Some(entry.value), false),
            None => match self
                .kv
                .create_if_absent(&ikey, &labels_json(labels), None)?
            {
                Some(entry) => (Some(entry.value), false),
                None => (None, true),
            },
        };
        if let Some(value) = stored {
            let stored = parse_labels(&ikey, &value)?;
            if stored != *labels {
                return Ok(Some(format!(
                    "identity {id} now has labels [{stored}], not [{labels}]; not restored"
                )));
            }
        }
        if recreated {
            tracing::info!("re-created identity {id} [{labels}] missing from the kvstore");
        }
        let lkey = labels_key(labels);
        let got = self.reference(labels, count, || {
            self.kv
                .create_if_absent(&lkey, id.to_string().as_bytes(), None)?;
            Ok(())
        })?;
        if got == id {
            return Ok(None);
        }
        // The labels were allocated another id meanwhile.
        if self.unreference(got, labels)? {
            self.state().forget(got);
        }
        if recreated {
            best_effort("delete a re-created id key", self.kv.delete(&ikey));
        }
        Ok(Some(format!(
            "labels [{labels}] now have identity {got}; identity {id} not restored"
        )))
    }

    /// Drops a reference this node no longer needs (restore). True when the identity was
    /// deleted.
    fn release_stale(&self, id: u32, labels: Option<LabelSet>) -> Result<bool, IdentityError> {
        let labels = match labels {
            Some(labels) => Some(labels),
            None => match self.kv.get(&id_key(id))? {
                Some(entry) => Some(parse_labels(&id_key(id), &entry.value)?),
                None => None,
            },
        };
        match labels {
            Some(labels) => self.unreference(id, &labels),
            None => {
                self.kv.delete(&refs_key(id, &self.node))?;
                Ok(false)
            }
        }
    }

    /// Takes this node's first reference on the identity the labels key names (module
    /// docs), writing `count` in the reference key. `missing` runs when the labels key is
    /// absent; it should create it.
    fn reference(
        &self,
        labels: &LabelSet,
        count: u32,
        mut missing: impl FnMut() -> Result<(), IdentityError>,
    ) -> Result<u32, IdentityError> {
        let lkey = labels_key(labels);
        for _ in 0..MAX_ATTEMPTS {
            let Some(entry) = self.kv.get(&lkey)? else {
                missing()?;
                continue;
            };
            let id = parse_id(&lkey, &entry.value)?;
            let rkey = refs_key(id, &self.node);
            self.kv
                .create_if_absent(&rkey, count.to_string().as_bytes(), None)?;
            if !self
                .kv
                .compare_and_swap(&lkey, entry.mod_revision, &entry.value)?
            {
                // Changed (or released) meanwhile: the reference is not valid, read again.
                self.kv.delete(&rkey)?;
                continue;
            }
            if let Err(e) = self.check_id_key(id, labels) {
                best_effort("drop an unusable reference", self.kv.delete(&rkey));
                return Err(e);
            }
            return Ok(id);
        }
        Err(IdentityError::Contended {
            labels: labels.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Makes sure `id/<id>` names `labels` (re-creating it if it went missing).
    fn check_id_key(&self, id: u32, labels: &LabelSet) -> Result<(), IdentityError> {
        let ikey = id_key(id);
        let stored = match self.kv.get(&ikey)? {
            Some(entry) => Some(entry.value),
            None => self
                .kv
                .create_if_absent(&ikey, &labels_json(labels), None)?
                .map(|e| e.value),
        };
        match stored {
            Some(value) if parse_labels(&ikey, &value)? != *labels => Err(IdentityError::Corrupt {
                key: ikey,
                reason: format!("the labels key of [{labels}] names this id for other labels"),
            }),
            _ => Ok(()),
        }
    }

    /// Drops this node's reference on cluster identity `id` from the kvstore (module docs).
    /// True when the identity was deleted (no node references it any more).
    fn unreference(&self, id: u32, labels: &LabelSet) -> Result<bool, IdentityError> {
        self.kv.delete(&refs_key(id, &self.node))?;
        let lkey = labels_key(labels);
        let Some(entry) = self.kv.get(&lkey)? else {
            return Ok(false);
        };
        if parse_id(&lkey, &entry.value)? != id
            || !self.kv.list_prefix(&keys::refs_prefix(id))?.is_empty()
            || !self.kv.delete_if(&lkey, entry.mod_revision)?
        {
            return Ok(false);
        }
        self.kv.delete(&id_key(id))?;
        Ok(true)
    }

    /// Claims a free cluster id (creates its `id/` key), starting at the cursor.
    fn claim(&self, cursor: &mut u32, labels: &LabelSet) -> Result<u32, IdentityError> {
        let value = labels_json(labels);
        for _ in self.min..=self.max {
            let candidate = *cursor;
            *cursor = if candidate >= self.max {
                self.min
            } else {
                candidate + 1
            };
            if self.state().known.contains_key(&candidate) {
                continue;
            }
            if self
                .kv
                .create_if_absent(&id_key(candidate), &value, None)?
                .is_none()
            {
                return Ok(candidate);
            }
        }
        Err(IdentityError::Exhausted {
            min: self.min,
            max: self.max,
        })
    }
}

impl State {
    /// Applies the current value (`None`: deleted) of an `id/` key.
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let id = match keys::parse_id_key(key) {
            Some(id) if scope(id) == Scope::Cluster => id,
            _ => {
                tracing::warn!("ignoring kvstore key {key}: not a cluster identity");
                return;
            }
        };
        match value.map(|v| parse_labels(key, v)) {
            Some(Ok(labels)) => self.remember(id, labels),
            Some(Err(e)) => tracing::warn!("ignoring identity {id}: {e}"),
            // A held identity stays known: its keys come back or its holder finds out.
            None if self.held.contains_key(&id) => {}
            None => self.forget(id),
        }
    }

    /// Applies the kvstore changes queued so far.
    fn drain(&mut self) {
        while let Ok(event) = self.watch.try_recv() {
            match event {
                WatchEvent::Put { key, value } => self.apply(&key, Some(&value)),
                WatchEvent::Delete { key } => self.apply(&key, None),
            }
        }
    }

    fn remember(&mut self, id: u32, labels: LabelSet) {
        if let Some(old) = self.known.insert(id, labels.clone()) {
            if self.known_ids.get(&old) == Some(&id) {
                self.known_ids.remove(&old);
            }
        }
        self.known_ids.insert(labels, id);
    }

    fn forget(&mut self, id: u32) {
        if let Some(old) = self.known.remove(&id) {
            if self.known_ids.get(&old) == Some(&id) {
                self.known_ids.remove(&old);
            }
        }
    }

    fn index(&mut self, local: bool) -> &mut HashMap<LabelSet, u32> {
        if local {
            &mut self.local_ids
        } else {
            &mut self.held_ids
        }
    }

    /// One more reference on an identity held already, or on a reserved one.
    fn add_existing(&mut self, labels: &LabelSet, local: bool) -> Option<Identity> {
        let id = reserved_id(labels).or_else(|| self.index(local).get(labels).copied())?;
        Some(self.add_refs(id, labels, 1))
    }

    /// Adds `count` references on `id`.
    fn add_refs(&mut self, id: u32, labels: &LabelSet, count: u32) -> Identity {
        let held = self.held.entry(id).or_insert_with(|| Held {
            labels: labels.clone(),
            count: 0,
        });
        held.count += count;
        let local = scope(id) == Scope::Local;
        self.index(local).insert(labels.clone(), id);
        if scope(id) == Scope::Cluster {
            self.remember(id, labels.clone());
        }
        Identity {
            id,
            labels: labels.clone(),
        }
    }

    /// Stops holding `id`; returns its labels.
    fn remove_held(&mut self, id: u32) -> LabelSet {
        let Some(held) = self.held.remove(&id) else {
            return LabelSet::default();
        };
        let index = self.index(scope(id) == Scope::Local);
        if index.get(&held.labels) == Some(&id) {
            index.remove(&held.labels);
        }
        held.labels
    }

    /// Replaces what this node holds (restore).
    fn set_held(&mut self, held: BTreeMap<u32, Held>) {
        for id in self.held.keys().copied().collect::<Vec<_>>() {
            self.remove_held(id);
        }
        for (id, h) in held {
            self.add_refs(id, &h.labels, h.count);
            if scope(id) == Scope::Local && id >= self.next_local {
                self.next_local = id.checked_add(1).unwrap_or(MIN_LOCAL);
            }
        }
    }
}

impl fmt::Debug for IdentityAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityAllocator")
            .field("kv", &self.kv)
            .field("node", &self.node)
            .field("range", &(self.min..=self.max))
            .finish_non_exhaustive()
    }
}
