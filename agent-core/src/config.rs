//! The agent's configuration: flags (clap), each also from env `CILIUM_<FLAG>`, and an
//! optional config file (`--config`, keys = flag names). Precedence: flag > env > file >
//! default. Parsed once into [`AgentConfig`].

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::cidr::Cidr;
use crate::labels::LabelFilter;
use crate::options::parse_switch;
use crate::policy::Enforcement;

pub const DEFAULT_SOCKET_PATH: &str = cilium_api::DEFAULT_SOCKET_PATH;
pub const DEFAULT_STATE_DIR: &str = "/var/run/cilium/state";
/// Default path of the BPF filesystem.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf";

/// Errors in flags, environment or the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}, line {line}: {reason}", path.display())]
    FileSyntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("config file {}: unknown key '{key}' (known keys: {known})", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("--disable-ipv4 and --disable-ipv6 together leave no address family to serve")]
    NoFamily,
}

fn switch(s: &str) -> Result<bool, String> {
    parse_switch(s).ok_or_else(|| format!("'{s}' is not a boolean (true/false)"))
}

/// Command-line flags of `cilium-agent`. Every flag can also be set with `CILIUM_<FLAG>` in
/// the environment, or in the config file under the flag's name.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "cilium-agent",
    version,
    about = "Cilium agent: container networking and security"
)]
pub struct AgentArgs {
    /// Path of the API unix socket [default: /var/run/cilium/cilium.sock]
    #[arg(long, env = "CILIUM_SOCKET_PATH", value_name = "PATH")]
    pub socket_path: Option<PathBuf>,
    /// Directory for runtime state [default: /var/run/cilium/state]
    #[arg(long, env = "CILIUM_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// IPv4 allocation range of this node [default: 10.<last octet of node IPv4>.0.0/16]
    #[arg(long, env = "CILIUM_IPV4_RANGE", value_name = "CIDR")]
    pub ipv4_range: Option<String>,
    /// IPv6 allocation range of this node [default: f00d::<node IPv4 in hex>:0:0/96]
    #[arg(long, env = "CILIUM_IPV6_RANGE", value_name = "CIDR")]
    pub ipv6_range: Option<String>,
    /// Do not allocate IPv4 addresses
    #[arg(long, env = "CILIUM_DISABLE_IPV4", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = switch)]
    pub disable_ipv4: Option<bool>,
    /// Do not allocate IPv6 addresses
    #[arg(long, env = "CILIUM_DISABLE_IPV6", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = switch)]
    pub disable_ipv6: Option<bool>,
    /// Address of this node (IPv4 or IPv6) [default: first global IPv4 address]
    #[arg(long, env = "CILIUM_NODE_ADDRESS", value_name = "IP")]
    pub node_address: Option<String>,
    /// Name of this node [default: the host name]
    #[arg(long, env = "CILIUM_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Enable debug messages
    #[arg(long, env = "CILIUM_DEBUG", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = switch)]
    pub debug: Option<bool>,
    /// Config file (keys are flag names: `state-dir: /path`)
    #[arg(long, env = "CILIUM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Restore endpoints and allocations from the state directory [default: true]
    #[arg(long, env = "CILIUM_RESTORE", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = switch)]
    pub restore: Option<bool>,
    /// Policy enforcement: default (once a rule selects an endpoint), always, never
    #[arg(long, env = "CILIUM_ENABLE_POLICY", value_name = "MODE")]
    pub enable_policy: Option<String>,
    /// Identity-relevant label prefixes, `[!][source:]prefix`, comma-separated or repeated
    /// (`!` excludes) [default: all labels but volatile orchestration ones]
    #[arg(
        long,
        env = "CILIUM_LABELS",
        value_name = "PREFIXES",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// File of identity-relevant label prefixes, one per line
    #[arg(long, env = "CILIUM_LABEL_PREFIX_FILE", value_name = "FILE")]
    pub label_prefix_file: Option<PathBuf>,
    /// Key-value store backend: embedded, etcd or consul [default: embedded]
    #[arg(long, env = "CILIUM_KVSTORE", value_name = "BACKEND")]
    pub kvstore: Option<String>,
    /// Key-value store options, `key=value`, comma-separated or repeated: etcd.address=URL,
    /// etcd.config=FILE, consul.address=HOST:PORT
    #[arg(
        long,
        env = "CILIUM_KVSTORE_OPT",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub kvstore_opt: Vec<String>,
    /// Lifetime of this node's registration in the kvstore without renewal: how long other
    /// nodes keep routing to a node whose agent stopped (1-3600) [default: 15]
    #[arg(long, env = "CILIUM_KVSTORE_LEASE_TTL", value_name = "SECONDS")]
    pub kvstore_lease_ttl: Option<String>,
    /// Encapsulation between nodes: vxlan, geneve or disabled (direct routing via the node
    /// addresses) [default: vxlan]
    #[arg(long, env = "CILIUM_TUNNEL", value_name = "MODE")]
    pub tunnel: Option<String>,
    /// The device traffic leaving the cluster goes out of (masqueraded to its address)
    /// [default: none]
    #[arg(long, env = "CILIUM_DEVICE", value_name = "NAME")]
    pub device: Option<String>,
    /// Masquerade traffic of the endpoints that leaves the cluster through --device
    /// [default: true]
    #[arg(long, env = "CILIUM_MASQUERADE", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = switch)]
    pub masquerade: Option<bool>,
    /// Let the L7 proxy's connections with local endpoints skip the TCP/IP stack (sockmap);
    /// see docs/policy-language.md for the kernel behaviour that keeps it off by default
    /// [default: false]
    #[arg(long, env = "CILIUM_PROXY_SOCKMAP", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = switch)]
    pub proxy_sockmap: Option<bool>,
    /// Append one JSON record per HTTP request the L7 proxy handles to this file
    /// [default: none]
    #[arg(long, env = "CILIUM_ACCESS_LOG", value_name = "PATH")]
    pub access_log: Option<PathBuf>,
    /// Path of the BPF filesystem; maps are pinned under `<path>/tc/globals` (mounted if
    /// it is not a bpffs yet) [default: /sys/fs/bpf]
    #[arg(long, env = "CILIUM_BPF_ROOT", value_name = "PATH")]
    pub bpf_root: Option<PathBuf>,
    /// Docker API socket the container watcher follows (`unix:///path`, or empty to turn the
    /// Docker integration off) [default: unix:///var/run/docker.sock]
    #[arg(long, env = "CILIUM_DOCKER", value_name = "ENDPOINT")]
    pub docker: Option<String>,
    /// Serve Prometheus metrics on this address (`host:port`, e.g. `127.0.0.1:9090`)
    /// [default: off]
    #[arg(long, env = "CILIUM_PROMETHEUS_SERVE_ADDR", value_name = "ADDR")]
    pub prometheus_serve_addr: Option<String>,
    /// Log format: `text` or `json` [default: text]
    #[arg(long, env = "CILIUM_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// Keys a config file may hold.
const FILE_KEYS: &[&str] = &[
    "socket-path",
    "state-dir",
    "ipv4-range",
    "ipv6-range",
    "disable-ipv4",
    "disable-ipv6",
    "node-address",
    "node-name",
    "debug",
    "restore",
    "enable-policy",
    "labels",
    "label-prefix-file",
    "kvstore",
    "kvstore-opt",
    "kvstore-lease-ttl",
    "tunnel",
    "device",
    "masquerade",
    "proxy-sockmap",
    "access-log",
    "bpf-root",
    "docker",
    "prometheus-serve-addr",
    "log-format",
];

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub socket_path: PathBuf,
    pub state_dir: PathBuf,
    /// Explicit ranges; `None` means derive from the node address.
    pub ipv4_range: Option<Cidr>,
    pub ipv6_range: Option<Cidr>,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub node_address: Option<IpAddr>,
    pub node_name: Option<String>,
    pub debug: bool,
    pub restore: bool,
    pub config_file: Option<PathBuf>,
    pub enable_policy: Enforcement,
    /// The identity-relevant labels (`--labels`, `--label-prefix-file`).
    pub label_filter: LabelFilter,
    /// Key-value store backend: `embedded`, `etcd` or `consul`.
    pub kvstore: String,
    /// `--kvstore-opt` pairs, in order.
    pub kvstore_opts: Vec<(String, String)>,
    /// `--kvstore-lease-ttl`.
    pub kvstore_lease_ttl: std::time::Duration,
    /// `--tunnel`.
    pub tunnel: TunnelMode,
    /// `--device`: where traffic leaving the cluster goes out.
    pub device: Option<String>,
    /// `--masquerade`.
    pub masquerade: bool,
    /// `--proxy-sockmap`.
    pub proxy_sockmap: bool,
    /// `--access-log`: where the L7 proxy writes its records.
    pub access_log: Option<PathBuf>,
    /// The BPF filesystem of the datapath; `None` runs the agent without a datapath (only
    /// for tests of the control plane: `cilium-agent` always has one).
    pub bpf_root: Option<PathBuf>,
    /// The Docker API socket to watch (`--docker`); `None` turns the integration off.
    pub docker: Option<PathBuf>,
    /// Where Prometheus metrics are served (`--prometheus-serve-addr`); `None`: not at all.
    pub prometheus_serve_addr: Option<std::net::SocketAddr>,
    /// How log lines are written (`--log-format`).
    pub log_format: LogFormat,
}

