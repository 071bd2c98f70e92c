//! `cilium policy import|get|delete|validate|wait|trace`: the commands, and the pure helpers
//! they are made of (port and label parsing, trace selectors, wait bookkeeping).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use cilium_api::models::{Endpoint, EndpointState, PortProtocol, TraceSelector};
use cilium_api::{Client, EndpointId};
use clap::{Args, Subcommand};

use super::{format, show, CliError, Output};

/// How often `cilium policy wait` polls the endpoints.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Import policy rules from a JSON file (`-` for stdin); prints the new revision
    Import {
        /// File with a JSON array of rules, or `-` for stdin
        #[arg(value_name = "FILE|-")]
        file: String,
    },
    /// Print the policy rules (all, or those carrying every given rule label) and the revision
    Get {
        /// Rule labels to filter by
        #[arg(value_name = "LABEL")]
        labels: Vec<String>,
    },
    /// Delete the rules carrying every given rule label, or all rules with --all
    Delete {
        /// Rule labels of the rules to delete
        #[arg(value_name = "LABEL")]
        labels: Vec<String>,
        /// Delete every rule
        #[arg(long)]
        all: bool,
    },
    /// Check a policy file without importing it (does not need the agent)
    Validate {
        /// File with a JSON array of rules, or `-` for stdin
        #[arg(value_name = "FILE|-")]
        file: String,
        /// Also print how many rules were read
        #[arg(short = 'v', long)]
        verbose: bool,
    },
    /// Wait until every endpoint runs the given policy revision (default: the current one)
    Wait {
        /// Policy revision to wait for
        revision: Option<u64>,
        /// Give up after this many seconds
        #[arg(long, value_name = "SECONDS", default_value_t = 360)]
        max_wait_time: u64,
    },
    /// Trace the policy decision for traffic from a source to a destination
    Trace(TraceArgs),
}

/// Arguments of `cilium policy trace`.
#[derive(Debug, Clone, Default, Args)]
pub struct TraceArgs {
    /// Source labels (repeatable or comma-separated), e.g. `-s id.curl`
    #[arg(short = 's', long = "src", value_name = "LABEL")]
    pub src: Vec<String>,
    /// Destination labels (repeatable or comma-separated), e.g. `-d id.httpd`
    #[arg(short = 'd', long = "dst", value_name = "LABEL")]
    pub dst: Vec<String>,
    /// Destination port, `PORT[/tcp|udp|any]` (repeatable)
    #[arg(long = "dport", value_name = "PORT[/PROTOCOL]", value_parser = parse_dport)]
    pub dports: Vec<PortProtocol>,
    /// Source endpoint (instead of -s): N, container-id:ID, ...
    #[arg(long = "src-endpoint", value_name = "ID")]
    pub src_endpoint: Option<String>,
    /// Destination endpoint (instead of -d): N, container-id:ID, ...
    #[arg(long = "dst-endpoint", value_name = "ID")]
    pub dst_endpoint: Option<String>,
    /// Also list the rules that did not match
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// Parses a `--dport` value: `PORT` or `PORT/PROTOCOL` with a port 1-65535 and a protocol
/// `tcp`, `udp` or `any` (any case). A bare port means any protocol.
pub fn parse_dport(value: &str) -> Result<PortProtocol, String> {
    let (port, protocol) = match value.split_once('/') {
        Some((port, protocol)) => (port, protocol.trim().to_ascii_lowercase()),
        None => (value, "any".to_string()),
    };
    let port = match port.trim().parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "invalid port '{}' in '{value}': expected a number between 1 and 65535",
                port.trim()
            ))
        }
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "any") {
        return Err(format!(
            "unknown protocol '{protocol}' in '{value}': expected tcp, udp or any"
        ));
    }
    Ok(PortProtocol { port, protocol })
}

