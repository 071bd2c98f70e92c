//! The JSON of etcd's v3 gateway (grpc-gateway over the etcdserverpb messages): keys and
//! values in base64, 64-bit integers as strings (numbers accepted too), enum values by name,
//! fields at their default value left out.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

pub(super) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub(super) fn unb64(text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("bad base64 '{text}': {e}"))
}

/// The end of the key range holding every key that starts with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented and what
/// follows cut; `\0` (no end) when there is no such byte.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `key` and `range_end` selecting every key under `prefix` (the empty prefix: all keys).
fn prefix_range(prefix: &str) -> (String, String) {
    let key = if prefix.is_empty() {
        b64(&[0])
    } else {
        b64(prefix.as_bytes())
    };
    (key, b64(&prefix_end(prefix.as_bytes())))
}

/// `RangeRequest` for one key.
pub(super) fn range(key: &str) -> Value {
    json!({ "key": b64(key.as_bytes()) })
}

/// `RangeRequest` for a prefix, sorted by key (etcd's default order).
pub(super) fn range_prefix(prefix: &str, keys_only: bool) -> Value {
    let (key, range_end) = prefix_range(prefix);
    let mut request = json!({ "key": key, "range_end": range_end });
    if keys_only {
        request["keys_only"] = Value::Bool(true);
    }
    request
}

/// `DeleteRangeRequest` for one key.
pub(super) fn delete(key: &str) -> Value {
    json!({ "key": b64(key.as_bytes()) })
}

/// A put for a transaction.
fn request_put(key: &str, value: &[u8], lease: Option<u64>, ignore_lease: bool) -> Value {
    let mut put = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
    if let Some(lease) = lease {
        put["lease"] = Value::String(lease.to_string());
    }
    if ignore_lease {
        put["ignore_lease"] = Value::Bool(true);
    }
    json!({ "request_put": put })
}

/// A comparison for a transaction: `target` (`CREATE` or `MOD`) revision == `revision`.
fn compare_revision(key: &str, target: &str, revision: u64) -> Value {
    let field = match target {
        "CREATE" => "create_revision",
        _ => "mod_revision",
    };
    json!({
        "key": b64(key.as_bytes()),
        "target": target,
        "result": "EQUAL",
        field: revision.to_string(),
    })
}

/// Create-if-absent: put if the key has no create revision, else read it.
pub(super) fn txn_create(key: &str, value: &[u8], lease: Option<u64>) -> Value {
    json!({
        "compare": [compare_revision(key, "CREATE", 0)],
        "success": [request_put(key, value, lease, false)],
        "failure": [{ "request_range": range(key) }],
    })
}

/// Compare-and-swap: at 0 the key must be absent (created without a lease); else its
/// modification revision must match and it keeps its lease.
pub(super) fn txn_swap(key: &str, expected: u64, value: &[u8]) -> Value {
    let (compare, put) = if expected == 0 {
        (
            compare_revision(key, "CREATE", 0),
            request_put(key, value, None, false),
        )
    } else {
        (
            compare_revision(key, "MOD", expected),
            request_put(key, value, None, true),
        )
    };
    json!({ "compare": [compare], "success": [put] })
}

/// Delete-if: delete when the modification revision matches.
pub(super) fn txn_delete_if(key: &str, expected: u64) -> Value {
    json!({
        "compare": [compare_revision(key, "MOD", expected)],
        "success": [{ "request_delete_range": delete(key) }],
    })
}

/// `LeaseGrantRequest` (etcd picks the id).
pub(super) fn lease_grant(ttl_seconds: u64) -> Value {
    json!({ "TTL": ttl_seconds.to_string() })
}

/// `LeaseKeepAliveRequest` and `LeaseRevokeRequest`.
pub(super) fn lease_id(id: u64) -> Value {
    json!({ "ID": id.to_string() })
}

/// `WatchRequest` creating a watch of `prefix` from `start_revision`, with progress
/// notifications.
pub(super) fn watch_create(prefix: &str, start_revision: u64) -> Value {
    let (key, range_end) = prefix_range(prefix);
    json!({
        "create_request": {
            "key": key,
            "range_end": range_end,
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }
    })
}

/// A 64-bit integer sent as a string or a number; missing = 0.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
        Big(u64),
    }
    match Int::deserialize(d)? {
        Int::Text(s) => s
            .parse::<i64>()
            .or_else(|_| s.parse::<u64>().map(|u| u as i64))
            .map_err(serde::de::Error::custom),
        Int::Number(n) => Ok(n),
        Int::Big(u) => Ok(u as i64),
    }
}

/// An unsigned 64-bit integer (revisions, lease and member ids).
fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(u64),
    }
    match Int::deserialize(d)? {
        Int::Text(s) => s.parse::<u64>().map_err(serde::de::Error::custom),
        Int::Number(n) => Ok(n),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Header {
    #[serde(default, deserialize_with = "uint")]
    pub revision: u64,
    #[serde(default, deserialize_with = "uint")]
    pub member_id: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct KeyValue {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, deserialize_with = "uint")]
    pub mod_revision: u64,
    /// 0 = no lease.
    #[serde(default, deserialize_with = "uint")]
    pub lease: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DeleteRangeResponse {
    #[serde(default, deserialize_with = "uint")]
    pub deleted: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ResponseOp {
    pub response_range: Option<RangeResponse>,
    pub response_delete_range: Option<DeleteRangeResponse>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct TxnResponse {
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Default, Deserialize)]
#[allow(non_snake_case)]
pub(super) struct LeaseResponse {
    #[serde(default, deserialize_with = "uint")]
    pub ID: u64,
    #[serde(default, deserialize_with = "int")]
    pub TTL: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Event {
    /// `PUT` is the default and left out.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub kv: KeyValue,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "int")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Default, Deserialize)]
#[allow(non_snake_case)]
pub(super) struct StatusResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub version: String,
    #[serde(default, deserialize_with = "int")]
    pub dbSize: i64,
    #[serde(default, deserialize_with = "uint")]
    pub leader: u64,
}

/// One message of a gateway stream: `{"result": …}` or `{"error": …}`.
#[derive(Debug, Deserialize)]
pub(super) struct StreamMessage<T> {
    pub result: Option<T>,
    pub error: Option<Value>,
}

/// The gateway's error body (`{"error": "...", "message": "...", "code": 5}`), or the
/// `error` of a stream message: its message.
pub(super) fn error_message(body: &Value) -> String {
    let field = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    field(body, "message")
        .filter(|m| !m.is_empty())
        .or_else(|| field(body, "error"))
        .or_else(|| body.get("error").and_then(|e| field(e, "message")))
        .or_else(|| body.as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// Cuts a stream of concatenated (or newline-separated) JSON objects into objects.
#[derive(Debug, Default)]
pub(super) struct ObjectSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// Where the object being read starts in `buf`.
    start: Option<usize>,
}

impl ObjectSplitter {
    /// Adds bytes; returns the objects they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut objects = Vec::new();
        for i in self.scanned..self.buf.len() {
            let c = self.buf[i];
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if c == b'\\' {
                    self.escape = true;
                } else if c == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match c {
                b'"' if self.start.is_some() => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.start = Some(i);
                    }
                    self.depth += 1;
                }
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        if let Some(start) = self.start.take() {
                            objects.push(self.buf[start..=i].to_vec());
                        }
                    }
                }
                _ => {}
            }
        }
        match self.start {
            Some(start) => {
                self.buf.drain(..start);
                self.start = Some(0);
            }
            None => self.buf.clear(),
        }
        self.scanned = self.buf.len();
        objects
    }
}
