//! The CNI operations against the agent. Each returns the JSON to print (only `ADD` prints
//! something) or the [`CniError`] to report; notes for stderr go to `log`.

mod add;
mod check;
mod del;
mod gc;
mod status;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::Agent;
use crate::config::NetworkConfig;
use crate::env::Operation;
use crate::error::{CniError, ErrorCode};
use crate::version::version_reply;

/// How long one operation may wait for the agent before the runtime is told to retry.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `operation` against `agent`, bounded by [`AGENT_TIMEOUT`].
pub(crate) async fn run<A: Agent>(
    operation: &Operation,
    config: &NetworkConfig,
    agent: &A,
    log: &mut Vec<String>,
) -> Result<Option<Value>, CniError> {
    let work = async {
        match operation {
            Operation::Add(target) => add::add(target, config, agent, log).await.map(Some),
            Operation::Check(target) => check::check(target, config, agent).await.map(|()| None),
            Operation::Del { container_id, .. } => {
                del::del(container_id, agent, log).await.map(|()| None)
            }
            Operation::Status => status::status(agent).await.map(|()| None),
            Operation::Gc => gc::gc(config, agent, log).await.map(|()| None),
            Operation::Version => Ok(Some(version_reply(config.cni_version))),
        }
    };
    tokio::time::timeout(AGENT_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "no answer from the agent at {} within {} s",
                    agent.socket_path().display(),
                    AGENT_TIMEOUT.as_secs()
                ),
            ))
        })
}

/// Refuses a `CNI_NETNS` that does not exist (code 3). When existence cannot be told
/// (permissions), the agent decides.
fn require_netns(netns: &str) -> Result<(), CniError> {
    match Path::new(netns).try_exists() {
        Ok(false) => Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("network namespace {netns} does not exist"),
        )),
        Ok(true) | Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_existence() {
        let dir = tempfile::tempdir().unwrap();
        assert!(require_netns(dir.path().to_str().unwrap()).is_ok());
        let missing = dir.path().join("gone");
        let err = require_netns(missing.to_str().unwrap()).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownContainer);
        assert!(err.msg.contains("gone"), "{}", err.msg);
    }
}
