//! What other nodes and the kvstore server wrote, as this node reads it: node and endpoint
//! records (agent-core/src/cluster), identity records (agent-core/src/identity), the answers
//! of etcd's JSON gateway and of consul (agent-core/src/kvstore/etcd.rs, consul.rs).
//!
//! Input: a selector byte (modulo 6), then
//!
//! - 0: `<name>\n<value>`: the node record at `cilium/state/nodes/v1/<name>`: `parse_node`,
//!   `NodeRecord::check`, the overlap with the local node (10.1.0.0/16, f00d::1:0:0/96), the
//!   JSON the registry writes reads back the same;
//! - 1: `<ip>\n<value>`: the endpoint record at `cilium/state/ip/v1/<ip>`: `parse_endpoint`;
//! - 2: `<key>\n<value>`: the value at `cilium/state/identities/v1/<key>`: the key parsers,
//!   then the allocator over a store holding it (list, acquire and restore of its labels);
//! - 3: a status byte, then an etcd gateway answer: `kvstore::fuzz_decode_etcd` (range, txn,
//!   delete-range, lease grant, keep-alive, revoke, watch stream); the listing becomes the
//!   store's contents and the watch events live changes, run through the store stage below;
//! - 4: a status byte (bit 7: the answer lists the store, else it is a watch's blocking-query
//!   answer), an optional `#<X-Consul-Index>\n`, a consul answer: `kvstore::fuzz_decode_consul`
//!   (listing, get, txn, cas, session create/renew), then the store stage likewise;
//! - 5: the store stage: lines `<kind><key>[\t<value>]`. Kinds `n`, `e`, `i` store the value
//!   under the node, endpoint or identity prefix; `l` stores it at the labels key of the
//!   comma-separated labels `<key>`; `N`, `E`, `I` are live changes under those prefixes (a
//!   put, or a delete without a value); `a` acquires the labels `<key>`; `r` restores
//!   identity `<key>` with the JSON labels `<value>`; `p` publishes endpoint `<key>`.
//!
//! The store stage runs the real consumers over an `Embedded::in_memory()` store: the
//! identity allocator (listing, watch, acquire, restore, release), then `Registry::join` of
//! the local node with an event sink, the live changes fed to the registry's followers
//! through their watches, `publish_endpoint`/`withdraw_endpoint`. It checks that join fails
//! exactly when a stored record overlaps the local node, that the initial events are exactly
//! the other nodes' records that parse, and that every later event names a record that
//! parsed.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agent_core::cluster::{
    self, ClusterError, ClusterEvent, EndpointRecord, NodeRecord, Registry, RegistryOptions,
    IP_PREFIX, NODES_PREFIX,
};
use agent_core::identity::{keys, Identity, IdentityAllocator, IdentityError};
use agent_core::identity::{MIN_CLUSTER, MIN_LOCAL};
use agent_core::kvstore::{
    self, watch_channel, Embedded, Entry, FuzzDecoded, Kvstore, KvstoreError, LeaseId, Watch,
    WatchEvent, WatchSender,
};
use agent_core::labels::{Label, LabelSet};
use libfuzzer_sys::fuzz_target;

/// The node this agent runs as.
const LOCAL: &str = "local";
/// The node whose records the harness writes last, to know when the followers are done.
const SENTINEL: &str = "fuzz-sentinel";
const SENTINEL_IP: &str = "10.255.255.254";
/// How long the registry's followers may take for the live changes (the machine may be
/// busy).
const WAIT: Duration = Duration::from_secs(30);
/// HTTP statuses of the server answers.
const STATUSES: [u16; 8] = [200, 200, 200, 200, 404, 409, 400, 500];

