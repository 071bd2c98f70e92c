//! The REST API on the agent's unix socket: HTTP/1.1 + JSON (hyper on a tokio
//! `UnixListener`). The socket is created with mode 0660 and swapped into place atomically; a
//! stale socket file is replaced; a second agent on a live socket refuses to start.

pub mod handlers;
pub mod routes;
pub mod stream;

use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::daemon::Agent;
use crate::state::lock_exclusive;

/// Longest path a unix socket address can hold (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Mode of the API socket: root and the socket's group only.
pub const SOCKET_MODE: u32 = 0o660;
/// Group given the API socket when it exists, so its members may use the CLI without root.
pub const SOCKET_GROUP: &str = "cilium";

/// Gives `path` the group `group` if such a group exists; `Ok(None)` when it does not.
pub fn chgrp_if_exists(path: &Path, group: &str) -> io::Result<Option<u32>> {
    let found = nix::unistd::Group::from_name(group).map_err(io::Error::from)?;
    let Some(group) = found else {
        return Ok(None);
    };
    std::os::unix::fs::chown(path, None, Some(group.gid.as_raw()))?;
    Ok(Some(group.gid.as_raw()))
}

/// Errors of setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another cilium-agent is already serving {} (lock {} is held); stop it first or pass \
         another --socket-path",
        path.display(),
        lock.display()
    )]
    AgentRunning { path: PathBuf, lock: PathBuf },
    #[error(
        "{} is live: another process accepts connections on it; stop it or pass another \
         --socket-path",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("refusing to replace {}: it exists and is not a socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("socket path {} is {len} bytes long; at most {MAX_SOCKET_PATH} fit", path.display())]
    TooLong { path: PathBuf, len: usize },
}

/// The bound API socket. Removes the socket file when dropped.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    _lock: File,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        // The lock guarantees the file at this path is ours.
        let _ = fs::remove_file(&self.path);
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl ApiSocket {
    /// Binds the API socket. Must run inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<ApiSocket, SocketError> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SocketError::TooLong {
                path: path.to_path_buf(),
                len,
            });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(io_err("create socket directory", &dir))?;

        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".lock");
        let lock_path = PathBuf::from(lock_name);
        let lock = match lock_exclusive(&lock_path).map_err(io_err("lock", &lock_path))? {
            Some(file) => file,
            None => {
                return Err(SocketError::AgentRunning {
                    path: path.to_path_buf(),
                    lock: lock_path,
                });
            }
        };

        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(SocketError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                tracing::info!(path = %path.display(), "replacing stale socket");
            }
            Ok(_) => {
                return Err(SocketError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", path)(e)),
        }

        // Bind under a temporary name, set the mode, then rename over the final path: the
        // socket never exists at its final path with another mode, and a stale file is
        // replaced atomically.
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.{}", std::process::id()));
        let staging = if tmp.as_os_str().len() <= MAX_SOCKET_PATH {
            tmp
        } else {
            path.to_path_buf()
        };
        let _ = fs::remove_file(&staging);
        let std_listener =
            std::os::unix::net::UnixListener::bind(&staging).map_err(io_err("bind", &staging))?;
        let placed = fs::set_permissions(&staging, fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io_err("set mode of", &staging))
            .and_then(|()| {
                chgrp_if_exists(&staging, SOCKET_GROUP)
                    .map(drop)
                    .map_err(io_err("give the cilium group", &staging))
            })
            .and_then(|()| {
                if staging == path {
                    Ok(())
                } else {
                    fs::rename(&staging, path).map_err(io_err("move socket into place at", path))
                }
            });
        if let Err(e) = placed {
            let _ = fs::remove_file(&staging);
            return Err(e);
        }
        std_listener
            .set_nonblocking(true)
            .map_err(io_err("configure", path))?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err("register", path))?;
        Ok(ApiSocket {
            listener,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the API until `shutdown` completes, then removes the socket.
    pub async fn serve(self, agent: Arc<Agent>, shutdown: impl Future<Output = ()>) {
        let handle = move |request| {
            let agent = Arc::clone(&agent);
            async move {
                match handlers::handle(agent, request).await {
                    Ok(reply) => reply,
                    Err(never) => match never {},
                }
            }
        };
        cilium_api::server::serve(&self.listener, "API socket", handle, shutdown).await;
    }
}

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
