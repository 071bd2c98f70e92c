//! The upstream side of one client connection: a single HTTP/1.1 connection to the
//! upstream, opened at the first allowed request and reopened when the upstream closed it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use super::listener;

/// How long a connection to the upstream may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request body sent upstream: the client's, streamed, or none.
type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(super) enum ForwardError {
    /// No connection to the upstream (refused, unreachable, timed out): 503.
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The upstream failed after the connection was made (reset, closed, invalid response):
    /// 502.
    #[error("upstream {addr} failed: {source}")]
    Exchange {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// The upstream connection of one client connection. Requests of a client connection are
/// served one at a time, so the lock is never contended; it is held until the response
/// headers arrive.
#[derive(Debug)]
pub(super) struct Upstream {
    addr: SocketAddr,
    mark: u32,
    sender: Mutex<Option<SendRequest<UpstreamBody>>>,
}

impl Upstream {
    /// Connects lazily to `addr` from sockets marked `mark`.
    pub(super) fn new(addr: SocketAddr, mark: u32) -> Upstream {
        Upstream {
            addr,
            mark,
            sender: Mutex::new(None),
        }
    }

    /// A new connection, its I/O driven by a task of its own that ends when the connection
    /// closes or the sender is dropped.
    async fn open(&self) -> Result<SendRequest<UpstreamBody>, ForwardError> {
        let stream = listener::connect(self.addr, self.mark, CONNECT_TIMEOUT)
            .await
            .map_err(|source| ForwardError::Connect {
                addr: self.addr,
                source,
            })?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ForwardError::Exchange {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %addr, error = %e, "proxy: upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `request` and waits for the response headers; the response body streams from
    /// the upstream as the caller reads it. A kept-alive connection that the upstream closed
    /// is replaced by a new one. When a kept-alive connection fails before the response (the
    /// upstream closed it as the request went out), the request is sent once more on a new
    /// connection if that is safe: it was not written at all, or it is idempotent and has no
    /// body (RFC 9110 §9.2.2).
    pub(super) async fn send(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut request = request.map(|body| {
            if body.is_end_stream() {
                UpstreamBody::Right(Empty::new())
            } else {
                UpstreamBody::Left(body)
            }
        });
        let mut slot = self.sender.lock().await;
        loop {
            let kept = match slot.take() {
                Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
                None => None,
            };
            let reused = kept.is_some();
            let mut sender = match kept {
                Some(sender) => sender,
                None => self.open().await?,
            };
            let replay = if reused { replayable(&request) } else { None };
            // The request is handed to the connection here; the future only waits.
            let response = sender.try_send_request(request);
            *slot = Some(sender);
            let mut e = match response.await {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            *slot = None;
            match e.take_message().filter(|_| reused).or(replay) {
                Some(again) => {
                    tracing::debug!(upstream = %self.addr, error = %e.error(),
                        "proxy: kept-alive upstream connection failed; sending again");
                    request = again;
                }
                None => {
                    return Err(ForwardError::Exchange {
                        addr: self.addr,
                        source: e.into_error(),
                    })
                }
            }
        }
    }
}

/// A copy of a request that may be sent again: idempotent, without body.
fn replayable(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(request.method());
    if !idempotent || !matches!(request.body(), UpstreamBody::Right(_)) {
        return None;
    }
    let mut copy = Request::new(UpstreamBody::Right(Empty::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}
