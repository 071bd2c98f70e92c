//! Serving one proxied connection: HTTP/1.1 with keep-alive, every request matched against
//! the policy's rules at that moment, then answered with 403 or forwarded upstream.
//!
//! What a request is matched on:
//! - method: as sent (`GET`);
//! - path: the path of the request target as sent, without the query string and without
//!   percent-decoding (`/public` for `GET /public?x=1`); note that Cilium's Envoy matches
//!   `:path` with the query string, so a rule `/public` allows less there;
//! - host: the `Host` header as sent, port included (`app1:8080`); a request in absolute form
//!   (`GET http://app1/x`) has its `Host` set to the target's authority first, as RFC 9112
//!   §3.2.2 asks, so the host matched is the one the upstream sees; more than one `Host` is a
//!   400;
//! - headers: every request header (names case-insensitive, values compared exactly).
//!
//! Requests of a connection are handled one at a time and answered in order (hyper reads the
//! next request, pipelined or not, once the previous one is answered). Bytes that are not
//! HTTP get hyper's automatic `400 Bad Request` (431 for oversized heads), then the
//! connection is closed; a client that sends no complete request head within
//! [`HEADER_READ_TIMEOUT`] (idle keep-alive connections included) is disconnected.
//! Upgrades (WebSocket, `CONNECT` tunnels) and HTTP/2 are not supported.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::log::{now_millis_rfc3339, Destination, Source};
use super::upstream::{ForwardError, Upstream};
use super::{AccessRecord, Connection, Context, Verdict};

/// How long a client may take to send a request head, and stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a denied request's body that is read (and dropped) to keep the connection.
const DISCARD_LIMIT: usize = 1 << 20;

/// How long a denied request's body is waited for.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of a response to the client: the upstream's, streamed, or one of the proxy's.
type ProxyBody = Either<Incoming, Full<Bytes>>;

/// One accepted connection and what the policy said about it.
struct Client {
    context: Arc<Context>,
    client: SocketAddr,
    local: SocketAddr,
    connection: Connection,
    upstream: Upstream,
}

