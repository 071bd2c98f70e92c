//! Labels: `source:key[=value]`, the metadata an endpoint carries (seed §3.2). A label without
//! a source is `unspec:`. A [`LabelSet`] is a sorted set of labels (what an identity is made
//! of); a [`LabelFilter`] (`--labels`, `--label-prefix-file`) picks the identity-relevant
//! labels out of everything an orchestrator attaches.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MAX_PART_LEN: usize = 256;

/// Where a label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelSource {
    Container,
    K8s,
    Mesos,
    Reserved,
    Unspec,
    /// Prefixes named by CIDR policy rules (`cidr:10.0.0.0/8`); assigned by the agent.
    Cidr,
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
            LabelSource::Cidr => "cidr",
            LabelSource::Any => "any",
        }
    }

    /// The source named `s`.
    pub fn parse(s: &str) -> Option<LabelSource> {
        Some(match s {
            "container" => LabelSource::Container,
            "k8s" => LabelSource::K8s,
            "mesos" => LabelSource::Mesos,
            "reserved" => LabelSource::Reserved,
            "unspec" => LabelSource::Unspec,
            "cidr" => LabelSource::Cidr,
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
    /// Parses a label an endpoint may carry: not `any` (selectors only), and not `reserved`
    /// or `cidr` (the agent assigns those; an endpoint must not claim to be the host).
    pub fn parse_concrete(s: &str) -> Result<Label, LabelError> {
        let label: Label = s.parse()?;
        match label.source {
            LabelSource::Any => Err(invalid(s, "source 'any' is only valid in selectors")),
            LabelSource::Reserved | LabelSource::Cidr => Err(invalid(
                s,
                format!(
                    "labels of source '{}' are assigned by the agent",
                    label.source.as_str()
                ),
            )),
            _ => Ok(label),
        }
    }

    /// A label from its parts.
    pub fn new(source: LabelSource, key: &str, value: &str) -> Label {
        Label {
            source,
            key: key.to_string(),
            value: value.to_string(),
        }
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

/// A sorted set of labels without duplicates: what an identity is made of. Serialized as a
/// list of `source:key[=value]` strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSet(Vec<Label>);

impl LabelSet {
    pub fn new(mut labels: Vec<Label>) -> LabelSet {
        labels.sort();
        labels.dedup();
        LabelSet(labels)
    }

    /// Parses strings (any source but `any`); used for trusted input such as stored state.
    pub fn parse(labels: &[String]) -> Result<LabelSet, LabelError> {
        labels
            .iter()
            .map(|l| l.parse::<Label>())
            .collect::<Result<Vec<_>, _>>()
            .map(LabelSet::new)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    /// Whether a label of this set matches `filter` (see [`Label::matches`]).
    pub fn has(&self, filter: &Label) -> bool {
        self.0.iter().any(|l| filter.matches(l))
    }

    /// The labels as `source:key[=value]` strings, sorted.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for l in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

impl FromIterator<Label> for LabelSet {
    fn from_iter<I: IntoIterator<Item = Label>>(iter: I) -> Self {
        LabelSet::new(iter.into_iter().collect())
    }
}

impl Serialize for LabelSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let strings = Vec::<String>::deserialize(deserializer)?;
        LabelSet::parse(&strings).map_err(serde::de::Error::custom)
    }
}

/// Label keys that change from one container of a workload to the next, or carry
/// orchestration bookkeeping: they would split one workload into many identities. Entries
/// use the filter syntax (`!` excludes).
pub const DEFAULT_FILTER: &[&str] = &[
    "!io.kubernetes",
    "!kubernetes.io",
    "!pod-template-generation",
    "!pod-template-hash",
    "!controller-revision-hash",
    "!annotation.",
    "!com.docker.compose.container-number",
    "!com.docker.compose.config-hash",
    "!com.docker.compose.oneoff",
    "!com.docker.compose.version",
    "!com.docker.compose.project.",
    "!com.docker.compose.depends_on",
    "!com.docker.compose.image",
    "!org.opencontainers.image.created",
    "io.kubernetes.pod.namespace",
];

/// One entry of a label filter: `[!][source:]prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FilterEntry {
    include: bool,
    /// `None` (or `any:`) matches every source.
    source: Option<LabelSource>,
    prefix: String,
}

impl FilterEntry {
    fn parse(raw: &str) -> Result<FilterEntry, LabelError> {
        let text = raw.trim();
        let (include, rest) = match text.strip_prefix('!') {
            Some(r) => (false, r),
            None => (true, text),
        };
        let (source, prefix) = match rest.split_once(':') {
            Some((src, p)) => match LabelSource::parse(src) {
                Some(LabelSource::Any) => (None, p),
                Some(s) => (Some(s), p),
                None => (None, rest),
            },
            None => (None, rest),
        };
        if prefix.is_empty() {
            return Err(invalid(raw, "empty label prefix in the label filter"));
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                raw,
                "a label prefix must not contain whitespace or control characters",
            ));
        }
        Ok(FilterEntry {
            include,
            source,
            prefix: prefix.to_string(),
        })
    }

    fn matches(&self, label: &Label) -> bool {
        self.source.is_none_or(|s| s == label.source) && label.key.starts_with(&self.prefix)
    }
}

/// Picks the identity-relevant labels of an endpoint. Entries are `[!][source:]prefix` of
/// label keys; the longest matching prefix decides (an exclusion wins a tie). A label no
/// entry matches is kept, unless the user listed prefixes to include (`--labels id.`): then
/// only labels those (or the defaults' inclusions) match are kept. `reserved:` labels are
/// always kept. The defaults ([`DEFAULT_FILTER`]) drop volatile orchestration labels and
/// keep `io.kubernetes.pod.namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    entries: Vec<FilterEntry>,
    /// The user named prefixes to include: labels nothing matches are dropped.
    include_only: bool,
}

