//! The networks this driver serves, one JSON file each under `<state-dir>/networks/`, so that
//! a restarted plugin still knows the families and MTU of the networks Docker created.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest network or endpoint id accepted (Docker's are 64 hex characters).
pub const MAX_ID_LEN: usize = 128;

/// Errors of reading and writing network records.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network record {} is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `id` is safe as a file name and a Docker id: 1–128 of `[0-9a-zA-Z_.-]`, no `..`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !id.contains("..")
}

/// What the driver remembers of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkRecord {
    pub id: String,
    pub ipv4: bool,
    pub ipv6: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// The directory of network records. Callers pass ids checked with [`is_valid_id`].
#[derive(Debug, Clone)]
pub struct NetworkStore {
    dir: PathBuf,
}

impl NetworkStore {
    /// Opens (creating it if needed) `<state_dir>/networks`.
    pub fn open(state_dir: &Path) -> Result<NetworkStore, StateError> {
        let dir = state_dir.join("networks");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(NetworkStore { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn load(&self, id: &str) -> Result<Option<NetworkRecord>, StateError> {
        let path = self.path(id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the record to a temporary file and renames it into place, so a crash leaves
    /// either the old record or the new one.
    pub fn save(&self, record: &NetworkRecord) -> Result<(), StateError> {
        let path = self.path(&record.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", record.id));
        let text = serde_json::to_vec_pretty(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let written = fs::File::create(&tmp)
            .and_then(|mut file| {
                file.write_all(&text)?;
                file.sync_all()
            })
            .map_err(io_err("write", &tmp))
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_err("rename into", &path)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Removes a record; `false` if there was none.
    pub fn remove(&self, id: &str) -> Result<bool, StateError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "0123abcdef", "net_1.x-y", &"f".repeat(128)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            "a..b",
            "a b",
            "é",
            &"f".repeat(129),
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = NetworkStore::open(dir.path()).unwrap();
        assert_eq!(store.load("n1").unwrap(), None);
        let record = NetworkRecord {
            id: "n1".into(),
            ipv4: true,
            ipv6: false,
            mtu: Some(1450),
        };
        store.save(&record).unwrap();
        assert_eq!(store.load("n1").unwrap(), Some(record.clone()));
        // A new store over the same directory (a restarted plugin) sees it.
        let again = NetworkStore::open(dir.path()).unwrap();
        assert_eq!(again.load("n1").unwrap(), Some(record));
        let names: Vec<_> = fs::read_dir(dir.path().join("networks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["n1.json"]);
        assert!(again.remove("n1").unwrap());
        assert!(!again.remove("n1").unwrap());
        assert_eq!(again.load("n1").unwrap(), None);
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = NetworkStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("networks/bad.json"), "{").unwrap();
        let err = store.load("bad").unwrap_err();
        assert!(err.to_string().contains("is corrupt"), "{err}");
    }
}
