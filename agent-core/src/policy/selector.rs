//! Endpoint selectors: the Kubernetes label selector (`matchLabels`, `matchExpressions` with
//! `In`, `NotIn`, `Exists`, `DoesNotExist`) over `source:key` label keys. A key without a
//! source matches every source (`any:`). An empty selector matches every identity.

use std::fmt;

use serde_json::{Map, Value};

use crate::labels::{Label, LabelSet, LabelSource};

/// Operator of a requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }

    pub fn parse(s: &str) -> Option<Operator> {
        Some(match s {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => return None,
        })
    }
}

/// One requirement on the labels with a given source and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub source: LabelSource,
    pub key: String,
    pub op: Operator,
    /// Sorted, without duplicates.
    pub values: Vec<String>,
    /// Written as a `matchLabels` entry (printed back the same way).
    pub from_match_labels: bool,
}

impl Requirement {
    fn applies_to(&self, label: &Label) -> bool {
        label.key == self.key && (self.source == LabelSource::Any || label.source == self.source)
    }

    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let mut with_key = labels.iter().filter(|l| self.applies_to(l));
        match self.op {
            Operator::In => with_key.any(|l| self.values.contains(&l.value)),
            Operator::NotIn => !with_key.any(|l| self.values.contains(&l.value)),
            Operator::Exists => with_key.next().is_some(),
            Operator::DoesNotExist => with_key.next().is_none(),
        }
    }

    /// The `source:key` form used in JSON output (`any:id`).
    pub fn qualified_key(&self) -> String {
        format!("{}:{}", self.source.as_str(), self.key)
    }
}

/// A label selector. Requirements are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointSelector {
    /// Sorted, without duplicates.
    requirements: Vec<Requirement>,
}

impl EndpointSelector {
    pub fn new(mut requirements: Vec<Requirement>) -> EndpointSelector {
        requirements.sort();
        requirements.dedup();
        EndpointSelector { requirements }
    }

    /// A selector of `source:key=value` labels (`matchLabels`).
    pub fn from_labels(labels: &[Label]) -> EndpointSelector {
        EndpointSelector::new(
            labels
                .iter()
                .map(|l| Requirement {
                    source: l.source,
                    key: l.key.clone(),
                    op: Operator::In,
                    values: vec![l.value.clone()],
                    from_match_labels: true,
                })
                .collect(),
        )
    }

    /// Matches every identity.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The selector as JSON, keys qualified with their source (`{"matchLabels":{"any:id":"app1"}}`).
    pub fn to_json(&self) -> Value {
        let mut labels = Map::new();
        let mut expressions = Vec::new();
        for r in &self.requirements {
            if r.from_match_labels && r.op == Operator::In && r.values.len() == 1 {
                labels.insert(r.qualified_key(), Value::String(r.values[0].clone()));
            } else {
                let mut e = Map::new();
                e.insert("key".into(), Value::String(r.qualified_key()));
                e.insert("operator".into(), Value::String(r.op.as_str().into()));
                if !r.values.is_empty() {
                    e.insert(
                        "values".into(),
                        Value::Array(r.values.iter().cloned().map(Value::String).collect()),
                    );
                }
                expressions.push(Value::Object(e));
            }
        }
        let mut out = Map::new();
        if !labels.is_empty() {
            out.insert("matchLabels".into(), Value::Object(labels));
        }
        if !expressions.is_empty() {
            out.insert("matchExpressions".into(), Value::Array(expressions));
        }
        Value::Object(out)
    }
}

impl fmt::Display for EndpointSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// Splits a selector key `source:key` (no source = any).
pub fn split_key(raw: &str) -> Result<(LabelSource, String), String> {
    let (source, key) = match raw.split_once(':') {
        Some((src, key)) => {
            let source = LabelSource::parse(src).ok_or_else(|| {
                format!(
                    "unknown label source '{src}' in key '{raw}' (expected container, k8s, \
                     mesos, reserved, unspec, cidr or any)"
                )
            })?;
            (source, key)
        }
        None => (LabelSource::Any, raw),
    };
    if key.is_empty() {
        return Err(format!("empty label key '{raw}'"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "label key '{raw}' contains whitespace or a control character"
        ));
    }
    Ok((source, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(list: &[&str]) -> LabelSet {
        list.iter()
            .map(|l| l.parse::<Label>().expect("label"))
            .collect()
    }

    fn req(source: LabelSource, key: &str, op: Operator, values: &[&str]) -> Requirement {
        Requirement {
            source,
            key: key.into(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
            from_match_labels: false,
        }
    }

    #[test]
    fn match_labels_with_and_without_source() {
        let any = EndpointSelector::new(vec![req(LabelSource::Any, "id", Operator::In, &["app1"])]);
        assert!(any.matches(&labels(&["container:id=app1"])));
        assert!(any.matches(&labels(&["k8s:id=app1", "k8s:x=y"])));
        assert!(!any.matches(&labels(&["k8s:id=app2"])));
        let k8s = EndpointSelector::new(vec![req(LabelSource::K8s, "id", Operator::In, &["app1"])]);
        assert!(!k8s.matches(&labels(&["container:id=app1"])));
        // A key-only label has the empty value.
        let flag =
            EndpointSelector::new(vec![req(LabelSource::Any, "id.httpd", Operator::In, &[""])]);
        assert!(flag.matches(&labels(&["container:id.httpd"])));
        assert!(!flag.matches(&labels(&["container:id.httpd=x"])));
        assert!(EndpointSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn expressions() {
        let l = labels(&["k8s:env=prod", "k8s:role=backend"]);
        let m = |op, values: &[&str]| {
            EndpointSelector::new(vec![req(LabelSource::Any, "env", op, values)]).matches(&l)
        };
        assert!(m(Operator::In, &["prod", "qa"]));
        assert!(!m(Operator::In, &["qa"]));
        assert!(m(Operator::NotIn, &["qa"]));
        assert!(!m(Operator::NotIn, &["prod"]));
        assert!(m(Operator::Exists, &[]));
        assert!(!m(Operator::DoesNotExist, &[]));
        let absent =
            |op| EndpointSelector::new(vec![req(LabelSource::Any, "team", op, &["a"])]).matches(&l);
        assert!(absent(Operator::NotIn));
        assert!(!absent(Operator::In));
    }

    #[test]
    fn json_form_qualifies_keys() {
        let s = EndpointSelector::from_labels(&["id.httpd".parse::<Label>().expect("label")]);
        // `id.httpd` parses as unspec; the seed prints selectors with their source.
        assert_eq!(s.to_string(), r#"{"matchLabels":{"unspec:id.httpd":""}}"#);
        assert_eq!(
            split_key("id").expect("key"),
            (LabelSource::Any, "id".into())
        );
        assert_eq!(
            split_key("k8s:io.kubernetes.pod.namespace").expect("key"),
            (LabelSource::K8s, "io.kubernetes.pod.namespace".into())
        );
        assert!(split_key("docker:id")
            .unwrap_err()
            .contains("unknown label source"));
        assert!(split_key("k8s:").unwrap_err().contains("empty label key"));
    }
}
