//! What a watch has reported so far, so that a watch that lost track of the history (etcd
//! compacted it while the watch was disconnected; consul never keeps it) can be brought up
//! to date from a listing: every key that changed is reported as a put, every key that is
//! gone as a delete.

use std::collections::BTreeMap;

use super::{Entry, WatchEvent};

/// The keys a watch has reported (or that existed when it started), with the modification
/// revision it last reported for each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct KnownKeys(BTreeMap<String, u64>);

impl KnownKeys {
    /// The keys of a listing.
    pub fn from_listing(listing: &[(String, Entry)]) -> KnownKeys {
        KnownKeys(
            listing
                .iter()
                .map(|(key, entry)| (key.clone(), entry.mod_revision))
                .collect(),
        )
    }

    /// Records a reported put.
    pub fn put(&mut self, key: &str, mod_revision: u64) {
        self.0.insert(key.to_string(), mod_revision);
    }

    /// Records a reported delete.
    pub fn delete(&mut self, key: &str) {
        self.0.remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The events that take a watcher from the known keys to `current` (the full listing of
    /// the watched prefix): a delete for each known key that is gone (by key), then a put for
    /// each key that is new or was modified since it was reported (in modification order).
    /// The known keys become those of `current`.
    pub fn resync(&mut self, current: Vec<(String, Entry)>) -> Vec<WatchEvent> {
        let mut events: Vec<WatchEvent> = Vec::new();
        let now: BTreeMap<&str, u64> = current
            .iter()
            .map(|(key, entry)| (key.as_str(), entry.mod_revision))
            .collect();
        for key in self.0.keys() {
            if !now.contains_key(key.as_str()) {
                events.push(WatchEvent::Delete { key: key.clone() });
            }
        }
        let mut changed: Vec<&(String, Entry)> = current
            .iter()
            .filter(|(key, entry)| self.0.get(key) != Some(&entry.mod_revision))
            .collect();
        changed.sort_by(|a, b| (a.1.mod_revision, &a.0).cmp(&(b.1.mod_revision, &b.0)));
        events.extend(changed.into_iter().map(|(key, entry)| WatchEvent::Put {
            key: key.clone(),
            value: entry.value.clone(),
        }));
        *self = KnownKeys::from_listing(&current);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, rev: u64) -> (String, Entry) {
        (
            key.to_string(),
            Entry {
                value: value.as_bytes().to_vec(),
                mod_revision: rev,
                lease: None,
            },
        )
    }

    fn put(key: &str, value: &str) -> WatchEvent {
        WatchEvent::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn delete(key: &str) -> WatchEvent {
        WatchEvent::Delete { key: key.into() }
    }

    #[test]
    fn resync_reports_changes_deletes_and_news_only() {
        let mut known = KnownKeys::from_listing(&[
            entry("p/same", "s", 3),
            entry("p/changed", "old", 4),
            entry("p/gone", "g", 5),
        ]);
        known.put("p/seen-later", 7);
        known.delete("p/never");
        let events = known.resync(vec![
            entry("p/changed", "new", 12),
            entry("p/new-b", "b", 10),
            entry("p/new-a", "a", 10),
            entry("p/same", "s", 3),
            entry("p/seen-later", "l", 7),
        ]);
        assert_eq!(
            events,
            [
                delete("p/gone"),
                put("p/new-a", "a"),
                put("p/new-b", "b"),
                put("p/changed", "new"),
            ]
        );
        assert_eq!(known.len(), 5);
        // A second resync against the same listing reports nothing.
        assert!(known
            .resync(vec![
                entry("p/changed", "new", 12),
                entry("p/new-b", "b", 10),
                entry("p/new-a", "a", 10),
                entry("p/same", "s", 3),
                entry("p/seen-later", "l", 7),
            ])
            .is_empty());
        // Everything gone.
        assert_eq!(known.resync(Vec::new()).len(), 5);
        assert_eq!(known, KnownKeys::default());
    }

    #[test]
    fn re_created_key_with_a_newer_revision_is_a_put() {
        let mut known = KnownKeys::from_listing(&[entry("k", "v", 3)]);
        assert_eq!(known.resync(vec![entry("k", "v", 9)]), [put("k", "v")]);
    }
}
