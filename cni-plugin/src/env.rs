//! The `CNI_*` environment: which operation the runtime asks for and on which container.
//! Variables are read through a lookup function so tests need not touch the process
//! environment. `CNI_PATH` is not read: this plugin delegates to no other plugin.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cilium_api::endpoint_id::MAX_ID_VALUE_LEN;

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// The value of `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it; succeeds when already detached.
    Del,
    /// Verify what `ADD` made.
    Check,
    /// Report whether the plugin can serve `ADD`.
    Status,
    /// Release attachments the runtime no longer knows.
    Gc,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    /// The name as the runtime writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Command {
    type Err = EnvError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "STATUS" => Ok(Command::Status),
            "GC" => Ok(Command::Gc),
            "VERSION" => Ok(Command::Version),
            other => Err(EnvError::UnknownCommand(other.to_string())),
        }
    }
}

/// A missing or invalid `CNI_*` variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A required variable is absent or empty.
    #[error("required environment variable {0} is not set")]
    Missing(&'static str),
    /// A variable is not UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(&'static str),
    /// `CNI_COMMAND` names no known operation.
    #[error("unknown CNI_COMMAND '{0}' (expected ADD, DEL, CHECK, STATUS, GC or VERSION)")]
    UnknownCommand(String),
    /// A variable's value is malformed.
    #[error("invalid {var} '{value}': {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(Vec<(String, String)>);

impl CniArgs {
    /// Parses `K=V;K=V`. Empty entries (a trailing `;`) are skipped; an entry without `=` or
    /// with an empty key is refused.
    pub fn parse(raw: &str) -> Result<Self, EnvError> {
        let mut pairs = Vec::new();
        for entry in raw.split(';').filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    pairs.push((key.to_string(), value.to_string()));
                }
                _ => {
                    return Err(EnvError::Invalid {
                        var: "CNI_ARGS",
                        value: raw.to_string(),
                        reason: format!("entry '{entry}' is not KEY=VALUE"),
                    })
                }
            }
        }
        Ok(CniArgs(pairs))
    }

    /// The value of `key` (the last one when repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The container and interface `ADD` and `CHECK` act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`, the interface inside the container.
    pub ifname: String,
    /// `CNI_NETNS`, the container's network namespace, as given.
    pub netns: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
}

/// What the runtime asked for, with the variables that operation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `ADD`.
    Add(Target),
    /// `CHECK`.
    Check(Target),
    /// `DEL`; `CNI_NETNS` may be gone already, and `CNI_ARGS` is not read.
    Del {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// `CNI_NETNS`, when given.
        netns: Option<String>,
    },
    /// `STATUS`.
    Status,
    /// `GC`.
    Gc,
    /// `VERSION`.
    Version,
}

