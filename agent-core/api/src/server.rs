//! The serving half shared by the agent's API socket, its metrics listener and the Docker
//! plugin's socket: one accept loop of HTTP/1.1 connections (at most [`MAX_CONNECTIONS`] at
//! a time, drained on shutdown), and a request body read with a size limit and a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How long a client may take to send a request's head before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once per listener; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 512;

/// On shutdown, how long requests in progress get to finish before their connections are
/// dropped (long-lived streams such as `/monitor` end here).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A listener the accept loop takes connections from.
pub trait Listener: Send {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<Self::Stream> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Accepts connections until `shutdown` completes and serves each on its own task with
/// `handle`, which answers every request. `what` names the listener in the logs. A failed
/// accept (out of file descriptors and the like) backs off instead of spinning. At most
/// [`MAX_CONNECTIONS`] connections are served at once. On shutdown it stops accepting, lets
/// every connection finish the request it is serving (idle ones close at once), and returns
/// when they are done or after [`SHUTDOWN_GRACE`].
pub async fn serve<L, H, F, R>(
    listener: &L,
    what: &str,
    handle: H,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<R>> + Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (draining, _) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Finished connections are reaped as we go.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(stream) => {
                let handle = handle.clone();
                let what = what.to_string();
                let mut drain = draining.subscribe();
                connections.spawn(async move {
                    let _slot = slot;
                    let service = service_fn(move |request| {
                        let reply = handle(request);
                        async move { Ok::<_, Infallible>(reply.await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    let served = tokio::select! {
                        served = conn.as_mut() => served,
                        () = async {
                            let _ = drain.wait_for(|d| *d).await;
                        } => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!("{what} connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on the {what} failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = draining.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!("{what}: finishing {open} connection(s)");
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            "{what}: {} connection(s) still open after {SHUTDOWN_GRACE:?}, closed",
            connections.len()
        );
        connections.abort_all();
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("cannot read the request body: {0}")]
    Read(String),
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
}

/// Reads a request body of at most `max` bytes within [`BODY_READ_TIMEOUT`]; a larger
/// `Content-Length` is refused before anything is read.
pub async fn read_body<B>(request: Request<B>, max: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(request.into_body(), max).collect(),
    )
    .await
    .map_err(|_| BodyError::Timeout(BODY_READ_TIMEOUT))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge(max)),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};

    use super::*;

    /// Sends `raw` on a new connection and reads until the server closes it.
    async fn exchange(path: &std::path::Path, raw: &[u8]) -> String {
        let mut conn = UnixStream::connect(path).await.unwrap();
        conn.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn shutdown_finishes_the_request_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(
                &listener,
                "test socket",
                |_req| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Response::new(Full::new(Bytes::from_static(b"finished")))
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        });
        let client = tokio::spawn({
            let path = path.clone();
            async move { exchange(&path, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The request is being handled: shutting down stops accepting but lets it finish.
        let t = Instant::now();
        stop.send(()).unwrap();
        let reply = client.await.unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 200") && reply.ends_with("finished"),
            "{reply}"
        );
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("serve returns once the connection is done")
            .unwrap();
        assert!(t.elapsed() < SHUTDOWN_GRACE, "{:?}", t.elapsed());
        // Nothing accepts any more.
        let late = UnixStream::connect(&path).await;
        if let Ok(mut late) = late {
            let mut buf = [0u8; 1];
            late.write_all(b"GET / HTTP/1.1\r\n\r\n").await.ok();
            let n = tokio::time::timeout(Duration::from_millis(300), late.read(&mut buf)).await;
            assert!(!matches!(n, Ok(Ok(1))), "a new connection was served");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            serve(
                &listener,
                "test socket",
                |req| async move {
                    let text = match read_body(req, 1024).await {
                        Ok(b) => format!("body {}", b.len()),
                        Err(e) => e.to_string(),
                    };
                    Response::new(Full::new(Bytes::from(text)))
                },
                std::future::pending(),
            )
            .await;
        });
        let mut conn = UnixStream::connect(&path).await.unwrap();
        // 10 bytes announced, 2 sent, then silence: the body read gives up.
        conn.write_all(b"PUT / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
            .await
            .unwrap();
        let mut out = vec![0u8; 512];
        let n = conn.read(&mut out).await.unwrap();
        let reply = String::from_utf8_lossy(&out[..n]);
        assert!(
            reply.contains("did not arrive within 30s"),
            "the body read timed out: {reply}"
        );
    }
}
