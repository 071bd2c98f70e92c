//! Opening the backend named by `--kvstore` with its `--kvstore-opt key=value` options:
//! `embedded` (no options), `etcd` (`etcd.address` or `etcd.config`), `consul`
//! (`consul.address`). Unknown, repeated, empty or misplaced options are refused with a
//! message saying which and why.

use std::path::Path;
use std::sync::Arc;

use super::{Consul, Embedded, Etcd, EtcdConfig, Kvstore, KvstoreError};

/// The backends and the options each accepts.
const BACKENDS: [(&str, &[&str]); 3] = [
    ("embedded", &[]),
    ("etcd", &["etcd.address", "etcd.config"]),
    ("consul", &["consul.address"]),
];

/// Opens the kvstore: `backend` is `embedded` (persisted in `state_dir`), `etcd` or
/// `consul`; `opts` are its `--kvstore-opt` pairs.
pub fn connect(
    backend: &str,
    opts: &[(String, String)],
    state_dir: &Path,
) -> Result<Arc<dyn Kvstore>, KvstoreError> {
    let options = check_options(backend, opts)?;
    let get = |name: &str| options.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    match backend {
        "etcd" => {
            let config = match (get("etcd.address"), get("etcd.config")) {
                (Some(address), None) => EtcdConfig::from_address(address)?,
                (None, Some(file)) => EtcdConfig::from_file(Path::new(file))?,
                (Some(_), Some(_)) => {
                    return Err(KvstoreError::config(
                        "the etcd backend takes etcd.address or etcd.config, not both",
                    ))
                }
                (None, None) => {
                    return Err(KvstoreError::config(
                        "the etcd backend needs --kvstore-opt etcd.address=<host:port> or \
                         etcd.config=<file>",
                    ))
                }
            };
            Ok(Arc::new(Etcd::new(&config)?))
        }
        "consul" => match get("consul.address") {
            Some(address) => Ok(Arc::new(Consul::new(address)?)),
            None => Err(KvstoreError::config(
                "the consul backend needs --kvstore-opt consul.address=<host:port>",
            )),
        },
        _ => Ok(Arc::new(Embedded::open(state_dir)?)),
    }
}

/// The options, checked against the backend: each known to it, given once, not empty.
pub(crate) fn check_options<'a>(
    backend: &str,
    opts: &'a [(String, String)],
) -> Result<Vec<(String, &'a str)>, KvstoreError> {
    let Some((_, known)) = BACKENDS.iter().find(|(name, _)| *name == backend) else {
        let names: Vec<&str> = BACKENDS.iter().map(|(n, _)| *n).collect();
        return Err(KvstoreError::config(format!(
            "unknown kvstore backend '{backend}' (expected {})",
            names.join(", ")
        )));
    };
    let mut checked: Vec<(String, &str)> = Vec::new();
    for (key, value) in opts {
        let key = key.trim();
        if !known.contains(&key) {
            let owner = BACKENDS
                .iter()
                .find(|(_, options)| options.contains(&key))
                .map(|(name, _)| *name);
            let reason = match owner {
                Some(owner) => format!("option '{key}' is for the {owner} backend, not {backend}"),
                None if known.is_empty() => {
                    format!("the {backend} backend takes no options (got '{key}')")
                }
                None => format!(
                    "unknown option '{key}' for the {backend} backend (known: {})",
                    known.join(", ")
                ),
            };
            return Err(KvstoreError::config(reason));
        }
        if checked.iter().any(|(k, _)| k == key) {
            return Err(KvstoreError::config(format!("option '{key}' given twice")));
        }
        if value.trim().is_empty() {
            return Err(KvstoreError::config(format!("option '{key}' has no value")));
        }
        checked.push((key.to_string(), value.trim()));
    }
    Ok(checked)
}
