//! Services for the node's own processes: the cgroup socket programs of
//! `bpf-programs/include/sock.h` attached to the cgroup v2 root, each as a BPF link pinned
//! under `<bpf-root>/cilium/sock/`, so they keep translating while the agent is down. A
//! restarted agent attaches its programs, then moves the new pins over the old ones, which
//! detaches the previous programs (both translate the same way meanwhile: the second one
//! finds a backend where the first left it, which is no frontend).
//!
//! The programs act only on sockets of the agent's network namespace: its cookie is set in
//! the object before loading.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::CgroupSockAddr;
use aya::Ebpf;

/// The socket programs, in the object.
pub const PROGRAMS: [&str; 6] = [
    "sock4_connect",
    "sock6_connect",
    "sock4_sendmsg",
    "sock6_sendmsg",
    "sock4_recvmsg",
    "sock6_recvmsg",
];

/// `SO_NETNS_COOKIE` (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace.
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: a plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writing; `fd` is open.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy is mounted, from a `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        // Mount points escape spaces and the like as octal (`\040`).
        let point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(point)))
    })
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 root: the existing mount, or one made at `/run/cilium/cgroupv2`.
pub(super) fn cgroup2_root() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    if let Some(path) = cgroup2_mount(&mountinfo) {
        return Ok(path);
    }
    let path = PathBuf::from("/run/cilium/cgroupv2");
    std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "no cgroup v2 hierarchy is mounted and mounting one at {} failed: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(path)
}

/// Loads the socket programs and attaches them to the cgroup v2 root, replacing those of an
/// earlier run. Returns the cgroup root; an error says why the node's processes do not get
/// services (the containers' datapath does not depend on this).
pub fn attach(ebpf: &mut Ebpf, bpf_root: &Path) -> Result<PathBuf, String> {
    let root = cgroup2_root()?;
    let cgroup = File::open(&root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    let pins = bpf_root.join("cilium/sock");
    std::fs::create_dir_all(&pins).map_err(|e| format!("cannot create {}: {e}", pins.display()))?;
    for name in PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("the object has no program {name}"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        program.load().map_err(|e| format!("{name}: {e}"))?;
        // A BPF link: always attached beside others (the kernel refuses the multi flag on
        // link creation, which `Single` leaves out).
        let id = program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| format!("attaching {name} to {}: {e:?}", root.display()))?;
        let link = FdLink::try_from(program.take_link(id).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{name}: {e}"))?;
        let pin = pins.join(name);
        // bpffs refuses dots in names.
        let staged = pins.join(format!("{name}_new"));
        let _ = std::fs::remove_file(&staged);
        link.pin(&staged)
            .map_err(|e| format!("pinning {name} at {}: {e:?}", staged.display()))?;
        // The earlier program's link loses its pin and detaches.
        std::fs::rename(&staged, &pin).map_err(|e| format!("pinning {name}: {e}"))?;
    }
    Ok(root)
}

/// Detaches the socket programs (their pins go).
pub fn detach(bpf_root: &Path) {
    let _ = std::fs::remove_dir_all(bpf_root.join("cilium/sock"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let spaced = "30 23 0:26 / /run/my\\040cgroup rw - cgroup2 none rw";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/run/my cgroup")));
        assert_eq!(cgroup2_mount("30 23 0:26 / /sys rw - sysfs sysfs rw"), None);
    }

    #[test]
    fn netns_cookie_is_stable() {
        let a = netns_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(netns_cookie().unwrap(), a);
    }
}