/// Labels given repeatedly and/or comma-separated, as one list; blanks are dropped.
pub fn split_labels(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// One side of a trace: labels or an endpoint, exactly one of them. `side` names it in
/// messages, `short`/`long` are its label flags (`s`/`src`, `d`/`dst`).
fn trace_side(
    side: &str,
    short: &str,
    long: &str,
    labels: &[String],
    endpoint: Option<&str>,
) -> Result<(Vec<String>, Option<String>), CliError> {
    let labels = split_labels(labels);
    match (labels.is_empty(), endpoint) {
        (false, Some(_)) => Err(CliError::Usage(format!(
            "give the {side} either as labels (-{short}/--{long}) or as an endpoint \
             (--{long}-endpoint), not both"
        ))),
        (true, None) => Err(CliError::Usage(format!(
            "give the {side} as labels (-{short}/--{long} LABEL) or as an endpoint \
             (--{long}-endpoint ID)"
        ))),
        (false, None) => Ok((labels, None)),
        (true, Some(raw)) => {
            let id: EndpointId = raw
                .parse()
                .map_err(|e| CliError::Usage(format!("--{long}-endpoint: {e}")))?;
            Ok((Vec::new(), Some(id.to_string())))
        }
    }
}

/// The request body of a trace.
pub fn trace_selector(args: &TraceArgs) -> Result<TraceSelector, CliError> {
    let (from, from_endpoint) = trace_side(
        "source",
        "s",
        "src",
        &args.src,
        args.src_endpoint.as_deref(),
    )?;
    let (to, to_endpoint) = trace_side(
        "destination",
        "d",
        "dst",
        &args.dst,
        args.dst_endpoint.as_deref(),
    )?;
    Ok(TraceSelector {
        from,
        to,
        from_endpoint,
        to_endpoint,
        dports: args.dports.clone(),
        verbose: args.verbose,
    })
}

/// The labels `cilium policy delete` sends: the given ones, or none (= all rules) with
/// `--all`. Exactly one of the two must be given.
pub fn delete_labels(labels: &[String], all: bool) -> Result<Vec<String>, CliError> {
    match (labels.is_empty(), all) {
        (true, false) => Err(CliError::Usage(
            "give the labels of the rules to delete, or --all to delete every rule".into(),
        )),
        (false, true) => Err(CliError::Usage(
            "give either labels or --all, not both".into(),
        )),
        (true, true) => Ok(Vec::new()),
        (false, false) => Ok(labels.to_vec()),
    }
}

/// Where `cilium policy wait` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitProgress {
    pub revision: u64,
    /// Endpoints that count and run `revision` or newer.
    pub ready: usize,
    /// Endpoints that count: all but those being created or disconnected.
    pub total: usize,
    /// `(endpoint id, its policy revision)` of those still behind, by id.
    pub behind: Vec<(u16, u64)>,
}

impl WaitProgress {
    pub fn done(&self) -> bool {
        self.behind.is_empty()
    }
}

/// Counts the endpoints running policy `revision`, ignoring those that are being created or
/// are disconnected (they get their policy when they come up).
pub fn wait_progress(endpoints: &[Endpoint], revision: u64) -> WaitProgress {
    let counted: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| {
            !matches!(
                e.state,
                EndpointState::Creating | EndpointState::Disconnected
            )
        })
        .collect();
    let mut behind: Vec<(u16, u64)> = counted
        .iter()
        .filter(|e| e.policy_revision < revision)
        .map(|e| (e.id, e.policy_revision))
        .collect();
    behind.sort_unstable();
    WaitProgress {
        revision,
        ready: counted.len() - behind.len(),
        total: counted.len(),
        behind,
    }
}

/// Decides what `cilium policy wait` prints after each poll: a progress line whenever the
/// number of ready endpoints changes, and the final line once all are ready.
#[derive(Debug, Default)]
pub struct WaitTracker {
    last_ready: Option<usize>,
}

impl WaitTracker {
    pub fn observe(&mut self, progress: &WaitProgress) -> Option<String> {
        if progress.done() {
            return Some(format!(
                "All endpoints have policy revision {}",
                progress.revision
            ));
        }
        if self.last_ready == Some(progress.ready) {
            return None;
        }
        self.last_ready = Some(progress.ready);
        Some(format!(
            "Waiting for endpoints to run policy revision {}: {}/{}",
            progress.revision, progress.ready, progress.total
        ))
    }
}

