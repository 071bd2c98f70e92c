use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::kvstore::{Embedded, Entry, Kvstore, LeaseId, Watch};

const TTL: Duration = Duration::from_secs(1);
/// The longest a test waits for an event.
const WAIT: Duration = Duration::from_secs(5);

fn store() -> Arc<dyn Kvstore> {
    Arc::new(Embedded::in_memory())
}

/// Node `name` at 192.168.0.`n` allocating from 10.`n`.0.0/16 and f00d::`n`:0:0/96.
fn node(name: &str, n: u8) -> NodeRecord {
    NodeRecord {
        name: name.to_string(),
        ipv4: Some(Ipv4Addr::new(192, 168, 0, n)),
        ipv6: None,
        ipv4_range: Some(format!("10.{n}.0.0/16").parse().unwrap()),
        ipv6_range: Some(format!("f00d::{n}:0:0/96").parse().unwrap()),
        tunnel_endpoint: Some(Ipv4Addr::new(192, 168, 0, n)),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The events a registry reported.
#[derive(Debug)]
struct Events(Receiver<ClusterEvent>);

impl Events {
    /// Waits for `want`; the events seen before it.
    fn expect(&self, want: &ClusterEvent) -> Vec<ClusterEvent> {
        let deadline = Instant::now() + WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(event) if event == *want => return before,
                Ok(event) => before.push(event),
                Err(_) => panic!("no {want:?} within {WAIT:?}; saw {before:?}"),
            }
        }
    }

    /// Waits for every one of `want`, in any order; the events seen until then.
    fn expect_all(&self, want: &[ClusterEvent]) -> Vec<ClusterEvent> {
        let deadline = Instant::now() + WAIT;
        let mut missing = want.to_vec();
        let mut seen = Vec::new();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(event) => {
                    missing.retain(|m| *m != event);
                    seen.push(event);
                }
                Err(_) => panic!("no {missing:?} within {WAIT:?}; saw {seen:?}"),
            }
        }
        seen
    }

    /// Every event reported within `window`.
    fn during(&self, window: Duration) -> Vec<ClusterEvent> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while let Ok(event) = self
            .0
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            seen.push(event);
        }
        seen
    }
}

fn join_with(kv: &Arc<dyn Kvstore>, me: NodeRecord) -> Result<(Registry, Events), ClusterError> {
    let (tx, rx) = mpsc::channel();
    let on_event = Box::new(move |event| {
        let _ = tx.send(event);
    });
    let options = RegistryOptions {
        ttl: TTL,
        lease_file: None,
    };
    Registry::join(Arc::clone(kv), me, options, on_event).map(|r| (r, Events(rx)))
}

/// Joins keeping the lease id in `lease_file`, as the agent does.
fn join_resuming(
    kv: &Arc<dyn Kvstore>,
    me: NodeRecord,
    lease_file: &std::path::Path,
) -> (Registry, Events) {
    let (tx, rx) = mpsc::channel();
    let on_event = Box::new(move |event| {
        let _ = tx.send(event);
    });
    let options = RegistryOptions {
        ttl: TTL,
        lease_file: Some(lease_file.to_path_buf()),
    };
    let registry = Registry::join(Arc::clone(kv), me, options, on_event).expect("join");
    (registry, Events(rx))
}

fn join(kv: &Arc<dyn Kvstore>, me: NodeRecord) -> (Registry, Events) {
    join_with(kv, me).expect("join")
}

fn names(registry: &Registry) -> Vec<String> {
    registry.nodes().into_iter().map(|n| n.name).collect()
}

/// Waits until `check` holds.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn endpoint(ip_text: &str, identity: u32, owner: &NodeRecord) -> EndpointRecord {
    EndpointRecord {
        ip: ip(ip_text),
        identity,
        node: owner.name.clone(),
        tunnel_endpoint: owner.tunnel_endpoint,
    }
}

#[test]
fn two_nodes_see_each_other() {
    let kv = store();
    let (a, a_events) = join(&kv, node("a", 1));
    let (b, b_events) = join(&kv, node("b", 2));
    // b's snapshot has a; a sees b live; neither sees itself.
    assert_eq!(
        b_events.during(Duration::ZERO),
        [ClusterEvent::NodeUpsert(node("a", 1))]
    );
    assert_eq!(a_events.expect(&ClusterEvent::NodeUpsert(node("b", 2))), []);
    assert_eq!(names(&b), ["a", "b"]);
    eventually("a lists b", || names(&a) == ["a", "b"]);
    assert_eq!(a.local(), &node("a", 1));
    let status = a.status();
    assert!(status.healthy, "{status:?}");
    assert_eq!((status.message.as_str(), status.nodes), ("ok", 2));
    assert_eq!(a_events.during(Duration::from_millis(200)), []);

    // The stored JSON.
    let stored = kv.get("cilium/state/nodes/v1/a").unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "a",
            "ipv4": "192.168.0.1",
            "ipv4Range": "10.1.0.0/16",
            "ipv6Range": "f00d::1:0:0/96",
            "tunnelEndpoint": "192.168.0.1",
        })
    );
}

