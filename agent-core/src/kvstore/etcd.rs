//! The etcd v3 backend, through etcd's JSON gateway over HTTP/1.1 (`/v3/kv/range`, `put`,
//! `txn`, `deleterange`, `/v3/lease/*`, `/v3/watch`, `/v3/maintenance/status`).
//! Create-if-absent, compare-and-swap and delete-if are single transactions comparing the
//! key's create revision (0 = absent) or modification revision; revisions are etcd's.
//! Leases are etcd leases: their TTL is in whole seconds, rounded up, and etcd raises it to
//! its minimum (about 2 s with the default election timeout). Every request has a
//! [`super::REQUEST_TIMEOUT`] deadline; an unreachable cluster is [`KvstoreError::Unreachable`].

mod config;
#[cfg(test)]
mod tests;
mod watch;
mod wire;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use config::EtcdConfig;

use super::http::{HttpClient, Reply, TransportError};
use super::resync::KnownKeys;
use super::{check_key, watch_channel, Entry, FuzzDecoded, Kvstore, KvstoreError, LeaseId, Watch};

const BACKEND: &str = "etcd";

/// A client of an etcd cluster.
pub struct Etcd {
    inner: Arc<Inner>,
}

/// What the client and its watch threads share.
pub(super) struct Inner {
    http: HttpClient,
    /// Set when the [`Etcd`] is dropped: its watches end.
    closed: AtomicBool,
}

