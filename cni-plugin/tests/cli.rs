//! Drives the `cilium-cni` binary as a runtime does (env + stdin, reply on stdout) on the
//! paths that need no agent: decoding, versions, environment checks, an unreachable agent.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cilium-cni");

/// Runs the plugin with exactly `vars` in its environment and `stdin` as the config.
fn cni(vars: &[(&str, &str)], stdin: &str) -> (Output, Value) {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cilium-cni");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write the config");
    let output = child.wait_with_output().expect("wait for cilium-cni");
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout");
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        // stdout is the protocol reply and nothing else: exactly one JSON document.
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout {stdout:?}: {e}"))
    };
    (output, value)
}

fn add_env(netns: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", "ADD".into()),
        ("CNI_CONTAINERID", "c0ffee".into()),
        ("CNI_NETNS", netns.to_str().expect("UTF-8 path").into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".into(),
        ),
    ]
}

fn borrowed<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn assert_error(output: &Output, reply: &Value, code: u64) {
    assert_eq!(output.status.code(), Some(1), "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert!(reply["msg"].is_string(), "{reply}");
    assert!(reply["cniVersion"].is_string(), "{reply}");
}

#[test]
fn garbage_stdin_is_a_decode_error() {
    let netns = tempfile::NamedTempFile::new().unwrap();
    let (output, reply) = cni(&borrowed(&add_env(netns.path())), "this is not json");
    assert_error(&output, &reply, 6);
    assert_eq!(reply["cniVersion"], "1.1.0");
    assert!(reply["msg"]
        .as_str()
        .unwrap()
        .starts_with("failed to decode network config: "));
    // The error is logged on stderr too.
    assert!(String::from_utf8_lossy(&output.stderr).contains("failed to decode"));
}

#[test]
fn unknown_version_is_incompatible() {
    let netns = tempfile::NamedTempFile::new().unwrap();
    let config = r#"{"cniVersion":"0.9.0","name":"cilium","type":"cilium-cni"}"#;
    let (output, reply) = cni(&borrowed(&add_env(netns.path())), config);
    assert_error(&output, &reply, 1);
    assert_eq!(
        reply["msg"],
        "incompatible CNI version 0.9.0; supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    );
}

#[test]
fn version_lists_every_supported_version() {
    let supported = json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    let (output, reply) = cni(&[("CNI_COMMAND", "VERSION")], "");
    assert!(output.status.success());
    assert_eq!(
        reply,
        json!({"cniVersion": "1.1.0", "supportedVersions": supported})
    );

    let old = r#"{"name":"cilium","type":"cilium-cni"}"#;
    let (output, reply) = cni(&[("CNI_COMMAND", "VERSION")], old);
    assert!(output.status.success());
    assert_eq!(reply["cniVersion"], "0.1.0");
    assert_eq!(reply["supportedVersions"], supported);

    let (_, reply) = cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.3.1"}"#);
    assert_eq!(reply["cniVersion"], "0.3.1");
}

#[test]
fn unreachable_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-agent.sock");
    let netns = dir.path().join("netns");
    std::fs::write(&netns, b"").unwrap();
    let config = json!({
        "cniVersion": "0.4.0", "name": "cilium", "type": "cilium-cni",
        "socket-path": socket,
    })
    .to_string();

    let (output, reply) = cni(&borrowed(&add_env(&netns)), &config);
    assert_error(&output, &reply, 11);
    assert_eq!(reply["cniVersion"], "0.4.0");
    let msg = reply["msg"].as_str().unwrap();
    assert!(msg.contains(socket.to_str().unwrap()), "{msg}");
    assert!(msg.starts_with("cannot reach the agent at "), "{msg}");

    let (output, reply) = cni(&[("CNI_COMMAND", "STATUS")], &config);
    assert_error(&output, &reply, 50);
    assert!(reply["msg"]
        .as_str()
        .unwrap()
        .contains(socket.to_str().unwrap()));

    let del = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (output, reply) = cni(&del, &config);
    assert_error(&output, &reply, 11);
}

#[test]
fn missing_netns_is_reported_before_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"cniVersion": "1.0.0", "name": "cilium", "type": "cilium-cni",
                        "socket-path": dir.path().join("no-agent.sock")})
    .to_string();
    let (output, reply) = cni(&borrowed(&add_env(&dir.path().join("gone"))), &config);
    assert_error(&output, &reply, 3);
}

#[test]
fn environment_errors() {
    let netns = tempfile::NamedTempFile::new().unwrap();
    let config = r#"{"cniVersion":"1.0.0","name":"cilium","type":"cilium-cni"}"#;
    let env = add_env(netns.path());

    let without_id: Vec<_> = env
        .iter()
        .filter(|(k, _)| *k != "CNI_CONTAINERID")
        .cloned()
        .collect();
    let (output, reply) = cni(&borrowed(&without_id), config);
    assert_error(&output, &reply, 4);
    assert_eq!(reply["cniVersion"], "1.0.0");
    assert!(reply["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));

    let (output, reply) = cni(&[("CNI_COMMAND", "FROB")], config);
    assert_error(&output, &reply, 4);
    let (output, reply) = cni(&[], config);
    assert_error(&output, &reply, 4);
    assert!(reply["msg"].as_str().unwrap().contains("CNI_COMMAND"));
}

#[test]
fn config_errors() {
    let netns = tempfile::NamedTempFile::new().unwrap();
    let env = add_env(netns.path());
    let (output, reply) = cni(
        &borrowed(&env),
        r#"{"cniVersion":"1.0.0","type":"cilium-cni"}"#,
    );
    assert_error(&output, &reply, 7);
    let (output, reply) = cni(
        &[("CNI_COMMAND", "GC")],
        r#"{"cniVersion":"1.1.0","name":"cilium","type":"cilium-cni"}"#,
    );
    assert_error(&output, &reply, 7);
    assert!(reply["msg"]
        .as_str()
        .unwrap()
        .contains("GC needs cni.dev/valid-attachments"));
}
