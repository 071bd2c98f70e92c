//! Loading the embedded programs with their maps pinned under `<bpf-root>/tc/globals`, and
//! attaching them to endpoint devices as tc `cls_bpf` filters (direct action) on a `clsact`
//! qdisc. A filter holds the program, so programs and maps keep working while the agent is
//! stopped, and a restarted agent replaces the program of each filter in place without a
//! moment of no enforcement. (See `link::tc` for why not TCX links.)

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya::maps::{Map, MapInfo, MapType};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};

use super::abi;
use super::DatapathError;
use crate::link::rtnl::Rtnl;
use crate::link::tc::Hook;

/// The object compiled from `bpf-programs/datapath.c` by the build script.
static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

/// The two programs and where each is attached on the host-side device of an endpoint.
pub const PROGRAMS: [(&str, Hook); 2] = [
    ("from_container", Hook::Ingress),
    ("to_container", Hook::Egress),
];

/// The program of the overlay device (`cilium_vxlan`/`cilium_geneve`), on its ingress.
pub const OVERLAY_PROGRAM: (&str, Hook) = ("from_overlay", Hook::Ingress);

/// Type, key and value sizes of every map, to recognise pins left by an incompatible build.
const MAP_LAYOUT: &[(&str, MapType, usize, usize)] = {
    use std::mem::size_of;
    &[
        (
            "cilium_lxc",
            MapType::Hash,
            size_of::<abi::EndpointKey>(),
            size_of::<abi::EndpointInfo>(),
        ),
        (
            "cilium_ipcache",
            MapType::LpmTrie,
            4 + size_of::<abi::IpcacheAddr>(),
            size_of::<abi::IpcacheValue>(),
        ),
        (
            "cilium_policy",
            MapType::Hash,
            size_of::<abi::PolicyKey>(),
            size_of::<abi::PolicyValue>(),
        ),
        (
            "cilium_ct4",
            MapType::LruHash,
            size_of::<abi::Ct4Key>(),
            size_of::<abi::CtEntry>(),
        ),
        (
            "cilium_ct6",
            MapType::LruHash,
            size_of::<abi::Ct6Key>(),
            size_of::<abi::CtEntry>(),
        ),
        (
            "cilium_lb_svc",
            MapType::Hash,
            size_of::<abi::LbSvcKey>(),
            size_of::<abi::LbSvcValue>(),
        ),
        (
            "cilium_lb_slots",
            MapType::Hash,
            size_of::<abi::LbSlotKey>(),
            4,
        ),
        (
            "cilium_lb_backends",
            MapType::Hash,
            4,
            size_of::<abi::LbBackend>(),
        ),
        (
            "cilium_tunnel",
            MapType::LpmTrie,
            4 + size_of::<abi::IpcacheAddr>(),
            4,
        ),
        (
            "cilium_lb_revnat",
            MapType::Hash,
            2,
            size_of::<abi::LbBackend>(),
        ),
        (
            "cilium_lb_sock",
            MapType::LruHash,
            32,
            size_of::<abi::LbBackend>(),
        ),
        ("cilium_frag4", MapType::LruHash, 12, 4),
        ("cilium_frag6", MapType::LruHash, 40, 4),
        (
            "cilium_metrics",
            MapType::PerCpuArray,
            4,
            size_of::<abi::MetricsValue>(),
        ),
        (
            "cilium_config",
            MapType::Array,
            4,
            size_of::<abi::ConfigValue>(),
        ),
        ("cilium_events", MapType::RingBuf, 0, 0),
    ]
};

/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `root` is a BPF filesystem, mounting one there when it is not.
pub fn ensure_bpffs(root: &Path) -> Result<(), DatapathError> {
    let err = |reason: String| DatapathError::Bpffs {
        path: root.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(root).map_err(|e| err(format!("cannot create it: {e}")))?;
    if is_bpffs(root).map_err(|e| err(e.to_string()))? {
        return Ok(());
    }
    nix_mount(root).map_err(|e| {
        err(format!(
            "it is not a bpffs and mounting one failed ({e}); mount it with \
             `mount -t bpf bpffs {}`",
            root.display()
        ))
    })?;
    tracing::info!(path = %root.display(), "mounted a BPF filesystem");
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn nix_mount(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: every argument is a valid NUL-terminated string or null.
    // mode=700: the kernel's default (1777) lets anyone create entries next to the pins.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes pinned maps whose type, key or value size differs from this build's (a datapath
/// upgrade with a new layout): they are recreated empty. Returns what it removed.
fn drop_incompatible_pins(globals: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for (name, kind, key, value) in MAP_LAYOUT {
        let path = globals.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        let found = info.map_type().ok();
        if found != Some(*kind)
            || (*key != 0
                && (info.key_size() as usize != *key || info.value_size() as usize != *value))
        {
            tracing::warn!(
                map = name,
                "pinned map has another layout (type {found:?} key {} value {}, expected {kind:?} {key} {value}); recreating it",
                info.key_size(),
                info.value_size()
            );
            if std::fs::remove_file(&path).is_ok() {
                removed.push((*name).to_string());
            }
        }
    }
    removed
}

/// Makes `dir` (and its parents up to `root`) a directory of this user that nobody else can
/// write to: pins in a directory another user controls could be swapped or removed.
fn private_dir(root: &Path, dir: &Path) -> Result<(), DatapathError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let err = |path: &Path, reason: String| DatapathError::Bpffs {
        path: path.display().to_string(),
        reason,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(dir, format!("cannot create it: {e}")))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut path = dir.to_path_buf();
    while path.starts_with(root) && path != root {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e.to_string()))?;
        if !meta.is_dir() || meta.uid() != me {
            return Err(err(
                &path,
                format!(
                    "it is not a directory owned by uid {me} (owner {}); remove it and restart",
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o022 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(&path, format!("cannot make it private: {e}")))?;
        }
        if !path.pop() {
            break;
        }
    }
    Ok(())
}

/// Loads the programs, creating or reusing the pinned maps.
pub fn load(globals: &Path) -> Result<Ebpf, DatapathError> {
    let root = globals
        .parent()
        .and_then(Path::parent)
        .unwrap_or(globals)
        .to_path_buf();
    private_dir(&root, globals)?;
    drop_incompatible_pins(globals);
    // The socket programs act only in this namespace (0: they act nowhere).
    let cookie = super::sock::netns_cookie().unwrap_or_else(|e| {
        tracing::warn!("cannot read the network namespace cookie: {e}");
        0
    });
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(globals)
        .override_global("NODE_NETNS_COOKIE", &cookie, true)
        .load(DATAPATH_OBJECT)
        .map_err(|e| DatapathError::Load(e.to_string()))?;
    for (name, _) in PROGRAMS.into_iter().chain([OVERLAY_PROGRAM]) {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Load(format!("the object has no program {name}")))?
            .try_into()
            .map_err(|e| DatapathError::Load(format!("{name}: {e}")))?;
        // The error of a failed load carries the verifier log.
        program
            .load()
            .map_err(|e| DatapathError::Load(format!("{name}: {e}")))?;
    }
    Ok(ebpf)
}

/// Takes a map out of the loaded object.
pub fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::Map {
        map: name,
        reason: "missing from the object".into(),
    })
}

