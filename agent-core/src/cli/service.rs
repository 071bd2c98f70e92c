//! `cilium service list|get|update|delete`: the commands, the parsing of their address
//! arguments and the text layout of services (ID, Frontend, Backend with one
//! `N => ip:port (W: weight)` line per backend, internals §6). Every command takes `-o json`
//! and then prints the API's JSON.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use cilium_api::models::{BackendAddress, FrontendAddress, Service, ServiceSpec};
use cilium_api::{Client, ClientError};
use clap::{Args, Subcommand};

use super::format::table;
use super::{show, CliError, Output};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services
    #[command(visible_alias = "ls")]
    List,
    /// Show one service
    Get {
        /// Service id
        id: u16,
    },
    /// Create a service, or replace the frontend and backends of an existing one
    Update(UpdateArgs),
    /// Delete services, or every service with --all
    Delete {
        /// Service ids
        #[arg(value_name = "ID")]
        ids: Vec<u16>,
        /// Delete every service
        #[arg(long)]
        all: bool,
    },
}

/// Arguments of `cilium service update`.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// Service id (1-65535)
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub id: u16,
    /// Frontend address: IP:PORT[/tcp|udp|any], IPv6 as [IP]:PORT; the protocol defaults
    /// to any
    #[arg(long, value_name = "IP:PORT[/PROTOCOL]", value_parser = parse_frontend)]
    pub frontend: FrontendAddress,
    /// Backend addresses IP:PORT, IPv6 as [IP]:PORT (comma-separated or repeated)
    #[arg(long, value_name = "IP:PORT", value_delimiter = ',', value_parser = parse_backend)]
    pub backends: Vec<SocketAddr>,
    /// Weights of the backends, in their order (comma-separated or repeated); default 1
    #[arg(long, value_name = "WEIGHT", value_delimiter = ',')]
    pub weights: Vec<u16>,
}

/// Parses `IP:PORT[/PROTOCOL]` (`[IP]:PORT[/PROTOCOL]` for IPv6) with a protocol `tcp`,
/// `udp` or `any` (any case; `any` when left out). The agent checks the rest (port 0,
/// unicast address).
pub fn parse_frontend(value: &str) -> Result<FrontendAddress, String> {
    let (address, protocol) = match value.split_once('/') {
        Some((address, protocol)) => (address, protocol.trim().to_ascii_lowercase()),
        None => (value, "any".to_string()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "any") {
        return Err(format!(
            "unknown protocol '{protocol}' in '{value}': expected tcp, udp or any"
        ));
    }
    let address = parse_socket(address.trim())?;
    Ok(FrontendAddress {
        ip: address.ip().to_string(),
        port: i64::from(address.port()),
        protocol,
    })
}

/// Parses a backend `IP:PORT` (`[IP]:PORT` for IPv6).
pub fn parse_backend(value: &str) -> Result<SocketAddr, String> {
    parse_socket(value.trim())
}

fn parse_socket(value: &str) -> Result<SocketAddr, String> {
    value
        .parse::<SocketAddr>()
        .map_err(|_| format!("invalid address '{value}': expected IP:PORT, or [IP]:PORT for IPv6"))
}

/// The body `cilium service update` sends: the arguments, and the flags of the service it
/// replaces (`existing`), which the command line does not set.
pub fn update_spec(args: &UpdateArgs, existing: Option<&Service>) -> Result<ServiceSpec, CliError> {
    if !args.weights.is_empty() && args.weights.len() != args.backends.len() {
        return Err(CliError::Usage(format!(
            "--weights gives {} weights for {} backends: give one per backend, or none",
            args.weights.len(),
            args.backends.len()
        )));
    }
    let backend_addresses = args
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| BackendAddress {
            ip: b.ip().to_string(),
            port: i64::from(b.port()),
            weight: args
                .weights
                .get(i)
                .map_or(cilium_api::models::DEFAULT_BACKEND_WEIGHT, |w| {
                    i64::from(*w)
                }),
        })
        .collect();
    Ok(ServiceSpec {
        id: args.id,
        frontend_address: args.frontend.clone(),
        backend_addresses,
        flags: existing.and_then(|s| s.spec.flags.clone()),
    })
}

/// The ids `cilium service delete` deletes: the given ones, or with `--all` those of
/// `all_services()`. Exactly one of the two must be given.
fn delete_targets(ids: &[u16], all: bool) -> Result<Option<Vec<u16>>, CliError> {
    match (ids.is_empty(), all) {
        (true, false) => Err(CliError::Usage(
            "give the ids of the services to delete, or --all to delete every service".into(),
        )),
        (false, true) => Err(CliError::Usage("give either ids or --all, not both".into())),
        (true, true) => Ok(None),
        (false, false) => Ok(Some(ids.to_vec())),
    }
}

