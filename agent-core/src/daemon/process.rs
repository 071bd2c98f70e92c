//! The agent process: binds the API socket (and the metrics listener when
//! `--prometheus-serve-addr` is given), starts the [`Agent`], serves until SIGTERM or SIGINT,
//! and removes the socket on the way out.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::{Agent, DebugSwitch, StartError};
use crate::api_server::{ApiSocket, SocketError};
use crate::config::AgentConfig;
use crate::metrics::{MetricsError, MetricsListener};

/// Errors that end the agent process.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A started agent with its bound socket.
#[derive(Debug)]
pub struct Daemon {
    agent: Arc<Agent>,
    socket: ApiSocket,
    /// The task serving `GET /metrics` (only with `--prometheus-serve-addr`).
    metrics: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Binds the socket first (so a second agent fails before touching any state), then the
    /// metrics listener if asked for (no TCP listener otherwise), then starts the agent. Must
    /// run inside a tokio runtime.
    pub fn start(config: AgentConfig, debug_switch: DebugSwitch) -> Result<Daemon, RunError> {
        raise_fd_limit();
        let socket = ApiSocket::bind(&config.socket_path)?;
        let metrics = config
            .prometheus_serve_addr
            .map(MetricsListener::bind)
            .transpose()?;
        let agent = Arc::new(Agent::start(config, debug_switch)?);
        agent.start_datapath_maintenance();
        agent.start_cluster();
        agent.start_proxy();
        if let Some(docker) = agent.config().docker.clone() {
            crate::docker::spawn(Arc::clone(&agent), docker);
        }
        let metrics = metrics.map(|listener| {
            let address = listener.local_addr();
            tracing::info!(%address, "serving Prometheus metrics on /metrics");
            tokio::spawn(listener.serve(Arc::downgrade(&agent)))
        });
        Ok(Daemon {
            agent,
            socket,
            metrics,
        })
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Serves the API until SIGTERM or SIGINT.
    pub async fn serve_until_signal(self) -> Result<(), RunError> {
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        };
        tracing::info!(socket = %self.socket.path().display(), "serving the API");
        self.socket.serve(Arc::clone(&self.agent), shutdown).await;
        let agent = self.agent;
        let _ = tokio::task::spawn_blocking(move || agent.leave_cluster()).await;
        if let Some(metrics) = self.metrics {
            metrics.abort();
        }
        Ok(())
    }
}

/// Raises the soft limit of open files to the hard limit (systemd's default soft limit is
/// 1,024): every connection through the L7 proxy holds two descriptors.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            tracing::warn!(
                "cannot raise the open files limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
