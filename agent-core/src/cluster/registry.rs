//! [`Registry`]: this node's membership in the cluster.
//!
//! Three threads per registry: one renews the lease (every TTL/3) and registers again when
//! the lease was lost; two follow the node and the endpoint prefixes. Each follower opens its
//! watch before listing its prefix, so no change falls in between, and keeps a cache of the
//! other nodes' records by key: a change is reported only when it differs from the cache, so
//! events seen both in the listing and in the watch are reported once. (A watch event older
//! than the listing may still replay an older value once before the newer one; the cache and
//! the last event always end up matching the store.) The events of one key come in store
//! order; node and endpoint events come from separate followers and may interleave
//! differently (an endpoint can be reported just before its node).
//!
//! A restarted agent resumes its previous lease when it is still alive (its id is kept in
//! [`RegistryOptions::lease_file`] and every key reports its lease): its records stay in
//! place, updated by compare-and-swap, so the other nodes see no change at all. The trait
//! has no "put under a lease", and a compare-and-swap keeps the key's old lease, so a record
//! under another lease (one that ended, or a backend such as consul that does not report
//! leases) is replaced by delete-if-unchanged then create; the other nodes then see a delete
//! then an upsert.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{
    ip_key, node_key, parse_endpoint, parse_node, to_json, validate_node_name, ClusterError,
    ClusterEvent, EndpointRecord, NodeRecord, IP_PREFIX, NODES_PREFIX,
};
use crate::kvstore::{Kvstore, KvstoreError, LeaseId, Watch, WatchEvent};

/// How often a key is re-read and retried while others change it.
const MAX_ATTEMPTS: u32 = 20;
/// How long a follower waits for an event before checking whether to stop.
const POLL: Duration = Duration::from_millis(100);
/// How long a follower waits before watching again after its watch ended.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// The lease before the first grant (neither etcd nor the embedded store grants lease 0).
const NO_LEASE: LeaseId = LeaseId(0);

/// The shortest lease TTL accepted.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// How the registry keeps this node's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// The lease's time to live (at least [`MIN_TTL`]): how long this node's records outlive
    /// its agent. The lease is renewed every TTL/3.
    pub ttl: Duration,
    /// Where the current lease id is kept, so that the next run resumes the lease while it
    /// lives (None: every run starts a new lease).
    pub lease_file: Option<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            ttl: Duration::from_secs(15),
            lease_file: None,
        }
    }
}

/// The registry's health, for `cilium status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryStatus {
    pub healthy: bool,
    /// `ok`, or the oldest ongoing failure.
    pub message: String,
    /// Registered nodes, this one included.
    pub nodes: usize,
}

/// This node's membership in the cluster: its records in the kvstore and its view of the
/// other nodes. Dropping it stops its threads but keeps its records until the lease expires
/// (a restarted agent replaces them); [`Registry::leave`] removes them.
pub struct Registry {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

/// Receives the changes of the other nodes' records.
pub type EventSink = Box<dyn Fn(ClusterEvent) + Send + Sync>;

/// What the registry's threads share.
struct Inner {
    kv: Arc<dyn Kvstore>,
    me: NodeRecord,
    ttl: Duration,
    lease_file: Option<PathBuf>,
    on_event: EventSink,
    /// Serializes the calls of `on_event`.
    delivery: Mutex<()>,
    /// This node's lease and endpoints; held while writing them.
    own: Mutex<Own>,
    view: Mutex<View>,
    /// Ongoing failures by the part of the registry that hit them.
    health: Mutex<HashMap<&'static str, Failure>>,
    stop: Stop,
}

struct Own {
    lease: LeaseId,
    /// The lease ended (or registering under a new one failed): register again.
    lost: bool,
    /// Published endpoints: identity, and whether the record was written under `lease`.
    endpoints: BTreeMap<IpAddr, (u32, bool)>,
}

/// The other nodes' records, by key.
#[derive(Default)]
struct View {
    nodes: BTreeMap<String, NodeRecord>,
    endpoints: BTreeMap<String, EndpointRecord>,
}

struct Failure {
    since: Instant,
    summary: &'static str,
    error: String,
}

/// Tells the threads to end.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kv_error(
    op: &'static str,
    object: impl fmt::Display,
) -> impl FnOnce(KvstoreError) -> ClusterError {
    let object = object.to_string();
    move |source| ClusterError::Kvstore {
        op,
        object,
        source: Box::new(source),
    }
}

