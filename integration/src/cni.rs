//! Running CNI plugins exactly as a runtime does: the `CNI_*` environment, the network
//! configuration on stdin, the result (or error) JSON on stdout. Also a node: a network
//! namespace running its own agent, with containers as further namespaces.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{bin, test_dir, Agent, AgentOptions, Netns};

/// What a plugin run produced.
#[derive(Debug)]
pub struct PluginRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    /// The stdout JSON (result or error).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns the result JSON (or `Null` when stdout is empty).
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with the CNI error `code` and returns the error message.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(
            self.code, 0,
            "plugin unexpectedly succeeded: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(
            v["code"].as_u64(),
            Some(code),
            "wrong error code: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        v["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// One invocation: command, container, netns path, interface and extra `CNI_ARGS`.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Invocation {
    pub fn new(command: &str, container_id: &str, netns: &str) -> Invocation {
        Invocation {
            command: command.to_string(),
            container_id: Some(container_id.to_string()),
            netns: Some(netns.to_string()),
            ifname: Some("eth0".to_string()),
            args: None,
            path: Some("/opt/cni/bin".to_string()),
        }
    }

    pub fn bare(command: &str) -> Invocation {
        Invocation {
            command: command.to_string(),
            ..Default::default()
        }
    }
}

/// The command a runtime would exec for `inv`: `plugin` (inside network namespace `netns`
/// when given, through `ip netns exec`) with exactly the `CNI_*` environment, pipes on all
/// three streams.
pub fn plugin_command(plugin: &Path, netns: Option<&str>, inv: &Invocation) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(plugin);
            c
        }
        None => Command::new(plugin),
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", &inv.command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let optional = [
        ("CNI_CONTAINERID", &inv.container_id),
        ("CNI_NETNS", &inv.netns),
        ("CNI_IFNAME", &inv.ifname),
        ("CNI_ARGS", &inv.args),
        ("CNI_PATH", &inv.path),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            cmd.env(key, v);
        }
    }
    cmd
}

/// Runs a command made by [`plugin_command`] with `config` on stdin.
pub fn run_plugin(mut cmd: Command, config: &str) -> PluginRun {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("exec {:?}: {e}", cmd.get_program()));
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin may exit before reading (e.g. a bad environment): ignore a broken pipe.
        let _ = stdin.write_all(config.as_bytes());
    }
    let out = child.wait_with_output().expect("wait for plugin");
    PluginRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Execs `plugin` with the invocation's environment and `config` on stdin.
pub fn exec_plugin(plugin: &Path, inv: &Invocation, config: &str) -> PluginRun {
    run_plugin(plugin_command(plugin, None, inv), config)
}

/// A node: a fresh network namespace running its own agent (fixed ranges 10.23.0.0/16 and
/// f00d::c000:217:0:0/96), with the plugin configured to use that agent's socket.
#[derive(Debug)]
pub struct Node {
    pub agent: Agent,
    // Field order matters: the agent stops before its namespace and directory go.
    pub netns: Netns,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn start(prefix: &str) -> Node {
        Node::start_in(Netns::new(prefix), &[])
    }

    /// A node in a namespace made beforehand (e.g. to start a runtime in it first), the
    /// agent with extra flags.
    pub fn start_in(netns: Netns, args: &[&str]) -> Node {
        let dir = test_dir();
        let agent = Agent::start(
            dir.path(),
            &AgentOptions {
                netns: Some(netns.name.clone()),
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        );
        Node { agent, netns, dir }
    }

    /// A network configuration for `cilium-cni` pointing at this node's agent.
    pub fn config(&self, version: Option<&str>) -> Value {
        let mut conf = serde_json::json!({
            "name": "cilium",
            "type": "cilium-cni",
            "mtu": 1450,
            "socket-path": self.agent.socket,
        });
        if let Some(v) = version {
            conf["cniVersion"] = Value::from(v);
        }
        conf
    }

    /// Runs `cilium-cni` against this node.
    pub fn cni(&self, inv: &Invocation, config: &Value) -> PluginRun {
        exec_plugin(&bin("cilium-cni"), inv, &config.to_string())
    }

    /// ADD of a fresh container namespace with the default (1.0.0) configuration.
    pub fn add(&self, container: &Netns) -> Value {
        let inv = Invocation::new("ADD", &container.name, &container.path());
        self.cni(&inv, &self.config(Some("1.0.0"))).ok()
    }

    /// ADD of a container with the runtime labels `labels` (key=value, CNI `args`); returns
    /// the endpoint as the agent reports it.
    pub fn add_labeled(
        &self,
        container: &Netns,
        labels: &[(&str, &str)],
    ) -> cilium_api::models::Endpoint {
        let mut conf = self.config(Some("1.0.0"));
        let labels: Vec<Value> = labels
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        conf["args"] = serde_json::json!({"cni": {"labels": labels}});
        let inv = Invocation::new("ADD", &container.name, &container.path());
        self.cni(&inv, &conf).ok();
        let (status, body) = self.agent.http(
            "GET",
            &format!("/endpoint/container-id:{}", container.name),
            None,
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("endpoint")
    }

    /// Runs a command in the node namespace and returns its stdout.
    pub fn sh(&self, cmd: &[&str]) -> String {
        String::from_utf8_lossy(&self.netns.exec_ok(cmd).stdout).into_owned()
    }
}

impl Netns {
    /// The bind-mounted namespace file, as runtimes pass it in `CNI_NETNS`.
    pub fn path(&self) -> String {
        PathBuf::from("/var/run/netns")
            .join(&self.name)
            .display()
            .to_string()
    }
}
