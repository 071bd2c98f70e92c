use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::json;

use super::config::{parse_yaml, YamlValue};
use super::watch::{Outcome, WatchState, Watcher};
use super::*;
use crate::kvstore::http::HttpClient;
use crate::kvstore::options::check_options;
use crate::kvstore::{connect, WatchEvent};

fn parse(text: &str) -> Result<EtcdConfig, String> {
    EtcdConfig::parse(text, Path::new("/etc/cilium"))
}

#[test]
fn the_documented_config_file_parses() {
    let config = parse(
        "---\n\
         endpoints:\n\
         - https://192.168.0.1:2379\n\
         - https://192.168.0.2:2379\n\
         ca-file: '/var/lib/cilium/etcd-ca.pem'\n\
         # In case you want client to server authentication\n\
         key-file: '/var/lib/cilium/etcd-client.key'\n\
         cert-file: '/var/lib/cilium/etcd-client.crt'\n",
    )
    .unwrap();
    assert_eq!(
        config,
        EtcdConfig {
            endpoints: vec![
                "https://192.168.0.1:2379".into(),
                "https://192.168.0.2:2379".into()
            ],
            ca_file: Some("/var/lib/cilium/etcd-ca.pem".into()),
            cert_file: Some("/var/lib/cilium/etcd-client.crt".into()),
            key_file: Some("/var/lib/cilium/etcd-client.key".into()),
        }
    );
    assert!(config.uses_tls());
}

#[test]
fn config_variants_parse() {
    let config = parse(
        "endpoints: [\"127.0.0.1:2379\", 'http://h:1/'] # two\n\
         trusted-ca-file: \"certs/ca.pem\"\n",
    )
    .unwrap();
    assert_eq!(config.endpoints, ["http://127.0.0.1:2379", "http://h:1"]);
    // Relative to the configuration file's directory.
    assert_eq!(
        config.ca_file,
        Some(PathBuf::from("/etc/cilium/certs/ca.pem"))
    );
    assert!(!config.uses_tls());
    let config = parse("endpoints: localhost:2379\n").unwrap();
    assert_eq!(config.endpoints, ["http://localhost:2379"]);
    let config = parse("endpoints:\n  - 'a:1'   \n  -   b:2\n").unwrap();
    assert_eq!(config.endpoints, ["http://a:1", "http://b:2"]);
    assert_eq!(
        parse_yaml("k: 'it''s # not a comment'\n").unwrap(),
        [(
            1,
            "k".to_string(),
            YamlValue::Scalar("it's # not a comment".into())
        )]
    );
}

#[test]
fn bad_config_files_are_refused_with_the_line() {
    for (text, expected) in [
        ("", "no endpoints"),
        ("# nothing\n---\n", "no endpoints"),
        ("endpoints:\n", "no endpoints"),
        ("endpoints: []\n", "no endpoints"),
        ("endpoints:\n- a:1\nfoo: bar\n", "line 3: unknown key 'foo'"),
        (
            "endpoints: a:1\nendpoints: b:2\n",
            "line 2: 'endpoints' given twice",
        ),
        ("- a:1\n", "line 1: list item outside of a list"),
        (
            "endpoints: a:1\n- b:2\n",
            "line 2: list item outside of a list",
        ),
        ("endpoints:\n  nested: x\n", "line 2: nested values"),
        (
            "endpoints: ftp://a:1\n",
            "line 1: endpoints: 'ftp://a:1': scheme ftp",
        ),
        ("endpoints: a:99999\n", "bad port"),
        (
            "endpoints: a:1\nca-file: 'x\n",
            "line 2: ca-file: unterminated quote",
        ),
        (
            "endpoints: a:1\njust text\n",
            "line 2: expected 'key: value'",
        ),
        (
            "endpoints: a:1\ncert-file: c.pem\n",
            "cert-file and key-file",
        ),
        (
            "endpoints: a:1\nca-file: [a]\n",
            "line 2: 'ca-file' must be a file name",
        ),
        (
            "endpoints: a:1\n---\nendpoints: b:1\n",
            "line 2: only one YAML document",
        ),
    ] {
        match parse(text) {
            Ok(c) => panic!("{text:?} parsed: {c:?}"),
            Err(e) => assert!(e.contains(expected), "{text:?}: {e}"),
        }
    }
}

