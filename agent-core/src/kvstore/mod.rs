//! The cluster key-value store (DESIGN §7): a blocking [`Kvstore`] trait with atomic
//! create-if-absent, compare-and-swap on modification revisions, prefix listing, ordered
//! prefix watches and leases. Backends: [`Embedded`] (one node, persisted in the state dir);
//! etcd and consul implement the same trait and must pass the same `contract` suite.
//!
//! [`connect`] opens the backend named by `--kvstore` with its `--kvstore-opt` options.
//!
//! Keys are strings, prefixes are plain string prefixes (`a/b` covers `a/bc`; use a trailing
//! `/` to mean a directory). Values are bytes. Every change bumps a store-wide revision; an
//! [`Entry`] carries the revision of its last modification.

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::state::StateError;

mod consul;
#[doc(hidden)]
pub mod contract;
mod embedded;
mod etcd;
mod http;
mod options;
mod resync;
#[cfg(test)]
mod tests;

#[doc(hidden)]
pub use consul::fuzz_decode as fuzz_decode_consul;
pub use consul::Consul;
pub use embedded::{Embedded, FILE_NAME};
#[doc(hidden)]
pub use etcd::fuzz_decode as fuzz_decode_etcd;
pub use etcd::{Etcd, EtcdConfig};
pub use http::REQUEST_TIMEOUT;
pub use options::connect;

/// A key-value store shared by the agents of a cluster.
pub trait Kvstore: Send + Sync + fmt::Debug {
    /// The backend's name (`embedded`, `etcd`, `consul`).
    fn backend(&self) -> &'static str;

    /// Human-readable health, e.g. `embedded: 12 keys, /path/kvstore.json`.
    fn status(&self) -> Result<String, KvstoreError>;

    /// The value and modification revision of `key`.
    fn get(&self, key: &str) -> Result<Option<Entry>, KvstoreError>;

    /// Atomically creates key=value unless the key exists. `Ok(None)` = created;
    /// `Ok(Some(existing))` = it existed (and was left alone). With a lease, the key is
    /// deleted when the lease ends.
    fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Entry>, KvstoreError>;

    /// Replaces the value only if the key's current modification revision equals `expected`
    /// (0 = the key must be absent; it is then created without a lease). A swapped key keeps
    /// its lease. Returns whether it swapped.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, KvstoreError>;

    /// Deletes; returns whether the key existed.
    fn delete(&self, key: &str) -> Result<bool, KvstoreError>;

    /// Deletes only if the modification revision equals `expected`; returns whether it
    /// deleted.
    fn delete_if(&self, key: &str, expected: u64) -> Result<bool, KvstoreError>;

    /// Every key starting with `prefix`, sorted by key.
    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvstoreError>;

    /// Events for keys under `prefix` from now on (puts with their value, deletes), in the
    /// order the store applied them. Dropping the [`Watch`] ends it.
    fn watch_prefix(&self, prefix: &str) -> Result<Watch, KvstoreError>;

    /// A lease that ends `ttl` after its grant or last [`Kvstore::keep_alive`].
    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, KvstoreError>;

    /// Restarts the lease's TTL. [`KvstoreError::LeaseNotFound`] once it ended.
    fn keep_alive(&self, lease: LeaseId) -> Result<(), KvstoreError>;

    /// Ends the lease now, deleting every key attached to it. Revoking a lease that already
    /// ended is not an error.
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), KvstoreError>;
}

/// Fuzzing only: what [`fuzz_decode_etcd`] and [`fuzz_decode_consul`] made of a server's
/// answer.
#[doc(hidden)]
#[derive(Debug)]
pub struct FuzzDecoded {
    /// What `list_prefix` returns for the answer.
    pub listing: Result<Vec<(String, Entry)>, KvstoreError>,
    /// What `get` returns for the answer.
    pub get: Result<Option<Entry>, KvstoreError>,
    /// The events a watch forwards for the answer.
    pub events: Vec<WatchEvent>,
    /// etcd: the messages of the answer read as a watch stream, whole and one byte at a
    /// time (empty for consul).
    pub stream_objects: Vec<Vec<u8>>,
    pub stream_objects_bytewise: Vec<Vec<u8>>,
}

/// A stored value and the store revision of its last modification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: u64,
    /// The lease the key is attached to, where the backend reports it (etcd and the
    /// embedded store do; consul's sessions are not mapped back to lease ids).
    pub lease: Option<LeaseId>,
}

/// A lease granted by [`Kvstore::grant_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl WatchEvent {
    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key,
        }
    }
}

