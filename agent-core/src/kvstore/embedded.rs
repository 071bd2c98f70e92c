//! The embedded backend: one node's store, kept in memory and persisted to
//! `<state-dir>/kvstore.json` before each change returns. Keys attached to a lease live in
//! memory only (leases end with the process); a background thread ends leases whose TTL
//! passed, and every call also ends them lazily.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};

use super::{watch_channel, Entry, Kvstore, KvstoreError, LeaseId, Watch, WatchEvent, WatchSender};
use crate::state::write_atomic;

/// The store's file in the state directory.
pub const FILE_NAME: &str = "kvstore.json";
const FILE_VERSION: u32 = 1;
/// How long the lease thread sleeps when no lease is pending.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The embedded single-node store.
pub struct Embedded {
    shared: Arc<Shared>,
    /// `None` for [`Embedded::in_memory`].
    file: Option<StoreFile>,
    warnings: Vec<String>,
    /// The lease thread, started with the first lease.
    reaper: Mutex<Option<JoinHandle<()>>>,
}

struct StoreFile {
    path: PathBuf,
    /// The state directory, fsynced after each rename.
    dir: File,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the lease thread (a new lease, or the store closing).
    wake: Condvar,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, Slot>,
    revision: u64,
    leases: HashMap<u64, Lease>,
    last_lease: u64,
    watchers: Vec<(String, WatchSender)>,
    closed: bool,
}

struct Slot {
    value: Vec<u8>,
    mod_revision: u64,
    lease: Option<u64>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Embedded {
    /// Opens (or creates) the store persisted in `state_dir`. A file that cannot be read as a
    /// store is moved aside (`kvstore.json.corrupt-<unix-seconds>`) and the store starts
    /// empty; [`Embedded::warnings`] says so.
    pub fn open(state_dir: &Path) -> Result<Embedded, KvstoreError> {
        let open_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| KvstoreError::Open { op, path, source }
        };
        fs::create_dir_all(state_dir).map_err(open_err("create", state_dir))?;
        let dir = File::open(state_dir).map_err(open_err("open", state_dir))?;
        let path = state_dir.join(FILE_NAME);
        let mut warnings = Vec::new();
        let state = match fs::read(&path) {
            Ok(bytes) => match StoredFile::parse(&bytes) {
                Ok(state) => state,
                Err(e) => {
                    let moved = move_aside(&path).map_err(open_err("move aside", &path))?;
                    let warning = format!(
                        "kvstore file {} is corrupt ({e}); moved it to {} and started empty",
                        path.display(),
                        moved.display()
                    );
                    tracing::warn!("{warning}");
                    warnings.push(warning);
                    State::default()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(open_err("read", &path)(e)),
        };
        Ok(Embedded::with_state(
            state,
            Some(StoreFile { path, dir }),
            warnings,
        ))
    }

    /// A store without a file (tests).
    pub fn in_memory() -> Embedded {
        Embedded::with_state(State::default(), None, Vec::new())
    }

    fn with_state(state: State, file: Option<StoreFile>, warnings: Vec<String>) -> Embedded {
        Embedded {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                wake: Condvar::new(),
            }),
            file,
            warnings,
            reaper: Mutex::new(None),
        }
    }

    /// Problems found when opening (a corrupt file moved aside).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The store's file, `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// The number of registered watches (tests).
    #[cfg(test)]
    pub(super) fn watch_count(&self) -> usize {
        lock(&self.shared.state).watchers.len()
    }

