//! `cilium-agent`: parse flags, install logging, run the daemon, map the outcome to an exit
//! code.

use std::io::IsTerminal;
use std::process::ExitCode;

use agent_core::config::{AgentArgs, LogFormat};
use agent_core::daemon::Daemon;
use clap::Parser;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload};

fn main() -> ExitCode {
    let config = match AgentArgs::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cilium-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let level = |debug| {
        if debug {
            LevelFilter::DEBUG
        } else {
            LevelFilter::INFO
        }
    };
    let (filter, handle) = reload::Layer::new(level(config.debug));
    let json = config.log_format == LogFormat::Json;
    tracing_subscriber::registry()
        .with(filter)
        .with((!json).then(|| {
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false)
        }))
        .with(json.then(|| {
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .with_target(false)
        }))
        .init();
    let debug_switch = Box::new(move |on: bool| {
        if let Err(e) = handle.reload(level(on)) {
            tracing::warn!("cannot change the log level: {e}");
        }
    });

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cilium-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let daemon = Daemon::start(config, debug_switch)?;
        println!("{}", daemon.agent().addressing_report());
        for warning in daemon.agent().warnings() {
            eprintln!("cilium-agent: warning: {warning}");
        }
        daemon.serve_until_signal().await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cilium-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