/// Serves an accepted connection to its end.
pub(super) async fn serve(stream: TcpStream, client: SocketAddr, context: Arc<Context>) {
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(e) => {
            tracing::debug!(%client, error = %e, "proxy: accepted socket without local address");
            return;
        }
    };
    let connection = match context.policy.connection(client, local) {
        Ok(connection) => connection,
        Err(reason) => {
            context.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%client, %local, %reason, "proxy: connection refused by policy");
            return;
        }
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%client, error = %e, "proxy: cannot set TCP_NODELAY");
    }
    let state = Arc::new(Client {
        upstream: Upstream::new(connection.upstream, connection.upstream_mark),
        context: Arc::clone(&context),
        client,
        local,
        connection,
    });
    let service_state = Arc::clone(&state);
    let service = service_fn(move |request| {
        let state = Arc::clone(&service_state);
        async move { Ok::<_, Infallible>(state.handle(request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(context.header_read_timeout);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let mut shutdown = context.shutdown.clone();
    // Closing, or the proxy is gone (sender dropped): both mean finish up.
    let closing = async move {
        let _ = shutdown.wait_for(|closing| *closing).await;
    };
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = closing => {
            served.as_mut().graceful_shutdown();
            served.as_mut().await
        }
    };
    if let Err(e) = result {
        state.connection_error(&e);
    }
}

impl Client {
    /// Answers one request: 403 if the rules deny it, else the upstream's response (or 502,
    /// 503); logs it.
    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let method = request.method().as_str().to_string();
        let path = request.uri().path().to_string();
        let normalized = normalize(&mut request);
        let host = host_of(request.headers()).unwrap_or_default().to_string();
        let (verdict, response) = match normalized {
            Err(reason) => {
                tracing::debug!(client = %self.client, %reason, "proxy: bad request");
                (
                    Verdict::Error,
                    text(StatusCode::BAD_REQUEST, "Bad Request\n"),
                )
            }
            Ok(()) if !self.allowed(&request, &host, &path) => {
                discard_body(request).await;
                (
                    Verdict::Denied,
                    text(StatusCode::FORBIDDEN, "Access denied\n"),
                )
            }
            Ok(()) => match self.upstream.send(request).await {
                Ok(mut response) => {
                    strip_hop_by_hop(response.headers_mut());
                    (Verdict::Forwarded, response.map(Either::Left))
                }
                Err(e) => {
                    tracing::debug!(client = %self.client, error = %e, "proxy: request not forwarded");
                    let response = match e {
                        ForwardError::Connect { .. } => {
                            text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n")
                        }
                        ForwardError::Exchange { .. } => {
                            text(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
                        }
                    };
                    (Verdict::Error, response)
                }
            },
        };
        self.record(verdict, method, host, path, response.status(), start);
        response
    }

    /// Whether every rule set of the policy has a rule that matches the request.
    fn allowed(&self, request: &Request<Incoming>, host: &str, path: &str) -> bool {
        let Some(sets) = self.context.policy.rules(self.client, self.local) else {
            return false;
        };
        if sets.is_empty() {
            return true;
        }
        let values: Vec<(&str, Cow<'_, str>)> = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())))
            .collect();
        let headers: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        let method = request.method().as_str();
        sets.iter().all(|set| {
            set.iter()
                .any(|rule| rule.matches(method, path, host, &headers))
        })
    }

    /// Logs a connection that ended with an error; a request that could not be parsed (and
    /// got hyper's automatic 400) gets an access record.
    fn connection_error(&self, error: &hyper::Error) {
        if error.is_parse() {
            let status = if error.is_parse_too_large() {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            tracing::debug!(client = %self.client, %error, "proxy: unparsable request");
            self.record(
                Verdict::Error,
                String::new(),
                String::new(),
                String::new(),
                status,
                Instant::now(),
            );
        } else {
            tracing::debug!(client = %self.client, %error, "proxy: connection ended");
        }
    }

    fn record(
        &self,
        verdict: Verdict,
        method: String,
        host: String,
        path: String,
        status: StatusCode,
        start: Instant,
    ) {
        let c = &self.connection;
        self.context.record(AccessRecord {
            time: now_millis_rfc3339(),
            verdict,
            source: Source {
                identity: c.source_identity,
                labels: c.source_labels.clone(),
                address: self.client.to_string(),
            },
            destination: Destination {
                identity: c.destination_identity,
                address: self.local.to_string(),
            },
            method,
            host,
            path,
            status: status.as_u16(),
            // Microsecond resolution is plenty, and keeps the JSON short.
            duration_ms: (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        });
    }
}

/// Reads and drops the body of a denied request before answering, so that the connection can
/// carry the next request and the client reads the 403 rather than a reset, if the body is
/// not too large ([`DISCARD_LIMIT`]) and comes quickly ([`DISCARD_TIMEOUT`]). Otherwise
/// hyper closes the connection after the 403 (the client may then see a reset while it is
/// still sending). A client that waits for `100 Continue` is not asked for its body.
async fn discard_body(request: Request<Incoming>) {
    if request.headers().contains_key(header::EXPECT) {
        return;
    }
    let mut body = request.into_body();
    let mut seen = 0usize;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DISCARD_LIMIT {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

/// The `Host` header as sent (the first one; [`normalize`] refuses several).
fn host_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

/// Prepares a request for matching and forwarding: the target in origin form (`/p?q`), the
/// `Host` header from an absolute-form target's authority, version HTTP/1.1, hop-by-hop
/// headers removed. Err: the request is malformed (400).
fn normalize(request: &mut Request<Incoming>) -> Result<(), &'static str> {
    if request.headers().get_all(header::HOST).iter().count() > 1 {
        return Err("more than one Host header");
    }
    if let Some(authority) = request.uri().authority() {
        // Without the userinfo that an authority may carry.
        let host = match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_string(),
        };
        let value = HeaderValue::from_str(&host).map_err(|_| "invalid target authority")?;
        request.headers_mut().insert(header::HOST, value);
    }
    let target = match request.uri().path_and_query() {
        Some(pq) => pq.as_str().to_string(),
        None => "/".to_string(),
    };
    *request.uri_mut() = target.parse::<Uri>().map_err(|_| "invalid target")?;
    *request.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(request.headers_mut());
    Ok(())
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1): `Connection` and
/// those it lists, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`
/// (hyper frames bodies itself on each side) and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// A response of the proxy's own: `text/plain` with a length.
fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-private, host"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("host", "app1"),
            ("x-token", "yes"),
        ] {
            h.append(
                HeaderName::from_static(n),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-token"]);
    }
}
