//! Where and how to reach etcd: `etcd.address=<url or host:port>[,…]`, or `etcd.config=<file>`
//! holding the small YAML document of the Cilium docs:
//!
//! ```yaml
//! ---
//! endpoints:
//! - https://192.168.0.1:2379
//! ca-file: '/var/lib/cilium/etcd-ca.pem'
//! key-file: '/var/lib/cilium/etcd-client.key'   # client authentication (optional)
//! cert-file: '/var/lib/cilium/etcd-client.crt'
//! ```
//!
//! Only that subset of YAML is read (top-level `key: value`, block or `[a, b]` lists, quoted
//! or plain scalars, comments); anything else is an error naming the file and the line.
//! Relative file names are taken relative to the configuration file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::kvstore::http::normalize_endpoint;
use crate::kvstore::KvstoreError;

/// The keys of an `etcd.config` file.
const KNOWN_KEYS: &str = "endpoints, ca-file (or trusted-ca-file), cert-file, key-file";

/// The endpoints and TLS files of an etcd cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, without a trailing `/`.
    pub endpoints: Vec<String>,
    /// The CA that signed the servers' certificates (else the public roots).
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key, for servers that authenticate clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// From `etcd.address`: one or more comma-separated URLs or `host:port` (http assumed).
    pub fn from_address(address: &str) -> Result<EtcdConfig, KvstoreError> {
        let endpoints = address
            .split(',')
            .map(|a| {
                normalize_endpoint(a)
                    .map_err(|e| KvstoreError::config(format!("etcd.address: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EtcdConfig {
            endpoints,
            ..EtcdConfig::default()
        })
    }

    /// From an `etcd.config` file.
    pub fn from_file(path: &Path) -> Result<EtcdConfig, KvstoreError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            KvstoreError::config(format!("etcd.config {}: cannot read: {e}", path.display()))
        })?;
        EtcdConfig::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| KvstoreError::config(format!("etcd.config {}: {e}", path.display())))
    }

    /// Parses a configuration file's text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<EtcdConfig, String> {
        let mut config = EtcdConfig::default();
        let mut seen: Vec<String> = Vec::new();
        for (line, key, value) in parse_yaml(text)? {
            if seen.contains(&key) {
                return Err(format!("line {line}: '{key}' given twice"));
            }
            seen.push(key.clone());
            let file = |value: YamlValue| -> Result<Option<PathBuf>, String> {
                match value {
                    YamlValue::Scalar(s) if s.is_empty() => Ok(None),
                    YamlValue::Scalar(s) => Ok(Some(base.join(s))),
                    YamlValue::List(_) => Err(format!(
                        "line {line}: '{key}' must be a file name, not a list"
                    )),
                }
            };
            match key.as_str() {
                "endpoints" => {
                    let list = match value {
                        YamlValue::List(list) => list,
                        YamlValue::Scalar(s) if s.is_empty() => Vec::new(),
                        YamlValue::Scalar(s) => vec![s],
                    };
                    config.endpoints = list
                        .iter()
                        .map(|e| {
                            normalize_endpoint(e)
                                .map_err(|e| format!("line {line}: endpoints: {e}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "ca-file" | "trusted-ca-file" => {
                    if config.ca_file.is_some() {
                        return Err(format!(
                            "line {line}: ca-file and trusted-ca-file given both"
                        ));
                    }
                    config.ca_file = file(value)?;
                }
                "cert-file" => config.cert_file = file(value)?,
                "key-file" => config.key_file = file(value)?,
                other => {
                    return Err(format!(
                        "line {line}: unknown key '{other}' (known: {KNOWN_KEYS})"
                    ))
                }
            }
        }
        if config.endpoints.is_empty() {
            return Err("no endpoints: add 'endpoints:' with at least one URL".to_string());
        }
        if config.cert_file.is_some() != config.key_file.is_some() {
            return Err("cert-file and key-file must be given together".to_string());
        }
        Ok(config)
    }

    /// Whether any endpoint uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// The TLS client configuration: the CA file's certificates (else the public roots) and
    /// the client certificate. `None` when no endpoint uses TLS. Reads and checks the files.
    pub fn tls_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, KvstoreError> {
        if !self.uses_tls() {
            if self.ca_file.is_some() || self.cert_file.is_some() {
                tracing::warn!(
                    "kvstore etcd: TLS files are configured but no endpoint is https://; they are not used"
                );
            }
            return Ok(None);
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(ca) => {
                for cert in read_certs("ca-file", ca)? {
                    roots.add(cert).map_err(|e| {
                        KvstoreError::config(format!(
                            "ca-file {}: unusable certificate: {e}",
                            ca.display()
                        ))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KvstoreError::config(format!("etcd TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs("cert-file", cert)?;
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    KvstoreError::config(format!(
                        "key-file {}: cannot read a private key: {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    KvstoreError::config(format!(
                        "cert-file {} with key-file {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(KvstoreError::config(
                    "etcd: cert-file and key-file must be given together",
                ))
            }
        };
        Ok(Some(Arc::new(config)))
    }
}

/// The PEM certificates of a file (at least one).
fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, KvstoreError> {
    let fail =
        |reason: String| KvstoreError::config(format!("{what} {}: {reason}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".to_string()));
    }
    Ok(certs)
}

/// A value of the YAML subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum YamlValue {
    Scalar(String),
    List(Vec<String>),
}

/// Reads top-level `key: value` pairs (with their line numbers) of the YAML subset.
pub(crate) fn parse_yaml(text: &str) -> Result<Vec<(usize, String, YamlValue)>, String> {
    let mut pairs: Vec<(usize, String, YamlValue)> = Vec::new();
    // The key whose value is a block list being read.
    let mut open_list = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = strip_comment(raw);
        let trimmed = content.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed == "---" || trimmed == "..." {
            if !pairs.is_empty() && trimmed == "---" {
                return Err(format!("line {line}: only one YAML document is supported"));
            }
            continue;
        }
        if trimmed == "-" || trimmed.starts_with("- ") {
            let Some((_, key, YamlValue::List(items))) = pairs.last_mut().filter(|_| open_list)
            else {
                return Err(format!("line {line}: list item outside of a list"));
            };
            let item = parse_scalar(trimmed[1..].trim())
                .map_err(|e| format!("line {line}: {key}: {e}"))?;
            items.push(item);
            continue;
        }
        if content.starts_with(char::is_whitespace) {
            return Err(format!(
                "line {line}: nested values are not supported (only top-level 'key: value' and lists)"
            ));
        }
        let Some((key, value)) = split_pair(trimmed) else {
            return Err(format!(
                "line {line}: expected 'key: value', got '{trimmed}'"
            ));
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("line {line}: bad key '{key}'"));
        }
        let value = if value.is_empty() {
            open_list = true;
            YamlValue::List(Vec::new())
        } else if let Some(inner) = value.strip_prefix('[') {
            open_list = false;
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| format!("line {line}: {key}: unterminated '['"))?;
            let items = split_flow(inner)
                .iter()
                .filter(|i| !i.trim().is_empty())
                .map(|i| parse_scalar(i.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("line {line}: {key}: {e}"))?;
            YamlValue::List(items)
        } else {
            open_list = false;
            YamlValue::Scalar(parse_scalar(value).map_err(|e| format!("line {line}: {key}: {e}"))?)
        };
        pairs.push((line, key.to_string(), value));
    }
    Ok(pairs)
}

/// `key: value` or `key:`.
fn split_pair(line: &str) -> Option<(&str, &str)> {
    if let Some(key) = line.strip_suffix(':') {
        return Some((key.trim(), ""));
    }
    line.split_once(": ").map(|(k, v)| (k.trim(), v.trim()))
}

/// The line without a `#` comment (one at the start or after a blank, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return &line[..i],
            None => {}
        }
        previous = c;
    }
    line
}

/// Splits a flow list's inside at the commas outside quotes.
fn split_flow(inner: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut quote: Option<char> = None;
    for c in inner.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == ',' => {
                items.push(String::new());
                continue;
            }
            None => {}
        }
        if let Some(last) = items.last_mut() {
            last.push(c);
        }
    }
    items
}

/// A plain, 'single-quoted' ('' = ') or "double-quoted" (with \" \\ \n \t) scalar.
fn parse_scalar(text: &str) -> Result<String, String> {
    if let Some(rest) = text.strip_prefix('\'') {
        let inner = rest
            .strip_suffix('\'')
            .ok_or_else(|| format!("unterminated quote in {text}"))?;
        return Ok(inner.replace("''", "'"));
    }
    if let Some(rest) = text.strip_prefix('"') {
        let inner = rest
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated quote in {text}"))?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\' | '/')) => out.push(c),
                other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
            }
        }
        return Ok(out);
    }
    if text.starts_with(['{', '&', '*', '!', '|', '>']) {
        return Err(format!("unsupported YAML value '{text}'"));
    }
    Ok(text.to_string())
}
