//! The `cilium` command-line client: commands of the seed over the `cilium-api` client.
//! Every read command takes `-o json`. When the agent cannot be reached the command says so
//! and exits 1; every other failure prints `Error: <message>` and exits 1 too.

pub mod bpf;
pub mod format;
pub mod monitor;
pub mod policy;
pub mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use cilium_api::models::{ConfigurationMap, LabelsModifier};
use cilium_api::{Client, ClientError, EndpointId};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Output format of read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(name = "cilium", version, about = "CLI for the Cilium agent")]
pub struct Cli {
    /// Agent API socket: unix:///path/to/cilium.sock or a path
    #[arg(
        short = 'H',
        long,
        global = true,
        env = "CILIUM_SOCK",
        value_name = "URL"
    )]
    pub host: Option<String>,
    /// Output format
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the health of the agent and the addresses it allocated
    Status {
        /// Also endpoints by state, identities, policy and nodes
        #[arg(long)]
        all: bool,
    },
    /// Show the agent configuration, or change mutable options: `cilium config Debug=true`
    Config {
        /// OPTION=VALUE changes
        changes: Vec<String>,
    },
    /// Manage endpoints
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Show security identities
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Manage the policy repository: import, get, delete, validate, wait, trace
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Manage load-balanced services: list, get, update, delete
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Print the datapath's events (drops, traces, debug messages) until Ctrl-C
    Monitor(monitor::MonitorArgs),
    /// Show the contents of the datapath's BPF maps
    #[command(subcommand)]
    Bpf(bpf::BpfCommand),
    /// Show the nodes of the cluster
    #[command(subcommand)]
    Node(bpf::MapList),
    /// Print the client and agent versions
    Version,
    /// Print a shell completion script: `source <(cilium completion bash)`
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// List endpoints
    List {
        /// Only endpoints carrying this label (repeatable; source `any` matches all sources)
        #[arg(short = 'l', long = "label", value_name = "LABEL")]
        labels: Vec<String>,
    },
    /// Show one endpoint, its identity and its resolved policy
    Get {
        /// Endpoint id: N, cilium-local:N, container-id:ID, docker-endpoint:ID,
        /// container-name:NAME, pod-name:NS:NAME
        id: String,
    },
    /// Delete endpoints and release their addresses
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show an endpoint's labels, or add and delete custom labels
    Labels {
        id: String,
        /// Label to add (repeatable)
        #[arg(short = 'a', long = "add", value_name = "LABEL")]
        add: Vec<String>,
        /// Label to delete or disable (repeatable)
        #[arg(short = 'd', long = "delete", value_name = "LABEL")]
        delete: Vec<String>,
    },
    /// Show an endpoint's options, or change them: `cilium endpoint config 42 Debug=true`
    Config {
        id: String,
        /// OPTION=VALUE changes
        changes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// List identities, or those carrying every given label
    List {
        /// Only identities carrying this label (source `any` matches all sources)
        #[arg(value_name = "LABEL")]
        labels: Vec<String>,
    },
    /// Show one identity
    Get {
        /// Numeric identity
        id: u32,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command line asked for something impossible.
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed (unreadable file, invalid policy, timeout).
    #[error("{0}")]
    Failed(String),
}

/// The socket path named by `-H`/`CILIUM_SOCK`: `unix:///path` or a plain path.
pub fn socket_path(host: Option<&str>) -> Result<PathBuf, CliError> {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Ok(PathBuf::from(cilium_api::DEFAULT_SOCKET_PATH));
    };
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(PathBuf::from(path));
    }
    if host.contains("://") {
        return Err(CliError::Usage(format!(
            "unsupported agent address '{host}': use unix:///path/to/cilium.sock"
        )));
    }
    Ok(PathBuf::from(host))
}

fn parse_changes(changes: &[String]) -> Result<ConfigurationMap, CliError> {
    changes
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| CliError::Usage(format!("'{c}' is not OPTION=VALUE")))
        })
        .collect()
}

fn endpoint_id(raw: &str) -> Result<EndpointId, CliError> {
    raw.parse().map_err(|e| CliError::Usage(format!("{e}")))
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("cannot encode output: {e}"),
    }
}

fn show<T: Serialize>(output: Output, value: &T, text: impl FnOnce(&T) -> String) {
    match output {
        Output::Json => print_json(value),
        Output::Text => print!("{}", text(value)),
    }
}

