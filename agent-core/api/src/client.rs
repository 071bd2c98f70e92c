//! Async client of the agent API over its unix socket (HTTP/1.1, JSON). One connection is
//! kept open and reused; it is re-established when the agent closed it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::models::{
    BpfCtEntry, BpfEndpointEntry, BpfIpcacheEntry, BpfLbEntry, BpfPolicyDump, BpfTunnelEntry,
    ConfigurationMap, DaemonConfigurationResponse, Endpoint, EndpointChangeRequest, EndpointHealth,
    ErrorResponse, Family, Identity, IpamAllocation, IpamResponse, LabelConfiguration,
    LabelsModifier, MonitorEvent, NodeEntry, PartialDelete, Policy, Service, ServiceSpec,
    StatusResponse, TraceResult, TraceSelector,
};
use crate::{path, EndpointId, API_BASE};

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached: the agent is not running, or the path is wrong.
    #[error("cannot reach the agent at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered with an error status.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The HTTP exchange failed after the connection was made.
    #[error("request {method} {path} to the agent failed: {source}")]
    Http {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (an id or owner that does not fit in a URI).
    #[error("cannot build the request for {path}: {source}")]
    Request {
        path: String,
        #[source]
        source: http::Error,
    },
    /// The agent's reply did not parse.
    #[error("cannot decode the agent's reply to {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A decoded reply: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Client of one agent.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            conn: Mutex::new(None),
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(connect_err)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            // The connection ends when the agent closes it or the client is dropped; either
            // is normal, and a failed request reports its own error.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request and returns the raw reply, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let uri = format!("{API_BASE}{path_and_query}");
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::HOST, "cilium-agent");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ClientError::Request {
                path: uri.clone(),
                source,
            })?;

        let mut guard = self.conn.lock().await;
        let mut sender = match guard.take() {
            Some(mut s) => match s.ready().await {
                Ok(()) => s,
                Err(_) => self.connect().await?,
            },
            None => self.connect().await?,
        };
        let http_err = |source| ClientError::Http {
            method: method.clone(),
            path: uri.clone(),
            source,
        };
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        *guard = Some(sender);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, T), ClientError> {
        let reply = self.send(method.clone(), path_and_query, body).await?;
        if !reply.status.is_success() {
            return Err(api_error(reply.status, &reply.body));
        }
        let value = serde_json::from_slice(&reply.body).map_err(|source| ClientError::Decode {
            what: format!("{method} {path_and_query}"),
            source,
        })?;
        Ok((reply.status, value))
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<StatusResponse, ClientError> {
        Ok(self.call(Method::GET, "/healthz", None).await?.1)
    }

    /// `GET /config`.
    pub async fn config(&self) -> Result<DaemonConfigurationResponse, ClientError> {
        Ok(self.call(Method::GET, "/config", None).await?.1)
    }

    /// `PATCH /config` with option changes; returns the new configuration.
    pub async fn config_patch(
        &self,
        options: &ConfigurationMap,
    ) -> Result<DaemonConfigurationResponse, ClientError> {
        Ok(self
            .call(Method::PATCH, "/config", Some(json(options)))
            .await?
            .1)
    }

    /// `POST /ipam`: allocates the next free address of `family`, or of every enabled family
    /// when `None`, on behalf of `owner`.
    pub async fn ipam_allocate(
        &self,
        family: Option<Family>,
        owner: &str,
    ) -> Result<IpamResponse, ClientError> {
        let mut query = format!("/ipam?owner={}", path::encode(owner));
        if let Some(family) = family {
            query.push_str(&format!("&family={family}"));
        }
        Ok(self.call(Method::POST, &query, None).await?.1)
    }

    /// `POST /ipam/{ip}`: reserves a given address.
    pub async fn ipam_reserve(
        &self,
        ip: IpAddr,
        owner: &str,
    ) -> Result<IpamAllocation, ClientError> {
        let query = format!(
            "/ipam/{}?owner={}",
            path::encode(&ip.to_string()),
            path::encode(owner)
        );
        Ok(self.call(Method::POST, &query, None).await?.1)
    }

    /// `DELETE /ipam/{ip}`: releases an address; returns whom it belonged to.
    pub async fn ipam_release(&self, ip: IpAddr) -> Result<IpamAllocation, ClientError> {
        let query = format!("/ipam/{}", path::encode(&ip.to_string()));
        Ok(self.call(Method::DELETE, &query, None).await?.1)
    }

    /// `GET /endpoint`, optionally only those carrying every label in `labels`.
    pub async fn endpoint_list(&self, labels: &[String]) -> Result<Vec<Endpoint>, ClientError> {
        let query = with_labels("/endpoint", labels);
        Ok(self.call(Method::GET, &query, None).await?.1)
    }

    /// `GET /endpoint/{id}`.
    pub async fn endpoint_get(&self, id: &EndpointId) -> Result<Endpoint, ClientError> {
        Ok(self
            .call(Method::GET, &endpoint_path(id, ""), None)
            .await?
            .1)
    }

    /// `PUT /endpoint/{id}`: creates an endpoint; returns it as the agent recorded it.
    pub async fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        Ok(self
            .call(Method::PUT, &endpoint_path(id, ""), Some(json(request)))
            .await?
            .1)
    }

    /// `PATCH /endpoint/{id}`: applies the fields present in `request`.
    pub async fn endpoint_patch(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        Ok(self
            .call(Method::PATCH, &endpoint_path(id, ""), Some(json(request)))
            .await?
            .1)
    }

    /// `DELETE /endpoint/{id}`. `Ok(None)` on a clean delete, `Ok(Some(..))` when the endpoint
    /// is gone but some of its resources could not be released (206).
    pub async fn endpoint_delete(
        &self,
        id: &EndpointId,
    ) -> Result<Option<PartialDelete>, ClientError> {
        let reply = self
            .send(Method::DELETE, &endpoint_path(id, ""), None)
            .await?;
        match reply.status {
            StatusCode::OK => Ok(None),
            StatusCode::PARTIAL_CONTENT => {
                serde_json::from_slice(&reply.body)
                    .map(Some)
                    .map_err(|source| ClientError::Decode {
                        what: "DELETE /endpoint".into(),
                        source,
                    })
            }
            status => Err(api_error(status, &reply.body)),
        }
    }

    /// `GET /endpoint/{id}/healthz`: checks that the endpoint's links, addresses and routes
    /// are still in place.
    pub async fn endpoint_health(&self, id: &EndpointId) -> Result<EndpointHealth, ClientError> {
        Ok(self
            .call(Method::GET, &endpoint_path(id, "/healthz"), None)
            .await?
            .1)
    }

    /// `GET /endpoint/{id}/labels`.
    pub async fn endpoint_labels(
        &self,
        id: &EndpointId,
    ) -> Result<LabelConfiguration, ClientError> {
        Ok(self
            .call(Method::GET, &endpoint_path(id, "/labels"), None)
            .await?
            .1)
    }

    /// `PUT /endpoint/{id}/labels`.
    pub async fn endpoint_labels_modify(
        &self,
        id: &EndpointId,
        modifier: &LabelsModifier,
    ) -> Result<LabelConfiguration, ClientError> {
        let path = endpoint_path(id, "/labels");
        Ok(self.call(Method::PUT, &path, Some(json(modifier))).await?.1)
    }

    /// `GET /endpoint/{id}/config`.
    pub async fn endpoint_config(&self, id: &EndpointId) -> Result<ConfigurationMap, ClientError> {
        Ok(self
            .call(Method::GET, &endpoint_path(id, "/config"), None)
            .await?
            .1)
    }

    /// `PATCH /endpoint/{id}/config`.
    pub async fn endpoint_config_patch(
        &self,
        id: &EndpointId,
        options: &ConfigurationMap,
    ) -> Result<ConfigurationMap, ClientError> {
        let path = endpoint_path(id, "/config");
        Ok(self
            .call(Method::PATCH, &path, Some(json(options)))
            .await?
            .1)
    }

    /// `GET /identity`: every identity, or with `labels` only those carrying all of them
    /// (an unmatched filter is a 404 API error).
    pub async fn identity_list(&self, labels: &[String]) -> Result<Vec<Identity>, ClientError> {
        let query = with_labels("/identity", labels);
        Ok(self.call(Method::GET, &query, None).await?.1)
    }

    /// `GET /identity/{id}`.
    pub async fn identity_get(&self, id: u32) -> Result<Identity, ClientError> {
        Ok(self
            .call(Method::GET, &format!("/identity/{id}"), None)
            .await?
            .1)
    }

    /// `GET /policy`: the repository revision and its rules, or with `labels` only the rules
    /// carrying all of these rule labels (an unmatched filter is a 404 API error).
    pub async fn policy_get(&self, labels: &[String]) -> Result<Policy, ClientError> {
        let query = with_labels("/policy", labels);
        Ok(self.call(Method::GET, &query, None).await?.1)
    }

    /// `PUT /policy`: imports the rules in `rules_json` (a JSON array of rules, sent as is);
    /// returns the revision after the import and the imported rules.
    pub async fn policy_put(&self, rules_json: &str) -> Result<Policy, ClientError> {
        Ok(self
            .call(Method::PUT, "/policy", Some(rules_json.as_bytes().to_vec()))
            .await?
            .1)
    }

    /// `DELETE /policy`: deletes the rules carrying all of `labels`; an empty slice deletes
    /// every rule. Returns the revision after the delete and the deleted rules.
    pub async fn policy_delete(&self, labels: &[String]) -> Result<Policy, ClientError> {
        Ok(self
            .call(Method::DELETE, "/policy", Some(json(&labels)))
            .await?
            .1)
    }

    /// `GET /policy/resolve` (with a body, as the 2017 API): traces the policy decision for
    /// traffic between the two sides of `selector`.
    pub async fn policy_resolve(
        &self,
        selector: &TraceSelector,
    ) -> Result<TraceResult, ClientError> {
        Ok(self
            .call(Method::GET, "/policy/resolve", Some(json(selector)))
            .await?
            .1)
    }
}