impl Operation {
    /// Reads the operation and the variables it needs through `lookup`.
    pub fn from_env(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, EnvError> {
        let var = |name: &'static str| -> Result<Option<String>, EnvError> {
            match lookup(name) {
                None => Ok(None),
                Some(value) => match value.into_string() {
                    Ok(s) if s.is_empty() => Ok(None),
                    Ok(s) => Ok(Some(s)),
                    Err(_) => Err(EnvError::NotUnicode(name)),
                },
            }
        };
        let required = |name: &'static str| var(name)?.ok_or(EnvError::Missing(name));

        let command: Command = required("CNI_COMMAND")?.parse()?;
        let target = || -> Result<Target, EnvError> {
            let container_id = required("CNI_CONTAINERID")?;
            validate_container_id(&container_id)?;
            let netns = required("CNI_NETNS")?;
            validate_netns(&netns)?;
            let ifname = required("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            let args = CniArgs::parse(&var("CNI_ARGS")?.unwrap_or_default())?;
            Ok(Target {
                container_id,
                ifname,
                netns,
                args,
            })
        };
        Ok(match command {
            Command::Add => Operation::Add(target()?),
            Command::Check => Operation::Check(target()?),
            Command::Del => {
                let container_id = required("CNI_CONTAINERID")?;
                validate_container_id(&container_id)?;
                let ifname = required("CNI_IFNAME")?;
                validate_ifname(&ifname)?;
                Operation::Del {
                    container_id,
                    ifname,
                    netns: var("CNI_NETNS")?,
                }
            }
            Command::Status => Operation::Status,
            Command::Gc => Operation::Gc,
            Command::Version => Operation::Version,
        })
    }

    /// The command this operation answers.
    pub fn command(&self) -> Command {
        match self {
            Operation::Add(_) => Command::Add,
            Operation::Check(_) => Command::Check,
            Operation::Del { .. } => Command::Del,
            Operation::Status => Command::Status,
            Operation::Gc => Command::Gc,
            Operation::Version => Command::Version,
        }
    }
}

fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> EnvError {
    EnvError::Invalid {
        var,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Checks `CNI_CONTAINERID` against `^[A-Za-z0-9][A-Za-z0-9_.-]*$` and the agent's length limit.
pub fn validate_container_id(id: &str) -> Result<(), EnvError> {
    let var = "CNI_CONTAINERID";
    let mut chars = id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid(var, id, "must start with a letter or digit"));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(invalid(
            var,
            id,
            format!("character {c:?} is not allowed (only A-Z, a-z, 0-9, '_', '.', '-')"),
        ));
    }
    if id.len() > MAX_ID_VALUE_LEN {
        return Err(invalid(
            var,
            id,
            format!("longer than {MAX_ID_VALUE_LEN} characters"),
        ));
    }
    Ok(())
}

/// Checks `CNI_IFNAME`: 1–15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<(), EnvError> {
    let var = "CNI_IFNAME";
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid(
            var,
            name,
            format!("longer than {MAX_IFNAME_LEN} bytes"),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid(var, name, "not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            var,
            name,
            format!("character {c:?} is not allowed"),
        ));
    }
    Ok(())
}