impl Default for LabelFilter {
    fn default() -> Self {
        LabelFilter {
            entries: DEFAULT_FILTER
                .iter()
                .filter_map(|e| FilterEntry::parse(e).ok())
                .collect(),
            include_only: false,
        }
    }
}

impl LabelFilter {
    /// The defaults plus the user's entries (`--labels`, then `--label-prefix-file`).
    pub fn new(user: &[String], prefix_file: Option<&Path>) -> Result<LabelFilter, LabelError> {
        let mut filter = LabelFilter::default();
        let mut raw: Vec<String> = user
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(path) = prefix_file {
            raw.extend(read_prefix_file(path)?);
        }
        for entry in raw {
            let parsed = FilterEntry::parse(&entry)?;
            filter.include_only |= parsed.include;
            filter.entries.push(parsed);
        }
        Ok(filter)
    }

    /// Whether `label` is identity-relevant.
    pub fn keeps(&self, label: &Label) -> bool {
        if label.source == LabelSource::Reserved {
            return true;
        }
        let best = self
            .entries
            .iter()
            .filter(|e| e.matches(label))
            .max_by_key(|e| (e.prefix.len(), !e.include));
        match best {
            Some(entry) => entry.include,
            None => !self.include_only,
        }
    }

    /// The identity-relevant subset of `labels`.
    pub fn identity_labels<'a>(&self, labels: impl IntoIterator<Item = &'a Label>) -> LabelSet {
        labels
            .into_iter()
            .filter(|l| self.keeps(l))
            .cloned()
            .collect()
    }

    /// The entries as `[!][source:]prefix` strings (for `cilium config`).
    pub fn describe(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| {
                format!(
                    "{}{}{}",
                    if e.include { "" } else { "!" },
                    e.source
                        .map(|s| format!("{}:", s.as_str()))
                        .unwrap_or_default(),
                    e.prefix
                )
            })
            .collect()
    }
}