/// `--tunnel`: how packets reach other nodes' endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelMode {
    #[default]
    Vxlan,
    Geneve,
    /// Direct routing: routes to other nodes' ranges via their addresses.
    Disabled,
}

impl TunnelMode {
    pub fn parse(text: &str) -> Option<TunnelMode> {
        match text.trim() {
            "vxlan" => Some(TunnelMode::Vxlan),
            "geneve" => Some(TunnelMode::Geneve),
            "disabled" => Some(TunnelMode::Disabled),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TunnelMode::Vxlan => "vxlan",
            TunnelMode::Geneve => "geneve",
            TunnelMode::Disabled => "disabled",
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl AgentConfig {
    /// A configuration with every default, for tests and embedding.
    pub fn with_dirs(socket_path: PathBuf, state_dir: PathBuf) -> AgentConfig {
        AgentConfig {
            socket_path,
            state_dir,
            ipv4_range: None,
            ipv6_range: None,
            enable_ipv4: true,
            enable_ipv6: true,
            node_address: None,
            node_name: None,
            debug: false,
            restore: true,
            config_file: None,
            enable_policy: Enforcement::Default,
            label_filter: LabelFilter::default(),
            kvstore: "embedded".to_string(),
            kvstore_opts: Vec::new(),
            kvstore_lease_ttl: DEFAULT_LEASE_TTL,
            tunnel: TunnelMode::Vxlan,
            device: None,
            masquerade: true,
            proxy_sockmap: false,
            access_log: None,
            bpf_root: None,
            docker: None,
            prometheus_serve_addr: None,
            log_format: LogFormat::Text,
        }
    }
}

impl AgentArgs {
    /// Merges flags/env with the config file and the defaults, and validates the result.
    pub fn resolve(self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_config_file(path)?,
            None => BTreeMap::new(),
        };
        let text = |flag: Option<String>, key: &str| flag.or_else(|| file.get(key).cloned());
        let path = |flag: Option<PathBuf>, key: &str, default: &str| {
            flag.or_else(|| file.get(key).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let boolean = |flag: Option<bool>, key: &'static str, default: bool| match flag {
            Some(v) => Ok(v),
            None => match file.get(key) {
                Some(v) => switch(v).map_err(|reason| ConfigError::Invalid { key, reason }),
                None => Ok(default),
            },
        };
        let cidr = |value: Option<String>, key: &'static str, family: &str| {
            value
                .map(|v| {
                    let c: Cidr =
                        v.parse()
                            .map_err(|e: crate::cidr::CidrError| ConfigError::Invalid {
                                key,
                                reason: e.to_string(),
                            })?;
                    if c.family().as_str() != family {
                        return Err(ConfigError::Invalid {
                            key,
                            reason: format!("{c} is not an {family} prefix"),
                        });
                    }
                    Ok(c)
                })
                .transpose()
        };

        let enable_ipv4 = !boolean(self.disable_ipv4, "disable-ipv4", false)?;
        let enable_ipv6 = !boolean(self.disable_ipv6, "disable-ipv6", false)?;
        if !enable_ipv4 && !enable_ipv6 {
            return Err(ConfigError::NoFamily);
        }
        let node_address = text(self.node_address, "node-address")
            .map(|v| {
                v.parse::<IpAddr>().map_err(|_| ConfigError::Invalid {
                    key: "node-address",
                    reason: format!("'{v}' is not an IP address"),
                })
            })
            .transpose()?;
        let node_name = text(self.node_name, "node-name");
        if let Some(name) = &node_name {
            if name.is_empty()
                || name.len() > 253
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::Invalid {
                    key: "node-name",
                    reason: format!("'{name}' must be 1-253 characters without whitespace"),
                });
            }
        }
        let enable_policy = match text(self.enable_policy, "enable-policy") {
            None => Enforcement::Default,
            Some(v) => Enforcement::parse(&v).ok_or_else(|| ConfigError::Invalid {
                key: "enable-policy",
                reason: format!("'{v}' is not a mode (expected default, always or never)"),
            })?,
        };
        let mut label_entries = self.labels;
        if label_entries.is_empty() {
            if let Some(v) = file.get("labels") {
                label_entries.push(v.clone());
            }
        }
        let prefix_file = self
            .label_prefix_file
            .or_else(|| file.get("label-prefix-file").map(PathBuf::from));
        let label_filter =
            LabelFilter::new(&label_entries, prefix_file.as_deref()).map_err(|e| {
                ConfigError::Invalid {
                    key: "labels",
                    reason: e.to_string(),
                }
            })?;
        let kvstore = text(self.kvstore, "kvstore").unwrap_or_else(|| "embedded".into());
        match kvstore.as_str() {
            "embedded" | "etcd" | "consul" => {}
            other => {
                return Err(ConfigError::Invalid {
                    key: "kvstore",
                    reason: format!(
                        "unknown backend '{other}' (expected embedded, etcd or consul)"
                    ),
                })
            }
        }
        let mut opt_entries = self.kvstore_opt;
        if opt_entries.is_empty() {
            if let Some(v) = file.get("kvstore-opt") {
                opt_entries.extend(v.split(',').map(str::to_string));
            }
        }
        let kvstore_opts = kvstore_options(&kvstore, &opt_entries)?;
        let kvstore_lease_ttl = match text(self.kvstore_lease_ttl, "kvstore-lease-ttl") {
            None => DEFAULT_LEASE_TTL,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(s @ 1..=3600) => std::time::Duration::from_secs(s),
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "kvstore-lease-ttl",
                        reason: format!("'{v}' is not a number of seconds from 1 to 3600"),
                    })
                }
            },
        };
        let tunnel = match text(self.tunnel, "tunnel") {
            None => TunnelMode::Vxlan,
            Some(v) => TunnelMode::parse(&v).ok_or_else(|| ConfigError::Invalid {
                key: "tunnel",
                reason: format!("'{v}' is not a mode (expected vxlan, geneve or disabled)"),
            })?,
        };
        let device = text(self.device, "device").filter(|d| !d.trim().is_empty());
        if let Some(d) = &device {
            if let Err(reason) = crate::endpoint::check_ifname(d) {
                return Err(ConfigError::Invalid {
                    key: "device",
                    reason: reason.to_string(),
                });
            }
        }
        let docker = docker_socket(
            text(self.docker, "docker").unwrap_or_else(|| DEFAULT_DOCKER.to_string()),
        )?;
        let prometheus_serve_addr = match text(self.prometheus_serve_addr, "prometheus-serve-addr")
            .filter(|a| !a.trim().is_empty())
        {
            None => None,
            Some(addr) => Some(addr.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "prometheus-serve-addr",
                reason: format!(
                    "'{addr}' is not an address and port (e.g. 127.0.0.1:9090 or [::1]:9090)"
                ),
            })?),
        };
        let log_format = match text(self.log_format, "log-format")
            .as_deref()
            .map(str::trim)
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "log-format",
                    reason: format!("'{other}' is not a log format (expected text or json)"),
                })
            }
        };
        Ok(AgentConfig {
            prometheus_serve_addr,
            log_format,
            docker,
            enable_policy,
            label_filter,
            kvstore,
            kvstore_opts,
            kvstore_lease_ttl,
            tunnel,
            device,
            masquerade: boolean(self.masquerade, "masquerade", true)?,
            proxy_sockmap: boolean(self.proxy_sockmap, "proxy-sockmap", false)?,
            access_log: access_log(
                self.access_log
                    .or_else(|| file.get("access-log").map(PathBuf::from)),
            )?,
            socket_path: path(self.socket_path, "socket-path", DEFAULT_SOCKET_PATH),
            state_dir: path(self.state_dir, "state-dir", DEFAULT_STATE_DIR),
            bpf_root: Some(path(self.bpf_root, "bpf-root", DEFAULT_BPF_ROOT)),
            ipv4_range: cidr(text(self.ipv4_range, "ipv4-range"), "ipv4-range", "ipv4")?,
            ipv6_range: cidr(text(self.ipv6_range, "ipv6-range"), "ipv6-range", "ipv6")?,
            enable_ipv4,
            enable_ipv6,
            node_address,
            node_name,
            debug: boolean(self.debug, "debug", false)?,
            restore: boolean(self.restore, "restore", true)?,
            config_file: self.config,
        })
    }
}

