//! The CNI spec versions this plugin speaks: parsing a config's `cniVersion`, ordering
//! versions (what each one allows), and the reply to `VERSION`.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

/// A CNI spec version the plugin supports, ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.1.0, the original spec; results use `ip4`/`ip6`.
    V0_1_0,
    /// 0.2.0; results use `ip4`/`ip6`, adds `VERSION`.
    V0_2_0,
    /// 0.3.0; results gain `interfaces`, `ips` with `version`.
    V0_3_0,
    /// 0.3.1; same result shape as 0.3.0.
    V0_3_1,
    /// 0.4.0; adds `CHECK` and `prevResult` on `DEL`.
    V0_4_0,
    /// 1.0.0; `ips` lose `version`.
    V1_0_0,
    /// 1.1.0; adds `STATUS` and `GC`.
    V1_1_0,
}

/// The version used when the caller's version is unknown (no or unusable config).
pub const CURRENT: CniVersion = CniVersion::V1_1_0;

/// The version a config without `cniVersion` speaks (the spec's rule for old configs).
pub const IMPLICIT: CniVersion = CniVersion::V0_1_0;

/// A `cniVersion` this plugin does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("incompatible CNI version {0}; supported: {list}", list = supported_list())]
pub struct VersionError(pub String);

impl CniVersion {
    /// Every supported version, oldest first.
    pub const ALL: [CniVersion; 7] = [
        CniVersion::V0_1_0,
        CniVersion::V0_2_0,
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The version as written in configs and replies.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_1_0 => "0.1.0",
            CniVersion::V0_2_0 => "0.2.0",
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether results use the legacy `ip4`/`ip6` shape (0.1.0, 0.2.0).
    pub fn has_legacy_result(self) -> bool {
        self < CniVersion::V0_3_0
    }

    /// Whether each result ip carries `"version": "4"|"6"` (0.3.0 – 0.4.0).
    pub fn has_ip_version(self) -> bool {
        (CniVersion::V0_3_0..=CniVersion::V0_4_0).contains(&self)
    }

    /// Whether the spec defines `CHECK` in this version (0.4.0 and later).
    pub fn supports_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// The version a network config asks for, read leniently from raw stdin: the config's
    /// `cniVersion` when it is supported, [`IMPLICIT`] for a JSON object without one, and
    /// [`CURRENT`] otherwise (empty or undecodable input, unsupported version). Error replies
    /// and `VERSION` are written in this version.
    pub fn requested_by(input: &[u8]) -> CniVersion {
        let Ok(Value::Object(config)) = serde_json::from_slice::<Value>(input) else {
            return CURRENT;
        };
        match config.get("cniVersion") {
            None | Some(Value::Null) => IMPLICIT,
            Some(Value::String(v)) => v.parse().unwrap_or(CURRENT),
            Some(_) => CURRENT,
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| VersionError(s.to_string()))
    }
}

/// The supported versions, comma separated, for messages.
pub fn supported_list() -> String {
    let all: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    all.join(", ")
}

/// The reply to `VERSION`: `{"cniVersion": ..., "supportedVersions": [...]}`.
pub fn version_reply(version: CniVersion) -> Value {
    let supported: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    json!({ "cniVersion": version.as_str(), "supportedVersions": supported })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_version() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>().unwrap(), v);
            assert_eq!(v.to_string(), v.as_str());
        }
    }

    #[test]
    fn unknown_versions_are_refused_with_the_list() {
        for bad in ["0.9.0", "1.0", "", "1.2.0", "v1.0.0"] {
            let err = bad.parse::<CniVersion>().unwrap_err();
            assert_eq!(err, VersionError(bad.to_string()));
        }
        let msg = "0.9.0".parse::<CniVersion>().unwrap_err().to_string();
        assert_eq!(
            msg,
            "incompatible CNI version 0.9.0; supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
        );
    }

    #[test]
    fn ordering_and_capabilities() {
        assert!(CniVersion::V0_3_1 > CniVersion::V0_3_0);
        assert!(CniVersion::V1_0_0 < CniVersion::V1_1_0);
        let legacy: Vec<_> = CniVersion::ALL
            .into_iter()
            .filter(|v| v.has_legacy_result())
            .collect();
        assert_eq!(legacy, [CniVersion::V0_1_0, CniVersion::V0_2_0]);
        let with_ip_version: Vec<_> = CniVersion::ALL
            .into_iter()
            .filter(|v| v.has_ip_version())
            .collect();
        assert_eq!(
            with_ip_version,
            [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0]
        );
        assert!(!CniVersion::V0_3_1.supports_check());
        assert!(CniVersion::V0_4_0.supports_check());
    }

    #[test]
    fn requested_version_of_raw_input() {
        let cases: [(&str, CniVersion); 7] = [
            ("", CURRENT),
            ("garbage", CURRENT),
            ("[1]", CURRENT),
            (r#"{"name":"n"}"#, IMPLICIT),
            (r#"{"cniVersion":"0.3.1"}"#, CniVersion::V0_3_1),
            (r#"{"cniVersion":"0.9.0"}"#, CURRENT),
            (r#"{"cniVersion":4}"#, CURRENT),
        ];
        for (input, want) in cases {
            assert_eq!(CniVersion::requested_by(input.as_bytes()), want, "{input}");
        }
    }

    #[test]
    fn version_reply_lists_everything() {
        let reply = version_reply(CniVersion::V0_4_0);
        assert_eq!(reply["cniVersion"], "0.4.0");
        assert_eq!(
            reply["supportedVersions"],
            json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
