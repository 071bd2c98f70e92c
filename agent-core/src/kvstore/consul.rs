//! The consul backend, through consul's KV HTTP API (`/v1/kv/<key>`, `/v1/txn`,
//! `/v1/session/*`). Revisions are consul's modify indexes; create-if-absent is a
//! transaction of a `cas` at index 0 (and a `lock` by the lease's session), compare-and-swap a
//! `?cas=<index>` put (which keeps the session), deletes are transactions checking the index.
//! Leases are sessions with `Behavior=delete` (their keys are deleted when they end) and no
//! lock delay; consul's TTL is 10 s to 24 h, and a session may outlive its TTL up to twice.
//! Watches are blocking queries on the prefix, reported as the difference between listings
//! (changes between two answers are merged: a key changed twice shows its last value once).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{normalize_endpoint, HttpClient, Reply, TransportError};
use super::resync::KnownKeys;
use super::{
    check_key, sleep_unless, watch_channel, Entry, FuzzDecoded, Kvstore, KvstoreError, LeaseId,
    Watch, WatchSender,
};

const BACKEND: &str = "consul";
/// How long a watch's blocking query waits for a change.
const WATCH_WAIT: Duration = Duration::from_secs(5);
const MIN_TTL: u64 = 10;
const MAX_TTL: u64 = 86_400;

/// A client of a consul agent.
pub struct Consul {
    inner: Arc<Inner>,
    /// Our lease ids for consul's session UUIDs.
    sessions: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    next: u64,
    by_lease: HashMap<u64, String>,
}

struct Inner {
    http: HttpClient,
    closed: AtomicBool,
    watches: AtomicU64,
}

/// A KV entry as consul returns it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvPair {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    modify_index: u64,
}

impl Consul {
    /// A client of the agent at `address` (`host:port` or an http(s) URL); contacts nothing
    /// yet.
    pub fn new(address: &str) -> Result<Consul, KvstoreError> {
        let endpoint = normalize_endpoint(address)
            .map_err(|e| KvstoreError::config(format!("consul.address: {e}")))?;
        tracing::info!(%endpoint, "kvstore: consul");
        Ok(Consul {
            inner: Arc::new(Inner {
                http: HttpClient::new(vec![endpoint], None),
                closed: AtomicBool::new(false),
                watches: AtomicU64::new(0),
            }),
            sessions: Mutex::new(Sessions::default()),
        })
    }

    fn session(&self, lease: LeaseId) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.by_lease.get(&lease.0).cloned()
    }

    fn forget(&self, lease: LeaseId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.by_lease.remove(&lease.0);
    }

    /// Runs a transaction: `Ok(Ok(()))` when it committed, `Ok(Err(errors))` when an
    /// operation failed (nothing applied).
    fn txn(
        &self,
        op: &'static str,
        key: &str,
        ops: Value,
    ) -> Result<Result<(), String>, KvstoreError> {
        let reply = self.inner.send(
            op,
            key,
            "PUT",
            "/v1/txn",
            Some(ops.to_string().as_bytes()),
            None,
        )?;
        txn_outcome(op, key, &reply)
    }
}