/// Checks `CNI_NETNS`: an absolute path (the agent resolves it, not this process).
pub fn validate_netns(netns: &str) -> Result<(), EnvError> {
    if !Path::new(netns).is_absolute() {
        return Err(invalid("CNI_NETNS", netns, "must be an absolute path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Operation, EnvError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Operation::from_env(|name| map.get(name).cloned())
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        ),
    ];

    fn without(
        vars: &[(&'static str, &'static str)],
        name: &str,
    ) -> Vec<(&'static str, &'static str)> {
        vars.iter().filter(|(k, _)| *k != name).copied().collect()
    }

    fn with(
        vars: &[(&'static str, &'static str)],
        name: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut v = without(vars, name);
        v.push((name, value));
        v
    }

    #[test]
    fn add_with_everything() {
        let Operation::Add(target) = parse(&ADD).unwrap() else {
            panic!("not an ADD");
        };
        assert_eq!(target.container_id, "abc123");
        assert_eq!(target.netns, "/var/run/netns/c1");
        assert_eq!(target.ifname, "eth0");
        assert_eq!(target.args.get("K8S_POD_NAME"), Some("web"));
        assert_eq!(target.args.get("IgnoreUnknown"), Some("1"));
        assert_eq!(target.args.get("K8S_POD_UID"), None);
    }

    #[test]
    fn add_and_check_need_every_variable() {
        for command in ["ADD", "CHECK"] {
            let base = with(&ADD, "CNI_COMMAND", command);
            for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
                assert_eq!(parse(&without(&base, var)), Err(EnvError::Missing(var)));
                assert_eq!(parse(&with(&base, var, "")), Err(EnvError::Missing(var)));
            }
            assert!(parse(&without(&base, "CNI_ARGS")).is_ok());
        }
    }

    #[test]
    fn missing_message_names_the_variable() {
        let err = parse(&without(&ADD, "CNI_CONTAINERID")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "required environment variable CNI_CONTAINERID is not set"
        );
    }

    #[test]
    fn del_tolerates_a_missing_netns() {
        let del = without(&with(&ADD, "CNI_COMMAND", "DEL"), "CNI_NETNS");
        assert_eq!(
            parse(&del).unwrap(),
            Operation::Del {
                container_id: "abc123".into(),
                ifname: "eth0".into(),
                netns: None
            }
        );
        let with_netns = with(&ADD, "CNI_COMMAND", "DEL");
        assert!(matches!(
            parse(&with_netns).unwrap(),
            Operation::Del { netns: Some(_), .. }
        ));
        assert_eq!(
            parse(&without(&del, "CNI_IFNAME")),
            Err(EnvError::Missing("CNI_IFNAME"))
        );
        // DEL is best effort: a malformed CNI_ARGS does not stop it.
        assert!(parse(&with(&del, "CNI_ARGS", "garbage")).is_ok());
    }

    #[test]
    fn commands_without_variables() {
        for (name, op) in [
            ("STATUS", Operation::Status),
            ("GC", Operation::Gc),
            ("VERSION", Operation::Version),
        ] {
            assert_eq!(parse(&[("CNI_COMMAND", name)]).unwrap(), op);
            assert_eq!(op.command().as_str(), name);
        }
    }

    #[test]
    fn unknown_or_missing_command() {
        assert_eq!(parse(&[]), Err(EnvError::Missing("CNI_COMMAND")));
        let err = parse(&[("CNI_COMMAND", "add")]).unwrap_err();
        assert_eq!(err, EnvError::UnknownCommand("add".into()));
        assert!(err.to_string().contains("CNI_COMMAND"));
    }

    #[test]
    fn container_ids() {
        for good in ["a", "0", "abc_1.2-3", "A"] {
            assert!(validate_container_id(good).is_ok(), "{good}");
        }
        for bad in ["-a", "_a", ".a", "a/b", "a b", "a:b", "é", "a\n"] {
            let err = validate_container_id(bad).unwrap_err();
            assert!(err.to_string().contains("CNI_CONTAINERID"), "{bad}: {err}");
        }
        assert!(validate_container_id(&"a".repeat(MAX_ID_VALUE_LEN)).is_ok());
        assert!(validate_container_id(&"a".repeat(MAX_ID_VALUE_LEN + 1)).is_err());
        let err = parse(&with(&ADD, "CNI_CONTAINERID", "../x")).unwrap_err();
        assert!(matches!(
            err,
            EnvError::Invalid {
                var: "CNI_CONTAINERID",
                ..
            }
        ));
    }

    #[test]
    fn interface_names() {
        for good in ["eth0", "a", "net1.100", "x".repeat(15).as_str()] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "x".repeat(16).as_str(),
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "é".repeat(8).as_str(),
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert!(err.to_string().contains("CNI_IFNAME"), "{bad}: {err}");
        }
        assert!(matches!(
            parse(&with(&ADD, "CNI_IFNAME", "..")),
            Err(EnvError::Invalid {
                var: "CNI_IFNAME",
                ..
            })
        ));
    }

    #[test]
    fn netns_must_be_absolute() {
        assert!(matches!(
            parse(&with(&ADD, "CNI_NETNS", "netns/c1")),
            Err(EnvError::Invalid {
                var: "CNI_NETNS",
                ..
            })
        ));
        assert!(parse(&with(&ADD, "CNI_NETNS", "/proc/123/ns/net")).is_ok());
    }

    #[test]
    fn cni_args() {
        let args = CniArgs::parse("A=1;B=;C=x=y;;A=2;").unwrap();
        assert_eq!(args.get("A"), Some("2"));
        assert_eq!(args.get("B"), Some(""));
        assert_eq!(args.get("C"), Some("x=y"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        for bad in ["A", "A=1;B", "=1"] {
            let err = CniArgs::parse(bad).unwrap_err();
            assert!(err.to_string().contains("CNI_ARGS"), "{bad}: {err}");
        }
        assert!(matches!(
            parse(&with(&ADD, "CNI_ARGS", "K8S_POD_NAME")),
            Err(EnvError::Invalid {
                var: "CNI_ARGS",
                ..
            })
        ));
    }

    #[test]
    fn non_unicode_values() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0x66, 0xff]);
        let result = Operation::from_env(|name| match name {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some(bad.clone()),
            _ => None,
        });
        assert_eq!(result, Err(EnvError::NotUnicode("CNI_CONTAINERID")));
    }
}
