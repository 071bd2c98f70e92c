//! Runs `install/cni-install.sh` and `install/cni-uninstall.sh` into a temporary `PREFIX`
//! (no root needed).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cilium-cni");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn script(name: &str, prefix: &Path, extra: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(repo().join("install").join(name));
    command
        .env_remove("CNI_BIN_DIR")
        .env_remove("CNI_CONF_DIR")
        .env("PREFIX", prefix)
        .env("CILIUM_CNI", BIN)
        .env("LOOPBACK_SRC", prefix.join("no-such-loopback"));
    for (k, v) in extra {
        command.env(k, v);
    }
    let output = command.output().expect("run the script");
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

#[test]
fn install_reinstall_keep_custom_config_uninstall() {
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();
    let bin = prefix.join("opt/cni/bin/cilium-cni");
    let conf = prefix.join("etc/cni/net.d/10-cilium.conf");
    let shipped = fs::read(repo().join("conf/10-cilium.conf")).unwrap();

    let first = script("cni-install.sh", prefix, &[]);
    assert_eq!(fs::read(&bin).unwrap(), fs::read(BIN).unwrap());
    assert_eq!(
        fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(fs::read(&conf).unwrap(), shipped);
    assert!(
        !stdout(&first).contains("Using existing"),
        "{}",
        stdout(&first)
    );
    // No loopback source: none installed, no failure.
    assert!(!prefix.join("opt/cni/bin/loopback").exists());

    let second = script("cni-install.sh", prefix, &[]);
    assert!(
        stdout(&second).contains(&format!("Using existing {}", conf.display())),
        "{}",
        stdout(&second)
    );
    // Only the installed files, no temporary leftovers.
    let names: Vec<String> = fs::read_dir(prefix.join("opt/cni/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["cilium-cni"]);

    let custom = br#"{"cniVersion":"0.3.1","name":"mine","type":"cilium-cni"}"#;
    fs::write(&conf, custom).unwrap();
    script("cni-install.sh", prefix, &[]);
    assert_eq!(fs::read(&conf).unwrap(), custom);
    assert!(bin.exists());

    script("cni-uninstall.sh", prefix, &[]);
    assert!(!bin.exists());
    assert!(!conf.exists());
    let again = script("cni-uninstall.sh", prefix, &[]);
    assert_eq!(stdout(&again), "");
}

#[test]
fn loopback_is_copied_when_absent() {
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();
    let source = prefix.join("loopback-src");
    fs::write(&source, b"#!/bin/sh\n").unwrap();
    script("cni-install.sh", prefix, &[("LOOPBACK_SRC", &source)]);
    let loopback = prefix.join("opt/cni/bin/loopback");
    assert_eq!(fs::read(&loopback).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::metadata(&loopback).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // An existing loopback is left alone.
    fs::write(&loopback, b"mine").unwrap();
    script("cni-install.sh", prefix, &[("LOOPBACK_SRC", &source)]);
    assert_eq!(fs::read(&loopback).unwrap(), b"mine");

    // Uninstall keeps it: other networks use it.
    script("cni-uninstall.sh", prefix, &[]);
    assert!(loopback.exists());
}

#[test]
fn explicit_directories_and_a_missing_binary() {
    let root = tempfile::tempdir().unwrap();
    let bin_dir = root.path().join("bin");
    let conf_dir = root.path().join("conf");
    script(
        "cni-install.sh",
        Path::new("/nonexistent-prefix"),
        &[("CNI_BIN_DIR", &bin_dir), ("CNI_CONF_DIR", &conf_dir)],
    );
    assert!(bin_dir.join("cilium-cni").exists());
    assert!(conf_dir.join("10-cilium.conf").exists());

    let output = Command::new(repo().join("install/cni-install.sh"))
        .env("PREFIX", root.path())
        .env("CILIUM_CNI", root.path().join("missing"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
}