impl Inner {
    fn send(
        &self,
        op: &'static str,
        key: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<Reply, KvstoreError> {
        self.http
            .send(method, path, body, timeout, &["X-Consul-Index"])
            .map_err(|e| unreachable(op, key, e))
    }

    /// The entries under `prefix` (sorted by key) and the index of the answer; with
    /// `wait`, a blocking query returning when the index passes `index` (or after `wait`).
    fn list(
        &self,
        op: &'static str,
        prefix: &str,
        wait: Option<(u64, Duration)>,
    ) -> Result<(Vec<(String, Entry)>, u64), KvstoreError> {
        let mut path = format!("/v1/kv/{}?recurse", encode_key(prefix));
        let mut timeout = None;
        if let Some((index, wait)) = wait {
            path.push_str(&format!("&index={index}&wait={}s", wait.as_secs()));
            // Consul adds up to wait/16 of jitter.
            timeout = Some(wait + wait / 8 + super::REQUEST_TIMEOUT);
        }
        let reply = self.send(op, prefix, "GET", &path, None, timeout)?;
        decode_listing(op, prefix, &reply)
    }
}

/// A recursive (or blocking) query's answer: the entries under `prefix`, sorted by key, and
/// the index of the answer.
fn decode_listing(
    op: &'static str,
    prefix: &str,
    reply: &Reply,
) -> Result<(Vec<(String, Entry)>, u64), KvstoreError> {
    let index = reply
        .header("X-Consul-Index")
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let pairs: Vec<KvPair> = match reply.status {
        404 => Vec::new(),
        200 => serde_json::from_slice(&reply.body).map_err(|e| KvstoreError::Corrupt {
            op,
            key: prefix.to_string(),
            reason: e.to_string(),
        })?,
        _ => return Err(rejected(op, prefix, reply)),
    };
    let mut entries = pairs
        .into_iter()
        .map(|p| decode_pair(op, p))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((entries, index))
}

/// The answer to a read of `key`: its entry, if the answer has it.
fn decode_get(op: &'static str, key: &str, reply: &Reply) -> Result<Option<Entry>, KvstoreError> {
    match reply.status {
        404 => Ok(None),
        200 => {
            let pairs: Vec<KvPair> =
                serde_json::from_slice(&reply.body).map_err(|e| KvstoreError::Corrupt {
                    op,
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
            pairs
                .into_iter()
                .find(|p| p.key == key)
                .map(|p| decode_pair(op, p).map(|(_, e)| e))
                .transpose()
        }
        _ => Err(rejected(op, key, reply)),
    }
}

/// The answer to a transaction: `Ok(Ok(()))` when it committed, `Ok(Err(errors))` when an
/// operation failed (nothing applied).
fn txn_outcome(
    op: &'static str,
    key: &str,
    reply: &Reply,
) -> Result<Result<(), String>, KvstoreError> {
    match reply.status {
        200 => Ok(Ok(())),
        409 => {
            let errors = serde_json::from_slice::<Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("Errors").cloned())
                .map(|e| e.to_string())
                .unwrap_or_else(|| reply.text());
            Ok(Err(errors))
        }
        _ => Err(rejected(op, key, reply)),
    }
}

/// The session ID of the answer to a session creation.
fn session_id(op: &'static str, key: &str, reply: &Reply) -> Result<String, KvstoreError> {
    if reply.status != 200 {
        return Err(rejected(op, key, reply));
    }
    serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("ID").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| KvstoreError::Corrupt {
            op,
            key: key.to_string(),
            reason: format!("no session ID in '{}'", reply.text()),
        })
}

/// Whether the answer to a session renewal says the session lives (false: it ended).
fn session_renewed(op: &'static str, session: &str, reply: &Reply) -> Result<bool, KvstoreError> {
    match reply.status {
        200 if reply.text() != "null" && reply.text() != "[]" => Ok(true),
        200 | 404 => Ok(false),
        _ => Err(rejected(op, session, reply)),
    }
}

/// Fuzzing only (`fuzz/fuzz_targets/kvstore_records.rs`): reads `body`, answered with HTTP
/// `status` and the `X-Consul-Index` header `index`, as each answer the client reads (a
/// recursive listing and a blocking query on it, a read of `key`, a transaction, a
/// compare-and-swap, a session creation and renewal), through the functions the [`Consul`]
/// methods and the watch thread use, without an agent.
#[doc(hidden)]
pub fn fuzz_decode(status: u16, index: Option<&str>, key: &str, body: &[u8]) -> FuzzDecoded {
    let reply = Reply {
        status,
        body: body.to_vec(),
        headers: index
            .map(|i| ("X-Consul-Index".to_string(), i.to_string()))
            .into_iter()
            .collect(),
    };
    let listing = decode_listing("list", "cilium/", &reply).map(|(entries, _)| entries);
    // What a watch that knew no key reports for the answer to its blocking query.
    let events = match &listing {
        Ok(entries) => KnownKeys::default().resync(entries.clone()),
        Err(_) => Vec::new(),
    };
    let _ = txn_outcome("create", key, &reply);
    let _ = parse_bool("compare-and-swap", key, &reply);
    let _ = session_id("grant-lease", "ttl 10s", &reply);
    let _ = session_renewed("keep-alive", "session", &reply);
    FuzzDecoded {
        listing,
        get: decode_get("get", key, &reply),
        events,
        stream_objects: Vec::new(),
        stream_objects_bytewise: Vec::new(),
    }
}

fn unreachable(op: &'static str, key: &str, source: TransportError) -> KvstoreError {
    KvstoreError::Unreachable {
        backend: BACKEND,
        op,
        key: key.to_string(),
        source: Box::new(source),
    }
}

fn rejected(op: &'static str, key: &str, reply: &Reply) -> KvstoreError {
    KvstoreError::Rejected {
        backend: BACKEND,
        op,
        key: key.to_string(),
        reason: format!("HTTP {}: {}", reply.status, reply.text()),
    }
}

fn decode_pair(op: &'static str, pair: KvPair) -> Result<(String, Entry), KvstoreError> {
    let value = match pair.value {
        Some(v) => STANDARD.decode(&v).map_err(|e| KvstoreError::Corrupt {
            op,
            key: pair.key.clone(),
            reason: format!("bad base64 value: {e}"),
        })?,
        None => Vec::new(),
    };
    Ok((
        pair.key,
        Entry {
            value,
            mod_revision: pair.modify_index,
            lease: None,
        },
    ))
}

/// A key in a URL path: everything but unreserved characters and `/` percent-encoded.
pub(crate) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The operations of create-if-absent: set at index 0 (= only if absent), then take the
/// session's lock, which attaches the key to it.
pub(crate) fn create_ops(key: &str, value: &[u8], session: Option<&str>) -> Value {
    let value = STANDARD.encode(value);
    let mut ops = vec![json!({"KV": {"Verb": "cas", "Key": key, "Value": value, "Index": 0}})];
    if let Some(session) = session {
        ops.push(json!({"KV": {"Verb": "lock", "Key": key, "Value": value, "Session": session}}));
    }
    Value::Array(ops)
}

/// The operations of a delete at a modify index.
pub(crate) fn delete_ops(key: &str, index: u64) -> Value {
    json!([
        {"KV": {"Verb": "check-index", "Key": key, "Index": index}},
        {"KV": {"Verb": "delete", "Key": key}},
    ])
}

/// A session TTL in consul's whole seconds, within its bounds.
pub(crate) fn session_ttl(ttl: Duration) -> u64 {
    let mut secs = ttl.as_secs();
    if ttl.subsec_nanos() > 0 {
        secs += 1;
    }
    secs.clamp(MIN_TTL, MAX_TTL)
}

fn parse_bool(op: &'static str, key: &str, reply: &Reply) -> Result<bool, KvstoreError> {
    if reply.status != 200 {
        return Err(rejected(op, key, reply));
    }
    match reply.text().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(KvstoreError::Corrupt {
            op,
            key: key.to_string(),
            reason: format!("expected true or false, got '{other}'"),
        }),
    }
}