/// Runs a parsed command. Returns the exit code.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let client = Client::new(socket_path(cli.host.as_deref())?);
    let output = cli.output;
    match cli.command {
        Command::Status { all: false } => {
            let status = client.healthz().await?;
            show(output, &status, format::status);
        }
        Command::Status { all: true } => {
            let full = format::FullStatus {
                status: client.healthz().await?,
                endpoints: client.endpoint_list(&[]).await?,
                identities: client.identity_list(&[]).await?.len(),
                policy_revision: client.policy_get(&[]).await?.revision,
                config: client.config().await?,
            };
            show(output, &full.to_json(), |_| format::full_status(&full));
        }
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "cilium", &mut std::io::stdout());
        }
        Command::Config { changes } => {
            let config = if changes.is_empty() {
                client.config().await?
            } else {
                client.config_patch(&parse_changes(&changes)?).await?
            };
            show(output, &config, format::configuration);
        }
        Command::Version => {
            let client_version = env!("CARGO_PKG_VERSION");
            let agent = client.healthz().await.map(|s| s.version);
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "client": client_version,
                    "agent": agent.as_ref().ok(),
                })),
                Output::Text => {
                    println!("Client: {client_version}");
                    if let Ok(v) = &agent {
                        println!("Agent:  {v}");
                    }
                }
            }
            agent?;
        }
        Command::Endpoint(cmd) => return run_endpoint(&client, output, cmd).await,
        Command::Identity(cmd) => run_identity(&client, output, cmd).await?,
        Command::Policy(cmd) => return policy::run(&client, output, cmd).await,
        Command::Service(cmd) => return service::run(&client, output, cmd).await,
        Command::Monitor(args) => return monitor::run(&client, output, args).await,
        Command::Bpf(cmd) => return bpf::run(&client, output, cmd).await,
        Command::Node(bpf::MapList::List) => {
            let nodes = client.node_list().await?;
            show(output, &nodes, |n| bpf::node_list(n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_endpoint(
    client: &Client,
    output: Output,
    cmd: EndpointCommand,
) -> Result<ExitCode, CliError> {
    match cmd {
        EndpointCommand::List { labels } => {
            let list = match client.endpoint_list(&labels).await {
                Err(ClientError::Api { status: 404, .. }) if !labels.is_empty() => Vec::new(),
                other => other?,
            };
            show(output, &list, |l| format::endpoint_table(l));
        }
        EndpointCommand::Get { id } => {
            let endpoint = client.endpoint_get(&endpoint_id(&id)?).await?;
            show(output, &endpoint, format::endpoint_detail);
        }
        EndpointCommand::Delete { ids } => {
            let mut failed = false;
            for raw in ids {
                let result = match endpoint_id(&raw) {
                    Ok(id) => client.endpoint_delete(&id).await.map_err(CliError::from),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(None) => println!("Endpoint {raw} deleted"),
                    Ok(Some(partial)) => {
                        failed = true;
                        eprintln!(
                            "Endpoint {raw} deleted with {} errors: {}",
                            partial.errors, partial.error
                        );
                    }
                    // The agent being gone ends the whole command.
                    Err(CliError::Client(e @ ClientError::Connect { .. })) => return Err(e.into()),
                    Err(e) => {
                        failed = true;
                        eprintln!("Error: cannot delete endpoint {raw}: {e}");
                    }
                }
            }
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        EndpointCommand::Labels { id, add, delete } => {
            let id = endpoint_id(&id)?;
            let labels = if add.is_empty() && delete.is_empty() {
                client.endpoint_labels(&id).await?
            } else {
                client
                    .endpoint_labels_modify(&id, &LabelsModifier { add, delete })
                    .await?
            };
            show(output, &labels, format::labels);
        }
        EndpointCommand::Config { id, changes } => {
            let id = endpoint_id(&id)?;
            let options = if changes.is_empty() {
                client.endpoint_config(&id).await?
            } else {
                client
                    .endpoint_config_patch(&id, &parse_changes(&changes)?)
                    .await?
            };
            show(output, &options, format::options);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_identity(
    client: &Client,
    output: Output,
    cmd: IdentityCommand,
) -> Result<(), CliError> {
    match cmd {
        IdentityCommand::List { labels } => {
            let list = match client.identity_list(&labels).await {
                Err(ClientError::Api { status: 404, .. }) if !labels.is_empty() => Vec::new(),
                other => other?,
            };
            show(output, &list, |l| format::identity_table(l));
        }
        IdentityCommand::Get { id } => {
            let identity = client.identity_get(id).await?;
            show(output, &identity, format::identity_detail);
        }
    }
    Ok(())
}

/// Entry point of the `cilium` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let topic = match &cli.command {
        Command::Endpoint(_) => "endpoint",
        Command::Identity(_) => "identity",
        Command::Policy(_) => "policy",
        Command::Service(_) => "service",
        _ => "",
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            report(&e, topic);
            ExitCode::FAILURE
        }
    }
}

fn report(e: &CliError, topic: &str) {
    match e {
        CliError::Client(ClientError::Connect { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            eprintln!("{e}");
            eprintln!(
                "The agent socket is root-only (mode 0660): run as root, or as a member of the \
                 socket's group."
            );
        }
        CliError::Client(ClientError::Connect { .. }) => {
            eprintln!("{e}");
            eprintln!(
                "Is cilium-agent running? Start it (`make run`), or point -H/--host or \
                 CILIUM_SOCK at its socket."
            );
        }
        CliError::Client(ClientError::Api { status, message }) => {
            eprintln!("Error: {message}");
            if let Some(hint) = api_hint(*status, topic) {
                eprintln!("{hint}");
            }
        }
        CliError::Usage(_) => {
            eprintln!("Error: {e}");
            eprintln!("See `cilium --help` and `cilium <command> --help`.");
        }
        other => eprintln!("Error: {other}"),
    }
}

/// What to do next after an API error with `status`.
fn api_hint(status: u16, topic: &str) -> Option<&'static str> {
    match status {
        404 => Some(match topic {
            "endpoint" => "Check the id: `cilium endpoint list` shows the endpoints.",
            "identity" => "Check the id: `cilium identity list` shows the identities.",
            "policy" => "Check the labels: `cilium policy get` shows the rules and their labels.",
            "service" => "Check the id: `cilium service list` shows the services.",
            _ => "Check the name or id: the `list` commands show what exists.",
        }),
        409 => Some("It is in use or being changed; look at it with `cilium endpoint list`."),
        400 | 460 | 461 => Some("The request was refused as invalid: the message says which part."),
        500..=599 => {
            Some("The agent failed to carry it out: `cilium status` and the agent's log say more.")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(
            socket_path(None).unwrap(),
            PathBuf::from("/var/run/cilium/cilium.sock")
        );
        assert_eq!(
            socket_path(Some("unix:///tmp/a.sock")).unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            socket_path(Some("/tmp/b.sock")).unwrap(),
            PathBuf::from("/tmp/b.sock")
        );
        assert!(socket_path(Some("tcp://1.2.3.4:80"))
            .unwrap_err()
            .to_string()
            .contains("unix://"));
    }

    #[test]
    fn option_changes() {
        let m = parse_changes(&["PolicyEnforcement=always".into()]).unwrap();
        assert_eq!(
            m.get("PolicyEnforcement").map(String::as_str),
            Some("always")
        );
        let m = parse_changes(&["Debug=true".into(), " x = y ".into()]).unwrap();
        assert_eq!(m.get("Debug").map(String::as_str), Some("true"));
        assert_eq!(m.get("x").map(String::as_str), Some("y"));
        assert!(parse_changes(&["Debug".into()]).is_err());
        assert!(parse_changes(&["=1".into()]).is_err());
    }

    #[test]
    fn cli_parses_the_seed_commands() {
        let cli = Cli::try_parse_from(["cilium", "endpoint", "list", "-o", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        let cli = Cli::try_parse_from(["cilium", "-H", "unix:///x", "status"]).unwrap();
        assert_eq!(cli.host.as_deref(), Some("unix:///x"));
        assert!(Cli::try_parse_from(["cilium", "endpoint", "delete"]).is_err());
    }

    #[test]
    fn completion_scripts_for_each_shell() {
        for (shell, marker) in [
            (clap_complete::Shell::Bash, "complete -F"),
            (clap_complete::Shell::Zsh, "#compdef cilium"),
            (clap_complete::Shell::Fish, "complete -c cilium"),
        ] {
            let cli = Cli::try_parse_from(["cilium", "completion", &shell.to_string()]).unwrap();
            assert!(matches!(cli.command, Command::Completion { .. }));
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "cilium", &mut script);
            let script = String::from_utf8(script).unwrap();
            assert!(script.contains(marker), "{shell}: {script}");
            assert!(
                script.contains("endpoint") && script.contains("policy"),
                "{shell}"
            );
        }
        assert!(Cli::try_parse_from(["cilium", "completion", "tcsh"]).is_err());
    }

    #[test]
    fn api_errors_say_what_to_do_next() {
        for status in [400, 404, 409, 500, 502] {
            assert!(api_hint(status, "endpoint").is_some(), "{status}");
        }
        assert!(api_hint(404, "policy")
            .unwrap()
            .contains("cilium policy get"));
    }

    #[test]
    fn identity_commands_parse() {
        let cli =
            Cli::try_parse_from(["cilium", "identity", "list", "id=app1", "-o", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(
            cli.command,
            Command::Identity(IdentityCommand::List { labels }) if labels == ["id=app1"]
        ));
        let cli = Cli::try_parse_from(["cilium", "identity", "list"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Identity(IdentityCommand::List { labels }) if labels.is_empty()
        ));
        let cli = Cli::try_parse_from(["cilium", "identity", "get", "256"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Identity(IdentityCommand::Get { id: 256 })
        ));
        assert!(Cli::try_parse_from(["cilium", "identity", "get", "web"]).is_err());
        assert!(Cli::try_parse_from(["cilium", "identity", "get"]).is_err());
    }
}