#[test]
fn overlapping_ranges_are_refused() {
    let kv = store();
    let (_a, _events) = join(&kv, node("a", 1));
    let mut b = node("b", 2);
    b.ipv4_range = Some("10.1.128.0/17".parse().unwrap());
    let err = join_with(&kv, b).unwrap_err();
    assert!(matches!(err, ClusterError::RangeOverlap { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "node b cannot join the cluster: its IPv4 range 10.1.128.0/17 overlaps the range \
         10.1.0.0/16 of node a"
    );
    let mut c = node("c", 3);
    c.ipv6_range = Some("f00d::1:0:0/112".parse().unwrap());
    let err = join_with(&kv, c).unwrap_err().to_string();
    assert!(
        err.contains("node c") && err.contains("f00d::1:0:0/112") && err.contains("node a"),
        "{err}"
    );
    let registered: Vec<String> = kv
        .list_prefix(NODES_PREFIX)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(registered, ["cilium/state/nodes/v1/a"]);
}

#[test]
fn endpoints_reach_the_other_nodes_only() {
    let kv = store();
    let (a, a_events) = join(&kv, node("a", 1));
    let (b, b_events) = join(&kv, node("b", 2));
    a_events.expect(&ClusterEvent::NodeUpsert(node("b", 2)));
    b_events.expect(&ClusterEvent::NodeUpsert(node("a", 1)));

    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    let upsert =
        |identity| ClusterEvent::EndpointUpsert(endpoint("10.1.0.5", identity, &node("a", 1)));
    assert_eq!(b_events.expect(&upsert(300)), []);
    let stored = kv.get("cilium/state/ip/v1/10.1.0.5").unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "ip": "10.1.0.5",
            "identity": 300,
            "node": "a",
            "tunnelEndpoint": "192.168.0.1",
        })
    );
    a.publish_endpoint(ip("10.1.0.5"), 301).unwrap();
    assert_eq!(b_events.expect(&upsert(301)), []);
    // Publishing it unchanged writes nothing.
    a.publish_endpoint(ip("10.1.0.5"), 301).unwrap();
    assert_eq!(b_events.during(Duration::from_millis(200)), []);

    // Another node cannot take it; withdrawing another node's address leaves it alone.
    let err = b.publish_endpoint(ip("10.1.0.5"), 400).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot publish endpoint 10.1.0.5: node a publishes it"
    );
    b.withdraw_endpoint(ip("10.1.0.5")).unwrap();
    assert!(kv.get(&ip_key(ip("10.1.0.5"))).unwrap().is_some());

    // A node joining later gets it in its snapshot.
    let (_c, c_events) = join(&kv, node("c", 3));
    let snapshot = c_events.during(Duration::ZERO);
    assert!(snapshot.contains(&upsert(301)), "{snapshot:?}");

    a.withdraw_endpoint(ip("10.1.0.5")).unwrap();
    b_events.expect(&ClusterEvent::EndpointDelete(ip("10.1.0.5")));
    a.withdraw_endpoint(ip("10.1.0.5")).unwrap();
    assert!(kv.get(&ip_key(ip("10.1.0.5"))).unwrap().is_none());

    // b may publish it now; a sees that, and nothing of its own.
    b.publish_endpoint(ip("10.1.0.5"), 400).unwrap();
    let seen = a_events.expect(&ClusterEvent::EndpointUpsert(endpoint(
        "10.1.0.5",
        400,
        &node("b", 2),
    )));
    assert!(
        seen.iter()
            .all(|e| matches!(e, ClusterEvent::NodeUpsert(n) if n.name == "c")),
        "{seen:?}"
    );
}

#[test]
fn a_crashed_node_expires_with_its_lease() {
    let kv = store();
    let (a, _a_events) = join(&kv, node("a", 1));
    let (b, b_events) = join(&kv, node("b", 2));
    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    b_events.expect(&ClusterEvent::EndpointUpsert(endpoint(
        "10.1.0.5",
        300,
        &node("a", 1),
    )));

    // Dropped without leaving: its threads end, its records stay until the lease expires.
    drop(a);
    assert_eq!(
        Arc::strong_count(&kv),
        2,
        "the dropped registry's threads still run"
    );
    assert!(kv.get("cilium/state/nodes/v1/a").unwrap().is_some());
    b_events.expect_all(&[
        ClusterEvent::NodeDelete("a".into()),
        ClusterEvent::EndpointDelete(ip("10.1.0.5")),
    ]);
    eventually("b lists only itself", || names(&b) == ["b"]);
}

