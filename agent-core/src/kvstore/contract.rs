//! The contract every [`Kvstore`] backend honours, as plain functions that panic with a
//! message naming the broken promise. Each backend's tests (and the integration tests
//! against real etcd/consul servers) run [`contract_suite`] on fresh stores. Every function
//! works under its own `contract/<name>/` prefix and clears it first, so a shared server can
//! run the suite repeatedly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::thread;
use std::time::Duration;

use super::{Entry, Kvstore, KvstoreError, WatchEvent};

/// Timing of the lease checks (real servers have a minimum TTL).
#[derive(Debug, Clone)]
pub struct Options {
    /// The TTL of the lease that is left to expire.
    pub lease_ttl: Duration,
    /// How long to wait for an expired lease's keys to be deleted.
    pub expiry_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease_ttl: Duration::from_millis(400),
            expiry_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs every check on a fresh store from `make`, with the default [`Options`].
pub fn contract_suite(make: &dyn Fn() -> Box<dyn Kvstore>) {
    contract_suite_with(make, &Options::default());
}

/// Runs every check on a fresh store from `make`.
pub fn contract_suite_with(make: &dyn Fn() -> Box<dyn Kvstore>, options: &Options) {
    create_if_absent_twice(&*make());
    compare_and_swap(&*make());
    delete_and_delete_if(&*make());
    list_prefix_is_exact(&*make());
    watch_sees_changes_in_order(&*make());
    lease_expiry_deletes_keys(&*make(), options);
    revoke_deletes_keys(&*make());
    racing_creates_have_one_winner(&*make());
    racing_swaps_lose_no_update(&*make());
}

/// The result of a store call, or a panic naming the call.
fn ok<T>(what: &str, result: Result<T, KvstoreError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("kvstore contract: {what} failed: {e}"),
    }
}

/// Deletes everything under `contract/<name>/` and returns that prefix.
fn fresh(kv: &dyn Kvstore, name: &str) -> String {
    let prefix = format!("contract/{name}/");
    for (key, _) in ok("list", kv.list_prefix(&prefix)) {
        ok("delete", kv.delete(&key));
    }
    prefix
}

fn get(kv: &dyn Kvstore, key: &str) -> Option<Entry> {
    ok(&format!("get {key}"), kv.get(key))
}

fn must_get(kv: &dyn Kvstore, key: &str) -> Entry {
    get(kv, key).unwrap_or_else(|| panic!("kvstore contract: key {key} is missing"))
}

fn create(kv: &dyn Kvstore, key: &str, value: &[u8]) {
    let existing = ok(
        &format!("create {key}"),
        kv.create_if_absent(key, value, None),
    );
    assert!(
        existing.is_none(),
        "kvstore contract: create {key} found an existing entry {existing:?}"
    );
}

/// The next event within `timeout`, or a panic saying what was expected.
fn next_event(watch: &super::Watch, timeout: Duration, expected: &WatchEvent) -> WatchEvent {
    match watch.recv_timeout(timeout) {
        Ok(event) => event,
        Err(e) => panic!("kvstore contract: watch: expected {expected:?}, got {e:?}"),
    }
}

/// A second create of the same key returns the first entry and changes nothing.
pub fn create_if_absent_twice(kv: &dyn Kvstore) {
    let key = format!("{}k", fresh(kv, "create"));
    assert_eq!(get(kv, &key), None, "kvstore contract: fresh key exists");
    create(kv, &key, b"one");
    let first = must_get(kv, &key);
    assert_eq!(first.value, b"one", "kvstore contract: created value");
    assert!(first.mod_revision > 0, "kvstore contract: revision 0");
    let second = ok("second create", kv.create_if_absent(&key, b"two", None));
    assert_eq!(
        second,
        Some(first.clone()),
        "kvstore contract: a second create must return the existing entry"
    );
    assert_eq!(
        must_get(kv, &key),
        first,
        "kvstore contract: a second create changed the key"
    );
}

