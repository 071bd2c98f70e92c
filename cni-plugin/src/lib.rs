//! `cilium-cni`: the CNI plugin (spec 0.1.0 – 1.1.0) that attaches containers to the network
//! through `cilium-agent`. The plugin is thin: it reads the `CNI_*` environment and the
//! network config, makes one or two agent requests and writes the result or the spec's JSON
//! error in the caller's version. The agent creates the veth pair, allocates the addresses
//! and owns all state.
//!
//! [`run`] is the whole plugin; the binary only hands it the environment and stdin and
//! prints the [`Reply`].

mod agent;
pub mod cidr;
mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod labels;
pub mod result;
pub mod version;

#[cfg(test)]
mod testing;

use std::ffi::OsString;
use std::io::Read;

use cilium_api::Client;
use serde_json::Value;

pub use commands::AGENT_TIMEOUT;
pub use config::NetworkConfig;
pub use env::{Command, Operation};
pub use error::{CniError, ErrorCode};
pub use result::CniResult;
pub use version::CniVersion;

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The protocol reply for stdout: a result, the `VERSION` answer or an error; nothing
    /// for a successful `DEL`, `CHECK`, `STATUS` or `GC`.
    pub stdout: Option<String>,
    /// Notes for stderr, one line each.
    pub log: Vec<String>,
    /// 0 on success, 1 with an error on stdout.
    pub exit_code: u8,
}

/// Runs one invocation: `env` looks up the `CNI_*` variables, `stdin` holds the network
/// config. Errors are written in the version the config asks for when it is supported, in
/// 1.1.0 otherwise.
pub fn run(env: impl Fn(&str) -> Option<OsString>, mut stdin: impl Read) -> Reply {
    let mut input = Vec::new();
    let mut log = Vec::new();
    let outcome = match stdin.read_to_end(&mut input) {
        Ok(_) => execute(&env, &input, &mut log),
        Err(e) => Err(CniError::new(
            ErrorCode::IoFailure,
            format!("cannot read the network config from stdin: {e}"),
        )),
    };
    match outcome {
        Ok(value) => Reply {
            stdout: value.map(|v| format!("{v:#}")),
            log,
            exit_code: 0,
        },
        Err(err) => {
            log.push(format!("error {}: {}", err.code.as_u32(), err.msg));
            let json = err.to_json(CniVersion::requested_by(&input));
            Reply {
                stdout: Some(format!("{json:#}")),
                log,
                exit_code: 1,
            }
        }
    }
}

fn execute(
    env: &impl Fn(&str) -> Option<OsString>,
    input: &[u8],
    log: &mut Vec<String>,
) -> Result<Option<Value>, CniError> {
    let operation = Operation::from_env(env)?;
    if operation == Operation::Version {
        // VERSION needs no config: it answers in the config's version when there is one.
        let version = CniVersion::requested_by(input);
        return Ok(Some(version::version_reply(version)));
    }
    let config = NetworkConfig::parse(input)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("cannot start the async runtime: {e}"),
            )
        })?;
    let agent = Client::new(&config.socket_path);
    runtime.block_on(commands::run(&operation, &config, &agent, log))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn invoke(vars: &[(&str, &str)], stdin: &str) -> (Reply, Value) {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let reply = run(|name| map.get(name).cloned(), stdin.as_bytes());
        let value = reply
            .stdout
            .as_deref()
            .map(|s| serde_json::from_str(s).unwrap())
            .unwrap_or(Value::Null);
        (reply, value)
    }

    #[test]
    fn version_without_config() {
        let (reply, out) = invoke(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(reply.exit_code, 0);
        assert_eq!(out["cniVersion"], "1.1.0");
        assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn version_answers_in_the_configs_version() {
        let (_, out) = invoke(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(out["cniVersion"], "0.4.0");
        let (_, out) = invoke(&[("CNI_COMMAND", "VERSION")], r#"{"name":"x"}"#);
        assert_eq!(out["cniVersion"], "0.1.0");
    }

    #[test]
    fn errors_are_json_in_the_callers_version() {
        let (reply, out) = invoke(&[("CNI_COMMAND", "ADD")], r#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(reply.exit_code, 1);
        assert_eq!(out["cniVersion"], "0.3.1");
        assert_eq!(out["code"], 4);
        assert_eq!(
            out["msg"],
            "required environment variable CNI_CONTAINERID is not set"
        );
        assert_eq!(reply.log.len(), 1);
    }

    #[test]
    fn decode_and_version_errors() {
        let (reply, out) = invoke(&[("CNI_COMMAND", "STATUS")], "not json");
        assert_eq!(reply.exit_code, 1);
        assert_eq!(out["code"], 6);
        assert_eq!(out["cniVersion"], "1.1.0");
        let (_, out) = invoke(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"0.9.0","name":"n","type":"t"}"#,
        );
        assert_eq!(out["code"], 1);
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn unreadable_stdin() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("boom"))
            }
        }
        let reply = run(|_| Some(OsString::from("VERSION")), Broken);
        assert_eq!(reply.exit_code, 1);
        let out: Value = serde_json::from_str(reply.stdout.as_deref().unwrap()).unwrap();
        assert_eq!(out["code"], 5);
        assert!(out["msg"].as_str().unwrap().contains("boom"));
    }

    #[test]
    fn unreachable_agent_through_the_real_client() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let config = json!({"cniVersion": "1.0.0", "name": "n", "type": "cilium-cni",
                            "socket-path": socket})
        .to_string();
        let (reply, out) = invoke(&[("CNI_COMMAND", "STATUS")], &config);
        assert_eq!(reply.exit_code, 1);
        assert_eq!(out["code"], 50);
        assert!(out["msg"]
            .as_str()
            .unwrap()
            .contains(socket.to_str().unwrap()));

        let netns = dir.path().to_str().unwrap();
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", netns),
        ];
        let (reply, out) = invoke(&del, &config);
        assert_eq!(reply.exit_code, 1);
        assert_eq!(out["code"], 11);
        assert_eq!(out["cniVersion"], "1.0.0");
    }
}