#[test]
fn a_restarted_node_replaces_its_records() {
    let kv = store();
    let (a, _) = join(&kv, node("a", 1));
    let (b, b_events) = join(&kv, node("b", 2));
    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    drop(a);

    // Same name, same range, while the old lease still lives: no overlap with itself.
    let (a, a_events) = join(&kv, node("a", 1));
    assert_eq!(
        a_events.during(Duration::ZERO),
        [ClusterEvent::NodeUpsert(node("b", 2))]
    );
    a.publish_endpoint(ip("10.1.0.5"), 301).unwrap();
    b_events.expect(&ClusterEvent::EndpointUpsert(endpoint(
        "10.1.0.5",
        301,
        &node("a", 1),
    )));

    // The old lease expires without taking the new records along.
    thread::sleep(TTL * 2);
    assert!(kv.get("cilium/state/nodes/v1/a").unwrap().is_some());
    let stored = kv.get(&ip_key(ip("10.1.0.5"))).unwrap().unwrap();
    assert_eq!(
        parse_endpoint(&ip_key(ip("10.1.0.5")), &stored.value).unwrap(),
        endpoint("10.1.0.5", 301, &node("a", 1))
    );
    assert_eq!(names(&b), ["a", "b"]);
    assert!(a.status().healthy);
}

#[test]
fn a_restarted_node_resumes_its_lease_and_the_others_see_no_change() {
    let kv = store();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster-lease");
    let (a, _) = join_resuming(&kv, node("a", 1), &file);
    let (b, b_events) = join(&kv, node("b", 2));
    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    a.publish_endpoint(ip("10.1.0.6"), 301).unwrap();
    b_events.expect(&ClusterEvent::EndpointUpsert(endpoint(
        "10.1.0.6",
        301,
        &node("a", 1),
    )));
    let lease = a.lease();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        lease.to_string()
    );
    drop(a);

    // The next run takes over the lease and the records the previous one left.
    let (a, _) = join_resuming(&kv, node("a", 1), &file);
    assert_eq!(a.lease(), lease);
    assert_eq!(
        a.published_endpoints(),
        BTreeMap::from([(ip("10.1.0.5"), 300), (ip("10.1.0.6"), 301)])
    );
    let node_revision = kv
        .get("cilium/state/nodes/v1/a")
        .unwrap()
        .unwrap()
        .mod_revision;
    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    a.withdraw_endpoint(ip("10.1.0.6")).unwrap();
    // Past the TTL: the lease is renewed by the new run; b saw only the withdrawal.
    assert_eq!(
        b_events.during(TTL * 2),
        [ClusterEvent::EndpointDelete(ip("10.1.0.6"))]
    );
    assert_eq!(
        kv.get("cilium/state/nodes/v1/a")
            .unwrap()
            .unwrap()
            .mod_revision,
        node_revision,
        "the node record was not rewritten"
    );
    assert_eq!(names(&b), ["a", "b"]);

    // Leaving ends the lease and forgets it; a file naming an ended lease gets a new one.
    a.leave().unwrap();
    assert!(!file.exists());
    b_events.expect(&ClusterEvent::NodeDelete("a".into()));
    std::fs::write(&file, format!("{lease}\n")).unwrap();
    let (a, _) = join_resuming(&kv, node("a", 1), &file);
    assert_ne!(a.lease(), lease);
    assert!(a.published_endpoints().is_empty());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        a.lease().to_string()
    );
}

#[test]
fn leaving_deletes_every_record() {
    let kv = store();
    let (a, _) = join(&kv, node("a", 1));
    let (b, b_events) = join(&kv, node("b", 2));
    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    a.publish_endpoint(ip("f00d::1:0:5"), 300).unwrap();
    b.publish_endpoint(ip("10.2.0.5"), 300).unwrap();
    b_events.expect(&ClusterEvent::EndpointUpsert(endpoint(
        "f00d::1:0:5",
        300,
        &node("a", 1),
    )));

    a.leave().unwrap();
    let mut seen = b_events.during(Duration::from_millis(300));
    seen.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        seen,
        [
            ClusterEvent::EndpointDelete(ip("10.1.0.5")),
            ClusterEvent::EndpointDelete(ip("f00d::1:0:5")),
            ClusterEvent::NodeDelete("a".into()),
        ]
    );
    let keys: Vec<String> = kv
        .list_prefix("cilium/state/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        ["cilium/state/ip/v1/10.2.0.5", "cilium/state/nodes/v1/b"]
    );
    assert_eq!(names(&b), ["b"]);
}