/// The local node: 10.1.0.0/16 and f00d::1:0:0/96.
fn local() -> NodeRecord {
    NodeRecord {
        name: LOCAL.into(),
        ipv4: Some([192, 168, 0, 1].into()),
        ipv6: None,
        ipv4_range: Some("10.1.0.0/16".parse().expect("prefix")),
        ipv6_range: Some("f00d::1:0:0/96".parse().expect("prefix")),
        tunnel_endpoint: Some([192, 168, 0, 1].into()),
    }
}

fn sentinel_node() -> NodeRecord {
    NodeRecord {
        name: SENTINEL.into(),
        ipv4: None,
        ipv6: None,
        ipv4_range: None,
        ipv6_range: None,
        tunnel_endpoint: None,
    }
}

fn sentinel_endpoint() -> EndpointRecord {
    EndpointRecord {
        ip: SENTINEL_IP.parse().expect("address"),
        identity: 300,
        node: SENTINEL.into(),
        tunnel_endpoint: None,
    }
}

/// The node record stored at `key`, if it parses; checks what holds for one that does.
fn node_record(key: &str, value: &[u8]) -> Option<NodeRecord> {
    let record = match cluster::parse_node(key, value) {
        Ok(record) => record,
        Err(ClusterError::Corrupt { key: named, .. }) => {
            assert_eq!(named, key, "the error names the key");
            return None;
        }
        Err(e) => panic!("parse_node: {e:?}"),
    };
    assert_eq!(record.check(), Ok(()), "{record:?}");
    assert_eq!(cluster::node_key(&record.name), key);
    // What a node writes of its record reads back the same.
    let json = serde_json::to_vec(&record).expect("a node record serializes");
    assert_eq!(cluster::parse_node(key, &json).ok().as_ref(), Some(&record));
    let me = local();
    let overlap = me.overlap(&record);
    assert_eq!(
        overlap.is_some(),
        record.overlap(&me).is_some(),
        "overlap is symmetric"
    );
    if let Some((_, mine, theirs)) = overlap {
        assert!(mine.overlaps(&theirs) && theirs.overlaps(&mine));
    }
    Some(record)
}

/// The endpoint record stored at `key`, if it parses; checks what holds for one that does.
fn endpoint_record(key: &str, value: &[u8]) -> Option<EndpointRecord> {
    let record = match cluster::parse_endpoint(key, value) {
        Ok(record) => record,
        Err(ClusterError::Corrupt { key: named, .. }) => {
            assert_eq!(named, key, "the error names the key");
            return None;
        }
        Err(e) => panic!("parse_endpoint: {e:?}"),
    };
    assert_eq!(cluster::ip_key(record.ip), key);
    assert!(
        cluster::validate_node_name(&record.node).is_ok(),
        "{record:?}"
    );
    let json = serde_json::to_vec(&record).expect("an endpoint record serializes");
    assert_eq!(
        cluster::parse_endpoint(key, &json).ok().as_ref(),
        Some(&record)
    );
    Some(record)
}

/// `a,b,c` as labels.
fn labels(text: &str) -> Option<LabelSet> {
    if text.is_empty() {
        return Some(LabelSet::default());
    }
    let labels = text.split(',').map(str::parse::<Label>);
    labels
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .map(LabelSet::new)
}

/// The embedded store, except that the watches of the registry's prefixes are fed by the
/// harness (the changes other nodes make live) and can be ended at once, so that the
/// registry's followers stop without waiting out their poll.
#[derive(Debug)]
struct Tap {
    store: Embedded,
    feeds: Mutex<Vec<(String, WatchSender)>>,
    closed: AtomicBool,
}

