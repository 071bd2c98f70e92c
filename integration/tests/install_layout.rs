//! `make install` / `make uninstall` into a temporary `DESTDIR`: the documented layout exactly
//! (files, modes, contents, `ExecStart=` paths under `PREFIX/bin`), a reinstall that keeps a
//! user's `10-cilium.conf`, an uninstall that leaves only what it should, and every installed
//! unit accepted by `systemd-analyze verify`.
//!
//! Installs the debug build (`PROFILE=debug`) of this target directory: run
//! `cargo build --workspace --bins` first (`make test` does). Nothing outside the temporary
//! directory is written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration::{bin, test_dir};

/// The commands `make install` puts into `PREFIX/bin`.
const COMMANDS: [&str; 3] = ["cilium-agent", "cilium", "cilium-docker"];
/// The units of `conf/systemd/`.
const UNITS: [&str; 3] = [
    "cilium-bpffs.service",
    "cilium.service",
    "cilium-docker.service",
];
/// The CNI config of the contract (DESIGN §3).
const CNI_CONF: &str = r#"{"cniVersion":"1.0.0","name":"cilium","type":"cilium-cni","mtu":1450}"#;
const LOOPBACK: &[u8] = b"#!/bin/sh\n# stand-in loopback plugin\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// `TARGET_DIR` and `PROFILE` of the binaries this test run was built with.
fn build_location() -> (PathBuf, String) {
    let agent = bin("cilium-agent");
    for name in ["cilium", "cilium-docker", "cilium-cni"] {
        bin(name);
    }
    let profile_dir = agent.parent().expect("profile directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile name")
        .to_string();
    let target = profile_dir
        .parent()
        .expect("target directory")
        .to_path_buf();
    (target, profile)
}

/// Runs `make -C <repo> <args>` with an environment that cannot redirect it (no variables
/// of an outer make, none of the install variables).
fn make(args: &[String]) -> Output {
    let mut command = Command::new("make");
    command.arg("--no-print-directory").arg("-C").arg(repo());
    command.args(args);
    for var in [
        "MAKEFLAGS",
        "CARGO",
        "MFLAGS",
        "MAKELEVEL",
        "MAKEOVERRIDES",
        "PREFIX",
        "DESTDIR",
        "PROFILE",
        "TARGET_DIR",
        "CARGO_TARGET_DIR",
        "SYSTEMD_UNIT_DIR",
        "LOOPBACK_SRC",
        "PURGE",
        "CNI_BIN_DIR",
        "CNI_CONF_DIR",
        "CILIUM_CNI",
    ] {
        command.env_remove(var);
    }
    command.output().expect("run make")
}

