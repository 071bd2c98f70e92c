//! `STATUS`: ready when the agent answers its health check.

use cilium_api::ClientError;

use crate::agent::Agent;
use crate::error::{CniError, ErrorCode};

/// Succeeds when the agent answers `GET /healthz`; otherwise error 50 naming the socket.
pub(super) async fn status<A: Agent>(agent: &A) -> Result<(), CniError> {
    match agent.healthz().await {
        Ok(_) => Ok(()),
        Err(err) => {
            // The connect error names the socket already; the others do not.
            let msg = match &err {
                ClientError::Connect { .. } => err.to_string(),
                _ => format!(
                    "the agent at {} is not healthy: {err}",
                    agent.socket_path().display()
                ),
            };
            Err(CniError::new(ErrorCode::NotAvailable, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{block_on, FakeAgent};

    #[test]
    fn ready_when_the_agent_answers() {
        let agent = FakeAgent::new();
        block_on(status(&agent)).unwrap();
        assert_eq!(agent.calls(), ["healthz"]);
    }

    #[test]
    fn not_available_otherwise() {
        let agent = FakeAgent::new();
        agent.unreachable.set(true);
        let err = block_on(status(&agent)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotAvailable);
        assert!(err.msg.contains("/run/fake/cilium.sock"), "{}", err.msg);

        let agent = FakeAgent::new();
        agent.fail("healthz", 500);
        let err = block_on(status(&agent)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotAvailable);
        assert_eq!(
            err.msg,
            "the agent at /run/fake/cilium.sock is not healthy: injected healthz failure (HTTP 500)"
        );
    }
}
