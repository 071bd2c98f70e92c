//! Test helpers: a fake policy, upstream servers (a hyper echo server and a raw one that
//! misbehaves), and clients (hyper's, and raw bytes for pipelining and garbage).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use cilium_api::models::HttpRuleModel;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};

use super::{AccessLog, Connection, Proxy, ProxyPolicy};
use crate::policy::rule::HttpRule;

/// The rule sets a fake policy answers with.
pub type RuleSets = Option<Vec<Arc<Vec<HttpRule>>>>;

/// A compiled rule; empty strings are "any".
pub fn rule(method: &str, path: &str, host: &str, headers: &[&str]) -> HttpRule {
    HttpRule::from_model(&HttpRuleModel {
        method: method.into(),
        path: path.into(),
        host: host.into(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
    })
    .expect("valid rule")
}

/// One set of rules (any of which allows a request).
pub fn set(rules: Vec<HttpRule>) -> RuleSets {
    Some(vec![Arc::new(rules)])
}

/// A policy whose answers the test changes at will.
#[derive(Debug)]
pub struct FakePolicy {
    pub upstream: Mutex<SocketAddr>,
    pub rules: Mutex<RuleSets>,
    pub refuse: AtomicBool,
    pub mark: u32,
}

impl FakePolicy {
    pub fn new(upstream: SocketAddr, rules: RuleSets) -> Arc<FakePolicy> {
        Arc::new(FakePolicy {
            upstream: Mutex::new(upstream),
            rules: Mutex::new(rules),
            refuse: AtomicBool::new(false),
            mark: 0x0a00,
        })
    }

    pub fn set_rules(&self, rules: RuleSets) {
        *self.rules.lock().expect("rules") = rules;
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("upstream") = upstream;
    }
}

impl ProxyPolicy for FakePolicy {
    fn connection(&self, _client: SocketAddr, _local: SocketAddr) -> Result<Connection, String> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err("no policy for this client".into());
        }
        Ok(Connection {
            source_identity: 261,
            source_labels: vec!["k8s:app=client".into()],
            destination_identity: 262,
            upstream: *self.upstream.lock().expect("upstream"),
            upstream_mark: 0x0b00,
        })
    }

    fn rules(&self, _client: SocketAddr, _local: SocketAddr) -> RuleSets {
        self.rules.lock().expect("rules").clone()
    }

    fn reply_mark(&self) -> u32 {
        self.mark
    }
}

/// A proxy in front of a test upstream with `rules`, listening for destination port 80.
#[derive(Debug)]
pub struct Setup {
    pub proxy: Proxy,
    pub policy: Arc<FakePolicy>,
    pub upstream: TestUpstream,
    pub addr: SocketAddr,
}

impl Setup {
    /// `ports`: the first of 50 proxy ports this test may use.
    pub async fn new(ports: u16, rules: RuleSets) -> Setup {
        Setup::with_log(ports, rules, AccessLog::live_only(64)).await
    }

    pub async fn with_log(ports: u16, rules: RuleSets, log: AccessLog) -> Setup {
        let upstream = TestUpstream::start().await;
        let policy = FakePolicy::new(upstream.addr, rules);
        let proxy =
            Proxy::new(Handle::current(), policy.clone(), log).with_port_range(ports..=ports + 49);
        let port = proxy.add_port(80).expect("add_port");
        Setup {
            proxy,
            policy,
            upstream,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }
}

/// GET /public only.
pub fn public_get() -> RuleSets {
    set(vec![rule("GET", "/public", "", &[])])
}

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A hyper server answering `<method> <target> <body length>\n`, or, for `/stream`, a
/// chunked body whose first chunk comes at once and the rest after `release` is notified.
#[derive(Debug, Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    pub release: Arc<Notify>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = TestUpstream {
            addr: listener.local_addr().expect("addr"),
            seen: Arc::default(),
            connections: Arc::default(),
            release: Arc::default(),
        };
        let server = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                server.connections.fetch_add(1, Ordering::SeqCst);
                let state = server.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        upstream
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<TestBody> {
        let (parts, mut body) = req.into_parts();
        let mut body_len = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("request body").into_data() {
                body_len += data.len();
            }
        }
        let target = parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        self.seen.lock().expect("seen").push(Seen {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts.headers,
            body_len,
        });
        if parts.uri.path() == "/stream" {
            let (tx, body) = TestBody::channel();
            let release = Arc::clone(&self.release);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"chunk-1\n")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"chunk-2\n")).await;
                let _ = tx.send(Bytes::from_static(b"chunk-3\n")).await;
            });
            return Response::new(body);
        }
        let text = format!("{} {target} {body_len}\n", parts.method);
        let mut response = Response::new(TestBody::chunks(vec![text.into()], true));
        response
            .headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("yes"));
        response
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

/// An upstream that reads a request head, writes `reply` and closes.
pub async fn raw_upstream(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
            });
        }
    });
    addr
}

/// An address nothing listens on.
pub fn refusing_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A body from a list of chunks (`exact`: with a length, else chunked) or from a channel.
#[derive(Debug)]
pub enum TestBody {
    Chunks {
        chunks: VecDeque<Bytes>,
        exact: bool,
    },
    Channel(mpsc::Receiver<Bytes>),
}

impl TestBody {
    pub fn chunks(chunks: Vec<Bytes>, exact: bool) -> TestBody {
        TestBody::Chunks {
            chunks: chunks.into(),
            exact,
        }
    }

    pub fn empty() -> TestBody {
        TestBody::chunks(Vec::new(), true)
    }

    pub fn channel() -> (mpsc::Sender<Bytes>, TestBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, TestBody::Channel(rx))
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Chunks { chunks, .. } => {
                Poll::Ready(chunks.pop_front().map(|c| Ok(Frame::data(c))))
            }
            TestBody::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, TestBody::Chunks { chunks, .. } if chunks.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Chunks {
                chunks,
                exact: true,
            } => SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum()),
            _ => SizeHint::default(),
        }
    }
}

/// A client connection through the proxy, driven by hyper.
#[derive(Debug)]
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    pub local: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let local = stream.local_addr().expect("local");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Client { sender, local }
    }

    /// Sends a request, returns the response with its body still to read.
    pub async fn send(&mut self, request: Request<TestBody>) -> hyper::Result<Response<Incoming>> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// Sends `method path` with `headers` (a `Host: app1` is added unless given) and an empty
    /// body; returns status and body text.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let response = self
            .send(request(method, path, headers, TestBody::empty()))
            .await
            .expect("response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// A request; `Host: app1` unless `headers` has a host.
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Request<TestBody> {
    let mut builder = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", "app1");
    }
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    builder.body(body).expect("request")
}

/// A response read from raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads one response (`Content-Length` or chunked body) from `buf` + `stream`.
pub async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> RawResponse {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().expect("length");
        while buf.len() < len {
            fill(stream, buf).await;
        }
        body.extend(buf.drain(..len));
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(stream, buf).await;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(stream, buf).await;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.expect("read");
    assert!(n > 0, "connection closed mid-response; have {buf:?}");
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads until the peer closes (or resets) the connection.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}
