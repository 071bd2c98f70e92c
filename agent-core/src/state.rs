//! The agent's persistent state under `--state-dir`: JSON files written atomically (temp
//! file, fsync, rename, fsync of the directory) and read back at start. A file that does not
//! parse is moved aside and reported, never fatal. The directory is locked for the life of
//! the agent so that two agents never share it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::timestamp;

const LOCK_FILE: &str = "agent.lock";
const IPAM_FILE: &str = "ipam.json";
const POLICY_FILE: &str = "policy.json";
const SERVICES_FILE: &str = "services.json";
const ENDPOINTS_DIR: &str = "endpoints";
/// Endpoints deleted whose links are still being removed (the background half of a DELETE):
/// what a crash in between leaves for the next start to finish.
const TEARDOWN_DIR: &str = "teardown";
const TMP_SUFFIX: &str = ".tmp";

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory {} is in use by another cilium-agent (lock {} is held)",
        dir.display(),
        lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error(
        "state directory {} is writable by everyone (mode {mode:o}): another user could plant \
         state the agent trusts; make it root-only (chmod 700 {})",
        dir.display(),
        dir.display()
    )]
    WorldWritable { dir: PathBuf, mode: u32 },
    #[error("state file {} is corrupt ({reason}); moved it to {}", path.display(), moved_to.display())]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The locked state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    /// Open handles of the state directories, for the fsync after each rename.
    root_handle: File,
    endpoints_handle: File,
    _lock: File,
}