fn make_ok(args: &[String]) -> String {
    let output = make(args);
    assert!(
        output.status.success(),
        "make {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// What the tests vary; the rest is fixed: this build, `CARGO=false` (install must not build).
struct Install<'a> {
    destdir: &'a Path,
    prefix: Option<&'a str>,
    unit_dir: Option<&'a str>,
    loopback: &'a str,
}

impl Install<'_> {
    fn args(&self, target: &str, extra: &[&str]) -> Vec<String> {
        let (target_dir, profile) = build_location();
        let mut args = vec![
            target.to_string(),
            format!("DESTDIR={}", self.destdir.display()),
            format!("PROFILE={profile}"),
            format!("TARGET_DIR={}", target_dir.display()),
            format!("LOOPBACK_SRC={}", self.loopback),
            "CARGO=false".to_string(),
        ];
        if let Some(prefix) = self.prefix {
            args.push(format!("PREFIX={prefix}"));
        }
        if let Some(dir) = self.unit_dir {
            args.push(format!("SYSTEMD_UNIT_DIR={dir}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn install(&self) -> String {
        make_ok(&self.args("install", &[]))
    }

    fn uninstall(&self, extra: &[&str]) -> String {
        make_ok(&self.args("uninstall", extra))
    }
}

/// Every entry below `root`, by relative path: `d` directory, or `f` file with its mode.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let rel = path
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .into_owned();
            if meta.is_dir() {
                out.insert(rel, "d".to_string());
                walk(root, &path, out);
            } else if meta.is_file() {
                out.insert(rel, format!("f {:o}", meta.permissions().mode() & 0o7777));
            } else {
                out.insert(rel, "other".to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The directories holding `files`, and their parents.
fn dirs_of(files: &[String]) -> BTreeSet<String> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut p = Path::new(f).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    dirs
}

/// `files` (relative path → mode) plus the directories they live in, as `tree` reports them.
fn expected_tree(files: &[(String, u32)], extra_dirs: &[String]) -> BTreeMap<String, String> {
    let names: Vec<String> = files
        .iter()
        .map(|(f, _)| f.clone())
        .chain(extra_dirs.iter().map(|d| format!("{d}/x")))
        .collect();
    let mut out: BTreeMap<String, String> = dirs_of(&names)
        .into_iter()
        .map(|d| (d, "d".to_string()))
        .collect();
    for (f, mode) in files {
        out.insert(f.clone(), format!("f {mode:o}"));
    }
    out
}

fn rel(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_matches('/'))
}

/// The unit as shipped, with `ExecStart=/usr/local/bin/` pointing at `bindir`.
fn expected_unit(name: &str, bindir: &str) -> String {
    let shipped = fs::read_to_string(repo().join("conf/systemd").join(name)).expect("unit");
    shipped
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=/usr/local/bin/") {
            Some(rest) => format!("ExecStart={bindir}/{rest}\n"),
            None => format!("{l}\n"),
        })
        .collect()
}

/// `[Section] Key=value` lines of a unit, in order.
fn directives(unit: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn values(unit: &str, section: &str, key: &str) -> Vec<String> {
    directives(unit)
        .into_iter()
        .filter(|(s, k, _)| s == section && k == key)
        .flat_map(|(_, _, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The dependencies and settings the units promise (see their comments).
fn check_unit_settings(unit_dir: &Path, bindir: &str) {
    let read = |name: &str| fs::read_to_string(unit_dir.join(name)).expect("installed unit");

    let agent = read("cilium.service");
    let v = |key: &str| values(&agent, "Service", key);
    assert_eq!(values(&agent, "Unit", "Requires"), ["cilium-bpffs.service"]);
    let after = values(&agent, "Unit", "After");
    assert!(
        after.contains(&"cilium-bpffs.service".to_string()),
        "{after:?}"
    );
    assert!(
        after.contains(&"network-online.target".to_string()),
        "{after:?}"
    );
    assert_eq!(values(&agent, "Unit", "Wants"), ["network-online.target"]);
    assert_eq!(v("Type"), ["simple"]);
    assert_eq!(v("Restart"), ["on-failure"]);
    assert_eq!(v("KillMode"), ["process"]);
    assert_eq!(v("LimitMEMLOCK"), ["infinity"]);
    assert_eq!(
        v("EnvironmentFile"),
        ["-/etc/default/cilium", "-/etc/sysconfig/cilium"]
    );
    assert_eq!(
        v("ExecStart"),
        [format!("{bindir}/cilium-agent"), "$CILIUM_OPTS".to_string()]
    );
    assert_eq!(values(&agent, "Install", "WantedBy"), ["multi-user.target"]);

    let plugin = read("cilium-docker.service");
    assert_eq!(values(&plugin, "Unit", "Wants"), ["cilium.service"]);
    assert_eq!(values(&plugin, "Unit", "After"), ["cilium.service"]);
    assert_eq!(values(&plugin, "Unit", "Before"), ["docker.service"]);
    // Nothing that would stop the plugin with the agent or tie Docker's fate to the plugin.
    for key in ["Requires", "Requisite", "BindsTo", "PartOf"] {
        assert!(
            values(&plugin, "Unit", key).is_empty(),
            "{key}= in the plugin"
        );
    }
    assert_eq!(
        values(&plugin, "Service", "ExecStart"),
        [
            format!("{bindir}/cilium-docker"),
            "$CILIUM_DOCKER_OPTS".to_string()
        ]
    );
    assert_eq!(values(&plugin, "Service", "Restart"), ["on-failure"]);
    assert_eq!(
        values(&plugin, "Install", "WantedBy"),
        ["multi-user.target"]
    );

    let bpffs = read("cilium-bpffs.service");
    assert_eq!(values(&bpffs, "Service", "Type"), ["oneshot"]);
    assert_eq!(values(&bpffs, "Service", "RemainAfterExit"), ["yes"]);
    let exec = values(&bpffs, "Service", "ExecStart").join(" ");
    assert!(
        exec.contains("mount -t bpf") && exec.contains("/sys/fs/bpf"),
        "{exec}"
    );
    assert!(values(&bpffs, "Service", "ExecStop").is_empty());
    assert_eq!(values(&bpffs, "Install", "WantedBy"), ["multi-user.target"]);
}

/// `systemd-analyze verify` of the installed units. It checks that ExecStart= binaries exist,
/// so it reads copies whose `PREFIX/bin` paths point at the `DESTDIR` copies; everything else
/// is the installed text. Success and no complaint about our units are required.
fn verify_units(destdir: &Path, unit_dir: &Path, bindir: &str, scratch: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "systemd-analyze is missing (Debian package systemd), and CI=true forbids skipping"
            );
        }
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is missing (package systemd)");
        return;
    }
    let dir = scratch.join("verify");
    fs::create_dir_all(&dir).expect("verify dir");
    let staged_bindir = format!("{}{bindir}", destdir.display());
    let mut paths = Vec::new();
    for name in UNITS {
        let text = fs::read_to_string(unit_dir.join(name)).expect("installed unit");
        let text = text.replace(
            &format!("ExecStart={bindir}/"),
            &format!("ExecStart={staged_bindir}/"),
        );
        let path = dir.join(name);
        fs::write(&path, text).expect("write unit copy");
        paths.push(path);
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .current_dir(scratch)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cilium") || l.contains(&*dir.to_string_lossy()))
        .collect();
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        output.status
    );
    if !stderr.trim().is_empty() {
        eprintln!("systemd-analyze verify, about other units of this host:\n{stderr}");
    }
}

#[test]
fn install_reinstall_uninstall_default_layout() {
    let dir = test_dir();
    let destdir = dir.path().join("root");
    let loopback_src = dir.path().join("loopback-src");
    fs::write(&loopback_src, LOOPBACK).unwrap();
    let run = Install {
        destdir: &destdir,
        prefix: None,
        unit_dir: None,
        loopback: loopback_src.to_str().unwrap(),
    };

    let out = run.install();
    let bindir = "/usr/local/bin";
    let unit_dir = "/lib/systemd/system";
    let conf = destdir.join("etc/cni/net.d/10-cilium.conf");
    let mut files: Vec<(String, u32)> = COMMANDS.iter().map(|c| (rel(bindir, c), 0o755)).collect();
    files.push(("opt/cni/bin/cilium-cni".into(), 0o755));
    files.push(("opt/cni/bin/loopback".into(), 0o755));
    files.push(("etc/cni/net.d/10-cilium.conf".into(), 0o644));
    files.extend(UNITS.iter().map(|u| (rel(unit_dir, u), 0o644)));
    assert_eq!(tree(&destdir), expected_tree(&files, &[]), "{out}");

    for c in COMMANDS {
        assert_eq!(
            fs::read(destdir.join(rel(bindir, c))).unwrap(),
            fs::read(bin(c)).unwrap(),
            "{c}"
        );
    }
    assert_eq!(
        fs::read(destdir.join("opt/cni/bin/cilium-cni")).unwrap(),
        fs::read(bin("cilium-cni")).unwrap()
    );
    assert_eq!(
        fs::read(destdir.join("opt/cni/bin/loopback")).unwrap(),
        LOOPBACK
    );
    let conf_text = fs::read(&conf).unwrap();
    assert_eq!(
        conf_text,
        fs::read(repo().join("conf/10-cilium.conf")).unwrap()
    );
    let conf_json: serde_json::Value = serde_json::from_slice(&conf_text).unwrap();
    assert_eq!(
        conf_json,
        serde_json::from_str::<serde_json::Value>(CNI_CONF).unwrap()
    );
    // The default PREFIX is the one the shipped units name: installed as shipped.
    for u in UNITS {
        let installed = fs::read_to_string(destdir.join(rel(unit_dir, u))).unwrap();
        assert_eq!(installed, expected_unit(u, bindir), "{u}");
        assert_eq!(
            installed,
            fs::read_to_string(repo().join("conf/systemd").join(u)).unwrap()
        );
    }
    let installed_units = destdir.join(rel(unit_dir, ""));
    check_unit_settings(&installed_units, bindir);
    verify_units(&destdir, &installed_units, bindir, dir.path());

    // Reinstall over a user's config and an outdated binary: the config stays, the binary
    // is replaced, the layout is the same.
    let custom = br#"{"cniVersion":"0.4.0","name":"mine","type":"cilium-cni","mtu":9000}"#;
    fs::write(&conf, custom).unwrap();
    let agent = destdir.join(rel(bindir, "cilium-agent"));
    fs::write(&agent, b"old").unwrap();
    let out = run.install();
    assert!(
        out.contains(&format!("Using existing {}", conf.display())),
        "{out}"
    );
    assert_eq!(fs::read(&conf).unwrap(), custom);
    assert_eq!(
        fs::read(&agent).unwrap(),
        fs::read(bin("cilium-agent")).unwrap()
    );
    assert_eq!(tree(&destdir), expected_tree(&files, &[]));

    // Uninstall: the changed config and the shared loopback plugin stay, and the directories.
    let all_dirs: Vec<String> = dirs_of(&files.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>())
        .into_iter()
        .collect();
    let kept = [
        ("etc/cni/net.d/10-cilium.conf".to_string(), 0o644),
        ("opt/cni/bin/loopback".to_string(), 0o755),
    ];
    let out = run.uninstall(&[]);
    assert!(out.contains(&format!("Kept {}", conf.display())), "{out}");
    assert_eq!(tree(&destdir), expected_tree(&kept, &all_dirs), "{out}");
    assert_eq!(fs::read(&conf).unwrap(), custom);

    // Again: nothing left to remove, no failure.
    let out = run.uninstall(&[]);
    assert!(!out.contains("Removed"), "{out}");
    assert_eq!(tree(&destdir), expected_tree(&kept, &all_dirs));

    // PURGE=1 removes the changed config too.
    let out = run.uninstall(&["PURGE=1"]);
    assert!(
        out.contains(&format!("Removed {}", conf.display())),
        "{out}"
    );
    assert_eq!(
        tree(&destdir),
        expected_tree(&kept[1..], &all_dirs),
        "{out}"
    );
}

#[test]
fn prefix_and_unit_dir_are_honoured() {
    let dir = test_dir();
    let destdir = dir.path().join("root");
    let prefix = "/opt/cilium";
    let unit_dir = "/etc/systemd/system";
    let run = Install {
        destdir: &destdir,
        prefix: Some(prefix),
        unit_dir: Some(unit_dir),
        // Empty: no loopback plugin.
        loopback: "",
    };

    run.install();
    let bindir = format!("{prefix}/bin");
    let mut files: Vec<(String, u32)> = COMMANDS.iter().map(|c| (rel(&bindir, c), 0o755)).collect();
    files.push(("opt/cni/bin/cilium-cni".into(), 0o755));
    files.push(("etc/cni/net.d/10-cilium.conf".into(), 0o644));
    files.extend(UNITS.iter().map(|u| (rel(unit_dir, u), 0o644)));
    assert_eq!(tree(&destdir), expected_tree(&files, &[]));

    let installed_units = destdir.join(rel(unit_dir, ""));
    for u in UNITS {
        let installed = fs::read_to_string(installed_units.join(u)).unwrap();
        assert_eq!(installed, expected_unit(u, &bindir), "{u}");
        assert!(!installed.contains("ExecStart=/usr/local/"), "{u}");
    }
    check_unit_settings(&installed_units, &bindir);
    verify_units(&destdir, &installed_units, &bindir, dir.path());

    // An unchanged config goes with the rest: only directories remain.
    let out = run.uninstall(&[]);
    assert!(!out.contains("Kept"), "{out}");
    let all_dirs: Vec<String> = dirs_of(&files.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>())
        .into_iter()
        .collect();
    assert_eq!(tree(&destdir), expected_tree(&[], &all_dirs), "{out}");
}

#[test]
fn missing_binaries_name_the_build_command() {
    let dir = test_dir();
    let destdir = dir.path().join("root");
    let empty_target = dir.path().join("target");
    fs::create_dir_all(empty_target.join("release")).unwrap();
    for (profile, flag) in [("release", "--release "), ("debug", "")] {
        let output = make(&[
            "install".to_string(),
            format!("DESTDIR={}", destdir.display()),
            format!("PROFILE={profile}"),
            format!("TARGET_DIR={}", empty_target.display()),
        ]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        for (binary, package) in [
            ("cilium-agent", "agent-core"),
            ("cilium", "agent-core"),
            ("cilium-docker", "cilium-docker"),
            ("cilium-cni", "cilium-cni"),
        ] {
            let line = format!(
                "{}/{profile}/{binary} is missing; build it with: cargo build {flag}-p {package}",
                empty_target.display()
            );
            assert!(stderr.contains(&line), "{line}\nnot in:\n{stderr}");
        }
        // Nothing was installed, nothing was built.
        assert!(!destdir.exists(), "{stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("Compiling"));
        assert_eq!(
            fs::read_dir(&empty_target).unwrap().count(),
            1,
            "cargo ran in {}",
            empty_target.display()
        );
    }
}
