//! The kvstore backends against real servers: the contract suite on a private etcd (plain,
//! and over TLS with client certificates through an `etcd.config` file), on consul when a
//! `consul` binary is installed, and a watch and a lease that survive an etcd outage.

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::kvstore::contract::{contract_suite_with, Options};
use agent_core::kvstore::{
    self, Entry, Kvstore, KvstoreError, LeaseId, Watch, WatchEvent, REQUEST_TIMEOUT,
};
use integration::etcd::{free_ports, program_exists, require_etcd, Etcd};
use integration::{stop_child, tail, text};

/// A store from [`kvstore::connect`] as the contract suite's `Box<dyn Kvstore>`.
struct Connected(Arc<dyn Kvstore>);

impl fmt::Debug for Connected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Kvstore for Connected {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn status(&self) -> Result<String, KvstoreError> {
        self.0.status()
    }
    fn get(&self, key: &str) -> Result<Option<Entry>, KvstoreError> {
        self.0.get(key)
    }
    fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Entry>, KvstoreError> {
        self.0.create_if_absent(key, value, lease)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, KvstoreError> {
        self.0.compare_and_swap(key, expected, value)
    }
    fn delete(&self, key: &str) -> Result<bool, KvstoreError> {
        self.0.delete(key)
    }
    fn delete_if(&self, key: &str, expected: u64) -> Result<bool, KvstoreError> {
        self.0.delete_if(key, expected)
    }
    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvstoreError> {
        self.0.list_prefix(prefix)
    }
    fn watch_prefix(&self, prefix: &str) -> Result<Watch, KvstoreError> {
        self.0.watch_prefix(prefix)
    }
    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, KvstoreError> {
        self.0.grant_lease(ttl)
    }
    fn keep_alive(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        self.0.keep_alive(lease)
    }
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        self.0.revoke_lease(lease)
    }
}

fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs the contract suite on stores made by `connect` and prints how long it took.
fn run_contract(name: &str, options: &Options, connect: &dyn Fn() -> Arc<dyn Kvstore>) {
    let started = Instant::now();
    contract_suite_with(&|| Box::new(Connected(connect())), options);
    eprintln!(
        "{name}: the kvstore contract suite passed in {:.1?}",
        started.elapsed()
    );
}

/// etcd grants leases of at least 2 s (with its default election timeout).
fn etcd_options() -> Options {
    Options {
        lease_ttl: Duration::from_secs(2),
        expiry_timeout: Duration::from_secs(10),
    }
}

#[test]
fn etcd_honours_the_contract() {
    if !require_etcd("etcd_honours_the_contract", false) {
        return;
    }
    let etcd = Etcd::start();
    let status = etcd.client().status().expect("status");
    assert!(
        status.starts_with("etcd: 1/1 endpoints reachable: http://127.0.0.1:")
            && status.contains("(Leader"),
        "{status}"
    );
    eprintln!("{status}");
    run_contract("etcd", &etcd_options(), &|| etcd.client());
    // The suite can run again on the same server (it clears its prefixes).
    run_contract("etcd (second run)", &etcd_options(), &|| etcd.client());
}

#[test]
fn etcd_over_tls_with_client_certificates_honours_the_contract() {
    let test = "etcd_over_tls_with_client_certificates_honours_the_contract";
    if !require_etcd(test, true) {
        return;
    }
    let etcd = Etcd::start_tls();
    assert!(etcd.client_url().starts_with("https://"));
    let status = etcd.client().status().expect("status over TLS");
    assert!(status.contains("https://127.0.0.1:"), "{status}");
    run_contract("etcd over TLS", &etcd_options(), &|| etcd.client());

    // Without the client certificate the server refuses the connection.
    let tls = etcd.tls.clone().expect("TLS files");
    let no_cert = etcd.dir.path().join("no-client-cert.yaml");
    std::fs::write(
        &no_cert,
        format!(
            "endpoints:\n- {}\nca-file: {}\n",
            etcd.client_url(),
            tls.ca.display()
        ),
    )
    .expect("write config");
    let state = etcd.dir.path().join("state");
    let kv = kvstore::connect(
        "etcd",
        &opts(&[("etcd.config", &no_cert.display().to_string())]),
        &state,
    )
    .expect("connect");
    let err = kv
        .get("k")
        .expect_err("a client without certificate was accepted");
    assert!(matches!(err, KvstoreError::Unreachable { .. }), "{err}");
    // Nor does a client trust a server whose CA it was not given.
    let other_ca = etcd.dir.path().join("public-roots.yaml");
    std::fs::write(
        &other_ca,
        format!(
            "endpoints:\n- {}\nkey-file: {}\ncert-file: {}\n",
            etcd.client_url(),
            tls.client_key.display(),
            tls.client_cert.display()
        ),
    )
    .expect("write config");
    let kv = kvstore::connect(
        "etcd",
        &opts(&[("etcd.config", &other_ca.display().to_string())]),
        &state,
    )
    .expect("connect");
    let err = kv.status().expect_err("an unknown CA was trusted");
    assert!(matches!(err, KvstoreError::Unreachable { .. }), "{err}");
}

/// The next event within `timeout`.
fn next(watch: &Watch, timeout: Duration) -> WatchEvent {
    watch
        .recv_timeout(timeout)
        .unwrap_or_else(|e| panic!("watch: no event within {timeout:?}: {e:?}"))
}

fn put(key: &str, value: &str) -> WatchEvent {
    WatchEvent::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
    }
}

/// Asserts a call failed as unreachable, within the request timeout, naming op and key.
fn assert_unreachable<T: fmt::Debug>(
    what: &str,
    key: &str,
    call: impl FnOnce() -> Result<T, KvstoreError>,
) {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    match result {
        Err(e @ KvstoreError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains(what) && text.contains(key), "{what}: {text}");
        }
        other => panic!("{what} during the outage: expected Unreachable, got {other:?}"),
    }
    assert!(
        took <= REQUEST_TIMEOUT + Duration::from_secs(1),
        "{what} took {took:?} to report the outage"
    );
}

