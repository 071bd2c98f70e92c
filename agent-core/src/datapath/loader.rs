//! Loading the embedded programs with their maps pinned under `<bpf-root>/tc/globals`, and
//! attaching them to endpoint devices with TCX links pinned under `<bpf-root>/cilium/links`,
//! so that programs and maps keep working while the agent is stopped and a restarted agent
//! swaps programs in place (`BPF_LINK_UPDATE`) without a moment of no enforcement.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapInfo};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use super::abi;
use super::DatapathError;

/// The object compiled from `bpf-programs/datapath.c` by the build script.
static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

/// The two programs and where each is attached on the host-side device of an endpoint.
pub const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("from_container", TcAttachType::Ingress, "ingress"),
    ("to_container", TcAttachType::Egress, "egress"),
];

/// Key and value sizes of every map, to recognise pins left by an incompatible build.
const MAP_LAYOUT: &[(&str, usize, usize)] = {
    use std::mem::size_of;
    &[
        (
            "cilium_lxc",
            size_of::<abi::EndpointKey>(),
            size_of::<abi::EndpointInfo>(),
        ),
        (
            "cilium_ipcache",
            4 + size_of::<abi::IpcacheAddr>(),
            size_of::<abi::IpcacheValue>(),
        ),
        (
            "cilium_policy",
            size_of::<abi::PolicyKey>(),
            size_of::<abi::PolicyValue>(),
        ),
        (
            "cilium_ct4",
            size_of::<abi::Ct4Key>(),
            size_of::<abi::CtEntry>(),
        ),
        (
            "cilium_ct6",
            size_of::<abi::Ct6Key>(),
            size_of::<abi::CtEntry>(),
        ),
        ("cilium_frag4", 12, 4),
        ("cilium_frag6", 40, 4),
        ("cilium_metrics", 4, size_of::<abi::MetricsValue>()),
        ("cilium_config", 4, size_of::<abi::ConfigValue>()),
        ("cilium_events", 0, 0),
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
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes pinned maps whose key or value size differs from this build's (a datapath
/// upgrade with a new layout): they are recreated empty. Returns what it removed.
fn drop_incompatible_pins(globals: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for (name, key, value) in MAP_LAYOUT {
        if *key == 0 {
            continue;
        }
        let path = globals.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        if info.key_size() as usize != *key || info.value_size() as usize != *value {
            tracing::warn!(
                map = name,
                "pinned map has another layout (key {} value {}, expected {key} {value}); recreating it",
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

/// Loads the programs, creating or reusing the pinned maps.
pub fn load(globals: &Path) -> Result<Ebpf, DatapathError> {
    std::fs::create_dir_all(globals).map_err(|e| DatapathError::Bpffs {
        path: globals.display().to_string(),
        reason: format!("cannot create it: {e}"),
    })?;
    drop_incompatible_pins(globals);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(globals)
        .load(DATAPATH_OBJECT)
        .map_err(|e| DatapathError::Load(e.to_string()))?;
    for (name, _, _) in PROGRAMS {
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

/// Where the link of `program` on device `ifname` (index `ifindex`) is pinned. The index
/// is part of the name so that a new device reusing the name never inherits a stale link.
/// (bpffs refuses names with a dot.)
pub fn link_pin(links: &Path, ifname: &str, ifindex: u32, suffix: &str) -> PathBuf {
    links.join(format!("{ifname}-{ifindex}_{suffix}"))
}

/// Attaches both programs to `ifname`, or swaps the programs of its existing pinned links.
pub fn attach(
    ebpf: &mut Ebpf,
    links: &Path,
    ifname: &str,
    ifindex: u32,
) -> Result<(), DatapathError> {
    for (name, kind, suffix) in PROGRAMS {
        let fail = |reason: String| DatapathError::Attach {
            program: name,
            device: ifname.to_string(),
            reason,
        };
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| fail("not loaded".into()))?
            .try_into()
            .map_err(|e| fail(format!("{e}")))?;
        let pin = link_pin(links, ifname, ifindex, suffix);
        let existing = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).ok());
        let id = match existing {
            // An atomic swap: the device is never without a program.
            Some(link) => program
                .attach_to_link(link)
                .map_err(|e| fail(format!("cannot update the pinned link: {e}")))?,
            None => {
                let id = program
                    .attach_with_options(
                        ifname,
                        kind,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| fail(format!("{e}")))?;
                let link = program.take_link(id).map_err(|e| fail(format!("{e}")))?;
                let fd: FdLink = link.try_into().map_err(|e| fail(format!("{e}")))?;
                // Dropping the pinned link closes our descriptor; the pin keeps it attached.
                let _ = std::fs::remove_file(&pin);
                fd.pin(&pin)
                    .map_err(|e| fail(format!("cannot pin the link at {}: {e}", pin.display())))?;
                continue;
            }
        };
        // The link stays pinned; release our handle on it.
        drop(program.take_link(id));
    }
    Ok(())
}

/// Removes the pinned links of a device: with the device gone or not, the programs are
/// detached once the last reference goes.
pub fn detach(links: &Path, ifname: &str, ifindex: u32) {
    for (_, _, suffix) in PROGRAMS {
        let pin = link_pin(links, ifname, ifindex, suffix);
        if let Err(e) = std::fs::remove_file(&pin) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(pin = %pin.display(), "cannot remove a link pin: {e}");
            }
        }
    }
}

/// Removes pinned links of devices that are not in `keep` (ifname-ifindex names).
pub fn prune_links(links: &Path, keep: &dyn Fn(&str, u32) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(links) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((stem, _)) = name.rsplit_once('_') else {
            continue;
        };
        let Some((ifname, index)) = stem.rsplit_once('-') else {
            continue;
        };
        let index = index.parse().unwrap_or(0);
        if !keep(ifname, index) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}
