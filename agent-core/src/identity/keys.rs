//! The identity key layout in the kvstore, all under [`PREFIX`]:
//!
//! - `labels/<canonical labels>` → the id (decimal): one per label set, created atomically,
//!   so a label set has one id cluster-wide;
//! - `id/<id>` → the labels (JSON list of `source:key[=value]`): claims the id;
//! - `refs/<id>/<node>` → the node's reference count when the key was written: present while
//!   the node holds the identity.
//!
//! The canonical form of a label set is its sorted `source:key[=value]` strings joined with
//! `,`, each percent-encoded (`/`, `%`, `,`, space, and bytes outside printable ASCII), so
//! it is exact (no hash, no collision) and a plain etcd/consul key segment. The empty set is
//! `(empty)` (no other form lacks a `:`). Node names are encoded the same way.

use std::fmt::Write;

use crate::labels::LabelSet;

/// Where identities live in the kvstore.
pub const PREFIX: &str = "cilium/state/identities/v1/";

/// The key of `labels` → id.
pub fn labels_key(labels: &LabelSet) -> String {
    let mut key = format!("{PREFIX}labels/");
    if labels.is_empty() {
        key.push_str("(empty)");
    }
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        encode(&label.to_string(), &mut key);
    }
    key
}

/// The prefix of the id keys.
pub fn ids_prefix() -> String {
    format!("{PREFIX}id/")
}

/// The key of `id` → labels.
pub fn id_key(id: u32) -> String {
    format!("{PREFIX}id/{id}")
}

/// The id named by an id key, if it is one.
pub fn parse_id_key(key: &str) -> Option<u32> {
    key.strip_prefix(PREFIX)?.strip_prefix("id/")?.parse().ok()
}

/// The prefix of the nodes' reference keys on `id`.
pub fn refs_prefix(id: u32) -> String {
    format!("{PREFIX}refs/{id}/")
}

/// The prefix of every reference key.
pub fn all_refs_prefix() -> String {
    format!("{PREFIX}refs/")
}

/// The key of `node`'s reference on `id`.
pub fn refs_key(id: u32, node: &str) -> String {
    let mut key = refs_prefix(id);
    encode(node, &mut key);
    key
}

/// The id of a reference key of `node`, if it is one.
pub fn parse_refs_key(key: &str, node: &str) -> Option<u32> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix("refs/")?;
    let (id, owner) = rest.split_once('/')?;
    let mut encoded = String::new();
    encode(node, &mut encoded);
    (owner == encoded).then(|| id.parse().ok()).flatten()
}

/// Appends `text` percent-encoded.
fn encode(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'/' | b'%' | b',') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Label;

    fn set(labels: &[&str]) -> LabelSet {
        labels.iter().map(|l| l.parse::<Label>().unwrap()).collect()
    }

    #[test]
    fn canonical_keys_are_readable_and_exact() {
        assert_eq!(
            labels_key(&set(&["id=app1", "container:id.foo"])),
            "cilium/state/identities/v1/labels/container:id.foo,unspec:id=app1"
        );
        assert_eq!(
            labels_key(&set(&["k8s:app.kubernetes.io/name=a b,c%", "k8s:é=1"])),
            "cilium/state/identities/v1/labels/\
             k8s:app.kubernetes.io%2Fname=a%20b%2Cc%25,k8s:%C3%A9=1"
        );
        assert_eq!(
            labels_key(&LabelSet::default()),
            format!("{PREFIX}labels/(empty)")
        );
        // Sets that a plain join would confuse.
        let pairs = [
            (set(&["a=b,unspec:c"]), set(&["a=b", "c"])),
            (set(&["a=b/c"]), set(&["a=b%2Fc"])),
        ];
        for (one, other) in pairs {
            assert_ne!(labels_key(&one), labels_key(&other), "{one} vs {other}");
        }
    }

    #[test]
    fn id_and_refs_keys_round_trip() {
        assert_eq!(id_key(256), "cilium/state/identities/v1/id/256");
        assert_eq!(parse_id_key(&id_key(256)), Some(256));
        assert_eq!(parse_id_key("cilium/state/identities/v1/id/x"), None);
        let key = refs_key(300, "node/1");
        assert_eq!(key, "cilium/state/identities/v1/refs/300/node%2F1");
        assert!(key.starts_with(&refs_prefix(300)));
        assert_eq!(parse_refs_key(&key, "node/1"), Some(300));
        assert_eq!(parse_refs_key(&key, "node"), None);
    }
}