/// Compare-and-swap succeeds only on the current revision (0 = absent).
pub fn compare_and_swap(kv: &dyn Kvstore) {
    let prefix = fresh(kv, "cas");
    let key = format!("{prefix}k");
    let cas = |expected, value: &[u8]| {
        ok(
            &format!("cas {key} at {expected}"),
            kv.compare_and_swap(&key, expected, value),
        )
    };
    assert!(
        cas(0, b"a"),
        "kvstore contract: cas at 0 must create an absent key"
    );
    let first = must_get(kv, &key);
    assert_eq!(first.value, b"a");
    assert!(
        !cas(0, b"b"),
        "kvstore contract: cas at 0 swapped an existing key"
    );
    assert!(
        !cas(first.mod_revision + 1000, b"b"),
        "kvstore contract: cas at a wrong revision swapped"
    );
    assert_eq!(
        must_get(kv, &key),
        first,
        "kvstore contract: failed cas changed the key"
    );
    assert!(
        cas(first.mod_revision, b"b"),
        "kvstore contract: cas at the current revision"
    );
    let second = must_get(kv, &key);
    assert_eq!(second.value, b"b");
    assert!(
        second.mod_revision > first.mod_revision,
        "kvstore contract: revision did not increase ({} -> {})",
        first.mod_revision,
        second.mod_revision
    );
    assert!(
        !cas(first.mod_revision, b"c"),
        "kvstore contract: cas at a stale revision"
    );
    let absent = format!("{prefix}absent");
    assert!(
        !ok("cas absent", kv.compare_and_swap(&absent, 5, b"x")),
        "kvstore contract: cas at a revision created an absent key"
    );
    assert_eq!(get(kv, &absent), None);
}

/// Delete reports whether the key existed; delete-if only at the current revision.
pub fn delete_and_delete_if(kv: &dyn Kvstore) {
    let key = format!("{}k", fresh(kv, "delete"));
    create(kv, &key, b"v");
    let entry = must_get(kv, &key);
    assert!(
        !ok("delete-if", kv.delete_if(&key, entry.mod_revision + 1)),
        "kvstore contract: delete-if at a wrong revision deleted"
    );
    assert_eq!(must_get(kv, &key), entry);
    assert!(
        ok("delete-if", kv.delete_if(&key, entry.mod_revision)),
        "kvstore contract: delete-if at the current revision"
    );
    assert_eq!(
        get(kv, &key),
        None,
        "kvstore contract: delete-if left the key"
    );
    assert!(
        !ok("delete-if", kv.delete_if(&key, entry.mod_revision)),
        "kvstore contract: delete-if of an absent key"
    );
    create(kv, &key, b"again");
    assert!(
        must_get(kv, &key).mod_revision > entry.mod_revision,
        "kvstore contract: a re-created key must get a newer revision"
    );
    assert!(
        ok("delete", kv.delete(&key)),
        "kvstore contract: delete of a key"
    );
    assert!(
        !ok("delete", kv.delete(&key)),
        "kvstore contract: delete of an absent key"
    );
    assert_eq!(get(kv, &key), None);
}

/// Listing returns exactly the keys starting with the prefix, sorted.
pub fn list_prefix_is_exact(kv: &dyn Kvstore) {
    let p = fresh(kv, "list");
    for key in ["a/bc/x", "a/b/d", "a/b", "a/bc", "a/a", "a/b/c", "b/b/c"] {
        create(kv, &format!("{p}{key}"), key.as_bytes());
    }
    let list = |prefix: &str| -> Vec<String> {
        let listed = ok("list", kv.list_prefix(&format!("{p}{prefix}")));
        for (key, entry) in &listed {
            assert_eq!(
                key.strip_prefix(&p).map(str::as_bytes),
                Some(entry.value.as_slice()),
                "kvstore contract: list returned a wrong value for {key}"
            );
        }
        listed
            .into_iter()
            .map(|(k, _)| k[p.len()..].to_string())
            .collect()
    };
    assert_eq!(
        list("a/b/"),
        ["a/b/c", "a/b/d"],
        "kvstore contract: list a/b/"
    );
    assert_eq!(
        list("a/b"),
        ["a/b", "a/b/c", "a/b/d", "a/bc", "a/bc/x"],
        "kvstore contract: list a/b"
    );
    assert_eq!(
        list("a/"),
        ["a/a", "a/b", "a/b/c", "a/b/d", "a/bc", "a/bc/x"],
        "kvstore contract: list a/"
    );
    assert!(
        list("c/").is_empty(),
        "kvstore contract: list of an empty prefix"
    );
}