#[test]
fn a_revoked_lease_is_replaced_and_the_records_come_back() {
    let kv = store();
    let (a, _) = join(&kv, node("a", 1));
    let (_b, b_events) = join(&kv, node("b", 2));
    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    let published = ClusterEvent::EndpointUpsert(endpoint("10.1.0.5", 300, &node("a", 1)));
    b_events.expect(&published);

    let old = a.lease();
    kv.revoke_lease(old).unwrap();
    // Node and endpoint events come from separate followers: each kind is in order.
    let gone = [
        ClusterEvent::NodeDelete("a".into()),
        ClusterEvent::EndpointDelete(ip("10.1.0.5")),
    ];
    let back = [ClusterEvent::NodeUpsert(node("a", 1)), published];
    let seen = b_events.expect_all(&[gone.clone(), back.clone()].concat());
    let at = |event: &ClusterEvent| seen.iter().position(|e| e == event).unwrap();
    assert!(
        at(&gone[0]) < at(&back[0]) && at(&gone[1]) < at(&back[1]),
        "{seen:?}"
    );
    assert_ne!(a.lease(), old);
    assert!(kv.get("cilium/state/nodes/v1/a").unwrap().is_some());
    assert!(kv.get(&ip_key(ip("10.1.0.5"))).unwrap().is_some());
    assert!(a.status().healthy, "{:?}", a.status());

    // A publish that finds the lease gone registers again itself.
    kv.revoke_lease(a.lease()).unwrap();
    a.publish_endpoint(ip("10.1.0.6"), 300).unwrap();
    assert!(kv.get("cilium/state/nodes/v1/a").unwrap().is_some());
    assert!(kv.get(&ip_key(ip("10.1.0.5"))).unwrap().is_some());
    assert!(kv.get(&ip_key(ip("10.1.0.6"))).unwrap().is_some());
}

#[test]
fn corrupt_records_are_skipped() {
    let kv = store();
    let put = |key: &str, value: &str| {
        kv.create_if_absent(key, value.as_bytes(), None).unwrap();
    };
    put("cilium/state/nodes/v1/bad", "not json");
    put(
        "cilium/state/nodes/v1/x",
        r#"{"name":"y","ipv4Range":"10.1.0.0/16"}"#,
    );
    put(
        "cilium/state/nodes/v1/v",
        r#"{"name":"v","ipv4Range":"f00d::/96"}"#,
    );
    put("cilium/state/ip/v1/10.9.0.1", "{}");
    put(
        "cilium/state/ip/v1/10.9.0.2",
        r#"{"ip":"10.9.0.3","identity":1,"node":"z"}"#,
    );
    // Newer agents may add fields.
    put(
        "cilium/state/nodes/v1/z",
        r#"{"name":"z","ipv4Range":"10.200.0.0/16","futureField":[1]}"#,
    );

    let (a, events) = join(&kv, node("a", 1));
    let z = NodeRecord {
        name: "z".into(),
        ipv4: None,
        ipv6: None,
        ipv4_range: Some("10.200.0.0/16".parse().unwrap()),
        ipv6_range: None,
        tunnel_endpoint: None,
    };
    assert_eq!(events.during(Duration::ZERO), [ClusterEvent::NodeUpsert(z)]);

    // Live: skipped, and the follower goes on.
    put("cilium/state/nodes/v1/later", "[");
    let (_b, _) = join(&kv, node("b", 2));
    assert_eq!(events.expect(&ClusterEvent::NodeUpsert(node("b", 2))), []);
    assert_eq!(names(&a), ["a", "b", "z"]);

    // An address whose record is corrupt is not taken over.
    let err = a.publish_endpoint(ip("10.9.0.1"), 300).unwrap_err();
    assert!(matches!(err, ClusterError::Corrupt { .. }), "{err:?}");
}