/// The `--kvstore-opt` entries as pairs: each is `key=value` with a key of the chosen backend.
fn kvstore_options(
    backend: &str,
    entries: &[String],
) -> Result<Vec<(String, String)>, ConfigError> {
    const KEYS: &[(&str, &str)] = &[
        ("etcd.address", "etcd"),
        ("etcd.config", "etcd"),
        ("consul.address", "consul"),
    ];
    let mut out = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let invalid = |reason: String| ConfigError::Invalid {
            key: "kvstore-opt",
            reason,
        };
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| invalid(format!("'{entry}' is not key=value")))?;
        let (key, value) = (key.trim(), value.trim());
        match KEYS.iter().find(|(k, _)| *k == key) {
            None => {
                return Err(invalid(format!(
                    "unknown option '{key}' (expected etcd.address, etcd.config or                      consul.address)"
                )))
            }
            Some((_, owner)) if *owner != backend => {
                return Err(invalid(format!(
                    "'{key}' is an option of the {owner} backend, but --kvstore is {backend}"
                )))
            }
            Some(_) if value.is_empty() => return Err(invalid(format!("'{key}' has no value"))),
            Some(_) => out.push((key.to_string(), value.to_string())),
        }
    }
    if backend != "embedded" && out.is_empty() {
        let hint = if backend == "etcd" {
            "etcd.address=<url> or etcd.config=<file>"
        } else {
            "consul.address=<host:port>"
        };
        return Err(ConfigError::Invalid {
            key: "kvstore-opt",
            reason: format!("--kvstore {backend} needs --kvstore-opt {hint}"),
        });
    }
    Ok(out)
}