impl Tap {
    fn new() -> Tap {
        Tap {
            store: Embedded::in_memory(),
            feeds: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether the watches of `prefix` are fed by the harness: the registry's.
    fn tapped(prefix: &str) -> bool {
        prefix == NODES_PREFIX || prefix == IP_PREFIX
    }

    /// Whether a change of `key` goes to the registry's watches.
    fn tapped_key(key: &str) -> bool {
        key.starts_with(NODES_PREFIX) || key.starts_with(IP_PREFIX)
    }

    /// Sends a change to the watches of its prefix.
    fn feed(&self, event: &WatchEvent) {
        let feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        for (prefix, sender) in feeds.iter() {
            if event.key().starts_with(prefix.as_str()) {
                sender.send(event.clone());
            }
        }
    }

    /// Ends the fed watches; no new ones are opened.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.feeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Kvstore for Tap {
    fn backend(&self) -> &'static str {
        "fuzz"
    }
    fn status(&self) -> Result<String, KvstoreError> {
        self.store.status()
    }
    fn get(&self, key: &str) -> Result<Option<Entry>, KvstoreError> {
        self.store.get(key)
    }
    fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Entry>, KvstoreError> {
        self.store.create_if_absent(key, value, lease)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, KvstoreError> {
        self.store.compare_and_swap(key, expected, value)
    }
    fn delete(&self, key: &str) -> Result<bool, KvstoreError> {
        self.store.delete(key)
    }
    fn delete_if(&self, key: &str, expected: u64) -> Result<bool, KvstoreError> {
        self.store.delete_if(key, expected)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvstoreError> {
        self.store.list_prefix(prefix)
    }
    fn watch_prefix(&self, prefix: &str) -> Result<Watch, KvstoreError> {
        if !Tap::tapped(prefix) {
            return self.store.watch_prefix(prefix);
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(KvstoreError::Unreachable {
                backend: "fuzz",
                op: "watch",
                key: prefix.to_string(),
                source: Box::new(std::io::Error::other("the harness ended the watches")),
            });
        }
        let (sender, watch) = watch_channel();
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        feeds.push((prefix.to_string(), sender));
        Ok(watch)
    }
    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, KvstoreError> {
        self.store.grant_lease(ttl)
    }
    fn keep_alive(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        self.store.keep_alive(lease)
    }
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        self.store.revoke_lease(lease)
    }
}

/// Sets `key` to `value` (as another node would).
fn put(kv: &dyn Kvstore, key: &str, value: &[u8]) {
    if key.is_empty() {
        return;
    }
    match kv.get(key).expect("get") {
        None => {
            kv.create_if_absent(key, value, None).expect("create");
        }
        Some(entry) => {
            let swapped = kv.compare_and_swap(key, entry.mod_revision, value);
            assert!(swapped.expect("swap"), "nothing else writes");
        }
    }
}

/// One step of the store stage.
#[derive(Debug)]
enum Op {
    /// A change another node makes: fed to the registry's followers (node and endpoint
    /// keys) or written to the store (identity keys, which the allocator watches).
    Change(WatchEvent),
    Acquire(LabelSet),
    Restore(u32, LabelSet),
    Publish(IpAddr),
}

/// Every listed identity that this node does not hold must come from an `id/` key value
/// (stored or written since, by other nodes or this one) that parses to it, with a cluster
/// id: 256 to 1<<24 (this node allocates up to 65535 only, other nodes' ids are taken as
/// far as the 24-bit identity space goes).
fn check_identities(
    alloc: &IdentityAllocator,
    kv: &dyn Kvstore,
    history: &[(String, Vec<u8>)],
    ours: &[LabelSet],
) {
    let current = kv.list_prefix(keys::PREFIX).expect("list");
    let current = current.into_iter().map(|(key, entry)| (key, entry.value));
    let written: Vec<(String, Vec<u8>)> = history.iter().cloned().chain(current).collect();
    for identity in alloc.list() {
        let Identity { id, labels } = &identity;
        if Identity::reserved(*id).is_some() || alloc.references(*id) > 0 {
            continue;
        }
        assert!(
            (MIN_CLUSTER..MIN_LOCAL).contains(id),
            "identity {id} listed from the store"
        );
        let read = |(key, value): &(String, Vec<u8>)| {
            keys::parse_id_key(key) == Some(*id)
                && serde_json::from_slice::<LabelSet>(value).ok().as_ref() == Some(labels)
        };
        assert!(
            ours.contains(labels) || written.iter().any(read),
            "identity {id} [{labels}] was never written"
        );
    }
}

fn acquire(alloc: &IdentityAllocator, labels: &LabelSet) -> Option<u32> {
    match alloc.acquire(labels) {
        Ok((identity, _)) => {
            assert_eq!(&identity.labels, labels);
            let id = identity.id;
            assert!(
                Identity::reserved(id).is_some() || (MIN_CLUSTER..MIN_LOCAL).contains(&id),
                "acquired {id}"
            );
            assert!(alloc.references(id) >= 1);
            assert_eq!(alloc.find(labels).map(|i| i.id), Some(id));
            assert_eq!(alloc.get(id).map(|i| i.labels).as_ref(), Some(labels));
            Some(id)
        }
        Err(IdentityError::Corrupt { .. }) => None,
        Err(e) => panic!("acquire [{labels}]: {e}"),
    }
}

/// Publishes (then withdraws) this node's endpoint `ip` over whatever record the store
/// holds for it.
fn publish(registry: &Registry, kv: &dyn Kvstore, ip: IpAddr) {
    let key = cluster::ip_key(ip);
    let before = kv.get(&key).expect("get").map(|e| e.value);
    // Ok, or the node holding the address (None: its record is corrupt).
    let expected: Result<(), Option<String>> = match &before {
        None => Ok(()),
        Some(value) => match endpoint_record(&key, value) {
            None => Err(None),
            Some(holder) if holder.node != LOCAL => Err(Some(holder.node)),
            Some(_) => Ok(()),
        },
    };
    match (registry.publish_endpoint(ip, 300), &expected) {
        (Ok(()), Ok(())) => {
            let stored = kv.get(&key).expect("get").expect("published");
            let record = endpoint_record(&key, &stored.value).expect("our record parses");
            assert_eq!((record.node.as_str(), record.identity), (LOCAL, 300));
        }
        (Err(ClusterError::Corrupt { .. }), Err(None)) => {}
        (Err(ClusterError::EndpointTaken { node, .. }), Err(Some(holder))) => {
            assert_eq!(&node, holder);
        }
        (result, _) => panic!("publish {ip} over {before:?}: {result:?}, expected {expected:?}"),
    }
    registry.withdraw_endpoint(ip).expect("withdraw");
    let after = kv.get(&key).expect("get").map(|e| e.value);
    match expected {
        Ok(()) => assert_eq!(after, None, "withdrawn"),
        Err(_) => assert_eq!(after, before, "another node's record is left alone"),
    }
}

/// Events until both `want` were seen (in any order).
fn until(rx: &Receiver<ClusterEvent>, want: &[ClusterEvent]) -> Vec<ClusterEvent> {
    let deadline = Instant::now() + WAIT;
    let mut missing = want.to_vec();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) => {
                missing.retain(|m| *m != event);
                seen.push(event);
            }
            Err(_) => panic!("the followers did not apply the changes: {missing:?}; saw {seen:?}"),
        }
    }
    seen
}