impl Client {
    /// `GET /service`: every service, by id.
    pub async fn service_list(&self) -> Result<Vec<Service>, ClientError> {
        Ok(self.call(Method::GET, "/service", None).await?.1)
    }

    /// `GET /service/{id}` (404 when there is no such service).
    pub async fn service_get(&self, id: u16) -> Result<Service, ClientError> {
        Ok(self
            .call(Method::GET, &format!("/service/{id}"), None)
            .await?
            .1)
    }

    /// `PUT /service/{id}`: creates or replaces a service. Returns whether it was created
    /// (201) rather than updated (200), and the service as the agent accepted it. An invalid
    /// frontend is a 460 API error, an invalid backend 461.
    pub async fn service_put(
        &self,
        id: u16,
        spec: &ServiceSpec,
    ) -> Result<(bool, Service), ClientError> {
        let (status, service) = self
            .call(Method::PUT, &format!("/service/{id}"), Some(json(spec)))
            .await?;
        Ok((status == StatusCode::CREATED, service))
    }

    /// `DELETE /service/{id}`: returns the deleted service.
    pub async fn service_delete(&self, id: u16) -> Result<Service, ClientError> {
        Ok(self
            .call(Method::DELETE, &format!("/service/{id}"), None)
            .await?
            .1)
    }
}

