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
        .env_remove("PURGE")
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

    // Uninstall keeps a config that differs from ours: the user wrote or changed it.
    let removed = script("cni-uninstall.sh", prefix, &[]);
    assert!(!bin.exists());
    assert_eq!(fs::read(&conf).unwrap(), custom);
    assert!(
        stdout(&removed).contains(&format!("Kept {}", conf.display())),
        "{}",
        stdout(&removed)
    );
    // PURGE=1 removes it too.
    let purged = script("cni-uninstall.sh", prefix, &[("PURGE", Path::new("1"))]);
    assert!(!conf.exists());
    assert_eq!(stdout(&purged), format!("Removed {}\n", conf.display()));
    let again = script("cni-uninstall.sh", prefix, &[]);
    assert_eq!(stdout(&again), "");
}

#[test]
fn install_twice_keeps_a_modified_config() {
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();
    let bin = prefix.join("opt/cni/bin/cilium-cni");
    let conf = prefix.join("etc/cni/net.d/10-cilium.conf");
    script("cni-install.sh", prefix, &[]);

    let custom = br#"{"cniVersion":"1.0.0","name":"cilium","type":"cilium-cni","mtu":9000}"#;
    fs::write(&conf, custom).unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
    for _ in 0..2 {
        // A stale binary is replaced each time; the config is not touched.
        fs::write(&bin, b"old").unwrap();
        let out = script("cni-install.sh", prefix, &[]);
        assert!(
            stdout(&out).contains(&format!("Using existing {}", conf.display())),
            "{}",
            stdout(&out)
        );
        assert_eq!(fs::read(&conf).unwrap(), custom);
        assert_eq!(
            fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&bin).unwrap(), fs::read(BIN).unwrap());
    }
}

#[test]
fn uninstall_removes_our_unchanged_config() {
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();
    let conf = prefix.join("etc/cni/net.d/10-cilium.conf");
    script("cni-install.sh", prefix, &[]);
    let out = script("cni-uninstall.sh", prefix, &[]);
    assert!(!conf.exists());
    assert!(!prefix.join("opt/cni/bin/cilium-cni").exists());
    assert_eq!(
        stdout(&out),
        format!(
            "Removed {}\nRemoved {}\n",
            prefix.join("opt/cni/bin/cilium-cni").display(),
            conf.display()
        )
    );
}

#[test]
fn empty_loopback_source_installs_none() {
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();
    script("cni-install.sh", prefix, &[("LOOPBACK_SRC", Path::new(""))]);
    assert!(prefix.join("opt/cni/bin/cilium-cni").exists());
    assert!(!prefix.join("opt/cni/bin/loopback").exists());
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
