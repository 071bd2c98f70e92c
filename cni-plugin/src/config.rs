//! The network configuration on stdin: the keys this plugin reads, checked once into a typed
//! [`NetworkConfig`]. Unknown keys are ignored (the spec lets runtimes and other plugins add
//! their own); `args`, `runtimeConfig` and `prevResult` stay JSON for the modules that read
//! them, so that a malformed `prevResult` does not stop a `DEL`.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::version::{CniVersion, VersionError, IMPLICIT};

/// Smallest MTU accepted (the IPv4 minimum).
pub const MIN_MTU: u64 = 68;
/// Largest MTU accepted.
pub const MAX_MTU: u64 = 65535;

/// Key of the attachments `GC` must keep (spec 1.1).
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The same list under the name libcni actually sends.
pub const ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// Why the network config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// stdin is not JSON.
    #[error("failed to decode network config: {0}")]
    Decode(#[source] serde_json::Error),
    /// stdin is JSON but not an object; the value says what it is.
    #[error("failed to decode network config: expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// `cniVersion` is not a supported version.
    #[error(transparent)]
    Version(#[from] VersionError),
    /// A required key is absent, null or empty.
    #[error("invalid network config: '{0}' is missing or empty")]
    Missing(&'static str),
    /// A key has the wrong type or value.
    #[error("invalid network config: '{key}' {reason}")]
    Invalid {
        /// The key, or the path inside a key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One attachment the runtime still uses, from the `GC` input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GcAttachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// The network configuration, as far as this plugin reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// `cniVersion`; 0.1.0 when absent.
    pub cni_version: CniVersion,
    /// `name`, the network; recorded on the endpoint for `GC`.
    pub name: String,
    /// `type`, the plugin binary's name.
    pub plugin_type: String,
    /// `mtu` of both ends of the veth pair; the agent's default when absent.
    pub mtu: Option<u32>,
    /// `socket-path` of the agent; [`cilium_api::DEFAULT_SOCKET_PATH`] when absent.
    pub socket_path: PathBuf,
    /// `args` (an object), where Mesos and runtimes put labels.
    pub args: Option<Map<String, Value>>,
    /// `runtimeConfig` (an object).
    pub runtime_config: Option<Map<String, Value>>,
    /// `prevResult` (an object), the result of the previous plugin in a chain.
    pub prev_result: Option<Map<String, Value>>,
    /// `cni.dev/valid-attachments` (or `cni.dev/attachments`), unparsed.
    attachments: Option<Value>,
}

/// How a JSON value's type reads in a message ("a string", "an object", ...).
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The value of `key`, with `null` read as absent.
fn get<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    config.get(key).filter(|v| !v.is_null())
}

fn optional_str<'a>(
    config: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match get(config, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(
            key,
            format!("must be a string, found {}", kind(other)),
        )),
    }
}

fn required_str(config: &Map<String, Value>, key: &'static str) -> Result<String, ConfigError> {
    match optional_str(config, key)? {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(ConfigError::Missing(key)),
    }
}

fn optional_object(
    config: &Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, ConfigError> {
    match get(config, key) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(other) => Err(invalid(
            key,
            format!("must be an object, found {}", kind(other)),
        )),
    }
}

fn mtu(config: &Map<String, Value>) -> Result<Option<u32>, ConfigError> {
    let Some(value) = get(config, "mtu") else {
        return Ok(None);
    };
    value
        .as_u64()
        .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
        .and_then(|m| u32::try_from(m).ok())
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "mtu",
                format!("must be an integer between {MIN_MTU} and {MAX_MTU}, found {value}"),
            )
        })
}

