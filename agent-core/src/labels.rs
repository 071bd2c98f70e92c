//! Labels: `source:key[=value]`, the metadata an endpoint carries (seed §3.2). A label without
//! a source is `unspec:`.

use std::fmt;
use std::str::FromStr;

const MAX_PART_LEN: usize = 256;

/// Where a label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelSource {
    Container,
    K8s,
    Mesos,
    Reserved,
    Unspec,
    /// Matches every source; only valid in selectors and filters.
    Any,
}

impl LabelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelSource::Container => "container",
            LabelSource::K8s => "k8s",
            LabelSource::Mesos => "mesos",
            LabelSource::Reserved => "reserved",
            LabelSource::Unspec => "unspec",
            LabelSource::Any => "any",
        }
    }

    fn parse(s: &str) -> Option<LabelSource> {
        Some(match s {
            "container" => LabelSource::Container,
            "k8s" => LabelSource::K8s,
            "mesos" => LabelSource::Mesos,
            "reserved" => LabelSource::Reserved,
            "unspec" => LabelSource::Unspec,
            "any" => LabelSource::Any,
            _ => return None,
        })
    }
}

/// One label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub source: LabelSource,
    pub key: String,
    pub value: String,
}

/// Why a label string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("invalid label '{label}': {reason}")]
    Invalid { label: String, reason: String },
}

fn invalid(label: &str, reason: impl Into<String>) -> LabelError {
    LabelError::Invalid {
        label: label.to_string(),
        reason: reason.into(),
    }
}

impl Label {
    /// Parses a label an endpoint may carry (any source but `any`).
    pub fn parse_concrete(s: &str) -> Result<Label, LabelError> {
        let label: Label = s.parse()?;
        if label.source == LabelSource::Any {
            return Err(invalid(s, "source 'any' is only valid in selectors"));
        }
        Ok(label)
    }

    /// Whether this label (as a filter) matches `other`: same key and value, and the same
    /// source unless this one is `any`.
    pub fn matches(&self, other: &Label) -> bool {
        (self.source == LabelSource::Any || self.source == other.source)
            && self.key == other.key
            && self.value == other.value
    }
}

impl FromStr for Label {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let colon = s.find(':');
        let equals = s.find('=');
        let (source, rest) = match colon {
            Some(c) if equals.is_none_or(|e| c < e) => {
                let src = &s[..c];
                let source = LabelSource::parse(src).ok_or_else(|| {
                    invalid(
                        s,
                        format!(
                            "unknown source '{src}' (expected container, k8s, mesos, reserved, \
                             unspec or any)"
                        ),
                    )
                })?;
                (source, &s[c + 1..])
            }
            _ => (LabelSource::Unspec, s),
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        if key.is_empty() {
            return Err(invalid(s, "empty key"));
        }
        if key.len() > MAX_PART_LEN || value.len() > MAX_PART_LEN {
            return Err(invalid(
                s,
                format!("key and value are limited to {MAX_PART_LEN} bytes"),
            ));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                s,
                "the key contains whitespace or a control character",
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(s, "the value contains a control character"));
        }
        Ok(Label {
            source,
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source.as_str(), self.key)?;
        if !self.value.is_empty() {
            write!(f, "={}", self.value)?;
        }
        Ok(())
    }
}

/// Parses a list of concrete labels, sorted and without duplicates.
pub fn parse_list(labels: &[String]) -> Result<Vec<Label>, LabelError> {
    let mut out = labels
        .iter()
        .map(|l| Label::parse_concrete(l))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let l: Label = "k8s:io.kubernetes.pod.namespace=default".parse().unwrap();
        assert_eq!(l.source, LabelSource::K8s);
        assert_eq!(l.key, "io.kubernetes.pod.namespace");
        assert_eq!(l.value, "default");
        assert_eq!(l.to_string(), "k8s:io.kubernetes.pod.namespace=default");
        assert_eq!(
            "id.foo".parse::<Label>().unwrap().to_string(),
            "unspec:id.foo"
        );
        assert_eq!(
            "id=app1".parse::<Label>().unwrap().to_string(),
            "unspec:id=app1"
        );
        assert_eq!(
            "container:url=http://x".parse::<Label>().unwrap().value,
            "http://x"
        );
        // A colon after the '=' belongs to the value.
        assert_eq!(
            "a=b:c".parse::<Label>().unwrap().to_string(),
            "unspec:a=b:c"
        );
    }

    #[test]
    fn bad_labels_name_the_problem() {
        let err = "docker:a=b".parse::<Label>().unwrap_err().to_string();
        assert!(err.contains("unknown source 'docker'"), "{err}");
        assert!("k8s:=x"
            .parse::<Label>()
            .unwrap_err()
            .to_string()
            .contains("empty key"));
        assert!("k8s:a b=x".parse::<Label>().is_err());
        let err = Label::parse_concrete("any:id=x").unwrap_err().to_string();
        assert!(err.contains("only valid in selectors"), "{err}");
    }

    #[test]
    fn any_matches_every_source() {
        let filter: Label = "any:id=app1".parse().unwrap();
        assert!(filter.matches(&"k8s:id=app1".parse().unwrap()));
        assert!(filter.matches(&"container:id=app1".parse().unwrap()));
        assert!(!filter.matches(&"container:id=app2".parse().unwrap()));
        let exact: Label = "k8s:id=app1".parse().unwrap();
        assert!(!exact.matches(&"container:id=app1".parse().unwrap()));
    }

    #[test]
    fn list_is_sorted_and_deduplicated() {
        let list = parse_list(&["k8s:b".into(), "container:a".into(), "k8s:b".into()]).unwrap();
        let printed: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(printed, vec!["container:a", "k8s:b"]);
    }
}
