use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use super::keys::{self, id_key, labels_key, refs_key, PREFIX};
use super::*;
use crate::kvstore::{Embedded, Kvstore};
use crate::labels::Label;

fn set(labels: &[&str]) -> LabelSet {
    labels
        .iter()
        .map(|l| l.parse::<Label>().expect("label"))
        .collect()
}

fn file_store(dir: &Path) -> Arc<dyn Kvstore> {
    Arc::new(Embedded::open(dir).expect("open kvstore"))
}

/// Runs `test` on an in-memory and on a file-backed store.
fn with_stores(test: impl Fn(Arc<dyn Kvstore>)) {
    test(Arc::new(Embedded::in_memory()));
    let dir = tempfile::tempdir().expect("tempdir");
    test(file_store(dir.path()));
}

fn allocator(kv: &Arc<dyn Kvstore>, node: &str) -> IdentityAllocator {
    IdentityAllocator::new(Arc::clone(kv), node).expect("allocator")
}

fn stored_keys(kv: &Arc<dyn Kvstore>) -> Vec<String> {
    kv.list_prefix(PREFIX)
        .expect("list")
        .into_iter()
        .map(|(k, _)| k[PREFIX.len()..].to_string())
        .collect()
}

#[test]
fn same_labels_share_an_id_until_the_last_release() {
    with_stores(|kv| {
        let a = allocator(&kv, "node1");
        let labels = set(&["container:id=app1"]);
        let (first, new) = a.acquire(&labels).unwrap();
        assert_eq!((first.id, new), (256, true));
        assert_eq!(first.labels, labels);
        let (second, new) = a.acquire(&labels).unwrap();
        assert_eq!((second.id, new), (256, false));
        assert_eq!(a.references(256), 2);
        assert_eq!(
            stored_keys(&kv),
            ["id/256", "labels/container:id=app1", "refs/256/node1"]
        );
        assert_eq!(
            kv.get(&id_key(256)).unwrap().unwrap().value,
            br#"["container:id=app1"]"#
        );
        assert_eq!(kv.get(&labels_key(&labels)).unwrap().unwrap().value, b"256");
        assert!(!a.release(256).unwrap());
        assert_eq!(a.references(256), 1);
        assert_eq!(a.get(256), Some(first.clone()));
        assert!(a.release(256).unwrap());
        assert_eq!(a.references(256), 0);
        assert_eq!(a.get(256), None);
        assert_eq!(a.find(&labels), None);
        assert!(stored_keys(&kv).is_empty(), "{:?}", stored_keys(&kv));
        assert!(matches!(a.release(256), Err(IdentityError::UnknownId(256))));
    });
}

#[test]
fn distinct_label_sets_get_distinct_ids_from_256() {
    with_stores(|kv| {
        let a = allocator(&kv, "node1");
        let sets = [set(&["id=a"]), set(&["id=b"]), set(&["id=a", "id=b"])];
        let ids: Vec<u32> = sets.iter().map(|l| a.acquire(l).unwrap().0.id).collect();
        assert_eq!(ids, [256, 257, 258]);
        for (labels, id) in sets.iter().zip(&ids) {
            assert_eq!(a.find(labels).map(|i| i.id), Some(*id));
            assert_eq!(a.get(*id).map(|i| i.labels), Some(labels.clone()));
        }
        let listed: Vec<u32> = a.list().iter().map(|i| i.id).collect();
        assert_eq!(listed, [HOST, WORLD, INIT, 256, 257, 258]);
    });
}

#[test]
fn released_ids_are_not_reused_immediately() {
    with_stores(|kv| {
        let a = allocator(&kv, "node1");
        let (one, _) = a.acquire(&set(&["id=a"])).unwrap();
        assert!(a.release(one.id).unwrap());
        let (two, new) = a.acquire(&set(&["id=b"])).unwrap();
        assert_eq!((one.id, two.id, new), (256, 257, true));
        // A new allocator continues after the newest id too.
        let b = allocator(&kv, "node2");
        assert_eq!(b.acquire(&set(&["id=c"])).unwrap().0.id, 258);
    });
}

