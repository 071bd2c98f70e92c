//! `cilium-docker`: the Docker libnetwork remote network driver and IPAM driver. Docker
//! talks to it over `/run/docker/plugins/cilium.sock`; it turns each call into one or two
//! cilium-agent requests, so Docker containers share the agent's address pool and policy with
//! every other runtime on the node. The agent creates the veth pair (host side `lxc…`, peer
//! `tmp…` left in the node's namespace for Docker to move into the container).

pub mod agent;
pub mod driver;
#[cfg(test)]
mod fake;
pub mod protocol;
pub mod server;
pub mod state;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use cilium_api::Client;

use crate::driver::Driver;
use crate::server::{PluginSocket, SocketError};
use crate::state::{NetworkStore, StateError};

/// Default plugin socket; its file name is the driver name Docker sees.
pub const DEFAULT_PLUGIN_SOCKET: &str = "/run/docker/plugins/cilium.sock";
/// Default directory of the network records.
pub const DEFAULT_STATE_DIR: &str = "/run/cilium/docker";

/// What the plugin needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub plugin_socket: PathBuf,
    pub agent_socket: PathBuf,
    pub state_dir: PathBuf,
}

/// Why the plugin could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Waits for the agent, then serves the plugin socket until `shutdown` completes; the socket
/// file is removed on the way out. Returns `Ok` on shutdown, also while still waiting.
pub async fn run(options: &Options, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    tokio::pin!(shutdown);
    let networks = NetworkStore::open(&options.state_dir)?;
    server::prepare_socket(&options.plugin_socket)?;

    let client = Client::new(&options.agent_socket);
    tokio::select! {
        () = agent::wait_for_agent(&client, &options.agent_socket) => {}
        () = &mut shutdown => return Ok(()),
    }
    let driver = Driver::new(client, networks);
    match driver.refresh_addressing().await {
        Ok(a) => tracing::info!(
            ipv4 = ?a.ipv4.alloc_range.as_deref().filter(|_| a.ipv4.enabled),
            ipv6 = ?a.ipv6.alloc_range.as_deref().filter(|_| a.ipv6.enabled),
            "node addressing"
        ),
        // Retried by the first request that needs it.
        Err(e) => tracing::warn!("{e}"),
    }

    let socket = PluginSocket::bind(&options.plugin_socket)?;
    tracing::info!(
        socket = %socket.path().display(),
        "serving Docker NetworkDriver and IpamDriver"
    );
    socket.serve(Arc::new(driver), shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_while_waiting_for_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            plugin_socket: dir.path().join("plugins/cilium.sock"),
            agent_socket: dir.path().join("no-agent.sock"),
            state_dir: dir.path().join("state"),
        };
        run(&options, async {}).await.unwrap();
        assert!(options.state_dir.join("networks").is_dir());
        assert!(options.plugin_socket.parent().unwrap().is_dir());
        assert!(!options.plugin_socket.exists());
    }
}