/// The receiving end of [`Kvstore::watch_prefix`]. Iterating blocks until the next event
/// and ends when the store goes away.
#[derive(Debug)]
pub struct Watch {
    rx: Receiver<WatchEvent>,
    /// Its [`WatchSender`] holds a weak reference: the backend sees when the watch is dropped.
    _alive: Arc<()>,
}

/// The backend's end of a [`Watch`].
#[derive(Debug, Clone)]
pub struct WatchSender {
    tx: Sender<WatchEvent>,
    alive: Weak<()>,
}

/// A connected watch pair, for backends.
pub fn watch_channel() -> (WatchSender, Watch) {
    let (tx, rx) = mpsc::channel();
    let alive = Arc::new(());
    let sender = WatchSender {
        tx,
        alive: Arc::downgrade(&alive),
    };
    (sender, Watch { rx, _alive: alive })
}

impl Watch {
    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<WatchEvent, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<WatchEvent, TryRecvError> {
        self.rx.try_recv()
    }

    /// The next event, waiting for it; `None` once the store is gone.
    pub fn recv(&self) -> Option<WatchEvent> {
        self.rx.recv().ok()
    }
}

impl Iterator for Watch {
    type Item = WatchEvent;

    fn next(&mut self) -> Option<WatchEvent> {
        self.recv()
    }
}

impl WatchSender {
    /// Whether the [`Watch`] was dropped.
    pub fn is_closed(&self) -> bool {
        self.alive.strong_count() == 0
    }

    /// Queues an event; false when the [`Watch`] was dropped.
    pub fn send(&self, event: WatchEvent) -> bool {
        !self.is_closed() && self.tx.send(event).is_ok()
    }
}

/// Errors of the kvstore. Each names the operation and the key (or file) concerned.
#[derive(Debug, thiserror::Error)]
pub enum KvstoreError {
    /// The backend lost its server (API status 520).
    #[error("kvstore {op} '{key}': the {backend} server is unreachable: {source}")]
    Unreachable {
        backend: &'static str,
        op: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend holds or returned data that cannot be interpreted (API status 521).
    #[error("kvstore {op} '{key}': corrupt data: {reason}")]
    Corrupt {
        op: &'static str,
        key: String,
        reason: String,
    },
    /// The change could not be made durable and was not applied.
    #[error("kvstore {op} '{key}': cannot persist the change: {source}")]
    Persist {
        op: &'static str,
        key: String,
        #[source]
        source: StateError,
    },
    /// The store's file or directory could not be opened.
    #[error("kvstore: cannot {op} {}: {source}", path.display())]
    Open {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The lease expired, was revoked or never existed.
    #[error("kvstore {op}: lease {lease} not found (expired or revoked)")]
    LeaseNotFound { op: &'static str, lease: LeaseId },
    /// The key cannot be stored.
    #[error("kvstore {op}: invalid key '{key}': {reason}")]
    InvalidKey {
        op: &'static str,
        key: String,
        reason: &'static str,
    },
    /// The server answered but refused the request (permission, quota, bad request).
    #[error("kvstore {op} '{key}': the {backend} server refused: {reason}")]
    Rejected {
        backend: &'static str,
        op: &'static str,
        key: String,
        reason: String,
    },
    /// The backend's options or configuration file are wrong (`--kvstore`, `--kvstore-opt`).
    #[error("kvstore configuration: {reason}")]
    Config { reason: String },
}

impl KvstoreError {
    pub(crate) fn config(reason: impl Into<String>) -> KvstoreError {
        KvstoreError::Config {
            reason: reason.into(),
        }
    }
}

/// Refuses keys no backend can store.
pub(crate) fn check_key(op: &'static str, key: &str) -> Result<(), KvstoreError> {
    if key.is_empty() {
        return Err(KvstoreError::InvalidKey {
            op,
            key: String::new(),
            reason: "empty key",
        });
    }
    Ok(())
}

/// The backends' watch threads poll this often whether their [`Watch`] was dropped.
pub(crate) const WATCH_POLL: Duration = Duration::from_secs(1);

/// Sleeps `total` in [`WATCH_POLL`]-sized naps; false as soon as `stop()` says so.
pub(crate) fn sleep_unless(total: Duration, stop: &dyn Fn() -> bool) -> bool {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < total {
        if stop() {
            return false;
        }
        let nap = step.min(total - slept);
        std::thread::sleep(nap);
        slept += nap;
    }
    !stop()
}