impl NetworkConfig {
    /// Parses and checks the config read from stdin.
    pub fn parse(input: &[u8]) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_slice(input).map_err(ConfigError::Decode)?;
        let Value::Object(config) = value else {
            return Err(ConfigError::NotAnObject(kind(&value)));
        };
        let cni_version = match optional_str(&config, "cniVersion")? {
            None => IMPLICIT,
            Some(v) => v.parse()?,
        };
        let name = required_str(&config, "name")?;
        let plugin_type = required_str(&config, "type")?;
        let mtu = mtu(&config)?;
        let socket_path = match optional_str(&config, "socket-path")? {
            None => PathBuf::from(cilium_api::DEFAULT_SOCKET_PATH),
            Some("") => return Err(invalid("socket-path", "must not be empty")),
            Some(path) => PathBuf::from(path),
        };
        Ok(NetworkConfig {
            cni_version,
            name,
            plugin_type,
            mtu,
            socket_path,
            args: optional_object(&config, "args")?,
            runtime_config: optional_object(&config, "runtimeConfig")?,
            prev_result: optional_object(&config, "prevResult")?,
            attachments: get(&config, VALID_ATTACHMENTS_KEY)
                .or_else(|| get(&config, ATTACHMENTS_KEY))
                .cloned(),
        })
    }

    /// The attachments `GC` must keep. A config without the list is refused rather than read
    /// as "keep nothing", which would detach every container of the network.
    pub fn valid_attachments(&self) -> Result<Vec<GcAttachment>, ConfigError> {
        let key = VALID_ATTACHMENTS_KEY;
        let Some(value) = &self.attachments else {
            return Err(invalid(
                key,
                "is missing: GC needs cni.dev/valid-attachments",
            ));
        };
        let Value::Array(entries) = value else {
            return Err(invalid(
                key,
                format!("must be a list, found {}", kind(value)),
            ));
        };
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let field = |name: &str| match entry.get(name) {
                    Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(invalid(
                        &format!("{key}[{i}]"),
                        format!("needs a non-empty string '{name}'"),
                    )),
                };
                Ok(GcAttachment {
                    container_id: field("containerID")?,
                    ifname: field("ifname")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(value.to_string().as_bytes())
    }

    #[test]
    fn the_shipped_config() {
        let config = NetworkConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"cilium","type":"cilium-cni","mtu":1450}"#,
        )
        .unwrap();
        assert_eq!(config.cni_version, CniVersion::V1_0_0);
        assert_eq!(config.name, "cilium");
        assert_eq!(config.plugin_type, "cilium-cni");
        assert_eq!(config.mtu, Some(1450));
        assert_eq!(
            config.socket_path,
            PathBuf::from(cilium_api::DEFAULT_SOCKET_PATH)
        );
        assert_eq!(config.args, None);
        assert_eq!(config.prev_result, None);
    }

    #[test]
    fn old_configs_speak_0_1_0() {
        let config = parse(json!({"name": "n", "type": "cilium-cni"})).unwrap();
        assert_eq!(config.cni_version, CniVersion::V0_1_0);
        assert_eq!(config.mtu, None);
    }

    #[test]
    fn decode_errors() {
        for input in ["", "garbage", "{\"name\":"] {
            let err = NetworkConfig::parse(input.as_bytes()).unwrap_err();
            assert!(matches!(err, ConfigError::Decode(_)), "{input}: {err}");
            assert!(err
                .to_string()
                .starts_with("failed to decode network config: "));
        }
        let err = parse(json!([1, 2])).unwrap_err();
        assert!(matches!(err, ConfigError::NotAnObject("an array")), "{err}");
    }

    #[test]
    fn unsupported_version() {
        let err = parse(json!({"cniVersion": "0.9.0", "name": "n", "type": "t"})).unwrap_err();
        assert!(matches!(err, ConfigError::Version(_)));
        assert!(err
            .to_string()
            .starts_with("incompatible CNI version 0.9.0; supported: 0.1.0,"));
    }

    #[test]
    fn name_and_type_are_required() {
        for (config, key) in [
            (json!({"type": "t"}), "name"),
            (json!({"name": "", "type": "t"}), "name"),
            (json!({"name": null, "type": "t"}), "name"),
            (json!({"name": "n"}), "type"),
            (json!({"name": "n", "type": ""}), "type"),
        ] {
            let err = parse(config.clone()).unwrap_err();
            assert!(
                matches!(err, ConfigError::Missing(k) if k == key),
                "{config}: {err}"
            );
        }
        let err = parse(json!({"name": 5, "type": "t"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid network config: 'name' must be a string, found a number"
        );
    }

    #[test]
    fn mtu_bounds() {
        for (mtu, ok) in [
            (json!(68), true),
            (json!(65535), true),
            (json!(67), false),
            (json!(65536), false),
            (json!(-1), false),
            (json!(1450.5), false),
            (json!("1450"), false),
        ] {
            let result = parse(json!({"name": "n", "type": "t", "mtu": mtu}));
            assert_eq!(result.is_ok(), ok, "{mtu}");
            if let Err(err) = result {
                assert!(err.to_string().contains("'mtu'"), "{err}");
            }
        }
    }

    #[test]
    fn socket_path_and_sections() {
        let config = parse(json!({
            "name": "n", "type": "t", "socket-path": "/run/x.sock",
            "args": {"cni": {}}, "runtimeConfig": {}, "prevResult": {"ips": []},
            "unknownKey": [1]
        }))
        .unwrap();
        assert_eq!(config.socket_path, PathBuf::from("/run/x.sock"));
        assert!(config.args.is_some() && config.runtime_config.is_some());
        assert!(config.prev_result.is_some());
        for (key, value) in [
            ("socket-path", json!("")),
            ("socket-path", json!(1)),
            ("args", json!([])),
            ("runtimeConfig", json!("x")),
            ("prevResult", json!(1)),
        ] {
            let mut config = json!({"name": "n", "type": "t"});
            config[key] = value;
            let err = parse(config).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn gc_attachments() {
        let entries = json!([{"containerID": "c1", "ifname": "eth0"}]);
        let want = vec![GcAttachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        for key in [VALID_ATTACHMENTS_KEY, ATTACHMENTS_KEY] {
            let mut config = json!({"name": "n", "type": "t"});
            config[key] = entries.clone();
            assert_eq!(parse(config).unwrap().valid_attachments().unwrap(), want);
        }
        let empty = parse(json!({"name": "n", "type": "t", VALID_ATTACHMENTS_KEY: []})).unwrap();
        assert_eq!(empty.valid_attachments().unwrap(), vec![]);

        let none = parse(json!({"name": "n", "type": "t"})).unwrap();
        let err = none.valid_attachments().unwrap_err();
        assert!(
            err.to_string()
                .contains("GC needs cni.dev/valid-attachments"),
            "{err}"
        );
        for bad in [json!({}), json!([{"containerID": "c1"}]), json!([1])] {
            let config =
                parse(json!({"name": "n", "type": "t", VALID_ATTACHMENTS_KEY: bad})).unwrap();
            assert!(config.valid_attachments().is_err(), "{bad}");
        }
    }
}