impl Registry {
    /// Joins the cluster as `me` (module docs of [`crate::cluster`]): refuses when one of its
    /// ranges overlaps another node's, writes its record under a new lease (replacing one
    /// left by its previous run), reports every other node and endpoint to `on_event`, then
    /// starts renewing the lease and following the other nodes' changes. `on_event` is called
    /// one call at a time, never for this node's own records: for the initial snapshot from
    /// `join` itself, then from the registry's threads (so it must not drop the registry).
    pub fn join(
        kv: Arc<dyn Kvstore>,
        me: NodeRecord,
        options: RegistryOptions,
        on_event: EventSink,
    ) -> Result<Registry, ClusterError> {
        validate_node_name(&me.name)?;
        if options.ttl < MIN_TTL {
            return Err(ClusterError::Ttl { ttl: options.ttl });
        }
        me.check().map_err(|reason| ClusterError::InvalidRecord {
            node: me.name.clone(),
            reason,
        })?;
        let inner = Arc::new(Inner {
            kv,
            me,
            ttl: options.ttl,
            lease_file: options.lease_file,
            on_event,
            delivery: Mutex::new(()),
            own: Mutex::new(Own {
                lease: NO_LEASE,
                lost: true,
                endpoints: BTreeMap::new(),
            }),
            view: Mutex::new(View::default()),
            health: Mutex::new(HashMap::new()),
            stop: Stop::default(),
        });
        inner.check_overlap()?;
        let mut registry = Registry {
            inner: Arc::clone(&inner),
            threads: Vec::new(),
        };
        if let Err(e) = registry.start() {
            registry.stop();
            if registry.lease() != NO_LEASE {
                if let Err(revoke) = registry.revoke() {
                    tracing::warn!("node {}: {revoke}", inner.me.name);
                }
            }
            return Err(e);
        }
        tracing::info!(
            "node {} joined the cluster under lease {} ({} other nodes)",
            inner.me.name,
            registry.lease(),
            lock(&inner.view).nodes.len()
        );
        Ok(registry)
    }