#[test]
fn reserved_identities_always_exist_and_are_never_stored() {
    let kv: Arc<dyn Kvstore> = Arc::new(Embedded::in_memory());
    let a = allocator(&kv, "node1");
    let host = a.get(HOST).unwrap();
    assert_eq!(host.labels.to_strings(), ["reserved:host"]);
    assert_eq!(
        a.get(WORLD).unwrap().labels.to_strings(),
        ["reserved:world"]
    );
    assert_eq!(a.get(3), None);
    assert_eq!(a.find(&set(&["reserved:world"])).map(|i| i.id), Some(WORLD));
    assert_eq!(a.acquire(&host.labels).unwrap(), (host.clone(), false));
    assert_eq!(
        a.acquire_local(&host.labels).unwrap(),
        (host.clone(), false)
    );
    assert_eq!(a.references(HOST), 2);
    assert!(!a.release(HOST).unwrap());
    assert!(!a.release(HOST).unwrap());
    assert!(matches!(
        a.release(HOST),
        Err(IdentityError::UnknownId(HOST))
    ));
    assert_eq!(a.get(HOST), Some(host));
    assert!(stored_keys(&kv).is_empty());
    assert_eq!(
        a.get(WORLD).unwrap().to_api(Some(0)),
        cilium_api::models::Identity {
            id: 2,
            labels: vec!["reserved:world".into()],
            references: Some(0),
        }
    );
}

#[test]
fn local_identities_start_at_1_shl_24_and_stay_out_of_the_kvstore() {
    let kv: Arc<dyn Kvstore> = Arc::new(Embedded::in_memory());
    let a = allocator(&kv, "node1");
    let net = set(&["cidr:10.0.0.0/8"]);
    let (first, new) = a.acquire_local(&net).unwrap();
    assert_eq!((first.id, new), (MIN_LOCAL, true));
    assert_eq!(a.acquire_local(&net).unwrap(), (first.clone(), false));
    let (other, _) = a.acquire_local(&set(&["cidr:10.1.0.0/16"])).unwrap();
    assert_eq!(other.id, MIN_LOCAL + 1);
    // The same labels in cluster scope are another identity.
    assert_eq!(a.acquire(&net).unwrap().0.id, 256);
    assert_eq!(a.find(&net).map(|i| i.id), Some(256));
    assert_eq!(a.get(MIN_LOCAL), Some(first.clone()));
    assert_eq!(a.references(MIN_LOCAL), 2);
    assert!(!a.release(MIN_LOCAL).unwrap());
    assert!(a.release(MIN_LOCAL).unwrap());
    assert_eq!(a.get(MIN_LOCAL), None);
    assert!(a.release(256).unwrap());
    assert_eq!(a.find(&net), None);
    assert!(stored_keys(&kv).is_empty(), "{:?}", stored_keys(&kv));
    // Not reused immediately either.
    assert_eq!(a.acquire_local(&net).unwrap().0.id, MIN_LOCAL + 2);
}

#[test]
fn two_nodes_agree_and_the_identity_lives_until_both_release() {
    with_stores(|kv| {
        let n1 = allocator(&kv, "node1");
        let n2 = allocator(&kv, "node2");
        let labels = set(&["k8s:app=web"]);
        assert_eq!(n1.acquire(&labels).unwrap().0.id, 256);
        // node2 learns about it through its watch.
        assert_eq!(n2.get(256).map(|i| i.labels), Some(labels.clone()));
        let (seen, new) = n2.acquire(&labels).unwrap();
        assert_eq!((seen.id, new), (256, false));
        assert!(n1.release(256).unwrap());
        assert_eq!(
            stored_keys(&kv),
            ["id/256", "labels/k8s:app=web", "refs/256/node2"]
        );
        assert!(n1.get(256).is_some(), "node2 still holds it");
        assert!(n2.release(256).unwrap());
        assert!(stored_keys(&kv).is_empty());
        assert_eq!(n1.get(256), None);
        assert_eq!(n2.list().len(), RESERVED.len(), "only the reserved ones");
    });
}

