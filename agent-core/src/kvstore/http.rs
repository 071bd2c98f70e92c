//! The HTTP/1.1 transport of the etcd and consul backends: one or more endpoints tried in
//! turn when a connection cannot be made, a deadline on every request so that a dead server
//! is reported within [`REQUEST_TIMEOUT`], and long-lived streams (etcd watches) whose reads
//! time out every [`super::WATCH_POLL`] so their reader can look up.

use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::WATCH_POLL;

/// The longest a request (connect, send, answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A set of equivalent endpoints (`http://host:port` or `https://…`, no trailing `/`).
pub(crate) struct HttpClient {
    endpoints: Vec<String>,
    /// The endpoint that answered last; requests start there.
    preferred: AtomicUsize,
    /// Requests: every one has a [`REQUEST_TIMEOUT`] deadline.
    agent: ureq::Agent,
    /// Streams: a connect timeout and a read timeout of [`WATCH_POLL`], no deadline.
    stream_agent: ureq::Agent,
}

/// A server's answer, whatever its status.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// The headers the caller asked for, by name.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (for error messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// No endpoint could be reached, or the connection failed during the exchange.
#[derive(Debug)]
pub(crate) struct TransportError {
    pub endpoint: String,
    pub reason: String,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.reason)
    }
}

impl std::error::Error for TransportError {}

/// An open response stream.
pub(crate) struct Stream {
    pub endpoint: String,
    pub status: u16,
    /// Reads fail with [`io::ErrorKind::TimedOut`] (or `WouldBlock`) after [`WATCH_POLL`]
    /// without data; the stream stays usable.
    pub reader: Box<dyn Read + Send + Sync>,
}

/// Whether a read error is only the stream's poll timeout.
pub(crate) fn is_poll_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

impl HttpClient {
    /// A client of `endpoints` (at least one); `tls` for `https://` endpoints (ureq's default
    /// configuration with the public roots when `None`).
    pub fn new(endpoints: Vec<String>, tls: Option<Arc<rustls::ClientConfig>>) -> HttpClient {
        let builder = || {
            let b = ureq::AgentBuilder::new()
                .timeout_connect(REQUEST_TIMEOUT)
                .timeout_write(REQUEST_TIMEOUT)
                .redirects(0)
                .user_agent("cilium-agent-kvstore");
            match &tls {
                Some(config) => b.tls_config(Arc::clone(config)),
                None => b,
            }
        };
        HttpClient {
            endpoints,
            preferred: AtomicUsize::new(0),
            agent: builder().timeout(REQUEST_TIMEOUT).build(),
            stream_agent: builder().timeout_read(WATCH_POLL).build(),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Sends a request to the preferred endpoint, and to the next ones as long as a
    /// connection cannot be made. `timeout` overrides [`REQUEST_TIMEOUT`] (blocking queries).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Option<Duration>,
        headers: &[&str],
    ) -> Result<Reply, TransportError> {
        self.each_endpoint(|index| self.send_to(index, method, path, body, timeout, headers))
    }

    /// Sends a request to one endpoint.
    pub fn send_to(
        &self,
        index: usize,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Option<Duration>,
        headers: &[&str],
    ) -> Result<Reply, Attempt> {
        let endpoint = self.endpoint(index);
        let mut request = self
            .agent
            .request(method, &format!("{endpoint}{path}"))
            .timeout(timeout.unwrap_or(REQUEST_TIMEOUT));
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_bytes(body),
            None => {
                request = request.set("Accept", "application/json");
                request.call()
            }
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(t)) => return Err(Attempt::from_transport(endpoint, &t)),
        };
        let status = response.status();
        let headers = headers
            .iter()
            .filter_map(|name| {
                response
                    .header(name)
                    .map(|v| ((*name).to_string(), v.to_string()))
            })
            .collect();
        let mut body = Vec::new();
        if let Err(e) = response.into_reader().read_to_end(&mut body) {
            // etcd's gateway ends error answers with HTTP trailers, which ureq's chunked
            // decoder refuses after the last chunk: the body read until then is complete
            // (and the connection is not reused).
            if status < 300 || body.is_empty() {
                return Err(Attempt::Failed(TransportError {
                    endpoint: endpoint.to_string(),
                    reason: format!("reading the answer: {e}"),
                }));
            }
        }
        Ok(Reply {
            status,
            body,
            headers,
        })
    }

    /// POSTs `body` and returns the open response stream (any status).
    pub fn open_stream(&self, path: &str, body: &[u8]) -> Result<Stream, TransportError> {
        self.each_endpoint(|index| {
            let endpoint = self.endpoint(index);
            let result = self
                .stream_agent
                .post(&format!("{endpoint}{path}"))
                .set("Content-Type", "application/json")
                .send_bytes(body);
            match result {
                Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(Stream {
                    endpoint: endpoint.to_string(),
                    status: response.status(),
                    reader: response.into_reader(),
                }),
                Err(ureq::Error::Transport(t)) => Err(Attempt::from_transport(endpoint, &t)),
            }
        })
    }

    fn endpoint(&self, index: usize) -> &str {
        self.endpoints
            .get(index)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Runs `attempt` on the endpoints from the preferred one on, moving on only when the
    /// connection could not be made (nothing was sent).
    fn each_endpoint<T>(
        &self,
        mut attempt: impl FnMut(usize) -> Result<T, Attempt>,
    ) -> Result<T, TransportError> {
        let count = self.endpoints.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut last = None;
        for step in 0..count {
            let index = (first + step) % count;
            match attempt(index) {
                Ok(value) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(Attempt::NotConnected(e)) => {
                    tracing::debug!("kvstore endpoint {e}; trying the next one");
                    last = Some(e);
                }
                Err(Attempt::Failed(e)) => {
                    // Start with another endpoint next time.
                    self.preferred.store(index + 1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| TransportError {
            endpoint: String::new(),
            reason: "no endpoint configured".to_string(),
        }))
    }
}

/// How one attempt failed.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// No connection: the next endpoint may be tried.
    NotConnected(TransportError),
    /// The connection failed during the exchange: the request may have been applied.
    Failed(TransportError),
}

impl Attempt {
    fn from_transport(endpoint: &str, t: &ureq::Transport) -> Attempt {
        let error = TransportError {
            endpoint: endpoint.to_string(),
            reason: t.to_string(),
        };
        match t.kind() {
            ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => {
                Attempt::NotConnected(error)
            }
            _ => Attempt::Failed(error),
        }
    }

    pub fn into_error(self) -> TransportError {
        match self {
            Attempt::NotConnected(e) | Attempt::Failed(e) => e,
        }
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// `host:port` → `http://host:port`; URLs keep their scheme (http or https); no trailing `/`.
pub(crate) fn normalize_endpoint(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("empty endpoint".to_string());
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("'{text}' contains spaces"));
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), text),
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("'{text}': scheme {scheme} is not http or https"));
    }
    let rest = rest.trim_end_matches('/');
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() {
        return Err(format!("'{text}' has no host"));
    }
    if let Some((_, port)) = host_port.rsplit_once(':') {
        if !host_port.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(format!("'{text}': bad port '{port}'"));
        }
    }
    Ok(format!("{scheme}://{rest}"))
}