impl StateDir {
    /// Creates the directory (mode 0700) if needed and locks it.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        // An existing directory must not be writable by everyone (a new one is made 0700).
        if let Ok(meta) = fs::metadata(root) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o002 != 0 {
                return Err(StateError::WorldWritable {
                    dir: root.to_path_buf(),
                    mode,
                });
            }
        }
        let endpoints = root.join(ENDPOINTS_DIR);
        for dir in [endpoints.clone(), root.join(TEARDOWN_DIR)] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create state directory", &dir))?;
        }
        let lock_path = root.join(LOCK_FILE);
        let lock = match lock_exclusive(&lock_path).map_err(io_err("lock", &lock_path))? {
            Some(file) => file,
            None => {
                return Err(StateError::Locked {
                    dir: root.to_path_buf(),
                    lock: lock_path,
                });
            }
        };
        let root_handle = File::open(root).map_err(io_err("open", root))?;
        let endpoints_handle = File::open(&endpoints).map_err(io_err("open", &endpoints))?;
        let dir = StateDir {
            root: root.to_path_buf(),
            root_handle,
            endpoints_handle,
            _lock: lock,
        };
        dir.remove_temp_files()?;
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ipam_path(&self) -> PathBuf {
        self.root.join(IPAM_FILE)
    }

    /// The policy repository (rules and revision).
    pub fn policy_path(&self) -> PathBuf {
        self.root.join(POLICY_FILE)
    }

    /// The services (load-balancing frontends and backends).
    pub fn services_path(&self) -> PathBuf {
        self.root.join(SERVICES_FILE)
    }

    pub fn endpoint_path(&self, id: u16) -> PathBuf {
        self.root.join(ENDPOINTS_DIR).join(format!("{id}.json"))
    }

    /// Where a deleted endpoint's record waits until its links are gone; named by endpoint id
    /// and link index, so that an id used again meanwhile cannot take its place.
    pub fn teardown_path(&self, id: u16, link_index: u32) -> PathBuf {
        self.root
            .join(TEARDOWN_DIR)
            .join(format!("{id}-{link_index}.json"))
    }

    /// Moves endpoint `id`'s file out of the endpoints to [`StateDir::teardown_path`]: the
    /// endpoint is gone for the next start, which still finds its links to remove if the
    /// teardown did not finish. `Ok(false)` when the endpoint had no file.
    pub fn begin_teardown(&self, id: u16, link_index: u32) -> Result<bool, StateError> {
        let from = self.endpoint_path(id);
        let to = self.teardown_path(id, link_index);
        match fs::rename(&from, &to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => {
                // The endpoint must go in any case; only the record of the teardown is lost.
                let _ = self.remove(&from);
                Err(io_err("move for teardown", &from)(e))
            }
        }
    }

    /// The records of teardowns that have not finished.
    pub fn teardown_files(&self) -> Result<Vec<PathBuf>, StateError> {
        let dir = self.root.join(TEARDOWN_DIR);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let path = entry.map_err(io_err("read", &dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".json") && !name.starts_with('.') {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Temp files left by a write that was interrupted (the rename never happened, so the
    /// previous version of the file is intact).
    fn remove_temp_files(&self) -> Result<(), StateError> {
        for dir in [
            self.root.clone(),
            self.root.join(ENDPOINTS_DIR),
            self.root.join(TEARDOWN_DIR),
        ] {
            for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
                let path = entry.map_err(io_err("read", &dir))?.path();
                if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                }
            }
        }
        Ok(())
    }

    /// Writes `value` as JSON to `path` (a file of this directory) atomically.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| io_err("serialize", path)(io::Error::other(e)))?;
        let parent = path.parent().unwrap_or(&self.root);
        let dir = if parent == self.root {
            &self.root_handle
        } else {
            &self.endpoints_handle
        };
        write_atomic(path, &bytes, dir)
    }

    /// Like [`StateDir::write_json`], atomic towards a crash of the agent, but not flushed to
    /// disk: for records of kernel state that does not survive a reboot either (the links an
    /// attach is making), where the cost of two fsyncs on every request buys nothing.
    pub fn write_json_unsynced<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| io_err("serialize", path)(io::Error::other(e)))?;
        write_renamed(path, &bytes, None)
    }

    /// Reads a JSON file. `Ok(None)` when it does not exist. A file that cannot be parsed is
    /// moved aside (`<name>.corrupt-<time>`) and reported as [`StateError::Corrupt`].
    pub fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StateError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", path)(e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(self.move_aside(path, e.to_string())),
        }
    }

    /// Moves a file that cannot be used out of the way and returns the error describing it.
    pub fn move_aside(&self, path: &Path, reason: String) -> StateError {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stamp = timestamp::now_compact();
        let moved_to = path.with_file_name(format!("{name}.corrupt-{stamp}"));
        if let Err(source) = fs::rename(path, &moved_to) {
            return StateError::Io {
                op: "move aside corrupt file",
                path: path.to_path_buf(),
                source,
            };
        }
        StateError::Corrupt {
            path: path.to_path_buf(),
            moved_to,
            reason,
        }
    }

    /// Removes a file; a missing file is not an error.
    pub fn remove(&self, path: &Path) -> Result<(), StateError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", path)(e)),
        }
    }

    /// The endpoint files present, by endpoint id. Files with other names are left alone.
    pub fn endpoint_files(&self) -> Result<Vec<(u16, PathBuf)>, StateError> {
        let dir = self.root.join(ENDPOINTS_DIR);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let path = entry.map_err(io_err("read", &dir))?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u16>().ok())
                .filter(|id| *id > 0);
            if let Some(id) = id {
                out.push((id, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes every state file (start with `--restore=false`).
    pub fn discard_all(&self) -> Result<(), StateError> {
        self.remove(&self.ipam_path())?;
        self.remove(&self.policy_path())?;
        self.remove(&self.services_path())?;
        // The embedded kvstore (identities) lives here too.
        self.remove(&self.root.join("kvstore.json"))?;
        for (_, path) in self.endpoint_files()? {
            self.remove(&path)?;
        }
        for path in self.teardown_files()? {
            self.remove(&path)?;
        }
        Ok(())
    }
}

/// Opens (creating it, mode 0600) and locks a lock file for the life of the returned handle.
/// `Ok(None)` when another process holds the lock.
pub fn lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Writes a file so that a reader sees either the old or the new content, also after a
/// crash: temp file in the same directory, fsync, rename, fsync of the directory (`dir`, an
/// open handle of the file's directory).
pub fn write_atomic(path: &Path, bytes: &[u8], dir: &File) -> Result<(), StateError> {
    write_renamed(path, bytes, Some(dir))
}

/// Temp file, rename; with `sync` (the open directory), fsync of the file before the rename
/// and of the directory after it.
fn write_renamed(path: &Path, bytes: &[u8], sync: Option<&File>) -> Result<(), StateError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}{TMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    if sync.is_some() {
        file.sync_data().map_err(io_err("fsync", &tmp))?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    match sync {
        Some(dir) => {
            let parent = path.parent().unwrap_or(Path::new("."));
            dir.sync_all().map_err(io_err("fsync directory", parent))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u32,
        b: String,
    }

    #[test]
    fn a_world_writable_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::open(tmp.path()).unwrap_err();
        assert!(
            matches!(err, StateError::WorldWritable { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 700"), "{err}");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn write_read_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let value = Sample {
            a: 7,
            b: "x".into(),
        };
        dir.write_json(&dir.endpoint_path(7), &value).unwrap();
        assert_eq!(
            dir.read_json::<Sample>(&dir.endpoint_path(7)).unwrap(),
            Some(value)
        );
        assert_eq!(
            dir.endpoint_files().unwrap(),
            vec![(7, dir.endpoint_path(7))]
        );
        assert!(dir.read_json::<Sample>(&dir.ipam_path()).unwrap().is_none());
        let mode = fs::metadata(dir.endpoint_path(7)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        fs::write(dir.ipam_path(), b"{\"a\": 1,").unwrap();
        let err = dir.read_json::<Sample>(&dir.ipam_path()).unwrap_err();
        let StateError::Corrupt { moved_to, .. } = &err else {
            panic!("{err}")
        };
        assert!(moved_to.exists());
        assert!(!dir.ipam_path().exists());
        assert!(err.to_string().contains("is corrupt"), "{err}");
        // Next start: no file, no error.
        assert!(dir.read_json::<Sample>(&dir.ipam_path()).unwrap().is_none());
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StateDir::open(tmp.path()).unwrap();
        let err = StateDir::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(first);
        StateDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn a_teardown_moves_the_endpoint_file_aside_until_it_is_done() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let value = Sample {
            a: 3,
            b: "lxc".into(),
        };
        dir.write_json_unsynced(&dir.endpoint_path(3), &value)
            .unwrap();
        assert!(dir.begin_teardown(3, 42).unwrap());
        assert!(dir.endpoint_files().unwrap().is_empty());
        assert_eq!(
            dir.teardown_files().unwrap(),
            vec![dir.teardown_path(3, 42)]
        );
        assert_eq!(
            dir.read_json::<Sample>(&dir.teardown_path(3, 42)).unwrap(),
            Some(value)
        );
        // No file: nothing to move.
        assert!(!dir.begin_teardown(4, 43).unwrap());
        dir.remove(&dir.teardown_path(3, 42)).unwrap();
        assert!(dir.teardown_files().unwrap().is_empty());
    }

    #[test]
    fn leftover_temp_files_are_removed_and_other_files_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("endpoints/.5.json.tmp"), b"half").unwrap();
        fs::write(tmp.path().join("endpoints/notes.txt"), b"x").unwrap();
        fs::write(tmp.path().join("endpoints/0.json"), b"{}").unwrap();
        drop(dir);
        let dir = StateDir::open(tmp.path()).unwrap();
        assert!(!tmp.path().join("endpoints/.5.json.tmp").exists());
        assert!(dir.endpoint_files().unwrap().is_empty());
    }
}