#[test]
fn a_watch_and_a_lease_survive_an_etcd_outage() {
    if !require_etcd("a_watch_and_a_lease_survive_an_etcd_outage", false) {
        return;
    }
    let mut etcd = Etcd::start();
    let kv = etcd.client();
    let p = "outage/";
    let lease = kv.grant_lease(Duration::from_secs(15)).expect("grant");
    let created = kv
        .create_if_absent("outage/leased", b"l", Some(lease))
        .expect("create leased");
    assert_eq!(created, None);
    let watch = kv.watch_prefix(p).expect("watch");
    kv.create_if_absent("outage/before", b"b", None)
        .expect("create");
    assert_eq!(
        next(&watch, Duration::from_secs(5)),
        put("outage/before", "b")
    );

    let pid = etcd.pid();
    etcd.stop();
    let outage = Instant::now();
    assert_unreachable("get", "outage/before", || kv.get("outage/before"));
    assert_unreachable("create", "outage/x", || {
        kv.create_if_absent("outage/x", b"x", None)
    });
    assert_unreachable("compare-and-swap", "outage/x", || {
        kv.compare_and_swap("outage/x", 0, b"x")
    });
    assert_unreachable("keep-alive", &lease.to_string(), || kv.keep_alive(lease));
    assert_unreachable("list", "outage/", || kv.list_prefix(p));
    assert_unreachable("status", "", || kv.status());
    while outage.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        matches!(watch.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)),
        "the watch must stay open (and quiet) during the outage"
    );
    etcd.start_again();
    assert_ne!(etcd.pid(), pid);

    // The lease outlived the outage; keep-alives work again.
    kv.keep_alive(lease).expect("keep-alive after the restart");
    assert_eq!(
        kv.get("outage/leased").expect("get").map(|e| e.value),
        Some(b"l".to_vec())
    );
    // Writes made right after the restart, while the watch is still reconnecting, all
    // arrive on the old watch, in order.
    let mut expected = Vec::new();
    for i in 0..20 {
        let key = format!("outage/after/{i:02}");
        kv.create_if_absent(&key, i.to_string().as_bytes(), None)
            .expect("create after restart");
        expected.push(put(&key, &i.to_string()));
    }
    let rev = kv
        .get("outage/after/00")
        .expect("get")
        .expect("exists")
        .mod_revision;
    assert!(kv
        .compare_and_swap("outage/after/00", rev, b"swapped")
        .expect("cas"));
    expected.push(put("outage/after/00", "swapped"));
    assert!(kv.delete("outage/before").expect("delete"));
    expected.push(WatchEvent::Delete {
        key: "outage/before".into(),
    });
    kv.revoke_lease(lease).expect("revoke");
    expected.push(WatchEvent::Delete {
        key: "outage/leased".into(),
    });
    for (i, want) in expected.iter().enumerate() {
        let got = next(&watch, Duration::from_secs(15));
        assert_eq!(&got, want, "event {i} after the restart");
    }
    match watch.recv_timeout(Duration::from_millis(300)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("unexpected extra event {other:?}"),
    }
    assert!(
        matches!(
            kv.keep_alive(lease),
            Err(KvstoreError::LeaseNotFound { .. })
        ),
        "the revoked lease"
    );
}

/// A `consul agent -dev` on free loopback ports, killed on drop.
struct Consul {
    child: Child,
    http_port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Consul {
    fn start() -> Consul {
        let dir = tempfile::Builder::new()
            .prefix("cilium-it-consul-")
            .tempdir()
            .expect("temp dir");
        let [http, dns, server, lan, wan] = free_ports::<5>();
        let log = dir.path().join("consul.log");
        let out = std::fs::File::create(&log).expect("consul log");
        let ports = format!(
            "ports {{ http = {http}\n dns = {dns}\n server = {server}\n serf_lan = {lan}\n \
             serf_wan = {wan}\n grpc = -1\n grpc_tls = -1 }}"
        );
        let child = Command::new("consul")
            .args(["agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"])
            .arg(format!("-data-dir={}", dir.path().join("data").display()))
            .arg(format!("-hcl={ports}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("consul log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn consul: {e}"));
        let mut consul = Consul {
            child,
            http_port: http,
            _dir: dir,
            log,
        };
        let kv = consul.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !kv.status().is_ok_and(|s| s.contains("(leader ")) {
            if let Ok(Some(status)) = consul.child.try_wait() {
                panic!("consul exited ({status}):\n{}", consul.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "consul did not start:\n{}",
                consul.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        consul
    }

    fn client(&self) -> Arc<dyn Kvstore> {
        kvstore::connect(
            "consul",
            &opts(&[("consul.address", &format!("127.0.0.1:{}", self.http_port))]),
            &self.log,
        )
        .expect("connect to consul")
    }

    fn log_tail(&self) -> String {
        tail(&text(&std::fs::read(&self.log).unwrap_or_default()), 30)
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

#[test]
fn consul_honours_the_contract() {
    if !program_exists("consul") {
        eprintln!(
            "SKIPPED consul_honours_the_contract: no `consul` binary on PATH (Consul is not \
             packaged in Debian; install it to run this test)"
        );
        return;
    }
    let consul = Consul::start();
    // Consul's session TTLs are 10 s at least, and a session may live up to twice its TTL.
    let options = Options {
        lease_ttl: Duration::from_secs(10),
        expiry_timeout: Duration::from_secs(30),
    };
    run_contract("consul", &options, &|| consul.client());
}
