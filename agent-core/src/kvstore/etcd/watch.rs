//! A watch's thread: reads the gateway's watch stream and forwards the events in order. When
//! the connection drops (server stopped, restarted, another endpoint) it reconnects with
//! backoff from the last revision it saw + 1, so no event is lost; if that revision was
//! compacted meanwhile it re-lists the prefix and reports what changed ([`KnownKeys`]).
//! Reads time out every [`WATCH_POLL`], so the thread ends soon after the [`super::Watch`]
//! (or the client) is dropped.

use std::io::Read;
use std::time::Duration;

use super::wire::{self, ObjectSplitter, StreamMessage, WatchResponse};
use super::{decode_kv, Inner};
use crate::kvstore::http::is_poll_timeout;
use crate::kvstore::resync::KnownKeys;
use crate::kvstore::{sleep_unless, KvstoreError, WatchEvent, WatchSender};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a watch stands.
#[derive(Debug)]
pub(super) struct WatchState {
    pub prefix: String,
    /// Every event up to this revision was forwarded.
    pub last_revision: u64,
    /// The keys under the prefix as far as forwarded.
    pub known: KnownKeys,
}

/// Why a watch stream ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The watch (or the client) was dropped.
    Stopped,
    /// The next revision was compacted away.
    Compacted(i64),
    /// The stream failed; reconnect.
    Lost(String),
}

pub(super) struct Watcher<'a> {
    pub inner: &'a Inner,
    pub sender: &'a WatchSender,
    pub state: WatchState,
    backoff: Duration,
    /// Whether the last stream failed (logged once until it works again).
    failing: bool,
}

/// The thread's body.
pub(super) fn run(inner: &Inner, sender: &WatchSender, state: WatchState) {
    let mut watcher = Watcher::new(inner, sender, state);
    watcher.run();
    tracing::debug!(prefix = %watcher.state.prefix, "kvstore etcd: watch ended");
}

impl<'a> Watcher<'a> {
    pub fn new(inner: &'a Inner, sender: &'a WatchSender, state: WatchState) -> Watcher<'a> {
        Watcher {
            inner,
            sender,
            state,
            backoff: MIN_BACKOFF,
            failing: false,
        }
    }

    fn stop(&self) -> bool {
        self.sender.is_closed() || self.inner.stopped()
    }

    fn run(&mut self) {
        while !self.stop() {
            let reason = match self.stream() {
                Outcome::Stopped => return,
                Outcome::Compacted(compacted) => match self.resync(compacted) {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(e) => e.to_string(),
                },
                Outcome::Lost(reason) => reason,
            };
            if self.failing {
                tracing::debug!(prefix = %self.state.prefix, "kvstore etcd: watch still down: {reason}");
            } else {
                tracing::warn!(
                    prefix = %self.state.prefix,
                    "kvstore etcd: watch interrupted ({reason}); resuming from revision {}",
                    self.next_revision()
                );
                self.failing = true;
            }
            if !sleep_unless(self.backoff, &|| self.stop()) {
                return;
            }
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The revision the next stream starts from: the one after the last one seen (the
    /// server's revisions are not trusted to leave room for it).
    pub fn next_revision(&self) -> u64 {
        self.state.last_revision.saturating_add(1)
    }

    /// One watch stream, from the revision after the last one seen.
    fn stream(&mut self) -> Outcome {
        let request = wire::watch_create(&self.state.prefix, self.next_revision()).to_string();
        let mut stream = match self.inner.http.open_stream("/v3/watch", request.as_bytes()) {
            Ok(stream) => stream,
            Err(e) => return Outcome::Lost(e.to_string()),
        };
        if stream.status != 200 {
            let mut body = Vec::new();
            let _ = stream.reader.take(4096).read_to_end(&mut body);
            return Outcome::Lost(format!(
                "{}: HTTP {}: {}",
                stream.endpoint,
                stream.status,
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let mut splitter = ObjectSplitter::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.reader.read(&mut buf) {
                Ok(0) => {
                    return Outcome::Lost(format!("{}: the watch stream ended", stream.endpoint))
                }
                Ok(n) => {
                    for object in splitter.push(&buf[..n]) {
                        if let Some(outcome) = self.handle(&object) {
                            return outcome;
                        }
                    }
                }
                Err(e) if is_poll_timeout(&e) => {}
                Err(e) => return Outcome::Lost(format!("{}: {e}", stream.endpoint)),
            }
            if self.stop() {
                return Outcome::Stopped;
            }
        }
    }

    /// Handles one stream message; `Some` when the stream is done.
    pub fn handle(&mut self, object: &[u8]) -> Option<Outcome> {
        let message: StreamMessage<WatchResponse> = match serde_json::from_slice(object) {
            Ok(m) => m,
            Err(e) => return Some(Outcome::Lost(format!("unreadable watch message: {e}"))),
        };
        if let Some(error) = message.error {
            return Some(Outcome::Lost(wire::error_message(&error)));
        }
        let response = message.result?;
        if response.canceled {
            if response.compact_revision > 0 {
                return Some(Outcome::Compacted(response.compact_revision));
            }
            return Some(Outcome::Lost(format!(
                "the server canceled the watch: {}",
                response.cancel_reason
            )));
        }
        if response.created {
            if self.failing {
                tracing::info!(
                    prefix = %self.state.prefix,
                    "kvstore etcd: watch resumed from revision {}",
                    self.next_revision()
                );
                self.failing = false;
            }
            self.backoff = MIN_BACKOFF;
            return None;
        }
        if response.events.is_empty() {
            // A progress notification: every event up to its revision was sent.
            self.state.last_revision = self.state.last_revision.max(response.header.revision);
            return None;
        }
        for event in &response.events {
            self.state.last_revision = self.state.last_revision.max(event.kv.mod_revision);
            let (key, entry) = match decode_kv("watch", &event.kv) {
                Ok(decoded) => decoded,
                Err(e) => {
                    tracing::warn!(
                        "kvstore etcd: watch of {}: skipping an event: {e}",
                        self.state.prefix
                    );
                    continue;
                }
            };
            let event = if event.kind == "DELETE" {
                self.state.known.delete(&key);
                WatchEvent::Delete { key }
            } else {
                self.state.known.put(&key, entry.mod_revision);
                WatchEvent::Put {
                    key,
                    value: entry.value,
                }
            };
            if !self.sender.send(event) {
                return Some(Outcome::Stopped);
            }
        }
        None
    }

    /// After compaction: re-lists the prefix and forwards what changed. False when the watch
    /// was dropped meanwhile.
    fn resync(&mut self, compacted: i64) -> Result<bool, KvstoreError> {
        let (listing, revision) = self.inner.list("watch-resync", &self.state.prefix)?;
        let events = self.state.known.resync(listing);
        tracing::info!(
            prefix = %self.state.prefix,
            "kvstore etcd: watch missed revisions up to {compacted} (compacted); re-listed at \
             revision {revision}: {} changes",
            events.len()
        );
        for event in events {
            if !self.sender.send(event) {
                return Ok(false);
            }
        }
        self.state.last_revision = revision;
        Ok(true)
    }
}