/// `ip:port`, `[ip]:port` for IPv6.
fn socket_text(ip: &str, port: i64) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Ok(IpAddr::V4(v4)) => format!("{v4}:{port}"),
        Err(_) => format!("{ip}:{port}"),
    }
}

/// A frontend as `update --frontend` takes it: `ip:port`, `[ip]:port` for IPv6, with
/// `/tcp` or `/udp` unless the protocol is `any`.
pub fn frontend_text(f: &FrontendAddress) -> String {
    let address = socket_text(&f.ip, f.port);
    match f.protocol.to_ascii_lowercase().as_str() {
        "" | "any" => address,
        protocol => format!("{address}/{protocol}"),
    }
}

/// `N => ip:port (W: weight)`, N counting from 1.
pub fn backend_line(n: usize, b: &BackendAddress) -> String {
    format!("{n} => {} (W: {})", socket_text(&b.ip, b.port), b.weight)
}

/// `cilium service list`: ID, Frontend, Backend (one line per backend), sorted by id.
pub fn service_table(services: &[Service]) -> String {
    let mut sorted: Vec<&ServiceSpec> = services.iter().map(|s| &s.spec).collect();
    sorted.sort_by_key(|s| s.id);
    let rows: Vec<Vec<Vec<String>>> = sorted
        .iter()
        .map(|s| {
            let backends = s
                .backend_addresses
                .iter()
                .enumerate()
                .map(|(i, b)| backend_line(i + 1, b))
                .collect();
            vec![
                vec![s.id.to_string()],
                vec![frontend_text(&s.frontend_address)],
                backends,
            ]
        })
        .collect();
    table("", &["ID", "Frontend", "Backend"], &rows)
}

/// `cilium service get`: the same layout for one service.
pub fn service_detail(service: &Service) -> String {
    service_table(std::slice::from_ref(service))
}

