//! cilium-cni input: the `CNI_*` environment (cni-plugin/src/env.rs, `Operation::from_env`
//! and `CniArgs::parse`) and the network config on stdin (cni-plugin/src/config.rs,
//! `NetworkConfig::parse`, `valid_attachments`), with what the plugin derives from them before
//! it talks to the agent: the requested version, the labels (`labels::collect`), the chained
//! `prevResult` (`CniResult::parse`, printed in every version) and the error reply. The whole
//! plugin (`cilium_cni::run`) runs too whenever it cannot reach the agent: for `VERSION` and
//! for an invalid environment or config.
//!
//! Input: `KEY=VALUE` lines (the environment, values as raw bytes), a NUL byte, then stdin.
//! Without a NUL byte the whole input is stdin and the environment is `CNI_COMMAND=ADD` with
//! a valid container, so that plain configs reach the label and result code.
#![no_main]

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use cilium_cni::config::NetworkConfig;
use cilium_cni::env::{self, CniArgs, Operation};
use cilium_cni::result::CniResult;
use cilium_cni::version::{self, CniVersion};
use cilium_cni::{labels, CniError};
use libfuzzer_sys::fuzz_target;

const DEFAULT_ENV: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "abc123"),
    ("CNI_NETNS", "/var/run/netns/c1"),
    ("CNI_IFNAME", "eth0"),
    (
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
    ),
];

fn split(data: &[u8]) -> (HashMap<String, OsString>, &[u8]) {
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        let env = DEFAULT_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        return (env, data);
    };
    let mut env = HashMap::new();
    for line in data[..nul].split(|&b| b == b'\n') {
        let (key, value) = match line.iter().position(|&b| b == b'=') {
            Some(eq) => (&line[..eq], &line[eq + 1..]),
            None => (line, &b""[..]),
        };
        env.insert(
            String::from_utf8_lossy(key).into_owned(),
            OsString::from_vec(value.to_vec()),
        );
    }
    (env, &data[nul + 1..])
}

fuzz_target!(|data: &[u8]| {
    let (env, stdin) = split(data);
    let lookup = |name: &str| env.get(name).cloned();

    // The variables on their own.
    for (name, value) in &env {
        let Some(value) = value.to_str() else {
            continue;
        };
        let _ = match name.as_str() {
            "CNI_CONTAINERID" => env::validate_container_id(value),
            "CNI_IFNAME" => env::validate_ifname(value),
            "CNI_NETNS" => env::validate_netns(value),
            "CNI_COMMAND" => value.parse::<env::Command>().map(|c| {
                assert_eq!(c.as_str().parse::<env::Command>(), Ok(c));
            }),
            _ => CniArgs::parse(value).map(|args| {
                let _ = args.get("K8S_POD_NAME");
            }),
        };
    }
    let operation = Operation::from_env(lookup);

    let version = CniVersion::requested_by(stdin);
    let _ = version::version_reply(version);
    let config = NetworkConfig::parse(stdin);

    match config {
        Ok(config) => {
            let _ = config.valid_attachments();
            if let Some(prev) = &config.prev_result {
                match CniResult::parse(prev) {
                    Ok(result) => {
                        // What this plugin prints is the next plugin's (and CHECK's)
                        // prevResult: it must read back in every version.
                        for v in CniVersion::ALL {
                            let printed = result.to_json(v);
                            let serde_json::Value::Object(map) = &printed else {
                                panic!("a result prints as an object: {printed}");
                            };
                            if let Err(e) = CniResult::parse(map) {
                                panic!("result printed in {v} does not parse: {e}\n{printed}");
                            }
                        }
                        let chained = result.clone().chain(result);
                        let _ = chained.to_json(config.cni_version);
                    }
                    Err(e) => {
                        let _ = CniError::from(e).to_json(config.cni_version);
                    }
                }
            }
            let cni_args = match &operation {
                Ok(Operation::Add(target)) | Ok(Operation::Check(target)) => target.args.clone(),
                _ => CniArgs::default(),
            };
            match labels::collect(
                config.args.as_ref(),
                config.runtime_config.as_ref(),
                &cni_args,
            ) {
                Ok(found) => {
                    let mut sorted = found.labels.clone();
                    sorted.sort();
                    sorted.dedup();
                    assert_eq!(sorted, found.labels, "labels are sorted and unique");
                }
                Err(e) => {
                    let _ = CniError::from(e).to_json(config.cni_version);
                }
            }
        }
        Err(e) => {
            let _ = CniError::from(e).to_json(version);
        }
    }
    if let Err(e) = &operation {
        let _ = CniError::from(e.clone()).to_json(version);
    }

    // The whole plugin, whenever it would not contact the agent: its reply must be the
    // protocol's JSON.
    let contacts_agent = matches!(&operation, Ok(op) if *op != Operation::Version)
        && NetworkConfig::parse(stdin).is_ok();
    if !contacts_agent {
        let reply = cilium_cni::run(lookup, stdin);
        let out = reply.stdout.as_deref().expect("a reply on stdout");
        let value: serde_json::Value =
            serde_json::from_str(out).expect("the plugin's reply is JSON");
        assert!(
            value.get("cniVersion").is_some(),
            "reply without cniVersion"
        );
        assert_eq!(reply.exit_code == 0, value.get("code").is_none());
    }
});