impl Kvstore for Consul {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn status(&self) -> Result<String, KvstoreError> {
        const OP: &str = "status";
        let endpoint = self.inner.http.endpoints().join(",");
        let leader = self
            .inner
            .send(OP, "", "GET", "/v1/status/leader", None, None)?;
        let leader =
            serde_json::from_slice::<String>(&leader.body).unwrap_or_else(|_| leader.text());
        let version = self
            .inner
            .send(OP, "", "GET", "/v1/agent/self", None, None)
            .ok()
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .and_then(|v| {
                v.pointer("/Config/Version")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown version".to_string());
        let leader = if leader.is_empty() {
            "no leader".to_string()
        } else {
            format!("leader {leader}")
        };
        Ok(format!("consul: {endpoint} - {version} ({leader})"))
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, KvstoreError> {
        const OP: &str = "get";
        check_key(OP, key)?;
        let reply = self.inner.send(
            OP,
            key,
            "GET",
            &format!("/v1/kv/{}", encode_key(key)),
            None,
            None,
        )?;
        decode_get(OP, key, &reply)
    }

    fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Entry>, KvstoreError> {
        const OP: &str = "create";
        check_key(OP, key)?;
        let session = match lease {
            Some(l) => Some(
                self.session(l)
                    .ok_or(KvstoreError::LeaseNotFound { op: OP, lease: l })?,
            ),
            None => None,
        };
        loop {
            match self.txn(OP, key, create_ops(key, value, session.as_deref()))? {
                Ok(()) => return Ok(None),
                Err(errors) if errors.to_ascii_lowercase().contains("session") => {
                    if let Some(l) = lease {
                        self.forget(l);
                        return Err(KvstoreError::LeaseNotFound { op: OP, lease: l });
                    }
                    return Err(KvstoreError::Rejected {
                        backend: BACKEND,
                        op: OP,
                        key: key.to_string(),
                        reason: errors,
                    });
                }
                Err(_) => {
                    if let Some(existing) = self.get(key)? {
                        return Ok(Some(existing));
                    }
                    // Deleted in between: try again.
                }
            }
        }
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, KvstoreError> {
        const OP: &str = "compare-and-swap";
        check_key(OP, key)?;
        let path = format!("/v1/kv/{}?cas={expected}", encode_key(key));
        let reply = self.inner.send(OP, key, "PUT", &path, Some(value), None)?;
        parse_bool(OP, key, &reply)
    }

    fn delete(&self, key: &str) -> Result<bool, KvstoreError> {
        const OP: &str = "delete";
        check_key(OP, key)?;
        loop {
            let Some(entry) = self.get(key)? else {
                return Ok(false);
            };
            if self
                .txn(OP, key, delete_ops(key, entry.mod_revision))?
                .is_ok()
            {
                return Ok(true);
            }
        }
    }

    fn delete_if(&self, key: &str, expected: u64) -> Result<bool, KvstoreError> {
        const OP: &str = "delete-if";
        check_key(OP, key)?;
        if expected == 0 {
            return Ok(false);
        }
        Ok(self.txn(OP, key, delete_ops(key, expected))?.is_ok())
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvstoreError> {
        Ok(self.inner.list("list", prefix, None)?.0)
    }

    fn watch_prefix(&self, prefix: &str) -> Result<Watch, KvstoreError> {
        const OP: &str = "watch";
        let (listing, index) = self.inner.list(OP, prefix, None)?;
        let (sender, watch) = watch_channel();
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_string();
        let known = KnownKeys::from_listing(&listing);
        let thread_prefix = prefix.clone();
        std::thread::Builder::new()
            .name("kvstore-consul-watch".into())
            .spawn(move || poll(&inner, &sender, &thread_prefix, index, known))
            .map_err(|e| KvstoreError::Unreachable {
                backend: BACKEND,
                op: OP,
                key: prefix,
                source: Box::new(e),
            })?;
        Ok(watch)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, KvstoreError> {
        const OP: &str = "grant-lease";
        let secs = session_ttl(ttl);
        let key = format!("ttl {secs}s");
        let body = json!({
            "Name": "cilium-kvstore",
            "TTL": format!("{secs}s"),
            "Behavior": "delete",
            "LockDelay": "0s",
        })
        .to_string();
        let reply = self.inner.send(
            OP,
            &key,
            "PUT",
            "/v1/session/create",
            Some(body.as_bytes()),
            None,
        )?;
        let id = session_id(OP, &key, &reply)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.next += 1;
        let lease = sessions.next;
        sessions.by_lease.insert(lease, id);
        Ok(LeaseId(lease))
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        const OP: &str = "keep-alive";
        let session = self
            .session(lease)
            .ok_or(KvstoreError::LeaseNotFound { op: OP, lease })?;
        let reply = self.inner.send(
            OP,
            &session,
            "PUT",
            &format!("/v1/session/renew/{session}"),
            Some(b""),
            None,
        )?;
        if session_renewed(OP, &session, &reply)? {
            Ok(())
        } else {
            self.forget(lease);
            Err(KvstoreError::LeaseNotFound { op: OP, lease })
        }
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        const OP: &str = "revoke-lease";
        let Some(session) = self.session(lease) else {
            return Ok(());
        };
        let reply = self.inner.send(
            OP,
            &session,
            "PUT",
            &format!("/v1/session/destroy/{session}"),
            Some(b""),
            None,
        )?;
        if reply.status != 200 && reply.status != 404 {
            return Err(rejected(OP, &session, &reply));
        }
        self.forget(lease);
        Ok(())
    }
}

/// A watch's thread: blocking queries on the prefix, each answer diffed with what was
/// reported; ends when the watch or the client is dropped (within [`WATCH_WAIT`]).
fn poll(inner: &Inner, sender: &WatchSender, prefix: &str, mut index: u64, mut known: KnownKeys) {
    inner.watches.fetch_add(1, Ordering::Relaxed);
    let stop = || sender.is_closed() || inner.closed.load(Ordering::Relaxed);
    let mut backoff = Duration::from_millis(100);
    while !stop() {
        match inner.list("watch", prefix, Some((index, WATCH_WAIT))) {
            Ok((listing, new_index)) => {
                backoff = Duration::from_millis(100);
                // An index going backwards (snapshot restore) restarts the blocking queries.
                index = if new_index < index { 0 } else { new_index };
                for event in known.resync(listing) {
                    if !sender.send(event) {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("kvstore consul: watch of {prefix}: {e}; retrying");
                if !sleep_unless(backoff, &stop) {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    inner.watches.fetch_sub(1, Ordering::Relaxed);
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Relaxed);
    }
}

impl fmt::Debug for Consul {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consul")
            .field("endpoint", &self.inner.http.endpoints())
            .field("watches", &self.inner.watches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_but_slashes() {
        assert_eq!(encode_key("a/b c/ü?&=#"), "a/b%20c/%C3%BC%3F%26%3D%23");
        assert_eq!(encode_key("cilium/state/nodes/v1"), "cilium/state/nodes/v1");
    }

    #[test]
    fn create_is_a_cas_at_zero_then_a_lock_by_the_session() {
        assert_eq!(
            create_ops("k", b"v", Some("sess")),
            json!([
                {"KV": {"Verb": "cas", "Key": "k", "Value": "dg==", "Index": 0}},
                {"KV": {"Verb": "lock", "Key": "k", "Value": "dg==", "Session": "sess"}},
            ])
        );
        assert_eq!(create_ops("k", b"", None).as_array().map(Vec::len), Some(1));
        assert_eq!(
            delete_ops("k", 7),
            json!([
                {"KV": {"Verb": "check-index", "Key": "k", "Index": 7}},
                {"KV": {"Verb": "delete", "Key": "k"}},
            ])
        );
    }

    #[test]
    fn session_ttls_are_within_consul_bounds() {
        assert_eq!(session_ttl(Duration::from_millis(400)), 10);
        assert_eq!(session_ttl(Duration::from_millis(30_001)), 31);
        assert_eq!(session_ttl(Duration::from_secs(1_000_000)), 86_400);
    }

    #[test]
    fn pairs_decode_with_null_values() {
        let pairs: Vec<KvPair> = serde_json::from_str(
            r#"[{"LockIndex":0,"Key":"a","Flags":0,"Value":"aGk=","CreateIndex":5,"ModifyIndex":9},
                {"Key":"b","Value":null,"ModifyIndex":10}]"#,
        )
        .unwrap();
        let decoded: Vec<_> = pairs
            .into_iter()
            .map(|p| decode_pair("get", p).unwrap())
            .collect();
        assert_eq!(decoded[0].0, "a");
        assert_eq!(
            decoded[0].1,
            Entry {
                value: b"hi".to_vec(),
                mod_revision: 9,
                lease: None,
            }
        );
        assert_eq!(decoded[1].1.value, b"");
    }

    #[test]
    fn addresses_default_to_http() {
        let consul = Consul::new("127.0.0.1:8500").unwrap();
        assert_eq!(consul.inner.http.endpoints(), ["http://127.0.0.1:8500"]);
        assert!(matches!(
            Consul::new("ftp://x:1"),
            Err(KvstoreError::Config { .. })
        ));
    }
}
