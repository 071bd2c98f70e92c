use std::time::Duration;

use super::contract;
use super::*;

#[test]
fn in_memory_honours_the_contract() {
    contract::contract_suite(&|| Box::new(Embedded::in_memory()));
}

#[test]
fn file_backed_honours_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let open = move || -> Box<dyn Kvstore> { Box::new(Embedded::open(&path).unwrap()) };
    contract::contract_suite(&open);
    contract::reopen_keeps_durable_keys(&open);
}

#[test]
fn file_is_readable_json_with_durable_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Embedded::open(dir.path()).unwrap();
    assert!(kv.warnings().is_empty());
    kv.create_if_absent("a/1", b"one", None).unwrap();
    let lease = kv.grant_lease(Duration::from_secs(60)).unwrap();
    kv.create_if_absent("a/2", b"two", Some(lease)).unwrap();
    let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
    assert_eq!(
        text,
        r#"{"version":1,"revision":1,"keys":{"a/1":{"value":"one","mod_revision":1}}}"#
    );
    // Changing only leased keys does not rewrite the file.
    kv.revoke_lease(lease).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
        text
    );
    let status = kv.status().unwrap();
    assert!(
        status.starts_with("embedded: 1 keys (0 leased), 0 leases"),
        "{status}"
    );
    assert!(status.ends_with("kvstore.json"), "{status}");
    assert_eq!(kv.backend(), "embedded");
}

#[test]
fn corrupt_file_is_moved_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE_NAME);
    for corrupt in ["{not json", r#"{"version":9,"revision":1,"keys":{}}"#] {
        std::fs::write(&file, corrupt).unwrap();
        let kv = Embedded::open(dir.path()).unwrap();
        let warnings = kv.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("is corrupt"), "{warnings:?}");
        assert!(kv.list_prefix("").unwrap().is_empty());
        assert!(!file.exists());
        // The store works and writes a fresh file.
        kv.create_if_absent("k", b"v", None).unwrap();
        assert!(file.exists());
    }
    let moved: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kvstore.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
}

#[test]
fn dropped_watches_are_forgotten() {
    let kv = Embedded::in_memory();
    let kept = kv.watch_prefix("a/").unwrap();
    let dropped = kv.watch_prefix("b/").unwrap();
    assert_eq!(kv.watch_count(), 2);
    drop(dropped);
    // Any change sweeps, also one outside the dropped watch's prefix.
    kv.create_if_absent("a/x", b"1", None).unwrap();
    assert_eq!(kv.watch_count(), 1);
    assert_eq!(
        kept.try_recv().unwrap(),
        WatchEvent::Put {
            key: "a/x".into(),
            value: b"1".to_vec()
        }
    );
    // Dropping the store ends the remaining watch.
    drop(kv);
    assert_eq!(kept.recv(), None);
}

#[test]
fn empty_keys_are_refused() {
    let kv = Embedded::in_memory();
    let err = kv.create_if_absent("", b"v", None).unwrap_err();
    assert!(matches!(err, KvstoreError::InvalidKey { .. }), "{err}");
    assert!(err.to_string().contains("create"), "{err}");
}