/// Reads a label prefix file: one `[!][source:]prefix` per line (`#` starts a comment), or the
/// 2017 JSON form `{"version": 1, "valid-prefixes": [{"source": "", "prefix": "id."}]}`.
fn read_prefix_file(path: &Path) -> Result<Vec<String>, LabelError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            &path.display().to_string(),
            format!("cannot read the label prefix file: {e}"),
        )
    })?;
    if text.trim_start().starts_with('{') {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Prefix {
            #[serde(default)]
            source: String,
            prefix: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct PrefixFile {
            #[serde(default)]
            #[allow(dead_code)]
            version: u32,
            valid_prefixes: Vec<Prefix>,
        }
        let parsed: PrefixFile = serde_json::from_str(&text).map_err(|e| {
            invalid(
                &path.display().to_string(),
                format!("invalid label prefix file: {e}"),
            )
        })?;
        return Ok(parsed
            .valid_prefixes
            .into_iter()
            .map(|p| {
                if p.source.is_empty() {
                    p.prefix
                } else {
                    format!("{}:{}", p.source, p.prefix)
                }
            })
            .collect());
    }
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
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

    fn set(labels: &[&str]) -> Vec<Label> {
        labels.iter().map(|l| l.parse().expect("label")).collect()
    }

    #[test]
    fn default_filter_keeps_the_guides_labels_and_drops_volatile_ones() {
        let f = LabelFilter::default();
        let kept = f.identity_labels(&set(&[
            "container:id=app1",
            "unspec:id.foo",
            "k8s:io.kubernetes.pod.namespace=default",
            "k8s:io.kubernetes.pod.name=web-1",
            "k8s:pod-template-hash=abc",
            "container:io.kubernetes.container.name=x",
            "k8s:kubernetes.io/hostname=node1",
            "k8s:app.kubernetes.io/name=shop",
            "container:com.docker.compose.container-number=2",
            "container:com.docker.compose.project=shop",
            "mesos:id=web-server",
        ]));
        assert_eq!(
            kept.to_strings(),
            vec![
                "container:com.docker.compose.project=shop",
                "container:id=app1",
                "k8s:app.kubernetes.io/name=shop",
                "k8s:io.kubernetes.pod.namespace=default",
                "mesos:id=web-server",
                "unspec:id.foo",
            ]
        );
    }

    #[test]
    fn user_prefixes_switch_to_include_only() {
        let f = LabelFilter::new(&["id.".into(), "k8s:role".into()], None).unwrap();
        let kept = f.identity_labels(&set(&[
            "container:id.service1",
            "container:id=app1",
            "k8s:role=frontend",
            "container:role=x",
            "k8s:io.kubernetes.pod.namespace=default",
            "reserved:host",
        ]));
        assert_eq!(
            kept.to_strings(),
            vec![
                "container:id.service1",
                "k8s:io.kubernetes.pod.namespace=default",
                "k8s:role=frontend",
                "reserved:host",
            ]
        );
        // An exclusion only.
        let f = LabelFilter::new(&["!team".into()], None).unwrap();
        assert!(!f.keeps(&"container:team=a".parse().unwrap()));
        assert!(f.keeps(&"container:app=a".parse().unwrap()));
    }

    #[test]
    fn prefix_file_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("p.txt");
        std::fs::write(&text, "# comment\nid.\n\n!id.secret  # no\n").unwrap();
        let f = LabelFilter::new(&[], Some(&text)).unwrap();
        assert!(f.keeps(&"container:id.a".parse().unwrap()));
        assert!(!f.keeps(&"container:id.secret.x".parse().unwrap()));
        assert!(!f.keeps(&"container:app=a".parse().unwrap()));
        let json = dir.path().join("p.json");
        std::fs::write(
            &json,
            r#"{"version":1,"valid-prefixes":[{"source":"k8s","prefix":"app"}]}"#,
        )
        .unwrap();
        let f = LabelFilter::new(&[], Some(&json)).unwrap();
        assert!(f.keeps(&"k8s:app=a".parse().unwrap()));
        assert!(!f.keeps(&"container:app=a".parse().unwrap()));
        let bad = dir.path().join("missing");
        let err = LabelFilter::new(&[], Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("cannot read the label prefix file"), "{err}");
        assert!(LabelFilter::new(&["!".into()], None).is_err());
    }

    #[test]
    fn label_set_is_sorted_and_serializes_as_strings() {
        let s = LabelSet::new(set(&["k8s:b", "container:a", "k8s:b"]));
        assert_eq!(s.to_string(), "container:a,k8s:b");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["container:a","k8s:b"]"#);
        assert_eq!(serde_json::from_str::<LabelSet>(&json).unwrap(), s);
        assert!(Label::parse_concrete("reserved:host")
            .unwrap_err()
            .to_string()
            .contains("assigned by the agent"));
    }

    #[test]
    fn list_is_sorted_and_deduplicated() {
        let list = parse_list(&["k8s:b".into(), "container:a".into(), "k8s:b".into()]).unwrap();
        let printed: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(printed, vec!["container:a", "k8s:b"]);
    }
}