/// A watch sees puts and deletes under its prefix, from its start, in order.
pub fn watch_sees_changes_in_order(kv: &dyn Kvstore) {
    let p = fresh(kv, "watch");
    let before = format!("{p}a/before");
    create(kv, &before, b"old");
    let watch = ok("watch", kv.watch_prefix(&format!("{p}a/")));
    let one = format!("{p}a/1");
    let two = format!("{p}a/2");
    create(kv, &one, b"v1");
    let rev = must_get(kv, &one).mod_revision;
    assert!(ok("cas", kv.compare_and_swap(&one, rev, b"v2")));
    create(kv, &format!("{p}ab/x"), b"sibling");
    assert!(ok("delete", kv.delete(&one)));
    let lease = ok("grant", kv.grant_lease(Duration::from_secs(60)));
    assert_eq!(
        ok(
            "create leased",
            kv.create_if_absent(&two, b"l", Some(lease))
        ),
        None
    );
    // The key reports its lease (a restarted agent recognises its records by it); consul
    // does not map its sessions back to lease ids.
    let reported = must_get(kv, &two).lease;
    if kv.backend() == "consul" {
        assert_eq!(reported, None, "kvstore contract: consul reports no lease");
    } else {
        assert_eq!(
            reported,
            Some(lease),
            "kvstore contract: a leased key reports its lease"
        );
    }
    ok("revoke", kv.revoke_lease(lease));
    assert!(ok("delete", kv.delete(&before)));
    let put = |key: &str, value: &[u8]| WatchEvent::Put {
        key: key.to_string(),
        value: value.to_vec(),
    };
    let delete = |key: &str| WatchEvent::Delete {
        key: key.to_string(),
    };
    for expected in [
        put(&one, b"v1"),
        put(&one, b"v2"),
        delete(&one),
        put(&two, b"l"),
        delete(&two),
        delete(&before),
    ] {
        let event = next_event(&watch, Duration::from_secs(5), &expected);
        assert_eq!(
            event, expected,
            "kvstore contract: watch event out of order"
        );
    }
    match watch.recv_timeout(Duration::from_millis(100)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("kvstore contract: watch: unexpected {other:?}"),
    }
    drop(watch);
    // Writes after the watch is gone still work.
    create(kv, &one, b"after");
}

/// Keep-alive holds a lease; without it the lease's keys are deleted (with watch events)
/// and the lease is gone.
pub fn lease_expiry_deletes_keys(kv: &dyn Kvstore, options: &Options) {
    let p = fresh(kv, "expiry");
    let leased = format!("{p}leased");
    let durable = format!("{p}durable");
    let ttl = options.lease_ttl;
    let lease = ok("grant", kv.grant_lease(ttl));
    assert_eq!(
        ok(
            "create leased",
            kv.create_if_absent(&leased, b"l", Some(lease))
        ),
        None
    );
    create(kv, &durable, b"d");
    let watch = ok("watch", kv.watch_prefix(&p));
    for _ in 0..4 {
        thread::sleep(ttl / 4);
        ok("keep-alive", kv.keep_alive(lease));
    }
    assert!(
        get(kv, &leased).is_some(),
        "kvstore contract: a kept-alive lease expired after {:?}",
        ttl
    );
    let expected = WatchEvent::Delete {
        key: leased.clone(),
    };
    let event = next_event(&watch, ttl + options.expiry_timeout, &expected);
    assert_eq!(event, expected, "kvstore contract: lease expiry event");
    assert_eq!(
        get(kv, &leased),
        None,
        "kvstore contract: expired key still there"
    );
    assert!(
        get(kv, &durable).is_some(),
        "kvstore contract: expiry deleted a durable key"
    );
    assert!(
        matches!(
            kv.keep_alive(lease),
            Err(KvstoreError::LeaseNotFound { .. })
        ),
        "kvstore contract: keep-alive of an expired lease must fail with LeaseNotFound"
    );
    assert!(
        matches!(
            kv.create_if_absent(&leased, b"x", Some(lease)),
            Err(KvstoreError::LeaseNotFound { .. })
        ),
        "kvstore contract: create with an expired lease must fail with LeaseNotFound"
    );
}

/// Revoking deletes the lease's keys (also keys swapped since), and only those.
pub fn revoke_deletes_keys(kv: &dyn Kvstore) {
    let p = fresh(kv, "revoke");
    let lease = ok("grant", kv.grant_lease(Duration::from_secs(60)));
    let other = ok("grant", kv.grant_lease(Duration::from_secs(60)));
    let keys = [format!("{p}k1"), format!("{p}k2")];
    for key in &keys {
        assert_eq!(
            ok("create leased", kv.create_if_absent(key, b"l", Some(lease))),
            None
        );
    }
    let rev = must_get(kv, &keys[1]).mod_revision;
    assert!(ok(
        "cas leased",
        kv.compare_and_swap(&keys[1], rev, b"swapped")
    ));
    let kept = format!("{p}other");
    assert_eq!(
        ok(
            "create leased",
            kv.create_if_absent(&kept, b"o", Some(other))
        ),
        None
    );
    let durable = format!("{p}durable");
    create(kv, &durable, b"d");
    ok("revoke", kv.revoke_lease(lease));
    for key in &keys {
        assert_eq!(get(kv, key), None, "kvstore contract: revoke left {key}");
    }
    assert!(
        get(kv, &kept).is_some(),
        "kvstore contract: revoke deleted another lease's key"
    );
    assert!(
        get(kv, &durable).is_some(),
        "kvstore contract: revoke deleted a durable key"
    );
    assert!(
        matches!(
            kv.keep_alive(lease),
            Err(KvstoreError::LeaseNotFound { .. })
        ),
        "kvstore contract: keep-alive of a revoked lease must fail with LeaseNotFound"
    );
    ok("second revoke", kv.revoke_lease(lease));
    ok("revoke", kv.revoke_lease(other));
    assert_eq!(get(kv, &kept), None);
}