impl Client {
    /// `GET /map/endpoint`: the datapath's endpoint map (`cilium bpf endpoint list`).
    pub async fn bpf_endpoint_list(&self) -> Result<Vec<BpfEndpointEntry>, ClientError> {
        Ok(self.call(Method::GET, "/map/endpoint", None).await?.1)
    }

    /// `GET /map/ipcache`: the datapath's prefix -> identity map (`cilium bpf ipcache list`).
    pub async fn bpf_ipcache_list(&self) -> Result<Vec<BpfIpcacheEntry>, ClientError> {
        Ok(self.call(Method::GET, "/map/ipcache", None).await?.1)
    }

    /// `GET /map/ct`: the datapath's conntrack entries (`cilium bpf ct list global`).
    pub async fn bpf_ct_list(&self) -> Result<Vec<BpfCtEntry>, ClientError> {
        Ok(self.call(Method::GET, "/map/ct", None).await?.1)
    }

    /// `GET /map/tunnel`: other nodes' ranges and their tunnel endpoints.
    pub async fn bpf_tunnel_list(&self) -> Result<Vec<BpfTunnelEntry>, ClientError> {
        Ok(self.call(Method::GET, "/map/tunnel", None).await?.1)
    }

    /// `GET /node`: the nodes of the cluster (`cilium node list`).
    pub async fn node_list(&self) -> Result<Vec<NodeEntry>, ClientError> {
        Ok(self.call(Method::GET, "/node", None).await?.1)
    }

