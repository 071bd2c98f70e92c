//! The labels and pod name an endpoint gets from its orchestrator, written `source:key=value`
//! (`source:key` for a label without value):
//! - Mesos: `args["org.apache.mesos"].network_info.labels.labels[] {key, value}` → `mesos:`
//! - runtimes: `args.cni.labels[] {key, value}` and `runtimeConfig.labels` (the same list, or
//!   an object `{key: value}`) → `container:`
//! - Kubernetes: `K8S_POD_NAMESPACE` in `CNI_ARGS` → `k8s:io.kubernetes.pod.namespace=NS`, and
//!   with `K8S_POD_NAME` the pod name `NS/NAME`.
//!
//! Labels decide the endpoint's security identity, so a malformed label section is refused
//! instead of silently dropped.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::config::kind;
use crate::env::CniArgs;

/// Label source of Mesos network labels.
pub const SOURCE_MESOS: &str = "mesos";
/// Label source of runtime-provided labels.
pub const SOURCE_CONTAINER: &str = "container";
/// Label source of Kubernetes labels.
pub const SOURCE_K8S: &str = "k8s";
/// The label key carrying the pod's namespace.
pub const K8S_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// A label section with the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A value has the wrong JSON type.
    #[error("invalid network config: '{path}' must be {expected}, found {found}")]
    Shape {
        /// Where in the config.
        path: String,
        /// What was expected there.
        expected: &'static str,
        /// What was found.
        found: &'static str,
    },
    /// A label has no key.
    #[error("invalid network config: '{path}' has a label with an empty key")]
    EmptyKey {
        /// Where in the config.
        path: String,
    },
    /// A label key contains `=`, which would make `key=value` ambiguous.
    #[error("invalid network config: label key '{key}' in '{path}' contains '='")]
    KeyWithEquals {
        /// Where in the config.
        path: String,
        /// The key.
        key: String,
    },
}

/// What the endpoint is told about its container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointLabels {
    /// `source:key[=value]`, sorted, without duplicates.
    pub labels: Vec<String>,
    /// `NAMESPACE/NAME` (or `NAME`) from `CNI_ARGS`.
    pub pod_name: Option<String>,
}

/// Collects the labels from the config's `args` and `runtimeConfig` and from `CNI_ARGS`.
pub fn collect(
    args: Option<&Map<String, Value>>,
    runtime_config: Option<&Map<String, Value>>,
    cni_args: &CniArgs,
) -> Result<EndpointLabels, LabelError> {
    let mut labels = BTreeSet::new();
    if let Some(args) = args {
        let mesos = descend(
            args,
            "args",
            &["org.apache.mesos", "network_info", "labels", "labels"],
        )?;
        if let Some((path, list)) = mesos {
            key_value_list(list, &path, SOURCE_MESOS, &mut labels)?;
        }
        if let Some((path, list)) = descend(args, "args", &["cni", "labels"])? {
            key_value_list(list, &path, SOURCE_CONTAINER, &mut labels)?;
        }
    }
    if let Some(runtime_config) = runtime_config {
        if let Some((path, value)) = descend(runtime_config, "runtimeConfig", &["labels"])? {
            match value {
                Value::Object(map) => {
                    for (key, value) in map {
                        let value = label_value(value, &format!("{path}.{key}"))?;
                        labels.insert(label(SOURCE_CONTAINER, key, value, &path)?);
                    }
                }
                other => key_value_list(other, &path, SOURCE_CONTAINER, &mut labels)?,
            }
        }
    }
    let namespace = cni_args.get("K8S_POD_NAMESPACE").filter(|s| !s.is_empty());
    if let Some(namespace) = namespace {
        labels.insert(format!("{SOURCE_K8S}:{K8S_NAMESPACE_LABEL}={namespace}"));
    }
    let pod_name =
        cni_args
            .get("K8S_POD_NAME")
            .filter(|s| !s.is_empty())
            .map(|name| match namespace {
                Some(namespace) => format!("{namespace}/{name}"),
                None => name.to_string(),
            });
    Ok(EndpointLabels {
        labels: labels.into_iter().collect(),
        pod_name,
    })
}

/// Follows `keys` from `root`; `None` when a key (or a null) is on the way, an error when
/// an intermediate value is not an object. Returns the dotted path and the value.
fn descend<'a>(
    root: &'a Map<String, Value>,
    root_name: &str,
    keys: &[&str],
) -> Result<Option<(String, &'a Value)>, LabelError> {
    let mut path = root_name.to_string();
    let mut object = root;
    let mut found = None;
    for (i, key) in keys.iter().enumerate() {
        path = format!("{path}.{key}");
        let Some(value) = object.get(*key).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        if i + 1 == keys.len() {
            found = Some(value);
        } else {
            object = value.as_object().ok_or_else(|| LabelError::Shape {
                path: path.clone(),
                expected: "an object",
                found: kind(value),
            })?;
        }
    }
    Ok(found.map(|value| (path, value)))
}

/// Reads `[{"key": ..., "value": ...}]` into `source:key=value` labels.
fn key_value_list(
    list: &Value,
    path: &str,
    source: &str,
    labels: &mut BTreeSet<String>,
) -> Result<(), LabelError> {
    let entries = list.as_array().ok_or_else(|| LabelError::Shape {
        path: path.to_string(),
        expected: "a list of {key, value}",
        found: kind(list),
    })?;
    for (i, entry) in entries.iter().enumerate() {
        let entry_path = format!("{path}[{i}]");
        let key = match entry.get("key") {
            Some(Value::String(key)) => key,
            other => {
                return Err(LabelError::Shape {
                    path: format!("{entry_path}.key"),
                    expected: "a string",
                    found: other.map_or("nothing", kind),
                })
            }
        };
        let value = match entry.get("value") {
            None => None,
            Some(value) => label_value(value, &format!("{entry_path}.value"))?,
        };
        labels.insert(label(source, key, value, path)?);
    }
    Ok(())
}