#[test]
fn restore_keeps_in_use_identities_and_releases_the_rest() {
    with_stores(|kv| {
        let (keep, gone, other) = (set(&["id=keep"]), set(&["id=gone"]), set(&["id=other"]));
        let before = allocator(&kv, "node1");
        let keep_id = before.acquire(&keep).unwrap().0.id;
        let gone_id = before.acquire(&gone).unwrap().0.id;
        let net = set(&["cidr:10.0.0.0/8"]);
        let local_id = before.acquire_local(&net).unwrap().0.id;
        // Another node shares `gone`, so only this node's reference goes.
        let n2 = allocator(&kv, "node2");
        let other_id = n2.acquire(&other).unwrap().0.id;
        n2.acquire(&gone).unwrap();
        drop(before);

        // The agent restarts.
        let a = allocator(&kv, "node1");
        let in_use = BTreeMap::from([
            (keep_id, (keep.clone(), 2)),
            (local_id, (net.clone(), 1)),
            (HOST, (set(&["reserved:host"]), 1)),
        ]);
        let warnings = a.restore(&in_use).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(a.references(keep_id), 2);
        assert_eq!(a.references(local_id), 1);
        assert_eq!(a.references(HOST), 1);
        assert_eq!(a.references(gone_id), 0);
        assert_eq!(a.acquire_local(&net).unwrap().0.id, local_id);
        let refs: Vec<String> = stored_keys(&kv)
            .into_iter()
            .filter(|k| k.starts_with("refs/"))
            .collect();
        assert_eq!(
            refs,
            [
                format!("refs/{keep_id}/node1"),
                format!("refs/{gone_id}/node2"),
                format!("refs/{other_id}/node2"),
            ]
        );
        assert!(n2.release(gone_id).unwrap());
        assert_eq!(a.get(gone_id), None);
        assert!(a.get(other_id).is_some());
        // A later acquire of `keep` only counts.
        assert_eq!(
            a.acquire(&keep).unwrap(),
            (
                Identity {
                    id: keep_id,
                    labels: keep
                },
                false
            )
        );
        assert_eq!(a.references(keep_id), 3);
    });
}

#[test]
fn restore_recreates_missing_identities_and_reports_conflicts() {
    with_stores(|kv| {
        let a = allocator(&kv, "node1");
        let mine = set(&["id=mine"]);
        let in_use = BTreeMap::from([(300, (mine.clone(), 1))]);
        assert!(a.restore(&in_use).unwrap().is_empty());
        assert_eq!(a.find(&mine).map(|i| i.id), Some(300));
        assert_eq!(a.references(300), 1);
        assert_eq!(
            stored_keys(&kv),
            ["id/300", "labels/unspec:id=mine", "refs/300/node1"]
        );

        // Meanwhile, id 301 went to other labels, and the labels we held as 303 to id 302.
        let n2 = allocator(&kv, "node2");
        let taken = n2.acquire(&set(&["id=taken"])).unwrap().0.id;
        let theirs = set(&["id=theirs"]);
        let theirs_id = n2.acquire(&theirs).unwrap().0.id;
        let in_use = BTreeMap::from([
            (300, (mine.clone(), 1)),
            (taken, (set(&["id=stale"]), 1)),
            (303, (theirs.clone(), 1)),
            (7, (set(&["id=x"]), 1)),
        ]);
        let warnings = a.restore(&in_use).unwrap();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("not a valid identity"), "{warnings:?}");
        assert!(
            warnings[1].contains(&format!("identity {taken} now has labels")),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains(&format!("now have identity {theirs_id}")),
            "{warnings:?}"
        );
        assert_eq!(a.references(taken), 0);
        assert_eq!((taken, theirs_id), (301, 302));
        assert_eq!(a.references(303), 0);
        assert_eq!(a.references(theirs_id), 0);
        assert_eq!(
            kv.get(&id_key(303)).unwrap(),
            None,
            "re-created id key given back"
        );
        assert!(kv.get(&refs_key(theirs_id, "node1")).unwrap().is_none());
        assert!(kv.get(&refs_key(theirs_id, "node2")).unwrap().is_some());
    });
}

#[test]
fn identities_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let labels = set(&["container:id=db"]);
    let id = {
        let kv = file_store(dir.path());
        let a = allocator(&kv, "node1");
        a.acquire(&set(&["id=first"])).unwrap();
        a.acquire(&labels).unwrap().0.id
    };
    let kv = file_store(dir.path());
    let a = allocator(&kv, "node1");
    assert_eq!(a.find(&labels).map(|i| i.id), Some(id));
    assert_eq!(a.get(id).map(|i| i.labels), Some(labels.clone()));
    assert_eq!(
        a.acquire(&labels).unwrap(),
        (Identity { id, labels }, false)
    );
}