/// The error of a wait that timed out, naming the endpoints still behind.
pub fn wait_timeout_message(progress: &WaitProgress, waited: Duration) -> String {
    let behind: Vec<String> = progress
        .behind
        .iter()
        .map(|(id, rev)| format!("{id} (at revision {rev})"))
        .collect();
    format!(
        "timed out after {}s waiting for policy revision {}: {}/{} endpoints ready; still \
         behind: {}",
        waited.as_secs(),
        progress.revision,
        progress.ready,
        progress.total,
        behind.join(", ")
    )
}

/// Reads a policy file, or stdin for `-`.
pub fn read_policy_input(file: &str) -> Result<String, CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Failed(format!("cannot read the policy from stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(file)
        .map_err(|e| CliError::Failed(format!("cannot read policy file '{file}': {e}")))
}

/// Checks a policy text locally: the report printed on success, or the error message.
pub fn validate(text: &str, verbose: bool) -> Result<String, String> {
    let rules = crate::policy::parse_rules(text).map_err(|e| e.to_string())?;
    let mut out = String::new();
    if verbose {
        let plural = if rules.len() == 1 { "" } else { "s" };
        out.push_str(&format!("{} rule{plural} read\n", rules.len()));
    }
    out.push_str("All policy elements are valid.\n");
    Ok(out)
}

/// Runs one `cilium policy` command.
pub async fn run(
    client: &Client,
    output: Output,
    cmd: PolicyCommand,
) -> Result<ExitCode, CliError> {
    match cmd {
        PolicyCommand::Import { file } => {
            let text = read_policy_input(&file)?;
            let policy = client.policy_put(&text).await?;
            show(output, &policy, format::policy_revision);
        }
        PolicyCommand::Get { labels } => {
            let policy = client.policy_get(&labels).await?;
            show(output, &policy, format::policy_get);
        }
        PolicyCommand::Delete { labels, all } => {
            let labels = delete_labels(&labels, all)?;
            let policy = client.policy_delete(&labels).await?;
            show(output, &policy, format::policy_revision);
        }
        PolicyCommand::Validate { file, verbose } => {
            let text = read_policy_input(&file)?;
            match validate(&text, verbose) {
                Ok(report) => print!("{report}"),
                Err(message) => return Err(CliError::Failed(message)),
            }
        }
        PolicyCommand::Wait {
            revision,
            max_wait_time,
        } => {
            let revision = match revision {
                Some(r) => r,
                None => client.policy_get(&[]).await?.revision,
            };
            let max_wait = Duration::from_secs(max_wait_time);
            let deadline = tokio::time::Instant::now() + max_wait;
            let mut tracker = WaitTracker::default();
            loop {
                let endpoints = client.endpoint_list(&[]).await?;
                let progress = wait_progress(&endpoints, revision);
                if let Some(line) = tracker.observe(&progress) {
                    println!("{line}");
                }
                if progress.done() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(CliError::Failed(wait_timeout_message(&progress, max_wait)));
                }
                tokio::time::sleep(WAIT_POLL_INTERVAL).await;
            }
        }
        PolicyCommand::Trace(args) => {
            let selector = trace_selector(&args)?;
            let result = client.policy_resolve(&selector).await?;
            show(output, &result, |r| {
                let mut log = r.log.clone();
                if !log.is_empty() && !log.ends_with('\n') {
                    log.push('\n');
                }
                log
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn endpoint(id: u16, state: EndpointState, revision: u64) -> Endpoint {
        Endpoint {
            state,
            policy_enabled: true,
            policy_revision: revision,
            ..super::super::format::tests::endpoint(id, &[])
        }
    }

    fn policy_command(args: &[&str]) -> Result<PolicyCommand, clap::Error> {
        let mut argv = vec!["cilium", "policy"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Policy(cmd) => Ok(cmd),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn dport_forms() {
        let pp = |port, protocol: &str| PortProtocol {
            port,
            protocol: protocol.to_string(),
        };
        assert_eq!(parse_dport("80").unwrap(), pp(80, "any"));
        assert_eq!(parse_dport("80/tcp").unwrap(), pp(80, "tcp"));
        assert_eq!(parse_dport("53/UDP").unwrap(), pp(53, "udp"));
        assert_eq!(parse_dport("65535/any").unwrap(), pp(65535, "any"));
        for bad in ["0", "65536", "http", "", "/tcp", "-1/tcp"] {
            let err = parse_dport(bad).unwrap_err();
            assert!(err.contains("invalid port"), "{bad}: {err}");
        }
        let err = parse_dport("80/icmp").unwrap_err();
        assert!(err.contains("'icmp'") && err.contains("'80/icmp'"), "{err}");
    }

    #[test]
    fn bad_dport_is_a_usage_error_naming_it() {
        let err = policy_command(&["trace", "-s", "a", "-d", "b", "--dport", "99999"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("99999") && err.contains("--dport"), "{err}");
    }

    #[test]
    fn labels_repeated_or_comma_separated() {
        assert_eq!(
            split_labels(&strings(&["id.curl,k8s:app=web", " x ", ",,"])),
            strings(&["id.curl", "k8s:app=web", "x"])
        );
        assert!(split_labels(&[]).is_empty());
    }

    #[test]
    fn trace_parses_the_seed_example() {
        let PolicyCommand::Trace(args) =
            policy_command(&["trace", "-s", "id.curl", "-d", "id.httpd", "--dport", "80"]).unwrap()
        else {
            panic!("not a trace");
        };
        let sel = trace_selector(&args).unwrap();
        assert_eq!(sel.from, strings(&["id.curl"]));
        assert_eq!(sel.to, strings(&["id.httpd"]));
        assert_eq!(
            sel.dports,
            vec![PortProtocol {
                port: 80,
                protocol: "any".into()
            }]
        );
        assert!(!sel.verbose && sel.from_endpoint.is_none() && sel.to_endpoint.is_none());
    }

    #[test]
    fn trace_with_endpoints_and_several_labels() {
        let PolicyCommand::Trace(args) = policy_command(&[
            "trace",
            "--src-endpoint",
            "container-id:abc",
            "--dst",
            "a,b",
            "-d",
            "c",
            "--dport",
            "80/tcp",
            "--dport",
            "53/udp",
            "-v",
        ])
        .unwrap() else {
            panic!("not a trace");
        };
        let sel = trace_selector(&args).unwrap();
        assert!(sel.from.is_empty());
        assert_eq!(sel.from_endpoint.as_deref(), Some("container-id:abc"));
        assert_eq!(sel.to, strings(&["a", "b", "c"]));
        assert_eq!(sel.dports.len(), 2);
        assert!(sel.verbose);

        let PolicyCommand::Trace(args) =
            policy_command(&["trace", "--src-endpoint", "42", "--dst-endpoint", "7"]).unwrap()
        else {
            panic!("not a trace");
        };
        let sel = trace_selector(&args).unwrap();
        assert_eq!(sel.from_endpoint.as_deref(), Some("cilium-local:42"));
        assert_eq!(sel.to_endpoint.as_deref(), Some("cilium-local:7"));
    }

    #[test]
    fn trace_sides_need_exactly_one_form() {
        let args = |src: &[&str], src_ep: Option<&str>, dst: &[&str]| TraceArgs {
            src: strings(src),
            dst: strings(dst),
            src_endpoint: src_ep.map(str::to_string),
            ..TraceArgs::default()
        };
        let err = trace_selector(&args(&["a"], Some("1"), &["b"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not both") && err.contains("--src-endpoint"),
            "{err}"
        );
        let err = trace_selector(&args(&[], None, &["b"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source") && err.contains("-s/--src"), "{err}");
        let err = trace_selector(&args(&["a"], None, &[" , "]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("destination") && err.contains("-d/--dst"),
            "{err}"
        );
        let err = trace_selector(&args(&[], Some("bogus:1"), &["b"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--src-endpoint") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn delete_needs_labels_or_all() {
        assert_eq!(delete_labels(&[], true).unwrap(), Vec::<String>::new());
        assert_eq!(
            delete_labels(&strings(&["app=web"]), false).unwrap(),
            strings(&["app=web"])
        );
        let err = delete_labels(&[], false).unwrap_err().to_string();
        assert!(err.contains("--all") && err.contains("labels"), "{err}");
        let err = delete_labels(&strings(&["x"]), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn policy_commands_parse() {
        assert!(matches!(
            policy_command(&["import", "l3.json"]).unwrap(),
            PolicyCommand::Import { file } if file == "l3.json"
        ));
        assert!(matches!(
            policy_command(&["import", "-"]).unwrap(),
            PolicyCommand::Import { file } if file == "-"
        ));
        assert!(policy_command(&["import"]).is_err());
        assert!(matches!(
            policy_command(&["delete", "--all"]).unwrap(),
            PolicyCommand::Delete { labels, all: true } if labels.is_empty()
        ));
        assert!(matches!(
            policy_command(&["get", "a=b", "c"]).unwrap(),
            PolicyCommand::Get { labels } if labels == strings(&["a=b", "c"])
        ));
        assert!(matches!(
            policy_command(&["validate", "-v", "p.json"]).unwrap(),
            PolicyCommand::Validate { verbose: true, .. }
        ));
        assert!(matches!(
            policy_command(&["wait"]).unwrap(),
            PolicyCommand::Wait {
                revision: None,
                max_wait_time: 360
            }
        ));
        assert!(matches!(
            policy_command(&["wait", "5", "--max-wait-time", "10"]).unwrap(),
            PolicyCommand::Wait {
                revision: Some(5),
                max_wait_time: 10
            }
        ));
        let cli = Cli::try_parse_from(["cilium", "policy", "get", "-o", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
    }

    #[test]
    fn wait_counts_only_running_endpoints() {
        let eps = [
            endpoint(3, EndpointState::Ready, 2),
            endpoint(1, EndpointState::Ready, 5),
            endpoint(2, EndpointState::Regenerating, 4),
            endpoint(4, EndpointState::Creating, 0),
            endpoint(5, EndpointState::Disconnected, 0),
            endpoint(6, EndpointState::WaitingForIdentity, 0),
        ];
        let p = wait_progress(&eps, 4);
        assert_eq!((p.ready, p.total), (2, 4));
        assert_eq!(p.behind, vec![(3, 2), (6, 0)]);
        assert!(!p.done());
        let msg = wait_timeout_message(&p, Duration::from_secs(360));
        assert!(
            msg.contains("360s")
                && msg.contains("3 (at revision 2)")
                && msg.contains("6 (at revision 0)"),
            "{msg}"
        );
        assert!(wait_progress(&[], 9).done());
    }

    #[test]
    fn wait_prints_when_the_count_changes() {
        let mut t = WaitTracker::default();
        let progress = |ready, total| WaitProgress {
            revision: 7,
            ready,
            total,
            behind: vec![(1, 6); total - ready],
        };
        assert_eq!(
            t.observe(&progress(1, 3)).as_deref(),
            Some("Waiting for endpoints to run policy revision 7: 1/3")
        );
        assert_eq!(t.observe(&progress(1, 3)), None);
        assert_eq!(
            t.observe(&progress(2, 3)).as_deref(),
            Some("Waiting for endpoints to run policy revision 7: 2/3")
        );
        assert_eq!(
            t.observe(&progress(3, 3)).as_deref(),
            Some("All endpoints have policy revision 7")
        );
    }

    #[test]
    fn missing_policy_file_is_named() {
        let err = read_policy_input("/nonexistent/l3-policy.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'/nonexistent/l3-policy.json'"), "{err}");
    }

    #[test]
    fn validate_uses_the_policy_parser() {
        let good = r#"[{
          "endpointSelector": {"matchLabels":{"id":"web-server"}},
          "ingress": [{
            "fromEndpoints": [{"matchLabels":{"id":"goodclient"}}],
            "toPorts": [{"ports": [{"port": "8181", "protocol": "tcp"}]}]
          }]
        }]"#;
        assert_eq!(
            validate(good, false).unwrap(),
            "All policy elements are valid.\n"
        );
        assert_eq!(
            validate(good, true).unwrap(),
            "1 rule read\nAll policy elements are valid.\n"
        );
        let err = validate(
            r#"[{"endpointSelector":{"matchLabels":{"id":"a"}},"bogus":1}]"#,
            false,
        )
        .unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        assert!(validate("[{", true).is_err());
    }
}
