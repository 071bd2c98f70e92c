//! `cilium-docker`: flags, logging, signals; everything else is in the library.

use std::future::Future;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use cilium_docker::{Options, DEFAULT_PLUGIN_SOCKET, DEFAULT_STATE_DIR};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::Level;

/// Docker libnetwork network and IPAM driver backed by cilium-agent.
#[derive(Debug, Parser)]
#[command(name = "cilium-docker", version)]
struct Args {
    /// Socket Docker finds the plugin on; its file name is the driver name
    #[arg(long, env = "CILIUM_DOCKER_PLUGIN_SOCKET", default_value = DEFAULT_PLUGIN_SOCKET)]
    plugin_socket: PathBuf,
    /// cilium-agent API socket
    #[arg(long, env = "CILIUM_SOCK", default_value = cilium_api::DEFAULT_SOCKET_PATH)]
    agent_socket: PathBuf,
    /// Directory of the network records
    #[arg(long, env = "CILIUM_DOCKER_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Log every call
    #[arg(long)]
    debug: bool,
}

/// Completes at the first SIGTERM or SIGINT; registered before the plugin starts.
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(if args.debug {
            Level::DEBUG
        } else {
            Level::INFO
        })
        .init();
    let options = Options {
        plugin_socket: args.plugin_socket,
        agent_socket: args.agent_socket,
        state_dir: args.state_dir,
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|runtime| {
            runtime.block_on(async {
                let shutdown = shutdown_signal()
                    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
                cilium_docker::run(&options, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cilium-docker: {e}");
            ExitCode::FAILURE
        }
    }
}