impl Etcd {
    /// A client of the cluster; reads the TLS files now, contacts no server yet.
    pub fn new(config: &EtcdConfig) -> Result<Etcd, KvstoreError> {
        if config.endpoints.is_empty() {
            return Err(KvstoreError::config("etcd: no endpoint"));
        }
        let tls = config.tls_config()?;
        tracing::info!(endpoints = ?config.endpoints, tls = tls.is_some(), "kvstore: etcd");
        Ok(Etcd {
            inner: Arc::new(Inner {
                http: HttpClient::new(config.endpoints.clone(), tls),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &[String] {
        self.inner.http.endpoints()
    }
}

/// Why a call failed, before it is named.
enum CallError {
    Transport(TransportError),
    /// The server answered with an error.
    Server(String),
    /// The answer cannot be read.
    Decode(String),
}

impl Inner {
    /// POSTs a JSON request to a gateway path and decodes the answer.
    fn call<T: DeserializeOwned>(&self, path: &str, request: &Value) -> Result<T, CallError> {
        let body = request.to_string();
        let reply = self
            .http
            .send("POST", path, Some(body.as_bytes()), None, &[])
            .map_err(CallError::Transport)?;
        decode_reply(path, &reply)
    }

    /// [`Inner::call`] with the error named after `op` and `key`; a server error about the
    /// lease becomes [`KvstoreError::LeaseNotFound`] when `lease` is given.
    fn request<T: DeserializeOwned>(
        &self,
        op: &'static str,
        key: &str,
        path: &str,
        request: &Value,
        lease: Option<LeaseId>,
    ) -> Result<T, KvstoreError> {
        self.call(path, request)
            .map_err(|e| name_error(e, op, key, lease))
    }

    /// The entries under `prefix` and the revision of the listing.
    fn list(
        &self,
        op: &'static str,
        prefix: &str,
    ) -> Result<(Vec<(String, Entry)>, u64), KvstoreError> {
        let response: wire::RangeResponse = self.request(
            op,
            prefix,
            "/v3/kv/range",
            &wire::range_prefix(prefix, false),
            None,
        )?;
        Ok((decode_kvs(op, &response.kvs)?, response.header.revision))
    }

    fn stopped(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

fn name_error(e: CallError, op: &'static str, key: &str, lease: Option<LeaseId>) -> KvstoreError {
    match e {
        CallError::Transport(source) => KvstoreError::Unreachable {
            backend: BACKEND,
            op,
            key: key.to_string(),
            source: Box::new(source),
        },
        CallError::Server(reason) => match lease {
            Some(lease) if reason.contains("lease not found") => {
                KvstoreError::LeaseNotFound { op, lease }
            }
            _ => KvstoreError::Rejected {
                backend: BACKEND,
                op,
                key: key.to_string(),
                reason,
            },
        },
        CallError::Decode(reason) => KvstoreError::Corrupt {
            op,
            key: key.to_string(),
            reason,
        },
    }
}

/// The answer to a gateway request to `path`: its JSON when the status is 200, else the
/// server's error.
fn decode_reply<T: DeserializeOwned>(path: &str, reply: &Reply) -> Result<T, CallError> {
    if reply.status != 200 {
        let message = serde_json::from_slice::<Value>(&reply.body)
            .map(|v| wire::error_message(&v))
            .unwrap_or_else(|_| reply.text());
        return Err(CallError::Server(format!(
            "HTTP {}: {message}",
            reply.status
        )));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| CallError::Decode(format!("{path}: {e}: {}", reply.text())))
}

/// The key-values of a range response as (key, entry).
fn decode_kvs(
    op: &'static str,
    kvs: &[wire::KeyValue],
) -> Result<Vec<(String, Entry)>, KvstoreError> {
    kvs.iter().map(|kv| decode_kv(op, kv)).collect()
}

/// A gateway key-value as (key, entry).
fn decode_kv(op: &'static str, kv: &wire::KeyValue) -> Result<(String, Entry), KvstoreError> {
    let corrupt = |reason: String| KvstoreError::Corrupt {
        op,
        key: kv.key.clone(),
        reason,
    };
    let key = String::from_utf8(wire::unb64(&kv.key).map_err(corrupt)?)
        .map_err(|e| corrupt(format!("key is not UTF-8: {e}")))?;
    let value = wire::unb64(&kv.value).map_err(corrupt)?;
    Ok((
        key,
        Entry {
            value,
            mod_revision: kv.mod_revision,
            lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
        },
    ))
}

/// The first key-value of a range response.
fn first_entry(
    op: &'static str,
    response: &wire::RangeResponse,
) -> Result<Option<Entry>, KvstoreError> {
    response
        .kvs
        .first()
        .map(|kv| decode_kv(op, kv).map(|(_, entry)| entry))
        .transpose()
}

/// The outcome of a create-if-absent transaction: `None` = created, else the existing entry.
fn created(
    op: &'static str,
    key: &str,
    response: &wire::TxnResponse,
) -> Result<Option<Entry>, KvstoreError> {
    if response.succeeded {
        return Ok(None);
    }
    let range = response
        .responses
        .first()
        .and_then(|r| r.response_range.as_ref());
    match range.map(|r| first_entry(op, r)).transpose()?.flatten() {
        Some(existing) => Ok(Some(existing)),
        None => Err(KvstoreError::Corrupt {
            op,
            key: key.to_string(),
            reason: "the key exists but the transaction did not return it".to_string(),
        }),
    }
}

/// Whether a delete-if transaction deleted the key.
fn deleted_if(response: &wire::TxnResponse) -> bool {
    let deleted = response
        .responses
        .first()
        .and_then(|r| r.response_delete_range.as_ref())
        .map_or(0, |d| d.deleted);
    response.succeeded && deleted > 0
}

/// The lease a grant answer names (`key` names the request, `seconds` the TTL asked).
fn granted(
    op: &'static str,
    key: &str,
    seconds: u64,
    response: &wire::LeaseResponse,
) -> Result<LeaseId, KvstoreError> {
    if !response.error.is_empty() || response.ID == 0 {
        return Err(KvstoreError::Rejected {
            backend: BACKEND,
            op,
            key: key.to_string(),
            reason: format!("no lease granted: {}", response.error),
        });
    }
    if response.TTL > 0 && response.TTL.unsigned_abs() != seconds {
        tracing::debug!(
            "kvstore etcd: lease {:x} granted with a TTL of {}s (asked {seconds}s)",
            response.ID,
            response.TTL
        );
    }
    Ok(LeaseId(response.ID))
}

/// The answer of the keep-alive stream to one keep-alive of `lease`: its first message.
fn kept_alive(
    op: &'static str,
    key: &str,
    lease: LeaseId,
    reply: &Reply,
) -> Result<(), KvstoreError> {
    let mut splitter = wire::ObjectSplitter::default();
    let first = splitter.push(&reply.body).into_iter().next();
    let parsed = first.map(|o| serde_json::from_slice::<Value>(&o));
    let messages = match parsed {
        Some(Ok(v)) if reply.status == 200 => v,
        Some(Ok(v)) => {
            let reason = format!("HTTP {}: {}", reply.status, wire::error_message(&v));
            return Err(name_error(CallError::Server(reason), op, key, Some(lease)));
        }
        _ => {
            let reason = format!(
                "HTTP {}: unreadable answer '{}'",
                reply.status,
                reply.text()
            );
            return Err(name_error(CallError::Decode(reason), op, key, Some(lease)));
        }
    };
    let message: wire::StreamMessage<wire::LeaseResponse> = serde_json::from_value(messages)
        .map_err(|e| name_error(CallError::Decode(e.to_string()), op, key, Some(lease)))?;
    if let Some(error) = message.error {
        let reason = wire::error_message(&error);
        return Err(name_error(CallError::Server(reason), op, key, Some(lease)));
    }
    match message.result {
        Some(r) if r.TTL > 0 => Ok(()),
        _ => Err(KvstoreError::LeaseNotFound { op, lease }),
    }
}

/// Fuzzing only (`fuzz/fuzz_targets/kvstore_records.rs`): reads `body`, answered with HTTP
/// `status`, as each gateway answer the client reads (range, create-if-absent,
/// compare-and-swap and delete-if transactions, delete-range, lease grant, keep-alive and
/// revoke) and as the bytes of a watch stream, through the functions the [`Etcd`] methods
/// and the watch thread use, without a server.
#[doc(hidden)]
pub fn fuzz_decode(status: u16, body: &[u8]) -> FuzzDecoded {
    /// What `Inner::request` makes of the answer.
    fn read<T: DeserializeOwned>(
        op: &'static str,
        path: &str,
        lease: Option<LeaseId>,
        reply: &Reply,
    ) -> Result<T, KvstoreError> {
        decode_reply(path, reply).map_err(|e| name_error(e, op, "cilium/fuzz", lease))
    }
    let reply = Reply {
        status,
        body: body.to_vec(),
        headers: Vec::new(),
    };
    let key = "cilium/fuzz";
    let lease = LeaseId(7);
    let range = read("list", "/v3/kv/range", None, &reply);
    let listing = range.and_then(|r: wire::RangeResponse| decode_kvs("list", &r.kvs));
    let range = read("get", "/v3/kv/range", None, &reply);
    let get = range.and_then(|r: wire::RangeResponse| first_entry("get", &r));
    let txn = read("create", "/v3/kv/txn", Some(lease), &reply);
    let _ = txn.and_then(|t: wire::TxnResponse| created("create", key, &t));
    let txn = read("delete-if", "/v3/kv/txn", None, &reply);
    let _ = txn.map(|t: wire::TxnResponse| (t.succeeded, deleted_if(&t)));
    let delete = read("delete", "/v3/kv/deleterange", None, &reply);
    let _ = delete.map(|d: wire::DeleteRangeResponse| d.deleted > 0);
    let grant = read("grant-lease", "/v3/lease/grant", None, &reply);
    let _ = grant.and_then(|g: wire::LeaseResponse| granted("grant-lease", key, 2, &g));
    let _ = kept_alive("keep-alive", key, lease, &reply);
    let _: Result<Value, _> = read("revoke-lease", "/v3/lease/revoke", Some(lease), &reply);

    // The body as a watch stream, read whole and one byte at a time. Every message is
    // handled; after one that ends the stream the watch reconnects from the next revision
    // (keeping its state).
    let mut whole = wire::ObjectSplitter::default();
    let stream_objects = whole.push(body);
    let mut bytewise = wire::ObjectSplitter::default();
    let stream_objects_bytewise = body.iter().flat_map(|b| bytewise.push(&[*b])).collect();
    let inner = Inner {
        http: HttpClient::new(vec!["http://127.0.0.1:9".into()], None),
        closed: AtomicBool::new(false),
    };
    let (sender, watch) = watch_channel();
    let state = watch::WatchState {
        prefix: "cilium/".into(),
        last_revision: 1,
        known: KnownKeys::default(),
    };
    let mut watcher = watch::Watcher::new(&inner, &sender, state);
    for object in &stream_objects {
        if watcher.handle(object).is_some() {
            let _ = wire::watch_create(&watcher.state.prefix, watcher.next_revision());
        }
    }
    drop(sender);
    FuzzDecoded {
        listing,
        get,
        events: watch.collect(),
        stream_objects,
        stream_objects_bytewise,
    }
}

/// A lease TTL in etcd's whole seconds, rounded up, at least 1.
pub(super) fn ttl_seconds(ttl: Duration) -> u64 {
    let mut secs = ttl.as_secs();
    if ttl.subsec_nanos() > 0 {
        secs += 1;
    }
    secs.max(1)
}

impl Kvstore for Etcd {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// `etcd: 1/1 endpoints reachable: http://127.0.0.1:2379 - 3.4.23 (Leader, revision 7,
    /// db 20 KiB)`.
    fn status(&self) -> Result<String, KvstoreError> {
        let http = &self.inner.http;
        let body = "{}";
        let mut parts = Vec::new();
        let mut reachable = 0;
        let mut last_error = None;
        for (index, endpoint) in http.endpoints().iter().enumerate() {
            let reply = http
                .send_to(
                    index,
                    "POST",
                    "/v3/maintenance/status",
                    Some(body.as_bytes()),
                    None,
                    &[],
                )
                .map_err(|a| a.into_error());
            let status = match reply {
                Ok(reply) if reply.status == 200 => {
                    serde_json::from_slice::<wire::StatusResponse>(&reply.body)
                        .map_err(|e| format!("unreadable status: {e}"))
                }
                Ok(reply) => Err(format!("HTTP {}: {}", reply.status, reply.text())),
                Err(e) => {
                    let text = e.reason.clone();
                    last_error = Some(e);
                    Err(text)
                }
            };
            match status {
                Ok(s) => {
                    reachable += 1;
                    let role = if s.leader != 0 && s.leader == s.header.member_id {
                        "Leader"
                    } else {
                        "Follower"
                    };
                    parts.push(format!(
                        "{endpoint} - {} ({role}, revision {}, db {} KiB)",
                        s.version,
                        s.header.revision,
                        s.dbSize / 1024
                    ));
                }
                Err(reason) => parts.push(format!("{endpoint} - unreachable: {reason}")),
            }
        }
        if reachable == 0 {
            let source = last_error.unwrap_or_else(|| TransportError {
                endpoint: http.endpoints().join(","),
                reason: parts.join("; "),
            });
            return Err(KvstoreError::Unreachable {
                backend: BACKEND,
                op: "status",
                key: String::new(),
                source: Box::new(source),
            });
        }
        Ok(format!(
            "etcd: {reachable}/{} endpoints reachable: {}",
            http.endpoints().len(),
            parts.join("; ")
        ))
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, KvstoreError> {
        const OP: &str = "get";
        let response: wire::RangeResponse =
            self.inner
                .request(OP, key, "/v3/kv/range", &wire::range(key), None)?;
        first_entry(OP, &response)
    }

    fn create_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<Entry>, KvstoreError> {
        const OP: &str = "create";
        check_key(OP, key)?;
        let request = wire::txn_create(key, value, lease.map(|l| l.0));
        let response: wire::TxnResponse =
            self.inner.request(OP, key, "/v3/kv/txn", &request, lease)?;
        created(OP, key, &response)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, KvstoreError> {
        const OP: &str = "compare-and-swap";
        check_key(OP, key)?;
        let request = wire::txn_swap(key, expected, value);
        let response: wire::TxnResponse =
            self.inner.request(OP, key, "/v3/kv/txn", &request, None)?;
        Ok(response.succeeded)
    }

    fn delete(&self, key: &str) -> Result<bool, KvstoreError> {
        const OP: &str = "delete";
        check_key(OP, key)?;
        let response: wire::DeleteRangeResponse =
            self.inner
                .request(OP, key, "/v3/kv/deleterange", &wire::delete(key), None)?;
        Ok(response.deleted > 0)
    }

    fn delete_if(&self, key: &str, expected: u64) -> Result<bool, KvstoreError> {
        const OP: &str = "delete-if";
        check_key(OP, key)?;
        let request = wire::txn_delete_if(key, expected);
        let response: wire::TxnResponse =
            self.inner.request(OP, key, "/v3/kv/txn", &request, None)?;
        Ok(deleted_if(&response))
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvstoreError> {
        Ok(self.inner.list("list", prefix)?.0)
    }

    /// Lists the prefix's keys (the watch's known keys) and the store revision, then watches
    /// from the next revision in a thread: nothing written after this returns is missed.
    fn watch_prefix(&self, prefix: &str) -> Result<Watch, KvstoreError> {
        const OP: &str = "watch";
        let response: wire::RangeResponse = self.inner.request(
            OP,
            prefix,
            "/v3/kv/range",
            &wire::range_prefix(prefix, true),
            None,
        )?;
        let listing = decode_kvs(OP, &response.kvs)?;
        let state = watch::WatchState {
            prefix: prefix.to_string(),
            last_revision: response.header.revision,
            known: KnownKeys::from_listing(&listing),
        };
        let (sender, watch) = watch_channel();
        let inner = Arc::clone(&self.inner);
        std::thread::Builder::new()
            .name("kvstore-etcd-watch".into())
            .spawn(move || watch::run(&inner, &sender, state))
            .map_err(|e| KvstoreError::Unreachable {
                backend: BACKEND,
                op: OP,
                key: prefix.to_string(),
                source: Box::new(e),
            })?;
        Ok(watch)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, KvstoreError> {
        const OP: &str = "grant-lease";
        let seconds = ttl_seconds(ttl);
        let key = format!("ttl {seconds}s");
        let response: wire::LeaseResponse = self.inner.request(
            OP,
            &key,
            "/v3/lease/grant",
            &wire::lease_grant(seconds),
            None,
        )?;
        granted(OP, &key, seconds, &response)
    }

    /// One keep-alive on the gateway's keep-alive stream; a TTL of 0 means the lease ended.
    fn keep_alive(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        const OP: &str = "keep-alive";
        let key = format!("lease {lease}");
        let body = wire::lease_id(lease.0).to_string();
        let reply = self
            .inner
            .http
            .send(
                "POST",
                "/v3/lease/keepalive",
                Some(body.as_bytes()),
                None,
                &[],
            )
            .map_err(|e| name_error(CallError::Transport(e), OP, &key, Some(lease)))?;
        kept_alive(OP, &key, lease, &reply)
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), KvstoreError> {
        const OP: &str = "revoke-lease";
        let key = format!("lease {lease}");
        let result: Result<Value, _> = self.inner.request(
            OP,
            &key,
            "/v3/lease/revoke",
            &wire::lease_id(lease.0),
            Some(lease),
        );
        match result {
            Ok(_) | Err(KvstoreError::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // The watch threads see it within a poll interval and end their watches.
        self.inner.closed.store(true, Ordering::Relaxed);
    }
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.http.endpoints())
            .finish_non_exhaustive()
    }
}
