//! Mutable on/off options (the agent's `Debug`, an endpoint's `Debug`), changed live through
//! `PATCH /config` and `PATCH /endpoint/{id}/config`. Names match case-insensitively; values
//! accept the usual spellings of a switch.

use std::collections::BTreeMap;

use cilium_api::models::ConfigurationMap;
use serde::{Deserialize, Serialize};

/// Why an option change was refused. Nothing is applied when one entry is bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown option '{name}' (mutable options: {known})")]
    Unknown { name: String, known: String },
    #[error("invalid value '{value}' for option {name}: expected true or false")]
    BadValue { name: String, value: String },
}

/// Parses a switch: true/false, enabled/disabled, on/off, yes/no, 1/0.
pub fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "enabled" | "enable" | "on" | "yes" | "1" => Some(true),
        "false" | "disabled" | "disable" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// How a switch is shown.
pub fn render(on: bool) -> &'static str {
    if on {
        "Enabled"
    } else {
        "Disabled"
    }
}

/// A set of named switches with fixed names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OptionSet {
    values: BTreeMap<String, bool>,
}

impl OptionSet {
    /// Switches named `names`, all off.
    pub fn new(names: &[&'static str]) -> OptionSet {
        OptionSet {
            values: names.iter().map(|n| (n.to_string(), false)).collect(),
        }
    }

    /// Switches with their default values.
    pub fn with_defaults(defaults: &[(&'static str, bool)]) -> OptionSet {
        OptionSet {
            values: defaults.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
    }

    /// Adds the switches of `defaults` this set lacks (a set saved by an older version),
    /// with their default values; existing values are kept.
    pub fn fill_defaults(&mut self, defaults: &[(&'static str, bool)]) {
        for (name, on) in defaults {
            self.values.entry(name.to_string()).or_insert(*on);
        }
    }

    pub fn get(&self, name: &str) -> bool {
        self.values.get(name).copied().unwrap_or(false)
    }

    pub fn set(&mut self, name: &str, on: bool) {
        if let Some(v) = self.values.get_mut(name) {
            *v = on;
        }
    }

    /// Validates every change, then applies them all. Returns the changed (name, value) pairs.
    pub fn apply(
        &mut self,
        changes: &ConfigurationMap,
    ) -> Result<Vec<(String, bool)>, OptionError> {
        let mut parsed = Vec::with_capacity(changes.len());
        for (name, value) in changes {
            let Some(known) = self.values.keys().find(|k| k.eq_ignore_ascii_case(name)) else {
                let known = self.values.keys().cloned().collect::<Vec<_>>().join(", ");
                return Err(OptionError::Unknown {
                    name: name.clone(),
                    known,
                });
            };
            let on = parse_switch(value).ok_or_else(|| OptionError::BadValue {
                name: known.clone(),
                value: value.clone(),
            })?;
            parsed.push((known.clone(), on));
        }
        let mut changed = Vec::new();
        for (name, on) in parsed {
            if self.get(&name) != on {
                self.set(&name, on);
                changed.push((name, on));
            }
        }
        Ok(changed)
    }

    /// The options as the API shows them.
    pub fn to_map(&self) -> ConfigurationMap {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), render(*v).to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> ConfigurationMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn apply_is_case_insensitive_and_reports_changes() {
        let mut set = OptionSet::new(&["Debug"]);
        assert_eq!(
            set.apply(&map(&[("debug", "true")])).unwrap(),
            vec![("Debug".into(), true)]
        );
        assert!(set.get("Debug"));
        assert!(set.apply(&map(&[("DEBUG", "Enabled")])).unwrap().is_empty());
        assert_eq!(set.to_map(), map(&[("Debug", "Enabled")]));
    }

    #[test]
    fn bad_changes_apply_nothing() {
        let mut set = OptionSet::new(&["Debug"]);
        let err = set.apply(&map(&[("Debug", "maybe")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value 'maybe' for option Debug: expected true or false"
        );
        let err = set
            .apply(&map(&[("Debug", "true"), ("Turbo", "on")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown option 'Turbo' (mutable options: Debug)"
        );
        assert!(!set.get("Debug"));
    }
}
