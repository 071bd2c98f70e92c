//! A container image built locally, without a registry: an OCI image layout with one
//! uncompressed layer holding a static busybox and a symlink per applet, packed into the tar
//! that `ctr images import` reads.
//!
//! Built with the `tar` and `sha256sum` commands. The index entry carries both names a
//! runtime looks for: `io.containerd.image.name` (the full reference containerd uses as is)
//! and `org.opencontainers.image.ref.name` (the tag, for tools that read only the OCI name).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// Where the static busybox comes from (Debian: `busybox-static`).
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// The reference the imported image is known by.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/cilium-busybox:latest";

const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The OCI name of the architecture this runs on (what the runtime's platform matcher wants).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Tars `entries` of `dir` into `out`: root-owned, sorted names, fixed times, so the same
/// input always gives the same digest.
fn reproducible_tar(dir: &Path, out: &Path, entries: &[&str]) {
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(entries));
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `sha256:<hex>` of a file.
pub fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    let text = String::from_utf8_lossy(&out);
    let hex = text.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "sha256sum printed {text:?}");
    format!("sha256:{hex}")
}

/// Stores `path` as a blob of the layout under `oci`, returns its descriptor.
fn add_blob(oci: &Path, path: &Path, media_type: &str) -> Value {
    let digest = sha256_file(path);
    let size = std::fs::metadata(path).expect("blob size").len();
    let hex = digest.trim_start_matches("sha256:");
    let dest = oci.join("blobs/sha256").join(hex);
    std::fs::rename(path, &dest).unwrap_or_else(|e| panic!("move blob {}: {e}", path.display()));
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

fn write_blob(oci: &Path, scratch: &Path, name: &str, content: &Value, media_type: &str) -> Value {
    let path = scratch.join(name);
    std::fs::write(&path, serde_json::to_vec(content).expect("json")).expect("write blob");
    add_blob(oci, &path, media_type)
}

/// The applets the installed busybox provides.
pub fn busybox_applets() -> Vec<String> {
    let out = run(Command::new(BUSYBOX).arg("--list"));
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "busybox" && !n.contains('/'))
        .map(str::to_string)
        .collect()
}

/// Lays out the root filesystem under `rootfs`: `/bin/busybox`, a symlink per applet,
/// `/sbin` and `/usr/{bin,sbin}` pointing at `/bin`, the usual empty mount points and a
/// minimal `/etc`.
fn busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    for applet in busybox_applets() {
        std::os::unix::fs::symlink("busybox", bin.join(&applet))
            .unwrap_or_else(|e| panic!("symlink {applet}: {e}"));
    }
    std::fs::create_dir_all(rootfs.join("usr")).expect("rootfs/usr");
    std::os::unix::fs::symlink("bin", rootfs.join("sbin")).expect("sbin");
    std::os::unix::fs::symlink("../bin", rootfs.join("usr/bin")).expect("usr/bin");
    std::os::unix::fs::symlink("../bin", rootfs.join("usr/sbin")).expect("usr/sbin");
    for dir in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "var/tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("rootfs dir");
    }
    let etc = rootfs.join("etc");
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(etc.join("group"), "root:x:0:\n").expect("group");
    std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n").expect("hosts");
    std::fs::write(etc.join("resolv.conf"), "").expect("resolv.conf");
}

/// Builds the busybox image in `dir` and returns the path of an OCI archive for
/// `ctr images import` (it names itself [`BUSYBOX_IMAGE`]).
pub fn busybox_oci_tar(dir: &Path) -> PathBuf {
    let scratch = dir.join("image-build");
    let rootfs = scratch.join("rootfs");
    let oci = scratch.join("oci");
    std::fs::create_dir_all(&rootfs).expect("rootfs dir");
    std::fs::create_dir_all(oci.join("blobs/sha256")).expect("blobs dir");
    busybox_rootfs(&rootfs);

    // The layer: uncompressed, root-owned, reproducible (sorted names, fixed times).
    let layer_path = scratch.join("layer.tar");
    reproducible_tar(&rootfs, &layer_path, &["."]);
    // Uncompressed, so the diff id (digest of the uncompressed layer) is the blob digest.
    let layer = add_blob(&oci, &layer_path, MEDIA_LAYER);
    let diff_id = layer["digest"].clone();

    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "integration::image"}],
    });
    let config = write_blob(&oci, &scratch, "config.json", &config, MEDIA_CONFIG);

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config,
        "layers": [layer],
    });
    let mut manifest = write_blob(&oci, &scratch, "manifest.json", &manifest, MEDIA_MANIFEST);
    let tag = BUSYBOX_IMAGE.rsplit_once(':').map_or("latest", |(_, t)| t);
    manifest["platform"] = json!({"architecture": oci_arch(), "os": "linux"});
    manifest["annotations"] = json!({
        "io.containerd.image.name": BUSYBOX_IMAGE,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [manifest],
    });
    std::fs::write(
        oci.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");

    let archive = dir.join("cilium-busybox.oci.tar");
    reproducible_tar(&oci, &archive, &["oci-layout", "index.json", "blobs"]);
    // The archive holds everything; the build tree is no longer needed.
    let _ = std::fs::remove_dir_all(&scratch);
    archive
}
