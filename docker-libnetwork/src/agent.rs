//! The few cilium-agent calls the driver makes, behind a trait so the driver's logic is
//! tested against a fake; implemented for the real API client.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cilium_api::models::{
    AddressPair, Endpoint, EndpointChangeRequest, Family, NodeAddressing, PartialDelete,
};
use cilium_api::{Client, ClientError, EndpointId};

/// How often the agent's health is polled at start.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often the wait is reported on stderr.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// The agent as the driver sees it.
pub trait Agent: Send + Sync + 'static {
    /// `GET /healthz`, reduced to whether it answered.
    fn healthz(&self) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// The node addressing of `GET /config`: allocation ranges and router addresses.
    fn addressing(&self) -> impl Future<Output = Result<NodeAddressing, ClientError>> + Send;

    /// `POST /ipam?family=`.
    fn ipam_allocate(
        &self,
        family: Family,
        owner: &str,
    ) -> impl Future<Output = Result<AddressPair, ClientError>> + Send;

    /// `POST /ipam/{ip}`.
    fn ipam_reserve(
        &self,
        ip: IpAddr,
        owner: &str,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// `DELETE /ipam/{ip}`.
    fn ipam_release(&self, ip: IpAddr) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// `PUT /endpoint/{id}`.
    fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> impl Future<Output = Result<Endpoint, ClientError>> + Send;

    /// `DELETE /endpoint/{id}`; `Some` when the endpoint is gone but not all of it was freed.
    fn endpoint_delete(
        &self,
        id: &EndpointId,
    ) -> impl Future<Output = Result<Option<PartialDelete>, ClientError>> + Send;
}

impl Agent for Client {
    async fn healthz(&self) -> Result<(), ClientError> {
        Client::healthz(self).await.map(drop)
    }

    async fn addressing(&self) -> Result<NodeAddressing, ClientError> {
        Ok(self.config().await?.addressing)
    }

    async fn ipam_allocate(&self, family: Family, owner: &str) -> Result<AddressPair, ClientError> {
        Ok(Client::ipam_allocate(self, Some(family), owner)
            .await?
            .endpoint)
    }

    async fn ipam_reserve(&self, ip: IpAddr, owner: &str) -> Result<(), ClientError> {
        Client::ipam_reserve(self, ip, owner).await.map(drop)
    }

    async fn ipam_release(&self, ip: IpAddr) -> Result<(), ClientError> {
        Client::ipam_release(self, ip).await.map(drop)
    }

    async fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        Client::endpoint_create(self, id, request).await
    }

    async fn endpoint_delete(&self, id: &EndpointId) -> Result<Option<PartialDelete>, ClientError> {
        Client::endpoint_delete(self, id).await
    }
}

/// Polls the agent's health until it answers. Docker retries a plugin for 30 s only, so the
/// plugin socket appears once the agent can serve requests; the wait is reported on stderr
/// every few seconds so an operator sees what the plugin is blocked on.
pub async fn wait_for_agent(agent: &impl Agent, socket: &Path) {
    let mut reported: Option<Instant> = None;
    loop {
        match agent.healthz().await {
            Ok(()) => {
                tracing::info!(socket = %socket.display(), "cilium-agent is up");
                return;
            }
            Err(e) => {
                let message = format!("waiting for cilium-agent at {}: {e}", socket.display());
                tracing::debug!("{message}");
                if reported.is_none_or(|at| at.elapsed() >= REPORT_INTERVAL) {
                    eprintln!("{message}");
                    reported = Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
