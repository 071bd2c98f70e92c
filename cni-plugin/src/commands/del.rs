//! `DEL`: asks the agent to remove the container's endpoint. An endpoint that is already
//! gone is success, so repeated DELs and DEL after a failed ADD succeed.

use cilium_api::EndpointId;

use crate::agent::{agent_error, Agent, NOT_FOUND};
use crate::error::CniError;

/// Deletes the endpoint of `container_id`.
pub(super) async fn del<A: Agent>(
    container_id: &str,
    agent: &A,
    log: &mut Vec<String>,
) -> Result<(), CniError> {
    let id = EndpointId::ContainerId(container_id.to_string());
    match agent.endpoint_delete(&id).await {
        Ok(None) => log.push(format!("DEL {container_id}: endpoint removed")),
        Ok(Some(partial)) => log.push(format!(
            "DEL {container_id}: endpoint removed, but {} resource(s) could not be released: {}",
            partial.errors, partial.error
        )),
        Err(e) if e.status() == Some(NOT_FOUND) => {
            log.push(format!("DEL {container_id}: no endpoint, nothing to do"));
        }
        Err(e) => return Err(agent_error(e, &format!("deleting endpoint {id}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cilium_api::models::PartialDelete;

    use super::*;
    use crate::error::ErrorCode;
    use crate::testing::{block_on, endpoint, FakeAgent};

    #[test]
    fn deletes_and_tolerates_repeats() {
        let agent = FakeAgent::with_endpoints(vec![endpoint(Some("10.11.0.5"), None)]);
        let mut log = vec![];
        block_on(del("c1", &agent, &mut log)).unwrap();
        block_on(del("c1", &agent, &mut log)).unwrap();
        assert!(agent.endpoints.borrow().is_empty());
        assert_eq!(
            agent.calls(),
            ["delete container-id:c1", "delete container-id:c1"]
        );
        assert!(log[1].contains("nothing to do"), "{log:?}");
    }

    #[test]
    fn partial_delete_is_success_with_a_note() {
        let agent = FakeAgent::with_endpoints(vec![endpoint(Some("10.11.0.5"), None)]);
        *agent.partial.borrow_mut() = Some(PartialDelete {
            error: "cannot release 10.11.0.5".into(),
            errors: 1,
        });
        let mut log = vec![];
        block_on(del("c1", &agent, &mut log)).unwrap();
        assert!(log[0].contains("cannot release 10.11.0.5"), "{log:?}");
    }

    #[test]
    fn failures() {
        let agent = FakeAgent::new();
        agent.unreachable.set(true);
        let err = block_on(del("c1", &agent, &mut vec![])).unwrap_err();
        assert_eq!(err.code, ErrorCode::TryAgainLater);

        let agent = FakeAgent::new();
        agent.fail("delete", 500);
        let err = block_on(del("c1", &agent, &mut vec![])).unwrap_err();
        assert_eq!(err.code, ErrorCode::AgentRefused);
        assert!(err.msg.contains("HTTP 500"));
    }
}