    /// Registers, checks the ranges again, takes the initial snapshot and starts the threads.
    fn start(&mut self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        inner.register(&mut lock(&inner.own))?;
        // Checked again with this node's record in place: of two nodes joining at once with
        // overlapping ranges, at least one sees the other.
        inner.check_overlap()?;
        let (nodes, node_events) = inner.subscribe::<NodeRecord>()?;
        let (endpoints, endpoint_events) = inner.subscribe::<EndpointRecord>()?;
        inner.deliver(node_events);
        inner.deliver(endpoint_events);
        let spawn = |name: &'static str, run: Box<dyn FnOnce(Arc<Inner>) + Send>| {
            let inner = Arc::clone(inner);
            thread::Builder::new()
                .name(name.into())
                .spawn(move || run(inner))
                .map_err(|source| ClusterError::Thread { name, source })
        };
        self.threads
            .push(spawn("cluster-lease", Box::new(Inner::keep_alive))?);
        self.threads.push(spawn(
            "cluster-nodes",
            Box::new(move |inner| inner.follow::<NodeRecord>(nodes)),
        )?);
        self.threads.push(spawn(
            "cluster-ips",
            Box::new(move |inner| inner.follow::<EndpointRecord>(endpoints)),
        )?);
        Ok(())
    }

    /// Publishes (or updates) this node's endpoint address `ip` with its identity, under the
    /// node's lease. Refused when another node publishes the address (or its record is
    /// corrupt). If the lease turns out to be lost, the node registers again first; should
    /// that fail, the endpoint is still published when registering succeeds later.
    pub fn publish_endpoint(&self, ip: IpAddr, identity: u32) -> Result<(), ClusterError> {
        let inner = &self.inner;
        let mut own = lock(&inner.own);
        if !own.lost {
            let current = own.endpoints.get(&ip).is_some_and(|(_, current)| *current);
            let record = inner.endpoint_record(ip, identity);
            match write_endpoint(&*inner.kv, own.lease, &record, current) {
                Ok(()) => {
                    own.endpoints.insert(ip, (identity, true));
                    return Ok(());
                }
                Err(e) if !e.is_lease_lost() => return Err(e),
                Err(_) => own.lost = true,
            }
        }
        // The lease is gone: register again, this endpoint included.
        own.endpoints.insert(ip, (identity, false));
        let result = inner.register(&mut own);
        drop(own);
        inner.report("lease", result.as_ref().err());
        result
    }

    /// Withdraws this node's record of endpoint address `ip`. A missing record, or one of
    /// another node, is left alone. After an error the endpoint is no longer re-published;
    /// retry to remove its record.
    pub fn withdraw_endpoint(&self, ip: IpAddr) -> Result<(), ClusterError> {
        let inner = &self.inner;
        let mut own = lock(&inner.own);
        own.endpoints.remove(&ip);
        let key = ip_key(ip);
        for _ in 0..MAX_ATTEMPTS {
            let get = inner.kv.get(&key);
            let Some(entry) = get.map_err(kv_error("withdraw endpoint", ip))? else {
                return Ok(());
            };
            match parse_endpoint(&key, &entry.value) {
                Ok(record) if record.node == inner.me.name => {}
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!("not withdrawing endpoint {ip}: {e}");
                    return Ok(());
                }
            }
            let delete = inner.kv.delete_if(&key, entry.mod_revision);
            if delete.map_err(kv_error("withdraw endpoint", ip))? {
                return Ok(());
            }
        }
        Err(ClusterError::Contended {
            op: "withdraw endpoint",
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Every registered node, this one included, sorted by name (from the followed cache).
    pub fn nodes(&self) -> Vec<NodeRecord> {
        let mut nodes: Vec<NodeRecord> = lock(&self.inner.view).nodes.values().cloned().collect();
        nodes.push(self.inner.me.clone());
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// This node's record.
    pub fn local(&self) -> &NodeRecord {
        &self.inner.me
    }

    /// The lease this node's records live under (a new one after registering again).
    pub fn lease(&self) -> LeaseId {
        lock(&self.inner.own).lease
    }

    /// This node's endpoint addresses the registry publishes, with their identities:
    /// after a resumed lease, those the previous run left too.
    pub fn published_endpoints(&self) -> BTreeMap<IpAddr, u32> {
        let own = lock(&self.inner.own);
        own.endpoints
            .iter()
            .map(|(ip, (identity, _))| (*ip, *identity))
            .collect()
    }

    /// `ok`, or the oldest ongoing failure, e.g. `kvstore unreachable since 12s: …`.
    pub fn status(&self) -> RegistryStatus {
        let nodes = lock(&self.inner.view).nodes.len() + 1;
        let health = lock(&self.inner.health);
        match health.values().min_by_key(|f| f.since) {
            None => RegistryStatus {
                healthy: true,
                message: "ok".into(),
                nodes,
            },
            Some(f) => RegistryStatus {
                healthy: false,
                message: format!(
                    "{} since {}s: {}",
                    f.summary,
                    f.since.elapsed().as_secs(),
                    f.error
                ),
                nodes,
            },
        }
    }

    /// Leaves the cluster: stops the threads and revokes the lease, which deletes this
    /// node's record and its endpoint records.
    pub fn leave(mut self) -> Result<(), ClusterError> {
        self.stop();
        self.revoke()?;
        if let Some(file) = &self.inner.lease_file {
            if let Err(e) = std::fs::remove_file(file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", file.display());
                }
            }
        }
        tracing::info!("node {} left the cluster", self.inner.me.name);
        Ok(())
    }

    fn revoke(&self) -> Result<(), ClusterError> {
        let lease = lock(&self.inner.own).lease;
        let revoke = self.inner.kv.revoke_lease(lease);
        revoke.map_err(kv_error("revoke the lease of node", &self.inner.me.name))
    }

    /// Stops the threads and waits for them.
    fn stop(&mut self) {
        self.inner.stop.set();
        for handle in self.threads.drain(..) {
            // Never join the current thread (a registry dropped from `on_event`).
            if handle.thread().id() == thread::current().id() {
                continue;
            }
            if handle.join().is_err() {
                tracing::warn!(
                    "node {}: a cluster registry thread panicked",
                    self.inner.me.name
                );
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kv", &self.inner.kv)
            .field("me", &self.inner.me)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

/// A kind of record the registry follows.
trait Record: Clone + PartialEq + Sized {
    const PREFIX: &'static str;
    /// The part of the registry following it, for [`RegistryStatus`].
    const FOLLOWER: &'static str;
    fn parse(key: &str, value: &[u8]) -> Result<Self, ClusterError>;
    /// The name of the node it belongs to.
    fn owner(&self) -> &str;
    fn cache(view: &mut View) -> &mut BTreeMap<String, Self>;
    fn upserted(self) -> ClusterEvent;
    fn deleted(self) -> ClusterEvent;
}

impl Record for NodeRecord {
    const PREFIX: &'static str = NODES_PREFIX;
    const FOLLOWER: &'static str = "node watch";

    fn parse(key: &str, value: &[u8]) -> Result<Self, ClusterError> {
        parse_node(key, value)
    }

    fn owner(&self) -> &str {
        &self.name
    }

    fn cache(view: &mut View) -> &mut BTreeMap<String, Self> {
        &mut view.nodes
    }

    fn upserted(self) -> ClusterEvent {
        ClusterEvent::NodeUpsert(self)
    }

    fn deleted(self) -> ClusterEvent {
        ClusterEvent::NodeDelete(self.name)
    }
}

impl Record for EndpointRecord {
    const PREFIX: &'static str = IP_PREFIX;
    const FOLLOWER: &'static str = "endpoint watch";

    fn parse(key: &str, value: &[u8]) -> Result<Self, ClusterError> {
        parse_endpoint(key, value)
    }

    fn owner(&self) -> &str {
        &self.node
    }

    fn cache(view: &mut View) -> &mut BTreeMap<String, Self> {
        &mut view.endpoints
    }

    fn upserted(self) -> ClusterEvent {
        ClusterEvent::EndpointUpsert(self)
    }

    fn deleted(self) -> ClusterEvent {
        ClusterEvent::EndpointDelete(self.ip)
    }
}

impl Inner {
    fn endpoint_record(&self, ip: IpAddr, identity: u32) -> EndpointRecord {
        EndpointRecord {
            ip,
            identity,
            node: self.me.name.clone(),
            tunnel_endpoint: self.me.tunnel_endpoint,
        }
    }

    /// Refuses when a range of this node overlaps one of another registered node.
    fn check_overlap(&self) -> Result<(), ClusterError> {
        let listing = self.kv.list_prefix(NODES_PREFIX);
        for (key, entry) in listing.map_err(kv_error("check the ranges of node", &self.me.name))? {
            let other = match parse_node(&key, &entry.value) {
                Ok(other) if other.name != self.me.name => other,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("skipping {e}");
                    continue;
                }
            };
            if let Some((family, range, other_range)) = self.me.overlap(&other) {
                return Err(ClusterError::RangeOverlap {
                    node: self.me.name.clone(),
                    family,
                    range,
                    other: other.name,
                    other_range,
                });
            }
        }
        Ok(())
    }

    /// Writes this node's record and every published endpoint under the lease of the
    /// previous run when it still lives, or under a new one.
    fn register(&self, own: &mut Own) -> Result<(), ClusterError> {
        let name = &self.me.name;
        let resumed = self.take_lease(own)?;
        if !resumed {
            for (_, current) in own.endpoints.values_mut() {
                *current = false;
            }
        }
        write_node(&*self.kv, own.lease, &self.me)?;
        if resumed {
            self.adopt_endpoints(own)?;
        }
        let mut taken = Vec::new();
        for (ip, (identity, current)) in own.endpoints.iter_mut() {
            let record = self.endpoint_record(*ip, *identity);
            match write_endpoint(&*self.kv, own.lease, &record, false) {
                Ok(()) => *current = true,
                Err(e @ (ClusterError::EndpointTaken { .. } | ClusterError::Corrupt { .. })) => {
                    tracing::warn!("node {name}: no longer publishing endpoint {ip}: {e}");
                    taken.push(*ip);
                }
                Err(e) => return Err(e),
            }
        }
        for ip in taken {
            own.endpoints.remove(&ip);
        }
        own.lost = false;
        tracing::debug!(
            "node {name} registered under lease {} with {} endpoints",
            own.lease,
            own.endpoints.len()
        );
        Ok(())
    }

    /// Resumes the lease named by the lease file when it still lives (true), or grants a new
    /// one and names it there.
    fn take_lease(&self, own: &mut Own) -> Result<bool, ClusterError> {
        let name = &self.me.name;
        if let Some(saved) = self.lease_file.as_deref().and_then(read_lease) {
            match self.kv.keep_alive(saved) {
                Ok(()) => {
                    own.lease = saved;
                    tracing::info!("node {name} resumes lease {saved}");
                    return Ok(true);
                }
                Err(KvstoreError::LeaseNotFound { .. }) => {}
                Err(e) => return Err(kv_error("resume the lease of node", name)(e)),
            }
        }
        let grant = self.kv.grant_lease(self.ttl);
        own.lease = grant.map_err(kv_error("grant a lease to node", name))?;
        if let Some(file) = &self.lease_file {
            if let Err(e) = write_lease(file, own.lease) {
                tracing::warn!(
                    "node {name}: cannot keep the lease id in {}: {e}",
                    file.display()
                );
            }
        }
        Ok(false)
    }

    /// Takes over the endpoint records this node left under the resumed lease, as
    /// published (the agent withdraws those it no longer has).
    fn adopt_endpoints(&self, own: &mut Own) -> Result<(), ClusterError> {
        let listing = self.kv.list_prefix(IP_PREFIX);
        let listing = listing.map_err(kv_error("list the endpoints of node", &self.me.name))?;
        for (key, entry) in listing {
            if entry.lease != Some(own.lease) {
                continue;
            }
            match parse_endpoint(&key, &entry.value) {
                Ok(record) if record.node == self.me.name => {
                    own.endpoints
                        .entry(record.ip)
                        .or_insert((record.identity, true));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("node {}: {e}", self.me.name),
            }
        }
        Ok(())
    }

    /// The lease thread: renews the lease every TTL/3 until stopped.
    fn keep_alive(self: Arc<Self>) {
        while !self.stop.wait(self.ttl / 3) {
            self.report("lease", self.renew().as_ref().err());
        }
    }

    /// Renews the lease, or registers again when it is gone.
    fn renew(&self) -> Result<(), ClusterError> {
        let mut own = lock(&self.own);
        if !own.lost {
            match self.kv.keep_alive(own.lease) {
                Ok(()) => return Ok(()),
                Err(KvstoreError::LeaseNotFound { .. }) => {
                    tracing::warn!(
                        "node {}: lease {} ended (expired or revoked): registering again",
                        self.me.name,
                        own.lease
                    );
                    own.lost = true;
                }
                Err(e) => return Err(kv_error("renew the lease of node", &self.me.name)(e)),
            }
        }
        self.register(&mut own)?;
        tracing::info!(
            "node {} registered again under lease {}",
            self.me.name,
            own.lease
        );
        Ok(())
    }

    /// Watches `R`'s prefix, then lists it: the watch and the events that bring the cache
    /// up to date with the listing.
    fn subscribe<R: Record>(&self) -> Result<(Watch, Vec<ClusterEvent>), ClusterError> {
        let op = "follow the records under";
        let watch = self
            .kv
            .watch_prefix(R::PREFIX)
            .map_err(kv_error(op, R::PREFIX))?;
        let listing = self
            .kv
            .list_prefix(R::PREFIX)
            .map_err(kv_error(op, R::PREFIX))?;
        let mut view = lock(&self.view);
        let mut events = Vec::new();
        let listed: BTreeSet<&str> = listing.iter().map(|(key, _)| key.as_str()).collect();
        let stale: Vec<String> = R::cache(&mut view)
            .keys()
            .filter(|key| !listed.contains(key.as_str()))
            .cloned()
            .collect();
        for (key, entry) in &listing {
            events.extend(self.apply::<R>(&mut view, key, Some(&entry.value)));
        }
        for key in stale {
            events.extend(self.apply::<R>(&mut view, &key, None));
        }
        Ok((watch, events))
    }

    /// A follower thread: applies `R`'s changes until stopped; watches again when the
    /// store ends the watch.
    fn follow<R: Record>(self: Arc<Self>, mut watch: Watch) {
        while !self.stop.is_set() {
            match watch.recv_timeout(POLL) {
                Ok(event) => {
                    let (key, value) = match &event {
                        WatchEvent::Put { key, value } => (key, Some(value.as_slice())),
                        WatchEvent::Delete { key } => (key, None),
                    };
                    let change = self.apply::<R>(&mut lock(&self.view), key, value);
                    self.deliver(change);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => match self.subscribe::<R>() {
                    Ok((renewed, events)) => {
                        watch = renewed;
                        self.deliver(events);
                        self.report(R::FOLLOWER, None);
                    }
                    Err(e) => {
                        self.report(R::FOLLOWER, Some(&e));
                        self.stop.wait(REWATCH_DELAY);
                    }
                },
            }
        }
    }

    /// Applies the current value of `key` (`None`: deleted) to the cache; the event to
    /// report, if the other nodes' records changed.
    fn apply<R: Record>(
        &self,
        view: &mut View,
        key: &str,
        value: Option<&[u8]>,
    ) -> Option<ClusterEvent> {
        let record = match value.map(|v| R::parse(key, v)) {
            Some(Ok(record)) => Some(record),
            Some(Err(e)) => {
                tracing::warn!("node {}: skipping {e}", self.me.name);
                return None;
            }
            None => None,
        };
        let cache = R::cache(view);
        match record {
            Some(record) if record.owner() != self.me.name => {
                if cache.get(key) == Some(&record) {
                    return None;
                }
                cache.insert(key.to_string(), record.clone());
                Some(record.upserted())
            }
            // Deleted, or now a record of this node.
            _ => cache.remove(key).map(R::deleted),
        }
    }

    fn deliver(&self, events: impl IntoIterator<Item = ClusterEvent>) {
        let _one_at_a_time = lock(&self.delivery);
        for event in events {
            (self.on_event)(event);
        }
    }

    /// Records the outcome (`None`: success) of a part of the registry for [`Registry::status`].
    fn report(&self, part: &'static str, failure: Option<&ClusterError>) {
        let mut health = lock(&self.health);
        match failure {
            None => {
                if health.remove(part).is_some() {
                    tracing::info!("node {}: cluster registry {part} recovered", self.me.name);
                }
            }
            Some(error) => {
                if health.contains_key(part) {
                    tracing::debug!("node {}: cluster registry {part}: {error}", self.me.name);
                } else {
                    tracing::warn!("node {}: cluster registry {part}: {error}", self.me.name);
                }
                let summary = match error {
                    ClusterError::Kvstore { source, .. }
                        if matches!(**source, KvstoreError::Unreachable { .. }) =>
                    {
                        "kvstore unreachable"
                    }
                    _ => "cluster registry failing",
                };
                let failure = health.entry(part).or_insert_with(|| Failure {
                    since: Instant::now(),
                    summary,
                    error: String::new(),
                });
                failure.summary = summary;
                failure.error = error.to_string();
            }
        }
    }
}

/// Writes `me` under `lease`, replacing a record of the same name (left by a previous
/// lease).
fn write_node(kv: &dyn Kvstore, lease: LeaseId, me: &NodeRecord) -> Result<(), ClusterError> {
    let key = node_key(&me.name);
    let value = to_json(me);
    let op = "write the record of node";
    for _ in 0..MAX_ATTEMPTS {
        let create = kv.create_if_absent(&key, &value, Some(lease));
        match create.map_err(kv_error(op, &me.name))? {
            None => return Ok(()),
            // Left by this lease (a resumed one): updated in place.
            Some(old) if old.lease == Some(lease) => {
                if old.value == value
                    || kv
                        .compare_and_swap(&key, old.mod_revision, &value)
                        .map_err(kv_error(op, &me.name))?
                {
                    return Ok(());
                }
            }
            Some(old) => {
                kv.delete_if(&key, old.mod_revision)
                    .map_err(kv_error(op, &me.name))?;
            }
        }
    }
    Err(ClusterError::Contended {
        op,
        key,
        attempts: MAX_ATTEMPTS,
    })
}

/// Writes `record` (of this node) under `lease`. A record of this node under `lease` (as
/// the key reports, or `current`: this node wrote it under `lease`) is updated in place;
/// otherwise it is replaced.
fn write_endpoint(
    kv: &dyn Kvstore,
    lease: LeaseId,
    record: &EndpointRecord,
    current: bool,
) -> Result<(), ClusterError> {
    let key = ip_key(record.ip);
    let value = to_json(record);
    let op = "publish endpoint";
    let error = || kv_error(op, record.ip);
    let mut existing = kv.get(&key).map_err(error())?;
    for _ in 0..MAX_ATTEMPTS {
        let Some(entry) = existing else {
            match kv
                .create_if_absent(&key, &value, Some(lease))
                .map_err(error())?
            {
                None => return Ok(()),
                Some(entry) => {
                    existing = Some(entry);
                    continue;
                }
            }
        };
        let holder = parse_endpoint(&key, &entry.value)?;
        if holder.node != record.node {
            return Err(ClusterError::EndpointTaken {
                ip: record.ip,
                node: holder.node,
            });
        }
        if current || entry.lease == Some(lease) {
            if entry.value == value
                || kv
                    .compare_and_swap(&key, entry.mod_revision, &value)
                    .map_err(error())?
            {
                return Ok(());
            }
        } else {
            kv.delete_if(&key, entry.mod_revision).map_err(error())?;
        }
        existing = kv.get(&key).map_err(error())?;
    }
    Err(ClusterError::Contended {
        op,
        key,
        attempts: MAX_ATTEMPTS,
    })
}

impl Stop {
    fn set(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }

    fn is_set(&self) -> bool {
        *lock(&self.stopped)
    }

    /// Waits up to `timeout`; true once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let stopped = lock(&self.stopped);
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, timeout, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *stopped
    }
}

/// The lease id kept in `file`, if it holds one.
fn read_lease(file: &Path) -> Option<LeaseId> {
    let text = std::fs::read_to_string(file).ok()?;
    match text.trim().parse::<u64>() {
        Ok(0) | Err(_) => {
            tracing::warn!("ignoring {}: not a lease id", file.display());
            None
        }
        Ok(id) => Some(LeaseId(id)),
    }
}

/// Keeps `lease` in `file` (written aside, then renamed over it).
fn write_lease(file: &Path, lease: LeaseId) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{lease}\n"))?;
    std::fs::rename(&tmp, file)
}
