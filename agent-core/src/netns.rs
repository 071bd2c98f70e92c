//! Network namespaces: opening one by path, and running a short piece of work inside one on
//! a dedicated thread. The thread enters through a `!Send` guard that restores the original
//! namespace when dropped, so no early return can leave a thread in the wrong namespace, and
//! tokio's worker threads never switch namespaces at all.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: io::Error },
    #[error("the thread working in network namespace {path} failed")]
    Thread { path: PathBuf },
}

/// An open network namespace, named by the path it came from.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/x` or `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                NetnsError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                NetnsError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let netns = Netns {
            file,
            path: path.to_path_buf(),
        };
        netns.check_is_netns()?;
        Ok(netns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// A bind-mounted namespace is a nsfs inode; a plain file or directory left behind after
    /// `ip netns delete` is not, and setns would fail on it with a less helpful error.
    fn check_is_netns(&self) -> Result<(), NetnsError> {
        const NSFS_MAGIC: i64 = 0x6e73_6673;
        // SAFETY: fstatfs writes into the zeroed struct; the descriptor is open.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::fstatfs(self.file.as_raw_fd(), &mut st) };
        if rc == 0 && st.f_type as i64 != NSFS_MAGIC {
            return Err(NetnsError::NotNetns {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Runs `work` on a new thread that has entered this namespace, and returns its result.
    /// Sockets created by `work` stay bound to this namespace after it returns.
    pub fn run<T, F>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                let _guard = NetnsGuard::enter(self)?;
                Ok(work())
            });
            handle.join().map_err(|_| NetnsError::Thread {
                path: self.path.clone(),
            })?
        })
    }
}

/// While alive, the current thread is inside another network namespace. Not `Send`: it must
/// be dropped on the thread that entered.
#[derive(Debug)]
struct NetnsGuard {
    original: File,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    fn enter(target: &Netns) -> Result<NetnsGuard, NetnsError> {
        let enter_err = |source| NetnsError::Enter {
            path: target.path.clone(),
            source,
        };
        let original = File::open("/proc/thread-self/ns/net").map_err(enter_err)?;
        setns(&target.file).map_err(enter_err)?;
        Ok(NetnsGuard {
            original,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original) {
            // The thread is a dedicated one that ends right after; nothing else runs on it.
            tracing::error!("cannot return to the original network namespace: {e}");
        }
    }
}

fn setns(ns: &File) -> io::Result<()> {
    // SAFETY: setns(2) on an open namespace descriptor affects only the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_non_namespace_paths_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = Netns::open(&missing).unwrap_err();
        assert!(matches!(e, NetnsError::Missing { .. }));
        assert!(e.to_string().contains("nope"), "{e}");

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let e = Netns::open(&plain).unwrap_err();
        assert!(matches!(e, NetnsError::NotNetns { .. }), "{e}");
    }

    #[test]
    fn own_namespace_opens_and_runs_work() {
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        // Entering the namespace we are already in needs CAP_SYS_ADMIN; without it the error
        // must name the namespace.
        match ns.run(|| 42) {
            Ok(v) => assert_eq!(v, 42),
            Err(e) => assert!(e.to_string().contains("/proc/self/ns/net"), "{e}"),
        }
    }
}