/// Default of `--kvstore-lease-ttl`.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// Default of `--docker`.
pub const DEFAULT_DOCKER: &str = "unix:///var/run/docker.sock";

/// The socket path of a `--docker` endpoint: `unix:///path` or `/path`; empty turns the Docker
/// integration off.
fn docker_socket(endpoint: String) -> Result<Option<PathBuf>, ConfigError> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Ok(None);
    }
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ConfigError::Invalid {
            key: "docker",
            reason: format!(
                "'{endpoint}' is not a unix socket endpoint: expected unix:///path/to/docker.sock \
                 (TCP endpoints are not supported), or an empty value to turn the Docker \
                 integration off"
            ),
        });
    }
    Ok(Some(PathBuf::from(path)))
}

/// `--access-log`: an absolute path whose directory exists (empty = none).
fn access_log(value: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = value.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        key: "access-log",
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid(format!(
            "'{}' is not an absolute path",
            path.display()
        )));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => Ok(Some(path)),
        _ => Err(invalid(format!(
            "the directory of '{}' does not exist",
            path.display()
        ))),
    }
}

/// Reads a config file: one `key: value` per line (a flat YAML mapping), `#` comments,
/// values optionally quoted.
pub fn read_config_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config_text(&text, path)
}

fn parse_config_text(text: &str, path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let syntax = |reason: &str| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            line,
            reason: reason.to_string(),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let (key, value) = trimmed
            .split_once(':')
            .ok_or_else(|| syntax("expected 'key: value'"))?;
        let key = key.trim();
        if !FILE_KEYS.contains(&key) {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.to_string(),
                known: FILE_KEYS.join(", "),
            });
        }
        let value = unquote(strip_comment(value.trim())).map_err(|r| syntax(&r))?;
        if out.insert(key.to_string(), value).is_some() {
            return Err(syntax(&format!("key '{key}' appears twice")));
        }
    }
    Ok(out)
}