fn label_value<'a>(value: &'a Value, path: &str) -> Result<Option<&'a str>, LabelError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(LabelError::Shape {
            path: path.to_string(),
            expected: "a string",
            found: kind(other),
        }),
    }
}

fn label(source: &str, key: &str, value: Option<&str>, path: &str) -> Result<String, LabelError> {
    if key.is_empty() {
        return Err(LabelError::EmptyKey {
            path: path.to_string(),
        });
    }
    if key.contains('=') {
        return Err(LabelError::KeyWithEquals {
            path: path.to_string(),
            key: key.to_string(),
        });
    }
    Ok(match value.filter(|v| !v.is_empty()) {
        Some(value) => format!("{source}:{key}={value}"),
        None => format!("{source}:{key}"),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn no_args() -> CniArgs {
        CniArgs::default()
    }

    #[test]
    fn mesos_network_labels() {
        let args = object(json!({"org.apache.mesos": {"network_info": {
            "name": "cilium",
            "labels": {"labels": [{"key": "app", "value": "web"}, {"key": "flag"}]}
        }}}));
        let got = collect(Some(&args), None, &no_args()).unwrap();
        assert_eq!(got.labels, ["mesos:app=web", "mesos:flag"]);
        assert_eq!(got.pod_name, None);
    }

    #[test]
    fn mesos_without_labels() {
        for args in [
            json!({"org.apache.mesos": {"network_info": {"name": "cilium"}}}),
            json!({"org.apache.mesos": {}}),
            json!({"org.apache.mesos": {"network_info": {"labels": {}}}}),
            json!({}),
        ] {
            let got = collect(Some(&object(args.clone())), None, &no_args()).unwrap();
            assert!(got.labels.is_empty(), "{args}");
        }
    }

    #[test]
    fn runtime_labels_from_args_and_runtime_config() {
        let args = object(json!({"cni": {"labels": [{"key": "id", "value": "app1"}]}}));
        let list = object(json!({"labels": [{"key": "tier", "value": "db"}]}));
        let map = object(json!({"labels": {"tier": "db", "role": null}}));
        let got = collect(Some(&args), Some(&list), &no_args()).unwrap();
        assert_eq!(got.labels, ["container:id=app1", "container:tier=db"]);
        let got = collect(None, Some(&map), &no_args()).unwrap();
        assert_eq!(got.labels, ["container:role", "container:tier=db"]);
    }

    #[test]
    fn kubernetes_args() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_UID=u;\
             K8S_POD_INFRA_CONTAINER_ID=abc",
        )
        .unwrap();
        let got = collect(None, None, &args).unwrap();
        assert_eq!(got.labels, ["k8s:io.kubernetes.pod.namespace=default"]);
        assert_eq!(got.pod_name.as_deref(), Some("default/web-1"));

        let name_only = CniArgs::parse("K8S_POD_NAME=web-1").unwrap();
        let got = collect(None, None, &name_only).unwrap();
        assert!(got.labels.is_empty());
        assert_eq!(got.pod_name.as_deref(), Some("web-1"));

        let empty = CniArgs::parse("K8S_POD_NAMESPACE=;K8S_POD_NAME=").unwrap();
        assert_eq!(
            collect(None, None, &empty).unwrap(),
            EndpointLabels::default()
        );
    }

    #[test]
    fn every_source_at_once_sorted_and_deduplicated() {
        let args = object(json!({
            "org.apache.mesos": {"network_info": {"labels": {"labels": [{"key": "a", "value": "1"}]}}},
            "cni": {"labels": [{"key": "b", "value": "2"}, {"key": "b", "value": "2"}]}
        }));
        let runtime = object(json!({"labels": {"b": "2"}}));
        let cni_args = CniArgs::parse("K8S_POD_NAMESPACE=ns").unwrap();
        let got = collect(Some(&args), Some(&runtime), &cni_args).unwrap();
        assert_eq!(
            got.labels,
            [
                "container:b=2",
                "k8s:io.kubernetes.pod.namespace=ns",
                "mesos:a=1"
            ]
        );
    }

    #[test]
    fn malformed_sections_are_refused() {
        let cases = [
            (
                json!({"cni": {"labels": {"a": "b"}}}),
                "'args.cni.labels' must be a list of {key, value}, found an object",
            ),
            (
                json!({"cni": "x"}),
                "'args.cni' must be an object, found a string",
            ),
            (
                json!({"cni": {"labels": [{"value": "v"}]}}),
                "'args.cni.labels[0].key' must be a string, found nothing",
            ),
            (
                json!({"cni": {"labels": [{"key": "k", "value": 1}]}}),
                "'args.cni.labels[0].value' must be a string, found a number",
            ),
            (
                json!({"cni": {"labels": [{"key": "", "value": "v"}]}}),
                "'args.cni.labels' has a label with an empty key",
            ),
            (
                json!({"cni": {"labels": [{"key": "a=b"}]}}),
                "label key 'a=b' in 'args.cni.labels' contains '='",
            ),
            (
                json!({"org.apache.mesos": {"network_info": {"labels": {"labels": 5}}}}),
                "'args.org.apache.mesos.network_info.labels.labels' must be a list",
            ),
        ];
        for (args, want) in cases {
            let err = collect(Some(&object(args.clone())), None, &no_args()).unwrap_err();
            assert!(err.to_string().contains(want), "{args}: {err}");
        }
        let runtime = object(json!({"labels": "x"}));
        let err = collect(None, Some(&runtime), &no_args()).unwrap_err();
        assert!(err.to_string().contains("runtimeConfig.labels"), "{err}");
    }
}