#[test]
fn config_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let err = EtcdConfig::from_file(&missing).unwrap_err().to_string();
    assert!(
        err.contains("missing.yaml") && err.contains("cannot read"),
        "{err}"
    );
    let file = dir.path().join("etcd.yaml");
    std::fs::write(&file, "endpoints: a:1\nbogus: 1\n").unwrap();
    let err = EtcdConfig::from_file(&file).unwrap_err().to_string();
    assert!(
        err.contains("etcd.yaml: line 2: unknown key 'bogus'"),
        "{err}"
    );

    // TLS files are read when the client is made.
    std::fs::write(
        &file,
        "endpoints: https://127.0.0.1:2379\nca-file: ca.pem\n",
    )
    .unwrap();
    let config = EtcdConfig::from_file(&file).unwrap();
    let err = Etcd::new(&config).unwrap_err().to_string();
    assert!(err.contains("ca-file") && err.contains("ca.pem"), "{err}");
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let err = Etcd::new(&config).unwrap_err().to_string();
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

#[test]
fn options_are_checked_against_the_backend() {
    let opts = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = |backend: &str, pairs: &[(&str, &str)]| {
        let result = connect(backend, &opts(pairs), dir.path());
        match result {
            Ok(kv) => panic!("{backend} {pairs:?} connected: {kv:?}"),
            Err(e) => {
                assert!(matches!(e, KvstoreError::Config { .. }), "{e:?}");
                e.to_string()
            }
        }
    };
    assert!(err("zookeeper", &[]).contains("unknown kvstore backend 'zookeeper'"));
    assert!(err("etcd", &[]).contains("needs --kvstore-opt etcd.address"));
    assert!(err("etcd", &[("consul.address", "a:1")])
        .contains("'consul.address' is for the consul backend, not etcd"));
    assert!(err("etcd", &[("etcd.adress", "a:1")]).contains(
        "unknown option 'etcd.adress' for the etcd backend (known: etcd.address, etcd.config)"
    ));
    assert!(
        err("etcd", &[("etcd.address", "a:1"), ("etcd.address", "b:1")]).contains("given twice")
    );
    assert!(err("etcd", &[("etcd.address", "a:1"), ("etcd.config", "/x")]).contains("not both"));
    assert!(err("etcd", &[("etcd.address", " ")]).contains("has no value"));
    assert!(err("consul", &[]).contains("needs --kvstore-opt consul.address"));
    assert!(err("consul", &[("etcd.config", "/x")]).contains("for the etcd backend, not consul"));
    assert!(err("embedded", &[("consul.address", "a:1")]).contains("not embedded"));
    assert!(err("embedded", &[("x", "1")]).contains("takes no options"));

    let spaced = opts(&[(" etcd.address ", " a:1 ")]);
    let checked = check_options("etcd", &spaced).unwrap();
    assert_eq!(checked, [("etcd.address".to_string(), "a:1")]);
    let kv = connect(
        "etcd",
        &opts(&[("etcd.address", "127.0.0.1:1,h:2")]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(kv.backend(), "etcd");
    let kv = connect(
        "consul",
        &opts(&[("consul.address", "127.0.0.1:1")]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(kv.backend(), "consul");
    let kv = connect("embedded", &[], dir.path()).unwrap();
    assert_eq!(kv.backend(), "embedded");
}

#[test]
fn an_unreachable_server_is_reported_quickly_with_op_and_key() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let etcd = Etcd::new(&EtcdConfig::from_address(&format!("127.0.0.1:{port}")).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let err = etcd.get("some/key").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, KvstoreError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("get 'some/key'") && text.contains("etcd server is unreachable"),
        "{text}"
    );
    let err = etcd.status().unwrap_err().to_string();
    assert!(err.contains("status"), "{err}");
}

#[test]
fn requests_are_base64_json() {
    assert_eq!(wire::range("a/b"), json!({"key": "YS9i"}));
    assert_eq!(
        wire::range_prefix("a/", true),
        json!({"key": "YS8=", "range_end": "YTA=", "keys_only": true})
    );
    // The empty prefix is every key: from \0 with no end.
    assert_eq!(
        wire::range_prefix("", false),
        json!({"key": "AA==", "range_end": "AA=="})
    );
    assert_eq!(
        wire::txn_create("k", b"v", Some(7)),
        json!({
            "compare": [{"key": "aw==", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": "aw==", "value": "dg==", "lease": "7"}}],
            "failure": [{"request_range": {"key": "aw=="}}],
        })
    );
    assert_eq!(
        wire::txn_swap("k", 5, b"v"),
        json!({
            "compare": [{"key": "aw==", "target": "MOD", "result": "EQUAL", "mod_revision": "5"}],
            "success": [{"request_put": {"key": "aw==", "value": "dg==", "ignore_lease": true}}],
        })
    );
    assert_eq!(
        wire::txn_swap("k", 0, b"v")["compare"][0]["target"],
        json!("CREATE")
    );
    assert_eq!(
        wire::txn_delete_if("k", 9),
        json!({
            "compare": [{"key": "aw==", "target": "MOD", "result": "EQUAL", "mod_revision": "9"}],
            "success": [{"request_delete_range": {"key": "aw=="}}],
        })
    );
    assert_eq!(
        wire::watch_create("p/", 12),
        json!({"create_request": {"key": "cC8=", "range_end": "cDA=",
            "start_revision": "12", "progress_notify": true}})
    );
    assert_eq!(wire::lease_grant(2), json!({"TTL": "2"}));
    assert_eq!(
        wire::lease_id(7_587_855_234_857_340_932),
        json!({"ID": "7587855234857340932"})
    );
}

#[test]
fn prefix_ends_follow_etcd() {
    assert_eq!(wire::prefix_end(b"a/"), b"a0");
    assert_eq!(wire::prefix_end(b"a\xff"), b"b");
    assert_eq!(wire::prefix_end(b"\xff\xff"), b"\0");
    assert_eq!(wire::prefix_end(b""), b"\0");
}

#[test]
fn lease_ttls_round_up_to_seconds() {
    assert_eq!(ttl_seconds(Duration::from_millis(400)), 1);
    assert_eq!(ttl_seconds(Duration::from_secs(2)), 2);
    assert_eq!(ttl_seconds(Duration::from_millis(2001)), 3);
    assert_eq!(ttl_seconds(Duration::ZERO), 1);
}

#[test]
fn responses_decode_with_string_numbers_and_omitted_defaults() {
    let r: wire::RangeResponse = serde_json::from_value(json!({
        "header": {"cluster_id": "1", "member_id": "2", "revision": "42", "raft_term": "3"},
        "kvs": [{"key": "YS9i", "create_revision": "5", "mod_revision": "41", "version": "2", "value": "dg=="}],
        "count": "1"
    }))
    .unwrap();
    assert_eq!(r.header.revision, 42);
    assert_eq!(
        decode_kv("get", &r.kvs[0]).unwrap(),
        (
            "a/b".to_string(),
            Entry {
                value: b"v".to_vec(),
                mod_revision: 41,
                lease: None,
            }
        )
    );
    // An empty range has no kvs; an empty value no value.
    let r: wire::RangeResponse =
        serde_json::from_value(json!({"header": {"revision": 3}})).unwrap();
    assert!(r.kvs.is_empty());
    let kv: wire::KeyValue =
        serde_json::from_value(json!({"key": "aw==", "mod_revision": 3})).unwrap();
    assert_eq!(decode_kv("get", &kv).unwrap().1.value, b"");
    let bad: wire::KeyValue = serde_json::from_value(json!({"key": "%%%"})).unwrap();
    assert!(matches!(
        decode_kv("get", &bad),
        Err(KvstoreError::Corrupt { .. })
    ));
    let lease: wire::LeaseResponse =
        serde_json::from_value(json!({"header": {}, "ID": "7587855234857340932", "TTL": "2"}))
            .unwrap();
    assert_eq!((lease.ID, lease.TTL), (7_587_855_234_857_340_932, 2));
    let txn: wire::TxnResponse = serde_json::from_value(json!({
        "header": {"revision": "9"},
        "responses": [{"response_delete_range": {"header": {}, "deleted": "1"}}],
        "succeeded": true
    }))
    .unwrap();
    assert!(txn.succeeded);
    assert_eq!(
        txn.responses[0]
            .response_delete_range
            .as_ref()
            .map(|d| d.deleted),
        Some(1)
    );
    assert_eq!(
        wire::error_message(
            &json!({"error": "etcdserver: requested lease not found", "code": 5,
            "message": "etcdserver: requested lease not found"})
        ),
        "etcdserver: requested lease not found"
    );
    assert_eq!(
        wire::error_message(&json!({"grpc_code": 14, "http_code": 503, "message": "unavailable"})),
        "unavailable"
    );
}

#[test]
fn stream_objects_are_split_across_reads() {
    let mut s = wire::ObjectSplitter::default();
    assert!(s.push(b"{\"result\":{\"a\":\"}{\\\"\"").is_empty());
    let objects = s.push(b",\"b\":[1,{}]}}\n{\"x\":1}{\"y\"");
    assert_eq!(
        objects,
        [
            b"{\"result\":{\"a\":\"}{\\\"\",\"b\":[1,{}]}}".to_vec(),
            b"{\"x\":1}".to_vec()
        ]
    );
    assert_eq!(s.push(b":2}\n"), [b"{\"y\":2}".to_vec()]);
    assert!(s.push(b"\n \n").is_empty());
}

fn offline_inner() -> Inner {
    Inner {
        http: HttpClient::new(vec!["http://127.0.0.1:9".into()], None),
        closed: AtomicBool::new(false),
    }
}

#[test]
fn watch_messages_become_events_and_track_the_revision() {
    let inner = offline_inner();
    let (sender, watch) = crate::kvstore::watch_channel();
    let state = WatchState {
        prefix: "p/".into(),
        last_revision: 10,
        known: KnownKeys::from_listing(&[(
            "p/old".to_string(),
            Entry {
                value: b"o".to_vec(),
                mod_revision: 3,
                lease: None,
            },
        )]),
    };
    let mut watcher = Watcher::new(&inner, &sender, state);
    let mut handle = |v: serde_json::Value| watcher.handle(v.to_string().as_bytes());
    assert_eq!(
        handle(json!({"result": {"header": {"revision": "15"}, "created": true}})),
        None
    );
    assert_eq!(
        handle(json!({"result": {"header": {"revision": "13"}, "events": [
            {"kv": {"key": "cC9h", "mod_revision": "11", "value": "MQ=="}},
            {"type": "DELETE", "kv": {"key": "cC9vbGQ=", "mod_revision": "12"}},
        ]}})),
        None
    );
    // A progress notification moves the revision on.
    assert_eq!(
        handle(json!({"result": {"header": {"revision": "20"}}})),
        None
    );
    assert_eq!(
        handle(json!({"result": {"header": {}, "canceled": true, "compact_revision": "18"}})),
        Some(Outcome::Compacted(18))
    );
    assert!(matches!(
        handle(json!({"error": {"grpc_code": 14, "message": "etcdserver: no leader"}})),
        Some(Outcome::Lost(m)) if m == "etcdserver: no leader"
    ));
    assert!(matches!(
        handle(json!({"result": {"canceled": true}})),
        Some(Outcome::Lost(_))
    ));
    assert_eq!(watcher.state.last_revision, 20);
    assert_eq!(
        watcher.state.known,
        KnownKeys::from_listing(&[(
            "p/a".to_string(),
            Entry {
                value: Vec::new(),
                mod_revision: 11,
                lease: None,
            }
        )])
    );
    assert_eq!(
        watch.try_recv().unwrap(),
        WatchEvent::Put {
            key: "p/a".into(),
            value: b"1".to_vec()
        }
    );
    assert_eq!(
        watch.try_recv().unwrap(),
        WatchEvent::Delete {
            key: "p/old".into()
        }
    );
    assert!(watch.try_recv().is_err());
    // Once the watch is dropped, events stop the stream.
    drop(watch);
    assert_eq!(
        watcher.handle(
            json!({"result": {"events": [{"kv": {"key": "cC9i", "mod_revision": "21"}}]}})
                .to_string()
                .as_bytes()
        ),
        Some(Outcome::Stopped)
    );
}

#[test]
fn a_watch_resumes_after_the_largest_revision_without_overflow() {
    // Found by fuzz/fuzz_targets/kvstore_records.rs: a server answering with revision
    // u64::MAX made the next stream's start revision overflow.
    let inner = offline_inner();
    let (sender, _watch) = crate::kvstore::watch_channel();
    let state = WatchState {
        prefix: "p/".into(),
        last_revision: 10,
        known: KnownKeys::default(),
    };
    let mut watcher = Watcher::new(&inner, &sender, state);
    let max = u64::MAX.to_string();
    let mut handle = |v: serde_json::Value| watcher.handle(v.to_string().as_bytes());
    assert_eq!(
        handle(json!({"result": {"header": {"revision": max}}})),
        None
    );
    assert!(matches!(
        handle(json!({"result": {"canceled": true}})),
        Some(Outcome::Lost(_))
    ));
    assert_eq!(watcher.next_revision(), u64::MAX);
    assert_eq!(
        wire::watch_create("p/", watcher.next_revision())["create_request"]["start_revision"],
        json!(max)
    );
    // Likewise from an event's modification revision.
    watcher.state.last_revision = 10;
    let event = json!({"result": {"events": [{"kv": {"key": "cC9h", "mod_revision": max}}]}});
    assert_eq!(watcher.handle(event.to_string().as_bytes()), None);
    assert_eq!(watcher.next_revision(), u64::MAX);
}

#[test]
fn a_dropped_watch_ends_its_thread() {
    // The server is unreachable: the thread retries with backoff until the watch is dropped.
    let inner = Arc::new(offline_inner());
    let (sender, watch) = crate::kvstore::watch_channel();
    let state = WatchState {
        prefix: "p/".into(),
        last_revision: 1,
        known: KnownKeys::default(),
    };
    let thread_inner = Arc::clone(&inner);
    let thread = std::thread::spawn(move || watch::run(&thread_inner, &sender, state));
    std::thread::sleep(Duration::from_millis(300));
    drop(watch);
    let started = std::time::Instant::now();
    thread.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