fn strip_comment(value: &str) -> &str {
    if value.starts_with('"') || value.starts_with('\'') {
        return value;
    }
    match value.find(" #") {
        Some(i) => value[..i].trim_end(),
        None => value,
    }
}

fn unquote(value: &str) -> Result<String, String> {
    for q in ['"', '\''] {
        if let Some(rest) = value.strip_prefix(q) {
            let end = rest
                .find(q)
                .ok_or_else(|| format!("unterminated {q}quote"))?;
            let tail = rest[end + 1..].trim();
            if !tail.is_empty() && !tail.starts_with('#') {
                return Err(format!("unexpected text after the quoted value: {tail}"));
            }
            return Ok(rest[..end].to_string());
        }
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn args(list: &[&str]) -> AgentArgs {
        let mut full = vec!["cilium-agent"];
        full.extend_from_slice(list);
        AgentArgs::try_parse_from(full).unwrap()
    }

    #[test]
    fn defaults() {
        let c = AgentArgs::default().resolve().unwrap();
        assert_eq!(c.socket_path, PathBuf::from("/var/run/cilium/cilium.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/run/cilium/state"));
        assert!(c.enable_ipv4 && c.enable_ipv6 && c.restore && !c.debug);
    }

    #[test]
    fn flags_parse() {
        let c = args(&[
            "--ipv4-range",
            "10.5.0.0/16",
            "--ipv6-range",
            "f00d::/96",
            "--disable-ipv6",
            "--debug=true",
            "--restore",
            "false",
            "--node-address",
            "192.0.2.9",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.ipv4_range.unwrap().to_string(), "10.5.0.0/16");
        assert!(!c.enable_ipv6);
        assert!(c.debug);
        assert!(!c.restore);
        assert_eq!(c.node_address, Some("192.0.2.9".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = args(&["--ipv4-range", "10.5.0.1/16"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ipv4-range") && err.contains("host bits"),
            "{err}"
        );
        let err = args(&["--ipv4-range", "f00d::/96"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an ipv4 prefix"), "{err}");
        let err = args(&["--node-address", "nope"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("node-address"), "{err}");
        let err = args(&["--disable-ipv4", "--disable-ipv6"])
            .resolve()
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoFamily));
        assert!(AgentArgs::try_parse_from(["cilium-agent", "--debug=maybe"]).is_err());
    }

    #[test]
    fn file_values_lose_to_flags() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "# agent\n---\nstate-dir: /tmp/from-file\nipv6-range: \"f00d::/96\" # quoted\n\
             debug: yes\nsocket-path: /tmp/file.sock"
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let c = args(&["--config", path, "--socket-path", "/tmp/flag.sock"])
            .resolve()
            .unwrap();
        assert_eq!(c.socket_path, PathBuf::from("/tmp/flag.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/from-file"));
        assert_eq!(c.ipv6_range.unwrap().to_string(), "f00d::/96");
        assert!(c.debug);
    }

    #[test]
    fn file_errors_name_line_and_key() {
        let p = Path::new("/etc/x.yaml");
        let err = parse_config_text("debug: true\nbogus: 1\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key 'bogus'"), "{err}");
        let err = parse_config_text("debug true\n", p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config file /etc/x.yaml, line 1: expected 'key: value'"
        );
        let err = parse_config_text("debug: 1\ndebug: 0\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("twice"), "{err}");
        let err = parse_config_text("node-name: \"abc\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unterminated"), "{err}");
        let err = AgentArgs {
            config: Some("/nonexistent/cfg".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/cfg"),
            "{err}"
        );
    }
}