    /// `GET /map/lb`: the datapath's service frontends and backends (`cilium bpf lb list`).
    pub async fn bpf_lb_list(&self) -> Result<Vec<BpfLbEntry>, ClientError> {
        Ok(self.call(Method::GET, "/map/lb", None).await?.1)
    }

    /// `GET /map/policy/{id}`: the datapath's policy entries of an endpoint, with their
    /// counters (`cilium bpf policy list`).
    pub async fn bpf_policy_get(&self, id: &EndpointId) -> Result<BpfPolicyDump, ClientError> {
        let path = format!("/map/policy/{}", path::encode(&id.to_string()));
        Ok(self.call(Method::GET, &path, None).await?.1)
    }

    /// `GET /monitor`: subscribes to the datapath events, all of them or only those of `kind`
    /// (`drop`, `trace`, `debug`; the agent refuses others with 400). Uses a connection of
    /// its own, so the client stays usable for other requests meanwhile. An error status
    /// (503 when the agent runs without a datapath) is returned here; after that, read the
    /// records with [`MonitorEvents::next`].
    pub async fn monitor(&self, kind: Option<&str>) -> Result<MonitorEvents, ClientError> {
        let path_and_query = match kind {
            Some(kind) => format!("/monitor?type={}", path::encode(kind)),
            None => "/monitor".to_string(),
        };
        let uri = format!("{API_BASE}{path_and_query}");
        let request = Request::builder()
            .method(Method::GET)
            .uri(&uri)
            .header(header::HOST, "cilium-agent")
            .header(header::ACCEPT, "application/x-ndjson")
            .body(Full::new(Bytes::new()))
            .map_err(|source| ClientError::Request {
                path: uri.clone(),
                source,
            })?;
        let http_err = |source| ClientError::Http {
            method: Method::GET,
            path: uri.clone(),
            source,
        };
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(http_err)?
                .to_bytes();
            return Err(api_error(status, &body));
        }
        Ok(MonitorEvents {
            body: response.into_body(),
            lines: LineBuffer::default(),
            ended: false,
            uri,
            _connection: sender,
        })
    }
}

/// Longest record line accepted from the monitor stream.
const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// The records of a `GET /monitor` stream, read line by line as they arrive. Dropping it
/// closes the connection, which ends the subscription in the agent.
#[derive(Debug)]
pub struct MonitorEvents {
    body: Incoming,
    lines: LineBuffer,
    ended: bool,
    uri: String,
    /// Keeps the connection's request side open while the stream is read.
    _connection: SendRequest<Full<Bytes>>,
}

impl MonitorEvents {
    /// The next record; `None` when the agent ended the stream. A line that is not a record
    /// gives a [`ClientError::Decode`] and reading may go on; a broken connection gives
    /// [`ClientError::Http`] and ends the stream.
    pub async fn next(&mut self) -> Option<Result<MonitorEvent, ClientError>> {
        loop {
            let line = match self.lines.next_line() {
                Some(line) => Some(line),
                None if self.ended => self.lines.rest(),
                None => None,
            };
            if let Some(line) = line {
                return Some(self.parse(&line));
            }
            if self.ended {
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.lines.push(&data);
                        if self.lines.pending() > MAX_RECORD_BYTES {
                            self.lines = LineBuffer::default();
                            return Some(Err(self.decode_error(format!(
                                "a record is longer than {MAX_RECORD_BYTES} bytes"
                            ))));
                        }
                    }
                }
                Some(Err(source)) => {
                    self.ended = true;
                    self.lines = LineBuffer::default();
                    return Some(Err(ClientError::Http {
                        method: Method::GET,
                        path: self.uri.clone(),
                        source,
                    }));
                }
                None => self.ended = true,
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<MonitorEvent, ClientError> {
        serde_json::from_slice(line).map_err(|source| ClientError::Decode {
            what: format!("a record of GET {}", self.uri),
            source,
        })
    }

    fn decode_error(&self, message: String) -> ClientError {
        ClientError::Decode {
            what: format!("a record of GET {}", self.uri),
            source: <serde_json::Error as serde::de::Error>::custom(message),
        }
    }
}

/// Splits a byte stream into lines, whatever the chunks it arrives in. Blank lines are
/// skipped; a trailing `\r` is removed.
#[derive(Debug, Default)]
struct LineBuffer {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
}

impl LineBuffer {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes waiting for the end of their line.
    fn pending(&self) -> usize {
        self.buf.len()
    }

    fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let at = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
            let Some(at) = at else {
                self.scanned = self.buf.len();
                return None;
            };
            let mut line: Vec<u8> = self.buf.drain(..=self.scanned + at).collect();
            self.scanned = 0;
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
    }

    /// What is left after the last newline, at the end of the stream.
    fn rest(&mut self) -> Option<Vec<u8>> {
        self.scanned = 0;
        let rest = std::mem::take(&mut self.buf);
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

/// `base` with a `?labels=a,b` filter when `labels` is not empty; each label is
/// percent-encoded, the separating commas are not.
fn with_labels(base: &str, labels: &[String]) -> String {
    if labels.is_empty() {
        return base.to_string();
    }
    let joined: Vec<String> = labels.iter().map(|l| path::encode(l)).collect();
    format!("{base}?labels={}", joined.join(","))
}

fn endpoint_path(id: &EndpointId, suffix: &str) -> String {
    format!("/endpoint/{}{suffix}", path::encode(&id.to_string()))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing the API's own models cannot fail: they hold only strings, numbers, maps
    // with string keys and addresses.
    serde_json::to_vec(value).unwrap_or_default()
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorResponse>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            }
        });
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex as StdMutex};

    use hyper::body::Incoming;
    use hyper::server::conn::http1 as server_http1;
    use hyper::service::service_fn;
    use tokio::net::UnixListener;

    use super::*;
    use crate::models::{Decision, PortProtocol};

    /// `(method, path and query, body)` of each request the fake agent saw.
    type Seen = Arc<StdMutex<Vec<(String, String, String)>>>;

    /// A fake agent on a fresh socket answering every request with one canned reply; the
    /// socket file is removed on drop.
    struct FakeAgent {
        path: PathBuf,
        seen: Seen,
    }

    impl Drop for FakeAgent {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    impl FakeAgent {
        fn start(status: u16, reply: &'static str) -> FakeAgent {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "cilium-api-client-test-{}-{}.sock",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).expect("bind the fake agent socket");
            let seen: Seen = Arc::default();
            let record = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let record = record.clone();
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req.uri().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            record.lock().expect("record lock").push((
                                method,
                                uri,
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                            let response = http::Response::builder()
                                .status(status)
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from_static(reply.as_bytes())))
                                .expect("build the fake reply");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    tokio::spawn(async move {
                        let _ = server_http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            FakeAgent { path, seen }
        }

        fn client(&self) -> Client {
            Client::new(&self.path)
        }

        fn requests(&self) -> Vec<(String, String, String)> {
            self.seen.lock().expect("record lock").clone()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_filters_are_encoded_one_by_one() {
        assert_eq!(with_labels("/identity", &[]), "/identity");
        assert_eq!(
            with_labels("/policy", &strings(&["k8s:id=app1", "unspec:a b"])),
            "/policy?labels=k8s:id%3Dapp1,unspec:a%20b"
        );
    }

    #[tokio::test]
    async fn identity_list_and_get() {
        let agent = FakeAgent::start(
            200,
            r#"[{"id":256,"labels":["container:id=app1"],"references":2}]"#,
        );
        let list = agent
            .client()
            .identity_list(&strings(&["container:id=app1"]))
            .await
            .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].references, Some(2));
        assert_eq!(
            agent.requests()[0].1,
            "/v1/identity?labels=container:id%3Dapp1"
        );

        let agent = FakeAgent::start(200, r#"{"id":1,"labels":["reserved:host"]}"#);
        let identity = agent.client().identity_get(1).await.unwrap();
        assert_eq!(identity.labels, vec!["reserved:host".to_string()]);
        assert_eq!(identity.references, None);
        assert_eq!(agent.requests()[0].1, "/v1/identity/1");
    }

    #[tokio::test]
    async fn policy_get_put_delete() {
        let agent = FakeAgent::start(200, r#"{"revision":3,"policy":"[]"}"#);
        let client = agent.client();
        let rules = r#"[{"endpointSelector":{"matchLabels":{"id":"app1"}}}]"#;
        assert_eq!(client.policy_get(&[]).await.unwrap().revision, 3);
        assert_eq!(client.policy_put(rules).await.unwrap().revision, 3);
        client.policy_delete(&[]).await.unwrap();
        client
            .policy_delete(&strings(&["unspec:name=web"]))
            .await
            .unwrap();
        let seen = agent.requests();
        assert_eq!(seen[0], ("GET".into(), "/v1/policy".into(), String::new()));
        assert_eq!(seen[1], ("PUT".into(), "/v1/policy".into(), rules.into()));
        assert_eq!(seen[2], ("DELETE".into(), "/v1/policy".into(), "[]".into()));
        assert_eq!(
            seen[3],
            (
                "DELETE".into(),
                "/v1/policy".into(),
                r#"["unspec:name=web"]"#.into()
            )
        );
    }

    #[tokio::test]
    async fn policy_errors_carry_the_agent_message() {
        let agent = FakeAgent::start(400, r#"{"error":"rule 0: unknown field `bogus`"}"#);
        let err = agent.client().policy_put("[{}]").await.unwrap_err();
        assert_eq!(err.status(), Some(400));
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let agent = FakeAgent::start(404, r#"{"error":"no rules match"}"#);
        let err = agent
            .client()
            .policy_get(&strings(&["x"]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(404));
    }

    #[test]
    fn lines_split_across_chunks() {
        let mut lines = LineBuffer::default();
        lines.push(b"{\"type\":\"dr");
        assert_eq!(lines.next_line(), None);
        lines.push(b"op\"}\n\n{\"type\":");
        assert_eq!(lines.next_line().unwrap(), br#"{"type":"drop"}"#);
        assert_eq!(lines.next_line(), None);
        lines.push(b"\"lost\"}\r\n{\"type\":\"trace\"}");
        assert_eq!(lines.next_line().unwrap(), br#"{"type":"lost"}"#);
        assert_eq!(lines.next_line(), None);
        assert_eq!(lines.pending(), 16);
        assert_eq!(lines.rest().unwrap(), br#"{"type":"trace"}"#);
        assert_eq!(lines.rest(), None);
        // Byte by byte.
        let text = b"{\"a\":1}\n \n{\"b\":2}\n";
        let mut got = Vec::new();
        for b in text {
            lines.push(&[*b]);
            while let Some(line) = lines.next_line() {
                got.push(String::from_utf8(line).unwrap());
            }
        }
        assert_eq!(got, vec![r#"{"a":1}"#, r#"{"b":2}"#]);
    }

    #[tokio::test]
    async fn monitor_reads_records_until_the_stream_ends() {
        let agent = FakeAgent::start(
            200,
            "{\"type\":\"drop\",\"code\":133,\"message\":\"Policy denied (L3)\"}\n\
             {\"type\":\"lost\",\"lost\":4}\n\
             not json\n\
             {\"type\":\"trace\",\"code\":2}",
        );
        let client = agent.client();
        let mut events = client.monitor(Some("drop")).await.unwrap();
        let first = events.next().await.unwrap().unwrap();
        assert_eq!((first.kind.as_str(), first.code), ("drop", 133));
        assert_eq!(events.next().await.unwrap().unwrap().lost, 4);
        let err = events.next().await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::Decode { .. }), "{err}");
        assert_eq!(events.next().await.unwrap().unwrap().kind, "trace");
        assert!(events.next().await.is_none());
        assert!(events.next().await.is_none());
        assert_eq!(agent.requests()[0].1, "/v1/monitor?type=drop");

        let agent = FakeAgent::start(503, r#"{"error":"the eBPF datapath is not running: off"}"#);
        let err = agent.client().monitor(None).await.unwrap_err();
        assert_eq!(err.status(), Some(503));
        assert!(err.to_string().contains("datapath is not running"), "{err}");
        assert_eq!(agent.requests()[0].1, "/v1/monitor");
    }

    #[tokio::test]
    async fn bpf_map_paths() {
        let agent = FakeAgent::start(200, "[]");
        let client = agent.client();
        assert!(client.bpf_endpoint_list().await.unwrap().is_empty());
        assert!(client.bpf_ipcache_list().await.unwrap().is_empty());
        assert!(client.bpf_ct_list().await.unwrap().is_empty());
        let agent2 = FakeAgent::start(
            200,
            r#"{"endpoint-id":29898,"ingress-enforced":true,"egress-enforced":false,
                "entries":[{"direction":"ingress","identity":1,"labels":["reserved:host"],
                "port":0,"protocol":"ANY","action":"allow","bytes":0,"packets":0}]}"#,
        );
        let id: EndpointId = "pod-name:default/web".parse().unwrap();
        let dump = agent2.client().bpf_policy_get(&id).await.unwrap();
        assert_eq!(dump.endpoint_id, 29898);
        assert_eq!(dump.entries[0].labels, vec!["reserved:host".to_string()]);
        let paths: Vec<String> = agent.requests().into_iter().map(|r| r.1).collect();
        assert_eq!(paths, ["/v1/map/endpoint", "/v1/map/ipcache", "/v1/map/ct"]);
        assert_eq!(
            agent2.requests()[0].1,
            "/v1/map/policy/pod-name:default%2Fweb"
        );
    }

    #[tokio::test]
    async fn service_paths_and_created_flag() {
        let reply = r#"{"spec":{"id":3,"frontend-address":{"ip":"10.0.0.1","port":80,
            "protocol":"tcp"},"backend-addresses":[{"ip":"10.0.0.2","port":80,"weight":1}]}}"#;
        let created = FakeAgent::start(201, reply);
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"frontend-address":{"ip":"10.0.0.1","port":80,"protocol":"tcp"},
                "backend-addresses":[{"ip":"10.0.0.2","port":80}]}"#,
        )
        .unwrap();
        let (was_created, service) = created.client().service_put(3, &spec).await.unwrap();
        assert!(was_created);
        assert_eq!(service.spec.id, 3);
        assert_eq!(service.status, None);
        let (method, path, body) = created.requests().remove(0);
        assert_eq!((method.as_str(), path.as_str()), ("PUT", "/v1/service/3"));
        assert_eq!(serde_json::from_str::<ServiceSpec>(&body).unwrap(), spec);

        let updated = FakeAgent::start(200, reply);
        let client = updated.client();
        assert!(!client.service_put(3, &spec).await.unwrap().0);
        assert_eq!(client.service_get(3).await.unwrap().spec.id, 3);
        assert_eq!(client.service_delete(3).await.unwrap().spec.id, 3);
        let seen: Vec<(String, String)> = updated
            .requests()
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        assert_eq!(
            seen,
            [
                ("PUT".to_string(), "/v1/service/3".to_string()),
                ("GET".to_string(), "/v1/service/3".to_string()),
                ("DELETE".to_string(), "/v1/service/3".to_string()),
            ]
        );

        let list = FakeAgent::start(200, "[]");
        assert!(list.client().service_list().await.unwrap().is_empty());
        assert_eq!(list.requests()[0].1, "/v1/service");

        let refused = FakeAgent::start(461, r#"{"error":"invalid backend 10.0.0.2:0"}"#);
        let err = refused.client().service_put(3, &spec).await.unwrap_err();
        assert_eq!(err.status(), Some(461));
        assert!(err.to_string().contains("invalid backend"), "{err}");
    }

    #[tokio::test]
    async fn policy_resolve_is_a_get_with_a_body() {
        let agent = FakeAgent::start(
            200,
            r#"{"verdict":"denied","log":"Tracing From: ...\nVerdict: denied\n"}"#,
        );
        let selector = TraceSelector {
            from: strings(&["id.curl"]),
            to: strings(&["id.httpd"]),
            dports: vec![PortProtocol {
                port: 80,
                protocol: "tcp".into(),
            }],
            ..TraceSelector::default()
        };
        let result = agent.client().policy_resolve(&selector).await.unwrap();
        assert_eq!(result.verdict, Decision::Denied);
        let (method, path, body) = agent.requests().remove(0);
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/v1/policy/resolve")
        );
        let sent: TraceSelector = serde_json::from_str(&body).unwrap();
        assert_eq!(sent, selector);
    }
}
