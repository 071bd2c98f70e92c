//! `cilium monitor [--type drop|trace|debug|l7] [-v] [--hex]`: prints the datapath's events
//! (and the L7 proxy's requests) as
//! the agent streams them (`GET /monitor`), in the text forms of
//! [`crate::datapath::monitor::format_line`] or, with `-o json`, one JSON record per line.
//! Runs until Ctrl-C or until the agent ends the stream; both exit 0.

use std::io::Write;
use std::process::ExitCode;

use cilium_api::models::MonitorEvent;
use cilium_api::{Client, ClientError};
use clap::{Args, ValueEnum};

use super::{CliError, Output};
use crate::datapath::monitor::format_line;

/// Which events to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Dropped packets, with the reason
    Drop,
    /// Packets passing the observation points (endpoints in debug mode)
    Trace,
    /// Debug messages of the datapath (endpoints in debug mode)
    Debug,
    /// Requests through the L7 proxy, with the verdict
    L7,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Drop => "drop",
            EventType::Trace => "trace",
            EventType::Debug => "debug",
            EventType::L7 => "l7",
        }
    }
}

/// Arguments of `cilium monitor`.
#[derive(Debug, Clone, Default, Args)]
pub struct MonitorArgs {
    /// Only events of this type
    #[arg(short = 't', long = "type", value_enum, value_name = "TYPE")]
    pub kind: Option<EventType>,
    /// Print every event in full, with the decoded headers of its packet
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Print the captured packet bytes as a hexdump
    #[arg(long)]
    pub hex: bool,
}

/// The lines printed before the events (text output only).
pub const HEADER: &str = "Listening for events on the agent's datapath\nPress Ctrl-C to quit";

/// The text of one record: its JSON on one line, or the `cilium monitor` text form.
pub fn render(output: Output, args: &MonitorArgs, ev: &MonitorEvent) -> String {
    match output {
        Output::Json => serde_json::to_string(ev)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the record: {e}\"}}")),
        Output::Text => format_line(ev, args.verbose, args.hex),
    }
}

/// Resolves when Ctrl-C is pressed; never when the signal cannot be watched.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `cilium monitor`.
pub async fn run(client: &Client, output: Output, args: MonitorArgs) -> Result<ExitCode, CliError> {
    let mut events = client.monitor(args.kind.map(EventType::as_str)).await?;
    let stdout = std::io::stdout();
    if output == Output::Text && writeln!(stdout.lock(), "{HEADER}").is_err() {
        return Ok(ExitCode::SUCCESS);
    }
    let ctrl_c = interrupted();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            () = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            next = events.next() => next,
        };
        match next {
            Some(Ok(ev)) => {
                // Stdout is line-buffered: each event is out as soon as it is written. A
                // closed stdout (`cilium monitor | head`) ends the command quietly.
                if writeln!(stdout.lock(), "{}", render(output, &args, &ev)).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Some(Err(e @ ClientError::Decode { .. })) => {
                eprintln!("Warning: skipping a record: {e}");
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                eprintln!("The agent ended the event stream");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;
    use crate::datapath::monitor::lost;

    #[test]
    fn monitor_arguments() {
        let cli = Cli::try_parse_from(["cilium", "monitor", "--type", "drop"]).unwrap();
        let Command::Monitor(args) = cli.command else {
            panic!("not monitor");
        };
        assert_eq!(args.kind, Some(EventType::Drop));
        assert!(!args.verbose && !args.hex);
        let cli = Cli::try_parse_from(["cilium", "monitor", "-v", "--hex", "-o", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        let Command::Monitor(args) = cli.command else {
            panic!("not monitor");
        };
        assert_eq!(args.kind, None);
        assert!(args.verbose && args.hex);
        assert!(Cli::try_parse_from(["cilium", "monitor", "--type", "capture"]).is_err());
        assert_eq!(EventType::Trace.as_str(), "trace");
    }

    #[test]
    fn records_as_text_or_json_lines() {
        let drop = MonitorEvent {
            kind: "drop".into(),
            code: 133,
            message: "Policy denied (L3)".into(),
            dst_endpoint: 25729,
            src_identity: 261,
            dst_identity: 264,
            summary: "10.11.13.37 -> 10.11.101.61 EchoRequest".into(),
            ..MonitorEvent::default()
        };
        let args = MonitorArgs::default();
        assert_eq!(
            render(Output::Text, &args, &drop),
            "xx drop (Policy denied (L3)) to endpoint 25729, identity 261->264: \
             10.11.13.37 -> 10.11.101.61 EchoRequest"
        );
        let json = render(Output::Json, &args, &drop);
        assert!(!json.contains('\n'));
        let back: MonitorEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, drop);
        assert_eq!(render(Output::Text, &args, &lost(5)), "Lost 5 events");
        assert_eq!(
            HEADER.lines().collect::<Vec<_>>(),
            [
                "Listening for events on the agent's datapath",
                "Press Ctrl-C to quit"
            ]
        );
    }
}
