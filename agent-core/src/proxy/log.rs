//! The proxy's access log: one [`AccessRecord`] per request, appended as a JSON line to an
//! optional file and sent to live readers (the agent's monitor, `cilium monitor --type l7`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::ProxyError;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allowed and sent upstream; `status` is the upstream's.
    Forwarded,
    /// Refused by policy with 403.
    Denied,
    /// Not forwarded: unparsable request (400), upstream unreachable (503) or failing (502).
    Error,
}

impl Verdict {
    /// `forwarded`, `denied` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Denied => "denied",
            Verdict::Error => "error",
        }
    }
}

/// The client side of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Security identity of the client.
    pub identity: u32,
    /// Labels of that identity.
    pub labels: Vec<String>,
    /// `ip:port` of the client.
    pub address: String,
}

/// The server side of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Security identity of the destination.
    pub identity: u32,
    /// `ip:port` of the original destination (the accepted socket's local address).
    pub address: String,
}

/// One request through the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// When the response headers were sent: RFC 3339, UTC, milliseconds
    /// (`2026-11-22T10:11:12.345Z`).
    pub time: String,
    /// What happened to the request.
    pub verdict: Verdict,
    /// The client.
    pub source: Source,
    /// The server the client connected to.
    pub destination: Destination,
    /// The request method (empty when the request could not be parsed).
    pub method: String,
    /// The `Host` header as sent, port included if any.
    pub host: String,
    /// The path of the request target, without the query string.
    pub path: String,
    /// The status of the response sent to the client.
    pub status: u16,
    /// From the start of the request to the response headers, in milliseconds.
    pub duration_ms: f64,
}

impl AccessRecord {
    /// One line for `cilium monitor --type l7`:
    /// `<- forwarded 200 GET http://app1/public from 10.0.0.2:41234 (identity 261) to
    /// 10.0.0.5:80 (identity 262) 0.41 ms`.
    pub fn summary(&self) -> String {
        let request = if self.method.is_empty() {
            "(unparsable request)".to_string()
        } else {
            format!("{} http://{}{}", self.method, self.host, self.path)
        };
        format!(
            "<- {} {} {request} from {} (identity {}) to {} (identity {}) {:.2} ms",
            self.verdict.as_str(),
            self.status,
            self.source.address,
            self.source.identity,
            self.destination.address,
            self.destination.identity,
            self.duration_ms
        )
    }
}

/// The current time as an access record shows it: `2026-11-22T10:11:12.345Z`.
pub fn now_millis_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    millis_rfc3339(since.as_secs() as i64, since.subsec_millis())
}

fn millis_rfc3339(secs: i64, millis: u32) -> String {
    let base = crate::timestamp::rfc3339(secs);
    let base = base.strip_suffix('Z').unwrap_or(&base);
    format!("{base}.{millis:03}Z")
}

/// The access log file: written with one `write` per record, so a record is on disk (in the
/// page cache) when the response leaves.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    /// Set after a failed write, so that a full disk is reported once, not per request.
    failing: AtomicBool,
}

/// Where access records go: an optional file of JSON lines and a broadcast channel for live
/// readers. Cloning shares both.
#[derive(Clone)]
pub struct AccessLog {
    file: Option<Arc<LogFile>>,
    live: broadcast::Sender<AccessRecord>,
    hook: Option<RecordHook>,
}

/// Called with every record, on the proxy's thread, before it goes to live readers: must be
/// quick and must not block.
pub type RecordHook = Arc<dyn Fn(&AccessRecord) + Send + Sync>;

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("path", &self.path())
            .field("live_readers", &self.live.receiver_count())
            .finish()
    }
}