    /// Locks the state after ending the leases whose TTL passed.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.shared.state);
        state.expire(Instant::now());
        state
    }

    /// Sets (`Some`) or deletes (`None`) `key`, persisting first when a non-leased key is
    /// concerned, then tells the watchers. Nothing changes when persisting fails.
    fn apply(
        &self,
        state: &mut State,
        op: &'static str,
        key: &str,
        value: Option<(Vec<u8>, Option<u64>)>,
    ) -> Result<(), KvstoreError> {
        let previous_revision = state.revision;
        state.revision += 1;
        let slot = value.map(|(value, lease)| Slot {
            value,
            mod_revision: state.revision,
            lease,
        });
        let durable = slot.as_ref().is_some_and(|s| s.lease.is_none());
        let previous = match slot {
            Some(slot) => state.keys.insert(key.to_string(), slot),
            None => state.keys.remove(key),
        };
        if durable || previous.as_ref().is_some_and(|p| p.lease.is_none()) {
            if let Err(source) = self.persist(state) {
                match previous {
                    Some(p) => state.keys.insert(key.to_string(), p),
                    None => state.keys.remove(key),
                };
                state.revision = previous_revision;
                return Err(KvstoreError::Persist {
                    op,
                    key: key.to_string(),
                    source,
                });
            }
        }
        if let Some(lease) = previous.and_then(|p| p.lease) {
            if let Some(l) = state.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
        }
        let event = match state.keys.get(key) {
            Some(slot) => {
                if let Some(l) = slot.lease.and_then(|id| state.leases.get_mut(&id)) {
                    l.keys.insert(key.to_string());
                }
                WatchEvent::Put {
                    key: key.to_string(),
                    value: slot.value.clone(),
                }
            }
            None => WatchEvent::Delete {
                key: key.to_string(),
            },
        };
        state.notify(event);
        Ok(())
    }

    /// Rewrites the file with the non-leased keys.
    fn persist(&self, state: &State) -> Result<(), crate::state::StateError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&StoredFileRef {
            version: FILE_VERSION,
            revision: state.revision,
            keys: DurableKeys(&state.keys),
        })
        .map_err(|e| crate::state::StateError::Io {
            op: "serialize",
            path: file.path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomic(&file.path, &bytes, &file.dir)
    }

    /// Starts the lease thread unless it runs.
    fn start_reaper(&self) {
        let mut reaper = lock(&self.reaper);
        if reaper.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name("kvstore-leases".into())
            .spawn(move || shared.end_leases())
        {
            Ok(handle) => *reaper = Some(handle),
            // Leases still end, at the next call.
            Err(e) => tracing::warn!("cannot start the kvstore lease thread: {e}"),
        }
    }
}

impl Shared {
    /// The lease thread: ends leases at their deadline until the store closes.
    fn end_leases(&self) {
        let mut state = lock(&self.state);
        while !state.closed {
            let now = Instant::now();
            state.expire(now);
            let wait = state
                .leases
                .values()
                .map(|l| l.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(IDLE_WAIT);
            state = self
                .wake
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl State {
    /// Ends the leases whose deadline passed.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_lease(id);
        }
    }

    /// Removes the lease and its keys (which are never persisted).
    fn end_lease(&mut self, id: u64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        for key in lease.keys {
            if self.keys.remove(&key).is_some() {
                self.revision += 1;
                self.notify(WatchEvent::Delete { key });
            }
        }
        true
    }

    /// Sends the event to the watchers of its key; forgets the watchers that were dropped.
    fn notify(&mut self, event: WatchEvent) {
        self.watchers.retain(|(prefix, sender)| {
            if !event.key().starts_with(prefix.as_str()) {
                return !sender.is_closed();
            }
            sender.send(event.clone())
        });
    }

    fn entry(&self, key: &str) -> Option<Entry> {
        self.keys.get(key).map(Slot::entry)
    }

    fn check_lease(&self, op: &'static str, lease: Option<LeaseId>) -> Result<(), KvstoreError> {
        match lease {
            Some(l) if !self.leases.contains_key(&l.0) => {
                Err(KvstoreError::LeaseNotFound { op, lease: l })
            }
            _ => Ok(()),
        }
    }
}

impl Slot {
    fn entry(&self) -> Entry {
        Entry {
            value: self.value.clone(),
            mod_revision: self.mod_revision,
            lease: self.lease.map(LeaseId),
        }
    }
}

fn check_key(op: &'static str, key: &str) -> Result<(), KvstoreError> {
    if key.is_empty() {
        return Err(KvstoreError::InvalidKey {
            op,
            key: String::new(),
            reason: "empty key",
        });
    }
    Ok(())
}

/// Renames a corrupt file to `<name>.corrupt-<unix-seconds>` (plus `-<n>` if that exists).
fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let base = format!("{FILE_NAME}.corrupt-{secs}");
    let mut target = path.with_file_name(&base);
    let mut n = 0;
    while target.exists() {
        n += 1;
        target = path.with_file_name(format!("{base}-{n}"));
    }
    fs::rename(path, &target)?;
    Ok(target)
}

impl Kvstore for Embedded {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn status(&self) -> Result<String, KvstoreError> {
        let state = self.state();
        let leased = state.keys.values().filter(|s| s.lease.is_some()).count();
        let location = match &self.file {
            Some(f) => f.path.display().to_string(),
            None => "in memory".to_string(),
        };
        Ok(format!(
            "embedded: {} keys ({leased} leased), {} leases, revision {}, {location}",
            state.keys.len(),
            state.leases.len(),
            state.revision
        ))
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, KvstoreError> {
        Ok(self.state().entry(key))
    }

    fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Entry>, KvstoreError> {
        const OP: &str = "create";
        check_key(OP, key)?;
        let mut state = self.state();
        state.check_lease(OP, lease)?;
        if let Some(existing) = state.entry(key) {
            return Ok(Some(existing));
        }
        self.apply(
            &mut state,
            OP,
            key,
            Some((value.to_vec(), lease.map(|l| l.0))),
        )?;
        Ok(None)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, KvstoreError> {
        const OP: &str = "compare-and-swap";
        check_key(OP, key)?;
        let mut state = self.state();
        let lease = match state.keys.get(key) {
            Some(slot) if slot.mod_revision == expected => slot.lease,
            None if expected == 0 => None,
            _ => return Ok(false),
        };
        self.apply(&mut state, OP, key, Some((value.to_vec(), lease)))?;
        Ok(true)
    }

    fn delete(&self, key: &str) -> Result<bool, KvstoreError> {
        let mut state = self.state();
        if !state.keys.contains_key(key) {
            return Ok(false);
        }
        self.apply(&mut state, "delete", key, None)?;
        Ok(true)
    }

    fn delete_if(&self, key: &str, expected: u64) -> Result<bool, KvstoreError> {
        let mut state = self.state();
        match state.keys.get(key) {
            Some(slot) if slot.mod_revision == expected => {}
            _ => return Ok(false),
        }
        self.apply(&mut state, "delete-if", key, None)?;
        Ok(true)
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvstoreError> {
        let state = self.state();
        Ok(state
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, slot)| (k.clone(), slot.entry()))
            .collect())
    }

    fn watch_prefix(&self, prefix: &str) -> Result<Watch, KvstoreError> {
        let (sender, watch) = watch_channel();
        self.state().watchers.push((prefix.to_string(), sender));
        Ok(watch)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, KvstoreError> {
        let id = {
            let mut state = self.state();
            state.last_lease += 1;
            let id = state.last_lease;
            state.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                },
            );
            id
        };
        self.start_reaper();
        self.shared.wake.notify_all();
        Ok(LeaseId(id))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        let mut state = self.state();
        match state.leases.get_mut(&lease.0) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(KvstoreError::LeaseNotFound {
                op: "keep-alive",
                lease,
            }),
        }
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        self.state().end_lease(lease.0);
        Ok(())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            // Ends the watches now rather than when the lease thread lets go.
            state.watchers.clear();
        }
        self.shared.wake.notify_all();
        if let Some(handle) = lock(&self.reaper).take() {
            if handle.join().is_err() {
                tracing::warn!("the kvstore lease thread panicked");
            }
        }
    }
}

impl fmt::Debug for Embedded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Embedded")
            .field("path", &self.path())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// The file: `{"version":1,"revision":N,"keys":{"<key>":{"value":…,"mod_revision":M}}}`.
/// A value is a JSON string when it is UTF-8, else an array of bytes.
#[derive(Serialize)]
struct StoredFileRef<'a> {
    version: u32,
    revision: u64,
    keys: DurableKeys<'a>,
}

/// Serializes the non-leased keys.
struct DurableKeys<'a>(&'a BTreeMap<String, Slot>);

#[derive(Serialize)]
struct StoredSlotRef<'a> {
    value: ValueRef<'a>,
    mod_revision: u64,
}

struct ValueRef<'a>(&'a [u8]);

impl Serialize for DurableKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .filter(|(_, s)| s.lease.is_none())
                .map(|(k, s)| {
                    let slot = StoredSlotRef {
                        value: ValueRef(&s.value),
                        mod_revision: s.mod_revision,
                    };
                    (k, slot)
                }),
        )
    }
}

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_seq(self.0),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFile {
    version: u32,
    revision: u64,
    keys: BTreeMap<String, StoredSlot>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSlot {
    value: StoredValue,
    mod_revision: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoredValue {
    Text(String),
    Bytes(Vec<u8>),
}

impl StoredFile {
    /// The state stored in `bytes`, or why it cannot be read.
    fn parse(bytes: &[u8]) -> Result<State, String> {
        let stored: StoredFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if stored.version != FILE_VERSION {
            return Err(format!(
                "unsupported version {} (expected {FILE_VERSION})",
                stored.version
            ));
        }
        Ok(stored.into_state())
    }

    fn into_state(self) -> State {
        let newest = self.keys.values().map(|s| s.mod_revision).max();
        let keys = self
            .keys
            .into_iter()
            .map(|(key, stored)| {
                let value = match stored.value {
                    StoredValue::Text(text) => text.into_bytes(),
                    StoredValue::Bytes(bytes) => bytes,
                };
                let slot = Slot {
                    value,
                    mod_revision: stored.mod_revision,
                    lease: None,
                };
                (key, slot)
            })
            .collect();
        State {
            keys,
            revision: self.revision.max(newest.unwrap_or(0)),
            ..State::default()
        }
    }
}