/// The store stage (module docs).
fn run_store(stored: &[(String, Vec<u8>)], ops: &[Op], join: bool) {
    let tap = Arc::new(Tap::new());
    let kv: Arc<dyn Kvstore> = tap.clone();
    for (key, value) in stored {
        put(&*kv, key, value);
    }

    // The identities, as the allocator follows them.
    let mut history: Vec<(String, Vec<u8>)> = stored
        .iter()
        .filter(|(key, _)| key.starts_with(keys::PREFIX))
        .cloned()
        .collect();
    let mut ours = Vec::new();
    let alloc = IdentityAllocator::new(Arc::clone(&kv), LOCAL).expect("allocator");
    check_identities(&alloc, &*kv, &history, &ours);
    let mut held = Vec::new();
    let mut in_use = BTreeMap::new();
    for op in ops {
        match op {
            Op::Change(WatchEvent::Put { key, value }) if key.starts_with(keys::PREFIX) => {
                put(&*kv, key, value);
                history.push((key.clone(), value.clone()));
            }
            Op::Change(WatchEvent::Delete { key }) if key.starts_with(keys::PREFIX) => {
                kv.delete(key).expect("delete");
            }
            Op::Acquire(labels) => {
                ours.push(labels.clone());
                held.extend(acquire(&alloc, labels));
            }
            Op::Restore(id, labels) => {
                ours.push(labels.clone());
                in_use.insert(*id, (labels.clone(), 1));
            }
            _ => {}
        }
    }
    check_identities(&alloc, &*kv, &history, &ours);
    if !in_use.is_empty() {
        match alloc.restore(&in_use) {
            Ok(_warnings) => {}
            Err(IdentityError::Corrupt { .. }) => {}
            Err(e) => panic!("restore {in_use:?}: {e}"),
        }
        for (id, (labels, _)) in &in_use {
            if (MIN_CLUSTER..MIN_LOCAL).contains(id) && alloc.references(*id) > 0 {
                assert_eq!(alloc.get(*id).map(|i| i.labels).as_ref(), Some(labels));
            }
        }
        check_identities(&alloc, &*kv, &history, &ours);
    }
    for id in held {
        match alloc.release(id) {
            Ok(_) | Err(IdentityError::Corrupt { .. } | IdentityError::UnknownId(_)) => {}
            Err(e) => panic!("release {id}: {e}"),
        }
    }
    check_identities(&alloc, &*kv, &history, &ours);
    if !join {
        return;
    }

    // The registry: join over the stored records.
    let me = local();
    let nodes = kv.list_prefix(NODES_PREFIX).expect("list");
    let overlapping = nodes
        .iter()
        .filter_map(|(key, entry)| node_record(key, &entry.value))
        .find(|other| other.name != LOCAL && me.overlap(other).is_some());
    let (tx, rx) = mpsc::channel();
    let sink = Box::new(move |event| {
        let _ = tx.send(event);
    });
    let joined = Registry::join(Arc::clone(&kv), me, RegistryOptions::default(), sink);
    let registry = match (joined, overlapping) {
        (Ok(registry), None) => registry,
        (Err(ClusterError::RangeOverlap { other, .. }), Some(overlapping)) => {
            assert_eq!(other, overlapping.name);
            return;
        }
        (joined, overlapping) => panic!("join: {joined:?}; overlapping record: {overlapping:?}"),
    };

    // Its first events: exactly the other nodes' records that parse.
    let snapshot: Vec<ClusterEvent> = rx.try_iter().collect();
    let mut node_puts = Vec::new();
    for (key, entry) in kv.list_prefix(NODES_PREFIX).expect("list") {
        node_puts.extend(node_record(&key, &entry.value).filter(|r| r.name != LOCAL));
    }
    let mut endpoint_puts = Vec::new();
    for (key, entry) in kv.list_prefix(IP_PREFIX).expect("list") {
        endpoint_puts.extend(endpoint_record(&key, &entry.value).filter(|r| r.node != LOCAL));
    }
    let expected: Vec<ClusterEvent> = node_puts
        .iter()
        .cloned()
        .map(ClusterEvent::NodeUpsert)
        .chain(
            endpoint_puts
                .iter()
                .cloned()
                .map(ClusterEvent::EndpointUpsert),
        )
        .collect();
    assert_eq!(snapshot, expected, "the initial events");

    // Live changes, then the sentinel's records: the last events of each follower. The
    // sentinel's keys are the harness's.
    let sentinel_keys = [
        cluster::node_key(SENTINEL),
        cluster::ip_key(sentinel_endpoint().ip),
    ];
    for op in ops {
        match op {
            Op::Change(event) if Tap::tapped_key(event.key()) => {
                if sentinel_keys.iter().any(|k| k == event.key()) {
                    continue;
                }
                if let WatchEvent::Put { key, value } = event {
                    if key.starts_with(NODES_PREFIX) {
                        node_puts.extend(node_record(key, value));
                    } else {
                        endpoint_puts.extend(endpoint_record(key, value));
                    }
                }
                tap.feed(event);
            }
            Op::Publish(ip) => publish(&registry, &*kv, *ip),
            _ => {}
        }
    }
    let (node, endpoint) = (sentinel_node(), sentinel_endpoint());
    for (key, json) in [
        (&sentinel_keys[0], serde_json::to_vec(&node)),
        (&sentinel_keys[1], serde_json::to_vec(&endpoint)),
    ] {
        let value = json.expect("a record serializes");
        tap.feed(&WatchEvent::Delete { key: key.clone() });
        tap.feed(&WatchEvent::Put {
            key: key.clone(),
            value,
        });
    }
    node_puts.push(node.clone());
    endpoint_puts.push(endpoint.clone());
    let live = until(
        &rx,
        &[
            ClusterEvent::NodeUpsert(node),
            ClusterEvent::EndpointUpsert(endpoint),
        ],
    );

    // Every event names a record that parsed; a delete, one reported before.
    let mut nodes_seen = BTreeSet::new();
    let mut ips_seen = BTreeSet::new();
    for event in snapshot.iter().chain(&live) {
        match event {
            ClusterEvent::NodeUpsert(record) => {
                assert!(
                    record.name != LOCAL && node_puts.contains(record),
                    "{event:?}"
                );
                nodes_seen.insert(record.name.clone());
            }
            ClusterEvent::NodeDelete(name) => assert!(nodes_seen.contains(name), "{event:?}"),
            ClusterEvent::EndpointUpsert(record) => {
                assert!(
                    record.node != LOCAL && endpoint_puts.contains(record),
                    "{event:?}"
                );
                ips_seen.insert(record.ip);
            }
            ClusterEvent::EndpointDelete(ip) => assert!(ips_seen.contains(ip), "{event:?}"),
        }
    }
    let listed: Vec<String> = registry.nodes().into_iter().map(|n| n.name).collect();
    assert!(listed.iter().any(|n| n == LOCAL) && listed.iter().any(|n| n == SENTINEL));
    assert!(
        listed.iter().all(|n| n == LOCAL || nodes_seen.contains(n)),
        "{listed:?}"
    );

    // The followers see their watches end and stop at once.
    tap.close();
    drop(registry);
}