impl AccessLog {
    /// Records go to `path` (opened for appending, created with mode 0600) if given, and to
    /// `live` (sending to a channel without receivers is not an error).
    pub fn new(
        path: Option<&Path>,
        live: broadcast::Sender<AccessRecord>,
    ) -> Result<AccessLog, ProxyError> {
        let file = match path {
            None => None,
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| ProxyError::AccessLog {
                        op: "open",
                        path: path.to_path_buf(),
                        source,
                    })?;
                Some(Arc::new(LogFile {
                    path: path.to_path_buf(),
                    file: Mutex::new(file),
                    failing: AtomicBool::new(false),
                }))
            }
        };
        Ok(AccessLog {
            file,
            live,
            hook: None,
        })
    }

    /// Also hands every record to `hook` (no task hop: cheaper than a live reader for a
    /// consumer that usually has nothing to do, such as a monitor without readers).
    pub fn with_hook(mut self, hook: RecordHook) -> AccessLog {
        self.hook = Some(hook);
        self
    }

    /// A log without file whose records only go to a fresh channel of `capacity` records.
    pub fn live_only(capacity: usize) -> AccessLog {
        let (live, _) = broadcast::channel(capacity.max(1));
        AccessLog {
            file: None,
            live,
            hook: None,
        }
    }

    /// The file records are appended to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// A live reader: receives every record written from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AccessRecord> {
        self.live.subscribe()
    }

    /// Appends `record` to the file and sends it to live readers.
    pub(super) fn write(&self, record: AccessRecord) {
        if let Some(log) = &self.file {
            log.append(&record);
        }
        if let Some(hook) = &self.hook {
            hook(&record);
        }
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(record);
    }
}

impl LogFile {
    fn append(&self, record: &AccessRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(error = %e, "proxy: cannot encode an access record");
                return;
            }
        };
        line.push(b'\n');
        let result = self
            .file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(&line);
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "proxy: access log writable again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "proxy: cannot write the access log (reported once until it recovers)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            time: millis_rfc3339(1_795_305_127, 45),
            verdict: Verdict::Forwarded,
            source: Source {
                identity: 261,
                labels: vec!["k8s:app=client".into()],
                address: "10.0.0.2:41234".into(),
            },
            destination: Destination {
                identity: 262,
                address: "10.0.0.5:80".into(),
            },
            method: "GET".into(),
            host: "app1".into(),
            path: "/public".into(),
            status: 200,
            duration_ms: 0.4123,
        }
    }

    #[test]
    fn time_has_milliseconds() {
        assert_eq!(
            millis_rfc3339(1_795_305_127, 45),
            "2026-11-21T23:52:07.045Z"
        );
        let now = now_millis_rfc3339();
        assert_eq!(now.len(), "2026-11-21T23:52:07.045Z".len(), "{now}");
        assert!(now.ends_with('Z'));
    }

    #[test]
    fn summary_line() {
        assert_eq!(
            record().summary(),
            "<- forwarded 200 GET http://app1/public from 10.0.0.2:41234 (identity 261) \
             to 10.0.0.5:80 (identity 262) 0.41 ms"
        );
        let mut bad = record();
        bad.method.clear();
        bad.verdict = Verdict::Error;
        bad.status = 400;
        assert!(bad
            .summary()
            .starts_with("<- error 400 (unparsable request) from"));
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(record()).expect("json");
        assert_eq!(v["verdict"], "forwarded");
        assert_eq!(v["source"]["identity"], 261);
        assert_eq!(v["source"]["address"], "10.0.0.2:41234");
        assert_eq!(v["destination"]["identity"], 262);
        assert_eq!(v["status"], 200);
        assert_eq!(v["time"], "2026-11-21T23:52:07.045Z");
    }

    #[test]
    fn file_is_private_and_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let (tx, mut rx) = broadcast::channel(4);
        let log = AccessLog::new(Some(&path), tx).expect("open");
        log.write(record());
        log.write(record());
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        let back: AccessRecord =
            serde_json::from_str(text.lines().next().expect("line")).expect("parse");
        assert_eq!(back, record());
        assert_eq!(rx.try_recv().expect("live"), record());
        // Reopening appends.
        let again = AccessLog::new(Some(&path), broadcast::channel(1).0).expect("reopen");
        again.write(record());
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3);
    }
}