#[test]
fn invalid_node_names_are_refused() {
    let kv = store();
    let long = "n".repeat(254);
    for name in ["", "a/b", "a\0b", "..", "a..b", long.as_str()] {
        let err = join_with(&kv, node(name, 1)).unwrap_err();
        assert!(
            matches!(err, ClusterError::InvalidNodeName { .. }),
            "{name:?}: {err:?}"
        );
    }
    assert!(kv.list_prefix("cilium/").unwrap().is_empty());
    assert!(validate_node_name(&"n".repeat(253)).is_ok());
    assert_eq!(
        node_key("node 1%é"),
        "cilium/state/nodes/v1/node%201%25%C3%A9"
    );

    let (tx, _rx) = mpsc::channel();
    let options = RegistryOptions {
        ttl: Duration::from_millis(10),
        lease_file: None,
    };
    let sink = Box::new(move |event| {
        let _ = tx.send(event);
    });
    let err = Registry::join(Arc::clone(&kv), node("a", 1), options, sink).unwrap_err();
    assert!(matches!(err, ClusterError::Ttl { .. }), "{err:?}");

    let mut wrong = node("a", 1);
    wrong.ipv4_range = Some("f00d::/96".parse().unwrap());
    let err = join_with(&kv, wrong).unwrap_err();
    assert!(matches!(err, ClusterError::InvalidRecord { .. }), "{err:?}");
}

/// A store whose server can be taken away: every call fails while `down` (watches already
/// open keep working).
#[derive(Debug)]
struct Flaky {
    inner: Embedded,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self, op: &'static str, key: &str) -> Result<(), KvstoreError> {
        if !self.down.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(KvstoreError::Unreachable {
            backend: "embedded",
            op,
            key: key.to_string(),
            source: "connection refused".into(),
        })
    }
}

impl Kvstore for Flaky {
    fn backend(&self) -> &'static str {
        "embedded"
    }
    fn status(&self) -> Result<String, KvstoreError> {
        self.check("status", "")?;
        self.inner.status()
    }
    fn get(&self, key: &str) -> Result<Option<Entry>, KvstoreError> {
        self.check("get", key)?;
        self.inner.get(key)
    }
    fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Entry>, KvstoreError> {
        self.check("create", key)?;
        self.inner.create_if_absent(key, value, lease)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, KvstoreError> {
        self.check("compare-and-swap", key)?;
        self.inner.compare_and_swap(key, expected, value)
    }
    fn delete(&self, key: &str) -> Result<bool, KvstoreError> {
        self.check("delete", key)?;
        self.inner.delete(key)
    }
    fn delete_if(&self, key: &str, expected: u64) -> Result<bool, KvstoreError> {
        self.check("delete-if", key)?;
        self.inner.delete_if(key, expected)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvstoreError> {
        self.check("list", prefix)?;
        self.inner.list_prefix(prefix)
    }
    fn watch_prefix(&self, prefix: &str) -> Result<Watch, KvstoreError> {
        self.check("watch", prefix)?;
        self.inner.watch_prefix(prefix)
    }
    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, KvstoreError> {
        self.check("grant", "")?;
        self.inner.grant_lease(ttl)
    }
    fn keep_alive(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        self.check("keep-alive", "")?;
        self.inner.keep_alive(lease)
    }
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        self.check("revoke", "")?;
        self.inner.revoke_lease(lease)
    }
}

#[test]
fn an_unreachable_store_is_reported_and_survived() {
    let flaky = Arc::new(Flaky {
        inner: Embedded::in_memory(),
        down: AtomicBool::new(false),
    });
    let kv: Arc<dyn Kvstore> = flaky.clone();
    let (a, _) = join(&kv, node("a", 1));
    let (_b, b_events) = join(&kv, node("b", 2));
    a.publish_endpoint(ip("10.1.0.5"), 300).unwrap();
    b_events.expect(&ClusterEvent::EndpointUpsert(endpoint(
        "10.1.0.5",
        300,
        &node("a", 1),
    )));

    // Down longer than the TTL: a cannot renew, its lease expires in the store.
    flaky.down.store(true, Ordering::SeqCst);
    eventually("a reports the failure", || !a.status().healthy);
    let status = a.status();
    assert!(
        status.message.starts_with("kvstore unreachable since ")
            && status.message.contains("connection refused"),
        "{status:?}"
    );
    let err = a.publish_endpoint(ip("10.1.0.6"), 300).unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    b_events.expect_all(&[
        ClusterEvent::NodeDelete("a".into()),
        ClusterEvent::EndpointDelete(ip("10.1.0.5")),
    ]);

    // Back: a registers again, its endpoints included.
    flaky.down.store(false, Ordering::SeqCst);
    b_events.expect_all(&[
        ClusterEvent::NodeUpsert(node("a", 1)),
        ClusterEvent::EndpointUpsert(endpoint("10.1.0.5", 300, &node("a", 1))),
    ]);
    eventually("a is healthy again", || a.status().healthy);
}