/// Eight threads racing create-if-absent on one key: exactly one wins.
pub fn racing_creates_have_one_winner(kv: &dyn Kvstore) {
    let key = format!("{}k", fresh(kv, "race-create"));
    let winners = AtomicUsize::new(0);
    thread::scope(|scope| {
        for i in 0..8 {
            let (key, winners) = (&key, &winners);
            scope.spawn(move || {
                let value = format!("thread-{i}");
                if ok(
                    "racing create",
                    kv.create_if_absent(key, value.as_bytes(), None),
                )
                .is_none()
                {
                    winners.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(
        winners.load(Ordering::SeqCst),
        1,
        "kvstore contract: racing creates must have exactly one winner"
    );
    let value = must_get(kv, &key).value;
    assert!(
        value.starts_with(b"thread-"),
        "kvstore contract: racing create value"
    );
}

/// Eight threads incrementing a counter with compare-and-swap lose no increment.
pub fn racing_swaps_lose_no_update(kv: &dyn Kvstore) {
    const THREADS: usize = 8;
    const ROUNDS: usize = 10;
    let key = format!("{}counter", fresh(kv, "race-cas"));
    thread::scope(|scope| {
        for _ in 0..THREADS {
            let key = &key;
            scope.spawn(move || {
                for _ in 0..ROUNDS {
                    loop {
                        let (expected, current) = match get(kv, key) {
                            Some(e) => (e.mod_revision, parse_counter(&e.value)),
                            None => (0, 0),
                        };
                        let next = (current + 1).to_string();
                        if ok(
                            "racing cas",
                            kv.compare_and_swap(key, expected, next.as_bytes()),
                        ) {
                            break;
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        parse_counter(&must_get(kv, &key).value),
        THREADS * ROUNDS,
        "kvstore contract: racing compare-and-swap lost updates"
    );
}

fn parse_counter(value: &[u8]) -> usize {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("kvstore contract: counter value {value:?}"))
}

/// For backends whose leases end with the store handle (the embedded one): reopening
/// (`open` twice on the same place) keeps non-leased keys with their values and revisions,
/// and not leased ones; revisions keep increasing.
pub fn reopen_keeps_durable_keys(open: &dyn Fn() -> Box<dyn Kvstore>) {
    let binary: &[u8] = &[0xff, 0x00, b'"', 0x80];
    let (p, durable, entry) = {
        let kv = open();
        let p = fresh(&*kv, "reopen");
        let durable = format!("{p}durable");
        create(&*kv, &durable, b"v1");
        let rev = must_get(&*kv, &durable).mod_revision;
        assert!(ok("cas", kv.compare_and_swap(&durable, rev, b"v2")));
        create(&*kv, &format!("{p}binary"), binary);
        create(&*kv, &format!("{p}gone"), b"x");
        assert!(ok("delete", kv.delete(&format!("{p}gone"))));
        let lease = ok("grant", kv.grant_lease(Duration::from_secs(600)));
        let leased = format!("{p}leased");
        assert_eq!(
            ok(
                "create leased",
                kv.create_if_absent(&leased, b"l", Some(lease))
            ),
            None
        );
        let entry = must_get(&*kv, &durable);
        (p, durable, entry)
    };
    let kv = open();
    assert_eq!(
        get(&*kv, &durable),
        Some(entry.clone()),
        "kvstore contract: reopened key"
    );
    assert_eq!(
        must_get(&*kv, &format!("{p}binary")).value,
        binary,
        "kvstore contract: reopened binary value"
    );
    assert_eq!(
        get(&*kv, &format!("{p}gone")),
        None,
        "kvstore contract: deleted key came back"
    );
    assert_eq!(
        get(&*kv, &format!("{p}leased")),
        None,
        "kvstore contract: a leased key survived the store"
    );
    let later = format!("{p}later");
    create(&*kv, &later, b"x");
    assert!(
        must_get(&*kv, &later).mod_revision > entry.mod_revision,
        "kvstore contract: revisions must keep increasing after reopening"
    );
}