/// `<line>\n<rest>`; all of it is the line without a newline.
fn line(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

/// The store stage's lines (module docs).
fn store_lines(data: &[u8]) -> (Vec<(String, Vec<u8>)>, Vec<Op>) {
    let mut stored = Vec::new();
    let mut ops = Vec::new();
    for text in data.split(|b| *b == b'\n').take(64) {
        let Some((&kind, rest)) = text.split_first() else {
            continue;
        };
        let (suffix, value) = match rest.iter().position(|b| *b == b'\t') {
            Some(at) => (&rest[..at], Some(rest[at + 1..].to_vec())),
            None => (rest, None),
        };
        let suffix = String::from_utf8_lossy(suffix).into_owned();
        let prefix = match kind.to_ascii_lowercase() {
            b'n' => NODES_PREFIX,
            b'e' => IP_PREFIX,
            _ => keys::PREFIX,
        };
        let key = format!("{prefix}{suffix}");
        match (kind, value) {
            (b'n' | b'e' | b'i', Some(value)) => stored.push((key, value)),
            (b'l', Some(value)) => {
                if let Some(set) = labels(&suffix) {
                    stored.push((keys::labels_key(&set), value));
                }
            }
            (b'N' | b'E' | b'I', Some(value)) => {
                ops.push(Op::Change(WatchEvent::Put { key, value }))
            }
            (b'N' | b'E' | b'I', None) => ops.push(Op::Change(WatchEvent::Delete { key })),
            (b'a', _) => ops.extend(labels(&suffix).map(Op::Acquire)),
            (b'r', Some(value)) => {
                let parsed = serde_json::from_slice::<LabelSet>(&value);
                if let (Ok(id), Ok(set)) = (suffix.parse(), parsed) {
                    ops.push(Op::Restore(id, set));
                }
            }
            (b'p', _) => ops.extend(suffix.parse().ok().map(Op::Publish)),
            _ => {}
        }
    }
    (stored, ops)
}

/// What both backends' decoders must agree on; the listing as stored records.
fn check_decoded(decoded: &FuzzDecoded, key: Option<&str>) -> Vec<(String, Vec<u8>)> {
    assert_eq!(
        decoded.stream_objects, decoded.stream_objects_bytewise,
        "a watch stream splits the same whatever the reads"
    );
    let Ok(listing) = &decoded.listing else {
        return Vec::new();
    };
    // `get` reads the same answer: etcd's first key-value, consul's pair of the key.
    let want = match key {
        None => listing.first(),
        Some(key) => listing.iter().find(|(k, _)| k == key),
    };
    match &decoded.get {
        Ok(got) => assert_eq!(got.as_ref(), want.map(|(_, e)| e)),
        Err(e) => panic!("the listing decodes but get does not: {e}"),
    }
    listing
        .iter()
        .map(|(key, entry)| (key.clone(), entry.value.clone()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => {
            let (name, value) = line(data);
            node_record(&format!("{NODES_PREFIX}{name}"), value);
        }
        1 => {
            let (ip, value) = line(data);
            endpoint_record(&format!("{IP_PREFIX}{ip}"), value);
        }
        2 => {
            let (suffix, value) = line(data);
            let key = format!("{}{suffix}", keys::PREFIX);
            if let Some(id) = keys::parse_id_key(&key) {
                assert_eq!(keys::parse_id_key(&keys::id_key(id)), Some(id));
            }
            if let Some(id) = keys::parse_refs_key(&key, LOCAL) {
                assert_eq!(
                    keys::parse_refs_key(&keys::refs_key(id, LOCAL), LOCAL),
                    Some(id)
                );
            }
            let mut ops = Vec::new();
            if let Ok(set) = serde_json::from_slice::<LabelSet>(value) {
                ops.push(Op::Acquire(set.clone()));
                if let Some(id) = keys::parse_id_key(&key) {
                    ops.push(Op::Restore(id, set));
                }
            }
            run_store(&[(key, value.to_vec())], &ops, false);
        }
        3 => {
            let Some((&status, body)) = data.split_first() else {
                return;
            };
            let decoded = kvstore::fuzz_decode_etcd(STATUSES[usize::from(status & 7)], body);
            let stored = check_decoded(&decoded, None);
            let ops: Vec<Op> = decoded.events.into_iter().map(Op::Change).collect();
            run_store(&stored, &ops, true);
        }
        4 => {
            let Some((&status, mut body)) = data.split_first() else {
                return;
            };
            let mut index = None;
            if let Some(rest) = body.strip_prefix(b"#") {
                let (header, rest) = line(rest);
                index = Some(header);
                body = rest;
            }
            let key = format!("{NODES_PREFIX}a");
            let decoded = kvstore::fuzz_decode_consul(
                STATUSES[usize::from(status & 7)],
                index.as_deref(),
                &key,
                body,
            );
            let stored = check_decoded(&decoded, Some(&key));
            if status & 0x80 != 0 {
                run_store(&stored, &[], true);
            } else {
                let ops: Vec<Op> = decoded.events.into_iter().map(Op::Change).collect();
                run_store(&[], &ops, true);
            }
        }
        _ => {
            let (stored, ops) = store_lines(data);
            run_store(&stored, &ops, true);
        }
    }
});
