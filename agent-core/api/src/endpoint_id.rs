//! Endpoint ids as the API accepts them: `[prefix:]value`. A bare number means
//! `cilium-local:`, the agent's own endpoint id (1–65535).

use std::fmt;
use std::str::FromStr;

/// Longest value accepted after a prefix.
pub const MAX_ID_VALUE_LEN: usize = 256;

/// One way of naming an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointId {
    /// `cilium-local:N`, the id the agent allocated.
    CiliumLocal(u16),
    /// `container-id:ID`, the container runtime's id.
    ContainerId(String),
    /// `docker-endpoint:ID`, the libnetwork endpoint id (`docker-net-endpoint:` accepted too).
    DockerEndpoint(String),
    /// `container-name:NAME`.
    ContainerName(String),
    /// `pod-name:NAMESPACE:NAME` (any string the orchestrator gave as pod name).
    PodName(String),
}

/// Why an endpoint id string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointIdError {
    #[error("empty endpoint id")]
    Empty,
    #[error(
        "unknown endpoint id prefix '{0}' (expected cilium-local, container-id, docker-endpoint, \
         container-name or pod-name)"
    )]
    UnknownPrefix(String),
    #[error("endpoint id prefix '{0}' is not supported by this agent")]
    Unsupported(String),
    #[error("invalid endpoint id '{0}': expected a number between 1 and 65535")]
    BadNumber(String),
    #[error("endpoint id '{0}' has an empty value after its prefix")]
    EmptyValue(String),
    #[error("endpoint id value is longer than {MAX_ID_VALUE_LEN} characters")]
    TooLong,
    #[error("endpoint id contains a control character")]
    ControlCharacter,
}

impl EndpointId {
    /// The prefix this id is written with.
    pub fn prefix(&self) -> &'static str {
        match self {
            EndpointId::CiliumLocal(_) => "cilium-local",
            EndpointId::ContainerId(_) => "container-id",
            EndpointId::DockerEndpoint(_) => "docker-endpoint",
            EndpointId::ContainerName(_) => "container-name",
            EndpointId::PodName(_) => "pod-name",
        }
    }
}

/// Checks a free-form identifier (container id, name, pod name) that the agent will store.
pub fn validate_name(value: &str) -> Result<(), EndpointIdError> {
    if value.len() > MAX_ID_VALUE_LEN {
        return Err(EndpointIdError::TooLong);
    }
    if value.chars().any(char::is_control) {
        return Err(EndpointIdError::ControlCharacter);
    }
    Ok(())
}

fn parse_local(s: &str) -> Result<u16, EndpointIdError> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(EndpointIdError::BadNumber(s.to_string())),
    }
}

impl FromStr for EndpointId {
    type Err = EndpointIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(EndpointIdError::Empty);
        }
        let Some((prefix, value)) = s.split_once(':') else {
            return parse_local(s).map(EndpointId::CiliumLocal);
        };
        if value.is_empty() {
            return Err(EndpointIdError::EmptyValue(s.to_string()));
        }
        validate_name(value)?;
        let owned = value.to_string();
        match prefix {
            "cilium-local" => parse_local(value).map(EndpointId::CiliumLocal),
            "container-id" => Ok(EndpointId::ContainerId(owned)),
            "docker-endpoint" | "docker-net-endpoint" => Ok(EndpointId::DockerEndpoint(owned)),
            "container-name" => Ok(EndpointId::ContainerName(owned)),
            "pod-name" => Ok(EndpointId::PodName(owned)),
            "cilium-global" => Err(EndpointIdError::Unsupported(prefix.to_string())),
            other => Err(EndpointIdError::UnknownPrefix(other.to_string())),
        }
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointId::CiliumLocal(n) => write!(f, "cilium-local:{n}"),
            EndpointId::ContainerId(v)
            | EndpointId::DockerEndpoint(v)
            | EndpointId::ContainerName(v)
            | EndpointId::PodName(v) => write!(f, "{}:{v}", self.prefix()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_number_is_local() {
        assert_eq!(
            "42".parse::<EndpointId>().unwrap(),
            EndpointId::CiliumLocal(42)
        );
        assert_eq!(
            "cilium-local:65535".parse::<EndpointId>().unwrap(),
            EndpointId::CiliumLocal(65535)
        );
    }

    #[test]
    fn local_ids_out_of_range() {
        for bad in [
            "0",
            "65536",
            "-1",
            "abc",
            "cilium-local:0",
            "cilium-local:x",
        ] {
            let err = bad.parse::<EndpointId>().unwrap_err();
            assert!(matches!(err, EndpointIdError::BadNumber(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn every_prefix() {
        let cases = [
            (
                "container-id:abc123",
                EndpointId::ContainerId("abc123".into()),
            ),
            (
                "docker-endpoint:e1",
                EndpointId::DockerEndpoint("e1".into()),
            ),
            (
                "docker-net-endpoint:e1",
                EndpointId::DockerEndpoint("e1".into()),
            ),
            (
                "container-name:web",
                EndpointId::ContainerName("web".into()),
            ),
            (
                "pod-name:default:foobar",
                EndpointId::PodName("default:foobar".into()),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<EndpointId>().unwrap(), want, "{s}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "cilium-local:7",
            "container-id:abc",
            "pod-name:ns:p",
            "container-name:x",
        ] {
            assert_eq!(s.parse::<EndpointId>().unwrap().to_string(), s);
        }
        assert_eq!(
            "docker-net-endpoint:e"
                .parse::<EndpointId>()
                .unwrap()
                .to_string(),
            "docker-endpoint:e"
        );
    }

    #[test]
    fn bad_ids_name_the_problem() {
        assert_eq!(
            "".parse::<EndpointId>().unwrap_err(),
            EndpointIdError::Empty
        );
        let err = "foo:bar".parse::<EndpointId>().unwrap_err();
        assert!(
            err.to_string().contains("unknown endpoint id prefix 'foo'"),
            "{err}"
        );
        let err = "container-id:".parse::<EndpointId>().unwrap_err();
        assert!(matches!(err, EndpointIdError::EmptyValue(_)));
        let err = "cilium-global:c:n:1".parse::<EndpointId>().unwrap_err();
        assert!(matches!(err, EndpointIdError::Unsupported(_)));
        let long = format!("container-id:{}", "a".repeat(300));
        assert_eq!(
            long.parse::<EndpointId>().unwrap_err(),
            EndpointIdError::TooLong
        );
        let ctl = "container-id:a\nb".parse::<EndpointId>().unwrap_err();
        assert_eq!(ctl, EndpointIdError::ControlCharacter);
    }
}
