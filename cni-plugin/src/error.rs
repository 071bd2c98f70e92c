//! The error the plugin reports to the runtime: a CNI error code, a message and optional
//! details, rendered as the spec's JSON error. Every other error type of the crate is turned
//! into a [`CniError`] here, so the code mapping lives in one place.

use serde_json::{json, Value};

use crate::config::ConfigError;
use crate::env::EnvError;
use crate::labels::LabelError;
use crate::result::ResultError;
use crate::version::{CniVersion, VersionError};

/// The CNI error codes this plugin uses (0–99 from the spec, 100 and up its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the config's `cniVersion` (or the command in it) is not supported.
    IncompatibleVersion,
    /// 3: the container's network namespace does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: reading the input or starting the runtime failed.
    IoFailure,
    /// 6: stdin is not a JSON object.
    Decode,
    /// 7: the network config is missing keys or has invalid values.
    InvalidConfig,
    /// 11: the agent could not be reached; the runtime may retry.
    TryAgainLater,
    /// 50: `STATUS`: the agent is not available, no new `ADD` will work.
    NotAvailable,
    /// 100: the agent refused the request.
    AgentRefused,
    /// 101: `CHECK` found the endpoint missing or different from `prevResult`.
    CheckFailed,
    /// 102: the agent's reply could not be understood or the request not built.
    AgentProtocol,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::AgentRefused => 100,
            ErrorCode::CheckFailed => 101,
            ErrorCode::AgentProtocol => 102,
        }
    }
}

/// An error as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One line saying what failed.
    pub msg: String,
    /// More context, when there is some.
    pub details: Option<String>,
}

impl CniError {
    /// An error without details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The spec's JSON error, written in `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut value = json!({
            "cniVersion": version.as_str(),
            "code": self.code.as_u32(),
            "msg": self.msg,
        });
        if let (Some(details), Some(object)) = (&self.details, value.as_object_mut()) {
            object.insert("details".into(), Value::String(details.clone()));
        }
        value
    }
}

impl From<EnvError> for CniError {
    fn from(err: EnvError) -> Self {
        CniError::new(ErrorCode::InvalidEnvironment, err.to_string())
    }
}

impl From<VersionError> for CniError {
    fn from(err: VersionError) -> Self {
        CniError::new(ErrorCode::IncompatibleVersion, err.to_string())
    }
}

impl From<ConfigError> for CniError {
    fn from(err: ConfigError) -> Self {
        let code = match &err {
            ConfigError::Decode(_) | ConfigError::NotAnObject(_) => ErrorCode::Decode,
            ConfigError::Version(_) => ErrorCode::IncompatibleVersion,
            ConfigError::Missing(_) | ConfigError::Invalid { .. } => ErrorCode::InvalidConfig,
        };
        CniError::new(code, err.to_string())
    }
}

impl From<LabelError> for CniError {
    fn from(err: LabelError) -> Self {
        CniError::new(ErrorCode::InvalidConfig, err.to_string())
    }
}

impl From<ResultError> for CniError {
    fn from(err: ResultError) -> Self {
        CniError::new(ErrorCode::InvalidConfig, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_without_details() {
        let err = CniError::new(ErrorCode::InvalidEnvironment, "CNI_IFNAME is not set");
        assert_eq!(
            err.to_json(CniVersion::V0_3_1),
            json!({"cniVersion": "0.3.1", "code": 4, "msg": "CNI_IFNAME is not set"})
        );
        assert_eq!(err.to_string(), "CNI_IFNAME is not set");
    }

    #[test]
    fn json_with_details() {
        let err = CniError::new(ErrorCode::TryAgainLater, "cannot reach").with_details("start it");
        assert_eq!(
            err.to_json(CniVersion::V1_1_0),
            json!({"cniVersion": "1.1.0", "code": 11, "msg": "cannot reach", "details": "start it"})
        );
    }

    #[test]
    fn codes_on_the_wire() {
        let codes = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironment, 4),
            (ErrorCode::IoFailure, 5),
            (ErrorCode::Decode, 6),
            (ErrorCode::InvalidConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::NotAvailable, 50),
            (ErrorCode::AgentRefused, 100),
            (ErrorCode::CheckFailed, 101),
            (ErrorCode::AgentProtocol, 102),
        ];
        for (code, n) in codes {
            assert_eq!(code.as_u32(), n, "{code:?}");
        }
    }

    #[test]
    fn area_errors_map_to_codes() {
        let env: CniError = EnvError::Missing("CNI_NETNS").into();
        assert_eq!(env.code, ErrorCode::InvalidEnvironment);
        let version: CniError = VersionError("0.9.0".into()).into();
        assert_eq!(version.code, ErrorCode::IncompatibleVersion);
        let decode: CniError = ConfigError::NotAnObject("an array").into();
        assert_eq!(decode.code, ErrorCode::Decode);
        let incompatible: CniError = ConfigError::Version(VersionError("2.0.0".into())).into();
        assert_eq!(incompatible.code, ErrorCode::IncompatibleVersion);
        let missing: CniError = ConfigError::Missing("name").into();
        assert_eq!(missing.code, ErrorCode::InvalidConfig);
        let labels: CniError = LabelError::EmptyKey {
            path: "args.cni.labels".into(),
        }
        .into();
        assert_eq!(labels.code, ErrorCode::InvalidConfig);
    }
}