#[test]
fn exhaustion_is_reported_and_ends_with_a_release() {
    with_stores(|kv| {
        let a = IdentityAllocator::with_range(Arc::clone(&kv), "node1", 256, 260).unwrap();
        for i in 0..5 {
            assert_eq!(
                a.acquire(&set(&[&format!("id={i}")])).unwrap().0.id,
                256 + i
            );
        }
        let err = a.acquire(&set(&["id=full"])).unwrap_err();
        assert!(
            matches!(err, IdentityError::Exhausted { min: 256, max: 260 }),
            "{err}"
        );
        assert!(err.to_string().contains("256..=260"), "{err}");
        assert!(a.release(258).unwrap());
        assert_eq!(a.acquire(&set(&["id=full"])).unwrap().0.id, 258);
    });
}

#[test]
fn invalid_configuration_is_refused() {
    let kv: Arc<dyn Kvstore> = Arc::new(Embedded::in_memory());
    for (node, min, max) in [
        ("n", 255, 300),
        ("n", 300, 299),
        ("n", 256, 65536),
        ("", 256, 300),
    ] {
        let err = IdentityAllocator::with_range(Arc::clone(&kv), node, min, max).unwrap_err();
        assert!(matches!(err, IdentityError::Config(_)), "{err}");
    }
}

#[test]
fn corrupt_stored_data_is_reported() {
    let kv: Arc<dyn Kvstore> = Arc::new(Embedded::in_memory());
    let labels = set(&["id=a"]);
    kv.create_if_absent(&labels_key(&labels), b"not-a-number", None)
        .unwrap();
    kv.create_if_absent(&id_key(400), b"{", None).unwrap();
    // A corrupt id key is skipped when loading.
    let a = allocator(&kv, "node1");
    assert_eq!(a.get(400), None);
    let err = a.acquire(&labels).unwrap_err();
    assert!(
        matches!(&err, IdentityError::Corrupt { key, .. } if *key == labels_key(&labels)),
        "{err}"
    );
}

#[test]
fn racing_threads_of_one_node_get_one_id() {
    with_stores(|kv| {
        let a = allocator(&kv, "node1");
        let labels = set(&["id=race"]);
        let results: Vec<(Identity, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| a.acquire(&labels).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ids: BTreeSet<u32> = results.iter().map(|(i, _)| i.id).collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(results.iter().filter(|(_, new)| *new).count(), 1);
        assert_eq!(a.references(256), 8);
    });
}

#[test]
fn racing_nodes_agree_on_one_id_and_on_distinct_ones() {
    with_stores(|kv| {
        let nodes: Vec<IdentityAllocator> = (0..8)
            .map(|i| allocator(&kv, &format!("node{i}")))
            .collect();
        let shared = set(&["id=shared"]);
        let results: Vec<((Identity, bool), Identity)> = std::thread::scope(|scope| {
            let handles: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let shared = &shared;
                    scope.spawn(move || {
                        let own = node.acquire(&set(&[&format!("id=own{i}")])).unwrap().0;
                        (node.acquire(shared).unwrap(), own)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let shared_ids: BTreeSet<u32> = results.iter().map(|((i, _), _)| i.id).collect();
        assert_eq!(shared_ids.len(), 1, "{shared_ids:?}");
        assert_eq!(results.iter().filter(|((_, new), _)| *new).count(), 1);
        let mut all: BTreeSet<u32> = results.iter().map(|(_, own)| own.id).collect();
        assert_eq!(all.len(), 8, "own ids must be distinct: {all:?}");
        all.extend(&shared_ids);
        assert_eq!(all.len(), 9, "the shared id must differ from the own ones");
        let shared_id = results[0].0 .0.id;
        assert_eq!(
            kv.list_prefix(&keys::refs_prefix(shared_id)).unwrap().len(),
            8
        );
        for (node, ((identity, _), own)) in nodes.iter().zip(&results) {
            assert!(node.release(identity.id).unwrap());
            assert!(node.release(own.id).unwrap());
        }
        assert!(stored_keys(&kv).is_empty(), "{:?}", stored_keys(&kv));
    });
}