/// Runs a `cilium service` command.
pub async fn run(
    client: &Client,
    output: Output,
    cmd: ServiceCommand,
) -> Result<ExitCode, CliError> {
    match cmd {
        ServiceCommand::List => {
            let list = client.service_list().await?;
            show(output, &list, |l| service_table(l));
        }
        ServiceCommand::Get { id } => {
            let service = client.service_get(id).await?;
            show(output, &service, service_detail);
        }
        ServiceCommand::Update(args) => {
            let existing = match client.service_get(args.id).await {
                Ok(service) => Some(service),
                Err(ClientError::Api { status: 404, .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let spec = update_spec(&args, existing.as_ref())?;
            let (created, service) = client.service_put(args.id, &spec).await?;
            show(output, &service, |s| {
                format!(
                    "{} service {} with {} backends\n",
                    if created { "Added" } else { "Updated" },
                    s.spec.id,
                    s.spec.backend_addresses.len()
                )
            });
        }
        ServiceCommand::Delete { ids, all } => {
            let ids = match delete_targets(&ids, all)? {
                Some(ids) => ids,
                None => client
                    .service_list()
                    .await?
                    .iter()
                    .map(|s| s.spec.id)
                    .collect(),
            };
            let mut failed = false;
            for id in ids {
                match client.service_delete(id).await {
                    Ok(_) => println!("Service {id} deleted"),
                    // The agent being gone ends the whole command.
                    Err(e @ ClientError::Connect { .. }) => return Err(e.into()),
                    Err(e) => {
                        failed = true;
                        eprintln!("Error: cannot delete service {id}: {e}");
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn service(
        id: u16,
        frontend: &str,
        port: i64,
        protocol: &str,
        backends: &[(&str, i64, i64)],
    ) -> Service {
        Service {
            spec: ServiceSpec {
                id,
                frontend_address: FrontendAddress {
                    ip: frontend.into(),
                    port,
                    protocol: protocol.into(),
                },
                backend_addresses: backends
                    .iter()
                    .map(|(ip, port, weight)| BackendAddress {
                        ip: (*ip).into(),
                        port: *port,
                        weight: *weight,
                    })
                    .collect(),
                flags: None,
            },
            status: None,
        }
    }

    #[test]
    fn list_layout() {
        let services = [
            service(2, "f00d::1", 80, "any", &[("f00d::a", 8080, 1)]),
            service(
                1,
                "10.0.0.1",
                80,
                "tcp",
                &[("10.0.1.1", 8080, 1), ("10.0.1.2", 8080, 5)],
            ),
            service(3, "10.0.0.3", 53, "udp", &[]),
        ];
        assert_eq!(
            service_table(&services),
            "ID   Frontend          Backend\n\
             1    10.0.0.1:80/tcp   1 => 10.0.1.1:8080 (W: 1)\n\
             \x20                      2 => 10.0.1.2:8080 (W: 5)\n\
             2    [f00d::1]:80      1 => [f00d::a]:8080 (W: 1)\n\
             3    10.0.0.3:53/udp\n"
        );
        assert_eq!(service_table(&[]), "ID   Frontend   Backend\n");
        assert_eq!(
            service_detail(&services[2]),
            "ID   Frontend          Backend\n3    10.0.0.3:53/udp\n"
        );
    }

    #[test]
    fn frontend_arguments() {
        let f = parse_frontend("10.0.0.1:80").unwrap();
        assert_eq!(
            (f.ip.as_str(), f.port, f.protocol.as_str()),
            ("10.0.0.1", 80, "any")
        );
        let f = parse_frontend("[f00d::1]:443/TCP").unwrap();
        assert_eq!(
            (f.ip.as_str(), f.port, f.protocol.as_str()),
            ("f00d::1", 443, "tcp")
        );
        assert_eq!(frontend_text(&f), "[f00d::1]:443/tcp");
        // Port 0 is the agent's to refuse (460), with its reason.
        assert_eq!(parse_frontend("10.0.0.1:0").unwrap().port, 0);
        for (bad, expected) in [
            ("10.0.0.1", "expected IP:PORT"),
            ("f00d::1:80", "[IP]:PORT for IPv6"),
            ("10.0.0.1:70000", "invalid address"),
            ("host:80", "invalid address 'host:80'"),
            ("10.0.0.1:53/sctp", "unknown protocol 'sctp'"),
        ] {
            let err = parse_frontend(bad).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
        assert!(parse_backend("10.0.0.1:80/tcp").is_err());
        assert_eq!(
            parse_backend("[f00d::2]:80").unwrap(),
            "[f00d::2]:80".parse::<SocketAddr>().unwrap()
        );
    }

    fn update_args(argv: &[&str]) -> UpdateArgs {
        let mut full = vec!["cilium", "service", "update"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Service(ServiceCommand::Update(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_builds_the_spec() {
        let args = update_args(&[
            "--id",
            "4",
            "--frontend",
            "10.0.0.1:80/tcp",
            "--backends",
            "10.0.1.1:8080,10.0.1.2:8080",
            "--backends",
            "10.0.1.3:8080",
            "--weights",
            "1,2,0",
        ]);
        let spec = update_spec(&args, None).unwrap();
        assert_eq!(spec.id, 4);
        assert_eq!(spec.frontend_address.protocol, "tcp");
        let weights: Vec<i64> = spec.backend_addresses.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [1, 2, 0]);
        assert_eq!(spec.backend_addresses[2].ip, "10.0.1.3");

        // Without weights every backend gets the default; the flags of the service it
        // replaces are kept.
        let args = update_args(&[
            "--id",
            "4",
            "--frontend",
            "[f00d::1]:80",
            "--backends",
            "[f00d::2]:80",
        ]);
        let mut existing = service(4, "f00d::1", 80, "any", &[]);
        existing.spec.flags = Some(cilium_api::models::ServiceFlags {
            direct_server_return: true,
            ..Default::default()
        });
        let spec = update_spec(&args, Some(&existing)).unwrap();
        assert_eq!(spec.backend_addresses[0].weight, 1);
        assert_eq!(spec.flags, existing.spec.flags);

        let args = update_args(&[
            "--id",
            "4",
            "--frontend",
            "10.0.0.1:80",
            "--backends",
            "10.0.1.1:80",
            "--weights",
            "1,2",
        ]);
        let err = update_spec(&args, None).unwrap_err().to_string();
        assert!(err.contains("2 weights for 1 backends"), "{err}");
    }

    #[test]
    fn command_lines() {
        for argv in [
            vec!["cilium", "service", "update", "--frontend", "10.0.0.1:80"],
            vec![
                "cilium",
                "service",
                "update",
                "--id",
                "0",
                "--frontend",
                "10.0.0.1:80",
            ],
            vec!["cilium", "service", "update", "--id", "1"],
            vec![
                "cilium",
                "service",
                "update",
                "--id",
                "1",
                "--frontend",
                "10.0.0.1",
            ],
            vec![
                "cilium",
                "service",
                "update",
                "--id",
                "1",
                "--frontend",
                "10.0.0.1:80",
                "--weights",
                "70000",
            ],
            vec!["cilium", "service", "get"],
            vec!["cilium", "service", "get", "x"],
        ] {
            assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?}");
        }
        let cli = Cli::try_parse_from(["cilium", "service", "ls", "-o", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(
            cli.command,
            Command::Service(ServiceCommand::List)
        ));
        let cli = Cli::try_parse_from(["cilium", "service", "delete", "1", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Service(ServiceCommand::Delete { ids, all: false }) if ids == [1, 2]
        ));
        assert_eq!(delete_targets(&[], true).unwrap(), None);
        assert_eq!(delete_targets(&[3], false).unwrap(), Some(vec![3]));
        assert!(delete_targets(&[], false).is_err());
        assert!(delete_targets(&[3], true).is_err());
    }
}
