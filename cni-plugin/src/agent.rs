//! The agent requests the plugin makes, behind a small trait so the commands can be tested
//! against a recording fake, and the one mapping of client errors to CNI errors.

use std::path::Path;

use cilium_api::models::{
    Endpoint, EndpointChangeRequest, EndpointHealth, PartialDelete, StatusResponse,
};
use cilium_api::{Client, ClientError, EndpointId};

use crate::error::{CniError, ErrorCode};

/// The HTTP status the agent answers for an endpoint it does not know.
pub(crate) const NOT_FOUND: u16 = 404;

/// What the commands need from `cilium-agent`.
pub(crate) trait Agent {
    /// The socket the agent is reached on, for messages.
    fn socket_path(&self) -> &Path;
    /// `GET /healthz`.
    async fn healthz(&self) -> Result<StatusResponse, ClientError>;
    /// `PUT /endpoint/{id}`.
    async fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError>;
    /// `GET /endpoint/{id}`.
    async fn endpoint_get(&self, id: &EndpointId) -> Result<Endpoint, ClientError>;
    /// `DELETE /endpoint/{id}`.
    async fn endpoint_delete(&self, id: &EndpointId) -> Result<Option<PartialDelete>, ClientError>;
    /// `GET /endpoint/{id}/healthz`.
    async fn endpoint_health(&self, id: &EndpointId) -> Result<EndpointHealth, ClientError>;
    /// `GET /endpoint`.
    async fn endpoint_list(&self) -> Result<Vec<Endpoint>, ClientError>;
}

impl Agent for Client {
    fn socket_path(&self) -> &Path {
        Client::socket_path(self)
    }

    async fn healthz(&self) -> Result<StatusResponse, ClientError> {
        Client::healthz(self).await
    }

    async fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        Client::endpoint_create(self, id, request).await
    }

    async fn endpoint_get(&self, id: &EndpointId) -> Result<Endpoint, ClientError> {
        Client::endpoint_get(self, id).await
    }

    async fn endpoint_delete(&self, id: &EndpointId) -> Result<Option<PartialDelete>, ClientError> {
        Client::endpoint_delete(self, id).await
    }

    async fn endpoint_health(&self, id: &EndpointId) -> Result<EndpointHealth, ClientError> {
        Client::endpoint_health(self, id).await
    }

    async fn endpoint_list(&self) -> Result<Vec<Endpoint>, ClientError> {
        Client::endpoint_list(self, &[]).await
    }
}

/// Maps a failed agent request to a CNI error; `doing` names the request for the details.
/// Unreachable agent or broken connection → 11 (the runtime may retry); an error reply → 100
/// with the agent's message and HTTP status; an unusable reply or request → 102.
pub(crate) fn agent_error(err: ClientError, doing: &str) -> CniError {
    let code = match &err {
        ClientError::Connect { .. } | ClientError::Http { .. } => ErrorCode::TryAgainLater,
        ClientError::Api { .. } => ErrorCode::AgentRefused,
        ClientError::Request { .. } | ClientError::Decode { .. } => ErrorCode::AgentProtocol,
    };
    let details = match &err {
        ClientError::Connect { .. } => format!("{doing}; is cilium-agent running?"),
        _ => doing.to_string(),
    };
    CniError::new(code, err.to_string()).with_details(details)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn error_mapping() {
        let connect = ClientError::Connect {
            path: PathBuf::from("/x/y.sock"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let err = agent_error(connect, "creating endpoint container-id:c1");
        assert_eq!(err.code, ErrorCode::TryAgainLater);
        assert!(err.msg.contains("/x/y.sock"), "{}", err.msg);
        assert_eq!(
            err.details.as_deref(),
            Some("creating endpoint container-id:c1; is cilium-agent running?")
        );

        let refused = ClientError::Api {
            status: 409,
            message: "endpoint container-id:c1 exists".into(),
        };
        let err = agent_error(refused, "creating endpoint");
        assert_eq!(err.code, ErrorCode::AgentRefused);
        assert_eq!(err.msg, "endpoint container-id:c1 exists (HTTP 409)");

        let decode = ClientError::Decode {
            what: "GET /endpoint".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert_eq!(
            agent_error(decode, "listing").code,
            ErrorCode::AgentProtocol
        );
    }
}
