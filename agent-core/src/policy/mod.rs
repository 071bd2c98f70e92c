//! Identity-based network policy (seed §5): the policy language ([`rule`], [`selector`]), the
//! repository and incremental resolution into per-endpoint tables ([`engine`],
//! [`resolve`]), and the trace ([`trace`]).

pub mod engine;
pub mod resolve;
pub mod rule;
pub mod selector;
pub mod trace;

pub use engine::{Change, PolicyEngine};
pub use resolve::{evaluate, DirectionTable, Enforcement, PolicyKey, ResolvedPolicy, Verdict};
pub use rule::{parse_rules, Direction, PortProtocol, Protocol, Rule};
pub use selector::EndpointSelector;

/// Errors of policy operations.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policy JSON: {0}")]
    Json(String),
    #[error("invalid policy: {0}")]
    Format(String),
    #[error("invalid policy: rule {rule}: {field}: {reason}")]
    Invalid {
        rule: usize,
        field: String,
        reason: String,
    },
    #[error("no policy rule carries the labels {0}")]
    NotFound(String),
}

/// The rules as the API shows them: a pretty-printed JSON array.
pub fn rules_json(rules: &[std::sync::Arc<Rule>]) -> String {
    let list: Vec<serde_json::Value> = rules.iter().map(|r| r.to_json()).collect();
    serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".to_string())
}

#[cfg(test)]
mod tests;