/// Runs both programs on `ifname` (index `ifindex`): ingress first, then egress; an
/// existing filter of the agent gets this build's program atomically.
pub fn attach(ebpf: &mut Ebpf, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
    attach_programs(ebpf, ifname, ifindex, &PROGRAMS)
}

/// Runs `from_overlay` on the overlay device's ingress (replacing an earlier build's).
pub fn attach_overlay(ebpf: &mut Ebpf, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
    attach_programs(ebpf, ifname, ifindex, &[OVERLAY_PROGRAM])
}

fn attach_programs(
    ebpf: &mut Ebpf,
    ifname: &str,
    ifindex: u32,
    programs: &[(&'static str, Hook)],
) -> Result<(), DatapathError> {
    let fail = |program: &'static str, reason: String| DatapathError::Attach {
        program,
        device: ifname.to_string(),
        reason,
    };
    let mut rtnl = Rtnl::node().map_err(|e| fail("from_container", e.to_string()))?;
    rtnl.ensure_clsact(ifindex, ifname)
        .map_err(|e| fail("from_container", e.to_string()))?;
    for &(name, hook) in programs {
        let program: &SchedClassifier = ebpf
            .program(name)
            .ok_or_else(|| fail(name, "not loaded".into()))?
            .try_into()
            .map_err(|e| fail(name, format!("{e}")))?;
        let fd = program.fd().map_err(|e| fail(name, format!("{e}")))?;
        rtnl.attach_bpf(ifindex, ifname, hook, fd.as_fd(), name)
            .map_err(|e| fail(name, e.to_string()))?;
    }
    Ok(())
}

/// Takes both programs off a device (its clsact qdisc goes with its filters).
pub fn detach(ifname: &str, ifindex: u32) {
    let removed = Rtnl::node().and_then(|mut rtnl| rtnl.remove_clsact(ifindex, ifname));
    if let Err(e) = removed {
        tracing::warn!(device = ifname, "cannot remove the datapath filters: {e}");
    }
}

/// The programs attached to a device, by hook (empty when none).
pub fn attached(ifname: &str, ifindex: u32) -> Vec<(Hook, String)> {
    let Ok(mut rtnl) = Rtnl::node() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (_, hook) in PROGRAMS {
        for name in rtnl.bpf_filters(ifindex, ifname, hook).unwrap_or_default() {
            out.push((hook, name));
        }
    }
    out
}

/// Removes the TCX link pins of earlier builds (`<bpf-root>/cilium/links`): a device with
/// both a link and a filter would run the programs twice.
pub fn remove_legacy_links(root: &Path) -> usize {
    let dir = root.join("cilium/links");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let removed = entries
        .flatten()
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count();
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(root.join("cilium"));
    removed
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn pin_directories_are_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("bpf");
        let tc = root.join("tc");
        std::fs::create_dir_all(&tc).unwrap();
        // Left writable for everyone, as under a default bpffs mount.
        std::fs::set_permissions(&tc, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let globals = tc.join("globals");
        private_dir(&root, &globals).unwrap();
        for dir in [&tc, &globals] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o022, 0, "{}: {mode:o}", dir.display());
        }
        // A file where the directory should be is refused with the reason.
        let bad_root = tmp.path().join("bad");
        std::fs::create_dir_all(&bad_root).unwrap();
        std::fs::write(bad_root.join("tc"), b"").unwrap();
        let err = private_dir(&bad_root, &bad_root.join("tc/globals")).unwrap_err();
        assert!(err.to_string().contains("cannot create it"), "{err}");
    }
}
